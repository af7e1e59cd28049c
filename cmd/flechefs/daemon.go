package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/syslog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/coreos/go-systemd/v22/daemon"
)

// A mount runs in the foreground unless told otherwise. In the background
// (--background, or started by mount(8)) the command starts itself again
// as a daemon in a session of its own, with its log in a file or syslog,
// and exits once that daemon reports the mount live, or with the daemon's
// own error when it fails first. The daemon reports through a pipe whose
// descriptor it finds in readyFDEnv; under systemd (Type=notify) it also
// says READY=1 and, at the stop, STOPPING=1 on $NOTIFY_SOCKET.

// readyFDEnv names the descriptor of the pipe a background daemon writes
// readyLine to once mounted.
const readyFDEnv = "FLECHEFS_READY_FD"

const readyLine = "ready"

// notifyReady tells whoever started this process that the mount is live:
// the parent of a background daemon, and systemd. It removes both from
// the environment so that no child inherits them.
func notifyReady() {
	if v := os.Getenv(readyFDEnv); v != "" {
		os.Unsetenv(readyFDEnv)
		if fd, err := strconv.Atoi(v); err == nil {
			f := os.NewFile(uintptr(fd), "ready")
			fmt.Fprintln(f, readyLine)
			f.Close()
		}
	}
	daemon.SdNotify(false, daemon.SdNotifyReady)
}

// notifyStopping tells systemd the mount is stopping (finishing writes).
func notifyStopping() { daemon.SdNotify(false, daemon.SdNotifyStopping) }

// escapePath names a file after a mount point, as systemd-escape --path
// does in spirit: "/mnt/cache" → "mnt-cache".
func escapePath(p string) string {
	p = strings.Trim(filepath.Clean(p), "/")
	if p == "" {
		return "root"
	}
	return strings.ReplaceAll(p, "/", "-")
}

// stateDir is where a background mount keeps its log and pid file by
// default: $XDG_STATE_HOME/flechefs, else ~/.local/state/flechefs.
func stateDir() (string, error) {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "flechefs"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no $XDG_STATE_HOME and no home directory for the log and pid files: %w", err)
	}
	return filepath.Join(home, ".local", "state", "flechefs"), nil
}

// background holds where a background mount logs and writes its pid.
type background struct {
	logFile string // "" with syslog
	syslog  bool
	pidFile string
}

// resolve fills in the default log and pid files for mount point mnt.
func (b *background) resolve(mnt string) error {
	if b.pidFile != "" && (b.logFile != "" || b.syslog) {
		return nil
	}
	dir, err := stateDir()
	if err != nil {
		return err
	}
	if b.logFile == "" && !b.syslog {
		b.logFile = filepath.Join(dir, escapePath(mnt)+".log")
	}
	if b.pidFile == "" {
		b.pidFile = filepath.Join(dir, escapePath(mnt)+".pid")
	}
	return nil
}

