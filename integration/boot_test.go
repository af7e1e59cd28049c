package integration

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flechefs/flechefs/internal/mounttest"
)

// bootNode is a config (RAM + bbolt) and a mount point for a mount that
// the test starts itself, as a user or mount(8) would.
func bootNode(t *testing.T, name string) *mounttest.Node {
	t.Helper()
	return mounttest.NewNode(t, name, nil, mounttest.Opts{NoStart: true})
}

// daemonEnv is the environment of a daemon started by a test: its state,
// cache and config directories in the test's own.
func daemonEnv(n *mounttest.Node) []string {
	return append(os.Environ(), "XDG_STATE_HOME="+filepath.Join(n.Dir, "state"),
		"XDG_CACHE_HOME="+n.Dir, "XDG_CONFIG_HOME="+n.Dir, "GORACE=halt_on_error=1")
}

// runBin runs the flechefs binary (or path, when not "") with args and
// returns its combined output and exit code.
func runBin(t *testing.T, n *mounttest.Node, path string, args ...string) (string, int) {
	t.Helper()
	if path == "" {
		path = mounttest.Bin(t)
	}
	cmd := exec.Command(path, args...)
	cmd.Env = daemonEnv(n)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %v: %v", path, args, err)
	}
	return string(out), code
}

// unmountAtCleanup unmounts dir and waits for the daemon named by the pid
// in pidFile (if any) to exit, whatever the test did.
func unmountAtCleanup(t *testing.T, dir string, pids ...func() int) {
	t.Cleanup(func() {
		if mounttest.IsMounted(dir) {
			exec.Command("fusermount3", "-u", "-z", dir).Run()
		}
		for _, pid := range pids {
			if p := pid(); p > 0 && p != os.Getpid() && !waitExit(p, 10*time.Second) {
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
	})
}

func readPid(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	p, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return p
}

// waitExit waits up to d for process pid to be gone.
func waitExit(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// writeRead writes an entry through dir and reads it back.
func writeRead(t *testing.T, dir, what string) {
	t.Helper()
	k := mounttest.Key(what)
	if err := os.WriteFile(filepath.Join(dir, k), []byte(what), 0o644); err != nil {
		t.Fatalf("%s: write: %v", what, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, k)); err != nil || string(b) != what {
		t.Fatalf("%s: read back %q, %v", what, b, err)
	}
}

// TestMountBackground: flechefs mount --background returns once the mount
// is live, and leaves a daemon in a session of its own, with its pid in
// the pid file and its log in the log file; flechefs umount stops it and
// the pid file goes. A daemon that fails before it mounts makes the
// command fail with the daemon's own message, and mounts nothing.
func TestMountBackground(t *testing.T) {
	n := bootNode(t, "background")
	logFile, pidFile := filepath.Join(n.Dir, "mount.log"), filepath.Join(n.Dir, "mount.pid")
	unmountAtCleanup(t, n.Mnt, func() int { return readPid(pidFile) })
	out, code := runBin(t, n, "", "mount", "--background", "--config", n.Config, "--log-file", logFile, "--pid-file", pidFile, n.Mnt)
	if code != 0 {
		t.Fatalf("mount --background: exit %d\n%s", code, out)
	}
	if !mounttest.IsMounted(n.Mnt) {
		t.Fatalf("mount --background returned 0 and %s is not mounted\n%s", n.Mnt, out)
	}
	pid := readPid(pidFile)
	if pid <= 0 || !strings.Contains(out, fmt.Sprintf("pid %d", pid)) {
		t.Fatalf("pid file names %d; the command said:\n%s", pid, out)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name: state ppid pgrp session.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if f[3] != strconv.Itoa(pid) {
		t.Errorf("the daemon's session is %s, want its own (%d)", f[3], pid)
	}
	writeRead(t, n.Mnt, "written to a background mount")

	// A second background mount on the same point is refused at once.
	if out, code := runBin(t, n, "", "mount", "--background", "--config", n.Config, n.Mnt); code == 0 || !strings.Contains(out, "already a flechefs mount") {
		t.Errorf("second mount --background on a mounted point: exit %d\n%s", code, out)
	}

	if out, code := runBin(t, n, "", "umount", n.Mnt); code != 0 {
		t.Fatalf("umount: exit %d\n%s", code, out)
	}
	if !waitExit(pid, 30*time.Second) {
		t.Fatalf("the daemon %d still runs 30s after umount", pid)
	}
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Errorf("pid file after the daemon exited: %v", err)
	}
	log, _ := os.ReadFile(logFile)
	for _, want := range []string{"flechefs: mounted " + n.Mnt, "flechefs: unmounted " + n.Mnt} {
		if !strings.Contains(string(log), want) {
			t.Errorf("log file lacks %q:\n%s", want, log)
		}
	}

	// The defaults: log and pid file under $XDG_STATE_HOME/flechefs.
	state := filepath.Join(n.Dir, "state", "flechefs")
	out, code = runBin(t, n, "", "mount", "--background", "--config", n.Config, n.Mnt)
	if code != 0 {
		t.Fatalf("mount --background with the default files: exit %d\n%s", code, out)
	}
	defPid := filepath.Join(state, strings.ReplaceAll(strings.Trim(n.Mnt, "/"), "/", "-")+".pid")
	unmountAtCleanup(t, n.Mnt, func() int { return readPid(defPid) })
	if pid := readPid(defPid); pid <= 0 || !strings.Contains(out, filepath.Join(state, "")) {
		t.Errorf("default pid file %s names %d; the command said:\n%s", defPid, pid, out)
	}
	pid = readPid(defPid)
	runBin(t, n, "", "umount", n.Mnt)
	waitExit(pid, 30*time.Second)

	// A daemon that cannot open its database: the command fails with its
	// message and nothing is mounted.
	bad := filepath.Join(n.Dir, "bad.toml")
	cfg, err := os.ReadFile(n.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, bytes.Replace(cfg, []byte(n.Bolt), []byte("/dev/null/cache.db"), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code = runBin(t, n, "", "mount", "--background", "--config", bad, "--log-file", logFile, n.Mnt)
	if code == 0 || !strings.Contains(out, "/dev/null") || !strings.Contains(out, "exited before the mount was live") {
		t.Errorf("background mount with an unusable database: exit %d\n%s", code, out)
	}
	if mounttest.IsMounted(n.Mnt) {
		t.Error("the failed background mount left a mount")
	}

	// A pid file naming a live process (this test's) is not taken over.
	busy := filepath.Join(n.Dir, "busy.pid")
	if err := os.WriteFile(busy, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code = runBin(t, n, "", "mount", "--background", "--config", n.Config, "--log-file", logFile, "--pid-file", busy, n.Mnt)
	if code == 0 || !strings.Contains(out, "which is running") {
		t.Errorf("background mount with a pid file of a running process: exit %d\n%s", code, out)
	}
	if mounttest.IsMounted(n.Mnt) {
		t.Error("the refused background mount left a mount")
	}
}

// TestMountHelper: the forms mount(8) uses. mount.fuse3 runs "flechefs
// SOURCE DIR -o OPTIONS" (with rw,dev,suid added), /sbin/mount.fuse.flechefs
// is the binary under another name; the options are mount's flags with _
// for -, mount(8)'s generic ones are ignored, and a bad one is a usage
// error naming it. Then the real mount(8), and an fstab line, in a mount
// namespace of the test's own where the binary is /usr/local/bin/flechefs.
func TestMountHelper(t *testing.T) {
	n := bootNode(t, "helper")
	logFile := filepath.Join(n.Dir, "helper.log")
	pidFile := filepath.Join(n.Dir, "helper.pid")
	unmountAtCleanup(t, n.Mnt, func() int { return readPid(pidFile) })
	opts := "rw,nofail,_netdev,x-systemd.automount,dev,suid,ram=32MiB,log_file=" + logFile + ",pid_file=" + pidFile
	out, code := runBin(t, n, "", n.Config, n.Mnt, "-o", opts)
	if code != 0 || !mounttest.IsMounted(n.Mnt) {
		t.Fatalf("flechefs CONFIG DIR -o %s: exit %d, mounted %v\n%s", opts, code, mounttest.IsMounted(n.Mnt), out)
	}
	writeRead(t, n.Mnt, "written to a helper mount")
	if st := n.Status(); !strings.Contains(st, "32MiB") && !strings.Contains(st, "32 MiB") {
		t.Errorf("ram=32MiB did not reach the mount; status:\n%s", st)
	}
	pid := readPid(pidFile)
	runBin(t, n, "", "umount", n.Mnt)
	if !waitExit(pid, 30*time.Second) {
		t.Fatalf("helper daemon %d still runs after umount", pid)
	}

	// Under the name mount(8) looks for.
	link := filepath.Join(n.Dir, "mount.fuse.flechefs")
	if err := os.Symlink(mounttest.Bin(t), link); err != nil {
		t.Fatal(err)
	}
	out, code = runBin(t, n, link, "none", n.Mnt, "-o", "config="+n.Config+",log_file="+logFile+",pid_file="+pidFile)
	if code != 0 || !mounttest.IsMounted(n.Mnt) {
		t.Fatalf("mount.fuse.flechefs none DIR -o config=...: exit %d\n%s", code, out)
	}
	pid = readPid(pidFile)
	runBin(t, n, "", "umount", n.Mnt)
	waitExit(pid, 30*time.Second)

	for _, c := range []struct{ opts, want string }{
		{"bogus=1", `unknown option "bogus=1"`},
		{"ro", "read-write"},
		{"ram", "needs a value"},
		{"debug=yes", "takes no value"},
	} {
		out, code := runBin(t, n, "", n.Config, n.Mnt, "-o", c.opts)
		if code != 2 || !strings.Contains(out, c.want) {
			t.Errorf("-o %s: exit %d, want 2 and %q:\n%s", c.opts, code, c.want, out)
		}
	}
	if out, code := runBin(t, n, link, n.Config, n.Mnt, "-f", "-o", "ram=1GiB"); code != 0 || mounttest.IsMounted(n.Mnt) {
		t.Errorf("mount -f (fake): exit %d, mounted %v\n%s", code, mounttest.IsMounted(n.Mnt), out)
	}

	// The real mount(8), and an fstab line, in a private mount namespace
	// whose /usr/local/bin holds the binary (mount(8) runs helpers with a
	// fixed PATH). Everything mounted there is unmounted there.
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatalf("unshare (util-linux) is needed: %v", err)
	}
	bin := filepath.Join(n.Dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(mounttest.Bin(t), filepath.Join(bin, "flechefs")); err != nil {
		t.Fatal(err)
	}
	mnt2 := filepath.Join(n.Dir, "mnt2")
	if err := os.MkdirAll(mnt2, 0o755); err != nil {
		t.Fatal(err)
	}
	bolt2 := filepath.Join(n.Dir, "second.db")
	fstab := filepath.Join(n.Dir, "fstab")
	line := fmt.Sprintf("%s %s fuse.flechefs bolt=%s,log_file=%s,nofail,_netdev,noauto 0 0\n", n.Config, mnt2, bolt2, logFile)
	if err := os.WriteFile(fstab, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	k1, k2 := mounttest.Key("mount(8)"), mounttest.Key("fstab")
	script := fmt.Sprintf(`set -e
mount --bind %[1]s /usr/local/bin
mount -t fuse.flechefs -o log_file=%[2]s %[3]s %[4]s
echo mount8 > %[4]s/%[5]s
cat %[4]s/%[5]s
grep -q " %[4]s fuse.flechefs " /proc/self/mounts && echo listed1
mount -T %[6]s %[7]s
echo fstab > %[7]s/%[8]s
cat %[7]s/%[8]s
grep -q " %[7]s fuse.flechefs " /proc/self/mounts && echo listed2
umount %[4]s
umount %[7]s
echo done
`, bin, logFile, n.Config, n.Mnt, k1, fstab, mnt2, k2)
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
	cmd.Env = daemonEnv(n)
	b, err := cmd.CombinedOutput()
	got := string(b)
	// The daemons ran in that namespace: wait for them by their pids,
	// which the helper printed, whatever happened.
	for _, m := range regexp.MustCompile(`\(pid (\d+),`).FindAllStringSubmatch(got, -1) {
		pid, _ := strconv.Atoi(m[1])
		if !waitExit(pid, 30*time.Second) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Errorf("daemon %d of the namespace still runs 30s after its unmount", pid)
		}
	}
	var lines []string
	for _, l := range strings.Split(got, "\n") {
		if !strings.HasPrefix(l, "flechefs: mounted ") && l != "" {
			lines = append(lines, l)
		}
	}
	if err != nil || strings.Join(lines, " ") != "mount8 listed1 fstab listed2 done" {
		log, _ := os.ReadFile(logFile)
		t.Fatalf("mount(8) and fstab in a mount namespace: %v\n%s\nlog:\n%s", err, got, log)
	}
	if n := strings.Count(got, "flechefs: mounted "); n != 2 {
		t.Errorf("the helper said mounted %d times, want 2:\n%s", n, got)
	}
}

// TestSystemdNotify: under systemd (Type=notify) the daemon says READY=1
// on $NOTIFY_SOCKET once the mount is live, and STOPPING=1 when SIGTERM
// makes it finish; it then exits 0.
func TestSystemdNotify(t *testing.T) {
	n := bootNode(t, "notify")
	sock := filepath.Join(n.Dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cmd := exec.Command(mounttest.Bin(t), "mount", "--config", n.Config, n.Mnt)
	cmd.Env = append(daemonEnv(n), "NOTIFY_SOCKET="+sock)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	unmountAtCleanup(t, n.Mnt, func() int { return cmd.Process.Pid })
	recv := func(want string) {
		t.Helper()
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		buf := make([]byte, 4096)
		k, err := conn.Read(buf)
		if err != nil || !strings.Contains(string(buf[:k]), want) {
			t.Fatalf("notify socket: %q, %v; want %s\n%s", buf[:k], err, want, out.String())
		}
	}
	recv("READY=1")
	if !mounttest.IsMounted(n.Mnt) {
		t.Fatal("READY=1 before the mount is live")
	}
	writeRead(t, n.Mnt, "written under systemd")
	cmd.Process.Signal(syscall.SIGTERM)
	recv("STOPPING=1")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("still running 30s after SIGTERM")
	}
}

// TestSystemdUnits: the units in contrib/systemd pass systemd-analyze
// verify (with this test's binary in ExecStart: verify checks that the
// program exists), which reports every line systemd would ignore.
func TestSystemdUnits(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Fatalf("systemd-analyze (Debian package systemd) is needed: %v", err)
	}
	dir := t.TempDir()
	for _, unit := range []string{"flechefs@.service", "user/flechefs@.service"} {
		b, err := os.ReadFile(filepath.Join("..", "contrib", "systemd", unit))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, []byte("ExecStart=/usr/local/bin/flechefs mount")) || !bytes.Contains(b, []byte("Type=notify")) {
			t.Errorf("%s: no Type=notify, or ExecStart does not run /usr/local/bin/flechefs mount", unit)
		}
		name := strings.ReplaceAll(unit, "/", "-") // user-flechefs@.service
		b = bytes.ReplaceAll(b, []byte("/usr/local/bin/flechefs"), []byte(mounttest.Bin(t)))
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
		inst := filepath.Join(dir, strings.Replace(name, "@.", "@cache.", 1))
		out, err := exec.Command("systemd-analyze", "verify", inst).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
		}
	}
}
