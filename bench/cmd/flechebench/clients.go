package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/flechefs/flechefs/internal/mountinfo"
)

// client is one way to reach the dataset: a mount, or the remote directory
// itself (native).
type client interface {
	name() string
	// start mounts; fresh empties the client's persistent local cache.
	start(fresh bool) error
	// stop unmounts and waits for the daemon to exit.
	stop() error
	// root is the directory where the entries are.
	root() string
	// settle waits until the daemon's background work is done.
	settle()
	pid() int
}

// daemon is a FUSE daemon run in the foreground as our child.
type daemon struct {
	b      *bench
	label  string
	mnt    string
	fstype string // prefix of the fstype in mountinfo ("fuse.flechefs", "fuse.sshfs", "fuse.rclone")
	cmd    *exec.Cmd
	logf   *os.File
	done   chan struct{}
	// stopSignal: SIGTERM makes the daemon unmount and exit (flechefs,
	// rclone, memfs); otherwise unmount and wait for the exit (sshfs).
	stopSignal bool
}

func (d *daemon) root() string { return d.mnt }
func (d *daemon) pid() int {
	if d.cmd == nil || d.cmd.Process == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

func (d *daemon) run(env []string, args ...string) error {
	if err := os.MkdirAll(d.mnt, 0o755); err != nil {
		return err
	}
	if mounted(d.mnt) {
		return fmt.Errorf("%s: %s is still mounted", d.label, d.mnt)
	}
	lf, err := os.OpenFile(filepath.Join(d.b.opt.work, d.label+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return err
	}
	d.cmd, d.logf, d.done = cmd, lf, make(chan struct{})
	go func(done chan struct{}) { cmd.Wait(); close(done) }(d.done)
	deadline := time.Now().Add(60 * time.Second)
	for !mountedAs(d.mnt, d.fstype) {
		select {
		case <-d.done:
			d.cmd = nil
			lf.Close()
			return fmt.Errorf("%s exited before mounting (%v); log %s:\n%s", d.label, cmd.ProcessState, lf.Name(), tail(lf.Name()))
		default:
		}
		if time.Now().After(deadline) {
			d.kill()
			return fmt.Errorf("%s did not mount %s within 60s; log %s:\n%s", d.label, d.mnt, lf.Name(), tail(lf.Name()))
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

func (d *daemon) stop() error {
	if d.cmd == nil {
		return nil
	}
	defer func() { d.cmd = nil; d.logf.Close() }()
	if d.stopSignal {
		syscall.Kill(d.cmd.Process.Pid, syscall.SIGTERM)
	} else {
		for i := 0; mounted(d.mnt); i++ {
			err := syscall.Unmount(d.mnt, 0)
			if err == nil {
				break
			}
			if i == 100 {
				syscall.Unmount(d.mnt, syscall.MNT_DETACH)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	select {
	case <-d.done:
	case <-time.After(120 * time.Second):
		d.kill()
		return fmt.Errorf("%s did not exit within 120s of unmounting", d.label)
	}
	if mounted(d.mnt) {
		syscall.Unmount(d.mnt, syscall.MNT_DETACH)
		return fmt.Errorf("%s exited and left %s mounted", d.label, d.mnt)
	}
	// 143: exited on SIGTERM as asked (rclone).
	if st := d.cmd.ProcessState; st != nil && !st.Success() && st.ExitCode() != 143 {
		return fmt.Errorf("%s exited with %v; log %s:\n%s", d.label, st, d.logf.Name(), tail(d.logf.Name()))
	}
	return nil
}

// kill ends the daemon we started (by its pid) and detaches its mount.
func (d *daemon) kill() {
	if d.cmd != nil && d.cmd.Process != nil {
		syscall.Kill(d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.done
	}
	if mounted(d.mnt) {
		syscall.Unmount(d.mnt, syscall.MNT_DETACH)
	}
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// mountedAs reports whether mnt is a mount point of a file system type
// starting with fstype (any type if "").
func mountedAs(mnt, fstype string) bool {
	e, ok, err := mountinfo.Find(mnt)
	return err == nil && ok && strings.HasPrefix(e.FSType, fstype)
}

func mounted(mnt string) bool { return mountedAs(mnt, "") }

// --- flechefs ---

type flechefsClient struct {
	daemon
	cfgPath string
	db      string
	spool   string
	runs    int
	// conf overrides for the memory phase and the slow link.
	ramSize    string
	env        []string
	url        string
	knownHosts string
	s3         *s3Store // the remote is this S3 store instead of sshd (the s3 phase)
}

func (b *bench) newFlechefs(label string) *flechefsClient {
	dir := filepath.Join(b.opt.work, label)
	return &flechefsClient{
		daemon:  daemon{b: b, label: label, mnt: filepath.Join(dir, "mnt"), fstype: "fuse.flechefs", stopSignal: true},
		cfgPath: filepath.Join(dir, "config.toml"), db: filepath.Join(dir, "cache.db"), spool: filepath.Join(dir, "spool"),
		ramSize: "256MiB", url: b.srv.URL(), knownHosts: b.srv.KnownHosts,
	}
}

func (c *flechefsClient) name() string { return "flechefs" }

func (c *flechefsClient) writeConfig() error {
	remote := fmt.Sprintf(`kind = "sftp"
url = %q
identity = [%q]
known_hosts = %q
agent = false
ciphers = [%q]
channels = %d
`, c.url, c.b.srv.IdentityFile, c.knownHosts, cipher, c.b.opt.channels)
	if c.s3 != nil {
		remote = c.s3.s3TOML()
	}
	cfg := fmt.Sprintf(`# written by flechebench: RAM, bbolt, a remote
spool_dir = %q
upload_workers = %d

[[tier]]
kind = "memory"
size = %q

[[tier]]
kind = "bolt"
path = %q
size = "8GiB"

[[tier]]
%s`, c.spool, c.b.opt.uploadWorkers, c.ramSize, c.db, remote)
	if err := os.MkdirAll(filepath.Dir(c.cfgPath), 0o755); err != nil {
		return err
	}
	return os.WriteFile(c.cfgPath, []byte(cfg), 0o644)
}

func (c *flechefsClient) start(fresh bool) error {
	if fresh {
		os.Remove(c.db)
		os.RemoveAll(c.spool)
	}
	if err := c.writeConfig(); err != nil {
		return err
	}
	args := []string{c.b.opt.flechefs, "mount", "--config", c.cfgPath}
	if c.b.opt.debug {
		args = append(args, "--debug")
	}
	if c.b.opt.cpuprofile {
		c.runs++
		args = append(args, "--cpuprofile", filepath.Join(c.b.opt.out, fmt.Sprintf("%s-%d.pprof", c.label, c.runs)))
	}
	return c.run(append([]string{"GOTRACEBACK=all"}, c.env...), append(args, c.mnt)...)
}

// stats is the part of .flechefs/stats that settle looks at.
type stats struct {
	Tiers []struct {
		Name       string `json:"name"`
		Promotions int64  `json:"promotions"`
		Bytes      int64  `json:"bytes"`
		Entries    int64  `json:"entries"`
	} `json:"tiers"`
	Queue       int64 `json:"queue"`
	Unpersisted int64 `json:"unpersisted"`
	Fetching    int64 `json:"fetching"`
	Deferred    int64 `json:"deferred"`
}

func (c *flechefsClient) stats() (stats, string, error) {
	var st stats
	raw, err := os.ReadFile(filepath.Join(c.mnt, ".flechefs", "stats"))
	if err != nil {
		return st, "", err
	}
	return st, string(raw), json.Unmarshal(raw, &st)
}

// settle waits until no fetch, persist or promotion is running: the
// figures of one scenario do not include the background work of the last.
func (c *flechefsClient) settle() {
	deadline := time.Now().Add(120 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		st, _, err := c.stats()
		if err != nil {
			return
		}
		sig := fmt.Sprint(st.Tiers, st.Unpersisted, st.Fetching, st.Deferred)
		if st.Fetching == 0 && st.Unpersisted == 0 && st.Deferred == 0 && sig == last {
			return
		}
		last = sig
		time.Sleep(150 * time.Millisecond)
	}
	c.b.logf("flechefs: still busy after 120s")
}

// waitQueue waits until the upload queue is empty.
func (c *flechefsClient) waitQueue(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		st, _, err := c.stats()
		if err != nil {
			return err
		}
		if st.Queue == 0 && st.Unpersisted == 0 {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return errors.New("upload queue not empty")
}

// --- sshfs ---

type sshfsClient struct {
	daemon
	port       int
	knownHosts string
}

func (b *bench) newSSHFS(label string) *sshfsClient {
	return &sshfsClient{
		daemon: daemon{b: b, label: label, mnt: filepath.Join(b.opt.work, label, "mnt"), fstype: "fuse.sshfs"},
		port:   b.srv.Port, knownHosts: b.srv.KnownHosts,
	}
}

func (c *sshfsClient) name() string { return "sshfs" }
func (c *sshfsClient) settle()      {}

func (c *sshfsClient) start(fresh bool) error {
	s := c.b.srv
	return c.run(nil, "sshfs", "-f",
		fmt.Sprintf("%s@127.0.0.1:%s", s.User, s.Dir), c.mnt,
		"-p", strconv.Itoa(c.port),
		"-o", "IdentityFile="+s.IdentityFile,
		"-o", "UserKnownHostsFile="+c.knownHosts,
		"-o", "StrictHostKeyChecking=yes,BatchMode=yes,IdentitiesOnly=yes",
		"-o", "Ciphers="+cipher,
	)
}

// --- rclone ---

type rcloneClient struct {
	daemon
	cache string
	// remote is an rclone remote defined by env (the s3 phase); "": the
	// sshd's directory through the SFTP backend.
	remote string
	env    []string
}

func (b *bench) newRclone(label string) *rcloneClient {
	dir := filepath.Join(b.opt.work, label)
	return &rcloneClient{
		daemon: daemon{b: b, label: label, mnt: filepath.Join(dir, "mnt"), fstype: "fuse.rclone", stopSignal: true},
		cache:  filepath.Join(dir, "cache"),
	}
}

func (c *rcloneClient) name() string { return "rclone" }
func (c *rcloneClient) settle()      {}

func (c *rcloneClient) start(fresh bool) error {
	if fresh {
		os.RemoveAll(c.cache)
	}
	s := c.b.srv
	empty := filepath.Join(c.b.opt.work, "rclone.conf")
	os.WriteFile(empty, nil, 0o600)
	if c.remote != "" {
		return c.run(c.env, "rclone", "mount", "--config", empty, c.remote, c.mnt,
			"--vfs-cache-mode", "full", "--cache-dir", c.cache, "--vfs-write-back", "0s", "--log-level", "NOTICE")
	}
	// rclone 1.60 has no --sftp-ciphers: sshd offers only the one cipher.
	return c.run(nil, "rclone", "mount", "--config", empty,
		":sftp:"+s.Dir, c.mnt,
		"--sftp-host", "127.0.0.1", "--sftp-port", strconv.Itoa(s.Port), "--sftp-user", s.User,
		"--sftp-key-file", s.IdentityFile, "--sftp-known-hosts-file", s.KnownHosts,
		// No md5sum process on the server after every upload.
		"--sftp-disable-hashcheck", "--sftp-shell-type", "none",
		"--vfs-cache-mode", "full", "--cache-dir", c.cache,
		// Upload at close rather than 5 s after it.
		"--vfs-write-back", "0s",
		"--log-level", "NOTICE",
	)
}

// --- memfs ---

type memfsClient struct{ daemon }

func (b *bench) newMemfs() *memfsClient {
	return &memfsClient{daemon{b: b, label: "memfs", mnt: filepath.Join(b.opt.work, "memfs", "mnt"), fstype: "fuse.memfs", stopSignal: true}}
}

func (c *memfsClient) name() string { return "memfs" }
func (c *memfsClient) settle()      {}
func (c *memfsClient) start(fresh bool) error {
	return c.run(nil, c.b.opt.memfs, "-src", c.b.srv.Dir, c.mnt)
}

// --- native: the remote directory itself ---

type nativeClient struct {
	b   *bench
	out string
}

func (c *nativeClient) name() string           { return "native" }
func (c *nativeClient) start(fresh bool) error { return nil }
func (c *nativeClient) stop() error            { return nil }
func (c *nativeClient) root() string           { return c.b.srv.Dir }
func (c *nativeClient) settle()                {}
func (c *nativeClient) pid() int               { return 0 }