// start runs args (the mount of mnt, without --background) as a
// daemon and waits until it reports the mount live. It returns the exit
// code: 0 once live; the daemon's own code when it exits first, after its
// log has been copied to stderr.
func (b *background) start(c *cli, mnt string, args []string) int {
	exe, err := os.Executable()
	if err != nil {
		return c.fail("--background: %v", err)
	}
	var out *os.File
	var logStart int64
	if b.syslog {
		// The daemon logs to syslog itself; its own stderr is kept only
		// to show why it failed before it mounted.
		out, err = os.CreateTemp("", "flechefs-start-*.log")
		if err == nil {
			os.Remove(out.Name())
		}
	} else {
		if err := os.MkdirAll(filepath.Dir(b.logFile), 0o700); err != nil {
			return c.fail("log file: %v", err)
		}
		out, err = os.OpenFile(b.logFile, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o600)
		if err == nil {
			logStart, _ = out.Seek(0, io.SeekEnd)
		}
	}
	if err != nil {
		return c.fail("log file: %v", err)
	}
	defer out.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return c.fail("%v", err)
	}
	defer devnull.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return c.fail("%v", err)
	}
	defer pr.Close()
	cmd := exec.Command(exe, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, out, out
	cmd.ExtraFiles = []*os.File{pw} // descriptor 3
	cmd.Env = append(os.Environ(), readyFDEnv+"=3")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // no terminal, no signals from the caller's group
	if err := cmd.Start(); err != nil {
		pw.Close()
		return c.fail("starting the daemon: %v", err)
	}
	pw.Close()
	line, _ := bufio.NewReader(pr).ReadString('\n')
	if strings.TrimSpace(line) == readyLine {
		where := "log " + b.logFile
		if b.syslog {
			where = "logging to syslog"
		}
		fmt.Fprintf(c.stderr, "flechefs: mounted %s in the background (pid %d, %s)\n", mnt, cmd.Process.Pid, where)
		cmd.Process.Release()
		return exitOK
	}
	// The pipe closed with no word: the daemon exited (or closed it
	// without mounting, which it never does).
	err = cmd.Wait()
	if tail, rerr := readFrom(out, logStart); rerr == nil {
		c.stderr.Write(tail)
	}
	code := exitFail
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() > 0 {
		code = ee.ExitCode()
	}
	fmt.Fprintf(c.stderr, "flechefs mount: the daemon exited before the mount was live (%v)\n", err)
	return code
}

// readFrom returns up to 64 KiB of what f holds from off.
func readFrom(f *os.File, off int64) ([]byte, error) {
	b := make([]byte, 64<<10)
	n, err := f.ReadAt(b, off)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return b[:n], err
}

// pidFile is the pid file of a running background daemon.
type pidFile string

// write records this process's pid; it fails if another live flechefs
// holds the file.
func (p pidFile) write() error {
	if p == "" {
		return nil
	}
	if b, err := os.ReadFile(string(p)); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid != os.Getpid() && processAlive(pid) {
			return fmt.Errorf("pid file %s names pid %d, which is running", p, pid)
		}
	}
	if err := os.MkdirAll(filepath.Dir(string(p)), 0o700); err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	tmp := string(p) + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	return os.Rename(tmp, string(p))
}

// remove deletes the file if it still names this process.
func (p pidFile) remove() {
	if p == "" {
		return
	}
	if b, err := os.ReadFile(string(p)); err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(os.Getpid()) {
		os.Remove(string(p))
	}
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// syslogWriter opens the system log for a daemon's log lines.
func syslogWriter() (io.Writer, error) {
	w, err := syslog.New(syslog.LOG_DAEMON|syslog.LOG_INFO, "flechefs")
	if err != nil {
		return nil, fmt.Errorf("syslog: %w", err)
	}
	return w, nil
}

// syslogAvailable reports whether a local syslog (or the journal's
// /dev/log) listens.
func syslogAvailable() bool {
	fi, err := os.Stat("/dev/log")
	return err == nil && fi.Mode()&os.ModeSocket != 0
}

// startBackground starts the mount of dir, whose command line is c's, as
// a daemon (see background.start).
func startBackground(c *cli, dir string, b *background) int {
	mnt, err := filepath.Abs(dir)
	if err != nil {
		return c.fail("%v", err)
	}
	if err := checkMountpoint(mnt); err != nil {
		return c.fail("%v", err)
	}
	if err := b.resolve(mnt); err != nil {
		return c.fail("%v", err)
	}
	args := []string{c.cmd.name, "--pid-file=" + b.pidFile}
	args = append(args, withoutFlags(c.args, map[string]bool{"background": false, "log-file": true, "pid-file": true})...)
	return b.start(c, mnt, args)
}

// withoutFlags returns args without the flags named in drop (true: the
// flag takes a value), written -name or --name, with =value or not. It
// stops at "--".
func withoutFlags(args []string, drop map[string]bool) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(out, args[i:]...)
		}
		name, _, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		takesVal, ok := drop[name]
		if !strings.HasPrefix(a, "-") || !ok {
			out = append(out, a)
			continue
		}
		if takesVal && !hasVal {
			i++ // the value is the next argument
		}
	}
	return out
}
