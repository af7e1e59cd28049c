package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/mountinfo"
	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers"
)

// mountProc is a "flechefs mount" child process: this test binary, run as
// flechefs (see TestMain).
type mountProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	mnt  string
	mu   sync.Mutex
	log  bytes.Buffer
	line chan string
	done chan struct{}
	err  error // of Wait, once done is closed
}

// startMount runs flechefs mount with HOME and the XDG directories in home,
// and waits until the mount is ready.
func startMount(t *testing.T, home, mnt string, args ...string) *mountProc {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("no FUSE on this machine: %v", err)
	}
	p := &mountProc{t: t, mnt: mnt, line: make(chan string, 1000), done: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], append(append([]string{"mount"}, args...), mnt)...)
	p.cmd.Env = append(os.Environ(), "FLECHEFS_TEST_MAIN=1", "HOME="+home,
		"XDG_CONFIG_HOME="+filepath.Join(home, "config"), "XDG_CACHE_HOME="+filepath.Join(home, "cache"))
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			select {
			case p.line <- sc.Text():
			default:
			}
		}
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	// Whatever happens, leave no mount behind.
	t.Cleanup(func() {
		if mounted(mnt) {
			t.Errorf("%s still mounted at the end of the test", mnt)
			syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
		p.cmd.Process.Kill()
		<-p.done
	})
	p.waitLine("flechefs: mounted "+mnt+" (tiers: ", 30*time.Second)
	if !mounted(mnt) {
		t.Fatalf("ready line printed but %s is not in /proc/self/mountinfo", mnt)
	}
	return p
}

func (p *mountProc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// waitLine waits for a line of the child's stderr that contains s.
func (p *mountProc) waitLine(s string, timeout time.Duration) {
	p.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l := <-p.line:
			if strings.Contains(l, s) {
				return
			}
		case <-p.done:
			p.t.Fatalf("flechefs mount exited (%v) before printing %q:\n%s", p.err, s, p.logs())
		case <-deadline:
			p.t.Fatalf("no %q after %v:\n%s", s, timeout, p.logs())
		}
	}
}

// wait waits for the child to exit and checks its exit status.
func (p *mountProc) wait(code int) {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.t.Fatalf("flechefs mount did not exit:\n%s", p.logs())
	}
	got := 0
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		got = ee.ExitCode()
	} else if p.err != nil {
		p.t.Fatal(p.err)
	}
	if got != code {
		p.t.Fatalf("flechefs mount exited %d, want %d:\n%s", got, code, p.logs())
	}
	if mounted(p.mnt) {
		p.t.Fatalf("%s is still mounted after flechefs exited", p.mnt)
	}
}

func mounted(mnt string) bool {
	e, ok, err := mountinfo.Find(mnt)
	return err == nil && ok && e.FSType == flechefsFSType
}

// Mount the default configuration for real: write an entry, read it back,
// SIGTERM, then mount again and find the entry in the bbolt tier; unmount
// with flechefs umount; and a busy mount is detached lazily on SIGTERM.
func TestMountSmoke(t *testing.T) {
	home := t.TempDir()
	mnt := t.TempDir()

	p := startMount(t, home, mnt)
	key, err := digest.Call("smoke", []any{"test"})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 3<<20+17)
	rand.Read(data)
	name := filepath.Join(mnt, key.String())
	if err := os.WriteFile(name, data, 0o644); err != nil {
		t.Fatalf("write: %v\n%s", err, p.logs())
	}
	if got, err := os.ReadFile(name); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %d bytes, %v", len(got), err)
	}
	code, stdout, stderr := runCLI(t, "", "status", mnt)
	if code != 0 || !strings.Contains(stdout, "ram ") || !strings.Contains(stdout, "bolt ") {
		t.Fatalf("status: %d\n%s%s", code, stdout, stderr)
	}
	if code, _, stderr := runCLI(t, "", "sync", "--timeout", "30s", mnt); code != 0 {
		t.Fatalf("sync: %d %s", code, stderr)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.wait(0)
	if !strings.Contains(p.logs(), "flechefs: unmounted "+mnt) {
		t.Errorf("no unmounted line:\n%s", p.logs())
	}
	if _, err := os.Stat(filepath.Join(home, "cache", "flechefs", "cache.db")); err != nil {
		t.Fatalf("no database: %v", err)
	}

	// Again, without the RAM tier: the entry comes from the database.
	p = startMount(t, home, mnt, "--ram", "0")
	if got, err := os.ReadFile(name); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after remount: %d bytes, %v\n%s", len(got), err, p.logs())
	}
	if code, _, stderr := runCLI(t, "", "umount", mnt); code != 0 {
		t.Fatalf("flechefs umount: %d %s", code, stderr)
	}
	p.wait(0)
	if !strings.Contains(p.logs(), "unmounted from outside") {
		t.Errorf("no 'unmounted from outside':\n%s", p.logs())
	}

	// A file open in the mount: SIGTERM waits, then detaches lazily, and
	// the process exits when the file is closed.
	p = startMount(t, home, mnt)
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.waitLine("detached lazily", 20*time.Second)
	if mounted(mnt) {
		t.Errorf("still in mountinfo after the lazy unmount")
	}
	// The open file still reads.
	if got, err := io.ReadAll(f); err != nil || !bytes.Equal(got, data) {
		t.Errorf("read through a detached mount: %d bytes, %v", len(got), err)
	}
	f.Close()
	p.wait(0)
}

// A remote that is down at mount time: the mount comes up (degraded), the
// entry waits in the queue, sync gives up with the reason; when the remote
// comes back, sync sees the queue drain.
func TestMountRemoteDown(t *testing.T) {
	s := sshdtest.Start(t)
	s.Stop()
	home := t.TempDir()
	mnt := t.TempDir()
	p := startMount(t, home, mnt, "--remote", s.URL()+"/cache", "--identity", s.IdentityFile,
		"--known-hosts", s.KnownHosts, "--remote-timeout", "1s")
	p.waitLine("remote tier unavailable", 20*time.Second)

	key, err := digest.Call("remote", nil)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("computed while the remote was down\n")
	if err := os.WriteFile(filepath.Join(mnt, key.String()), data, 0o644); err != nil {
		t.Fatalf("write: %v\n%s", err, p.logs())
	}
	// Once on disk, the entry waits in the queue.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_, st, err := readStats(mnt)
		if err != nil {
			t.Fatal(err)
		}
		if st.Unpersisted == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("entry not persisted after 10s: %+v", st)
		}
	}
	code, stdout, stderr := runCLI(t, "", "status", mnt)
	if flat := strings.Join(strings.Fields(stdout), " "); code != 0 || !strings.Contains(flat, "UNAVAILABLE") || !strings.Contains(flat, "upload queue: 1 waiting") ||
		!strings.Contains(flat, "tier sftp UNAVAILABLE: ") || !strings.Contains(flat, "connection refused") {
		t.Errorf("status: %d\n%s%s", code, stdout, stderr)
	}
	code, _, stderr = runCLI(t, "", "sync", "--give-up", "2s", "--timeout", "1m", mnt)
	if code != exitFail || !strings.Contains(stderr, "remote tier sftp is unavailable: nothing uploaded for") {
		t.Errorf("sync while down: %d %s", code, stderr)
	}

	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runCLI(t, "", "sync", "--timeout", "2m", mnt)
	if code != 0 || !strings.Contains(stderr, "all uploaded") {
		t.Fatalf("sync after restart: %d %s\n%s", code, stderr, p.logs())
	}
	_, raw, _ := runCLI(t, "", "status", "--json", mnt)
	var st tiers.Stats
	if err := json.Unmarshal([]byte(raw), &st); err != nil || st.Uploaded != 1 || st.Queue != 0 {
		t.Errorf("stats after sync: %v %s", err, raw)
	}
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	p.wait(0)
	if testing.Verbose() {
		t.Logf("flechefs mount's log:\n%s", p.logs())
	}
}

// A remote that answers and refuses this client for good (its host key is
// not in known_hosts) stops the mount with the reason, instead of a mount
// whose remote entries would all read as absent.
func TestMountRemoteRefused(t *testing.T) {
	s := sshdtest.Start(t)
	empty := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	mnt, home := t.TempDir(), t.TempDir()
	cmd := exec.Command(os.Args[0], "mount", "--remote", s.URL()+"/cache", "--identity", s.IdentityFile,
		"--known-hosts", empty, "--remote-timeout", "1s", "--bolt", filepath.Join(home, "cache.db"), mnt)
	cmd.Env = append(os.Environ(), "FLECHEFS_TEST_MAIN=1", "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, "cache"))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitFail {
		t.Fatalf("flechefs mount: %v, want exit %d:\n%s", err, exitFail, out)
	}
	if !strings.Contains(string(out), "host key of "+s.Addr+" is not in "+empty) {
		t.Errorf("the mount's error does not name the host key and the file:\n%s", out)
	}
	if mounted(mnt) {
		t.Errorf("%s is mounted", mnt)
	}
}

// A second signal while the mount is busy exits at once (status 1), and
// leaves no mount behind.
func TestMountSecondSignal(t *testing.T) {
	home := t.TempDir()
	mnt := t.TempDir()
	p := startMount(t, home, mnt)
	d, err := os.Open(mnt) // keeps the mount busy
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.waitLine("mount point busy", 10*time.Second)
	p.cmd.Process.Signal(syscall.SIGINT)
	p.wait(1)
	if !strings.Contains(p.logs(), "second signal") {
		t.Errorf("log:\n%s", p.logs())
	}
}
