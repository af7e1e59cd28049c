// Package integration drives the built flechefs binary on real FUSE mounts,
// with a real OpenSSH sshd as the remote, the way its users do: shell tools,
// Python, plain syscalls.
package integration

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers"
)

// bin is the flechefs binary built once for the package.
var bin string

// base is the folder every test's files live under; TestMain checks that
// nothing is left mounted or running below it.
var base string

func TestMain(m *testing.M) {
	var err error
	base, err = os.MkdirTemp("", "flechefs-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("TMPDIR", base) // t.TempDir() and every child's temp files land here
	bin = filepath.Join(base, "flechefs")
	build := exec.Command("go", "build", "-race", "-o", bin, "github.com/flechefs/flechefs/cmd/flechefs")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "integration: building flechefs:", err)
		os.Exit(1)
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		fmt.Fprintln(os.Stderr, "integration: /dev/fuse is missing: these tests need FUSE (apt-get install fuse3; modprobe fuse)")
		os.Exit(1)
	}
	code := m.Run()
	if leaks := leftovers(); len(leaks) > 0 {
		fmt.Fprintln(os.Stderr, "integration: left behind:\n  "+strings.Join(leaks, "\n  "))
		for _, mp := range mountsUnder(base) {
			exec.Command("umount", "-l", mp).Run()
		}
		code = 1
	}
	if err := os.RemoveAll(base); err != nil {
		fmt.Fprintln(os.Stderr, "integration: removing", base, ":", err)
		code = 1
	}
	os.Exit(code)
}

// leftovers lists mounts under base and flechefs processes started from bin.
func leftovers() []string {
	var out []string
	for _, mp := range mountsUnder(base) {
		out = append(out, "mount "+mp)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, p := range procs {
		if exe, err := os.Readlink(p); err == nil && exe == bin {
			out = append(out, "process "+filepath.Base(filepath.Dir(p)))
		}
	}
	return out
}

func mountsUnder(dir string) []string {
	b, _ := os.ReadFile("/proc/mounts")
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && strings.HasPrefix(f[1], dir) {
			out = append(out, f[1])
		}
	}
	return out
}

func isMounted(dir string) bool {
	for _, mp := range mountsUnder(dir) {
		if mp == dir {
			return true
		}
	}
	return false
}

// node is one machine: its own cache dir (RAM + bbolt) and optionally a remote.
type node struct {
	t      *testing.T
	name   string
	dir    string // private files: config, cache, spool
	mnt    string
	config string
	remote *sshdtest.Server

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	stderr *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// nodeOpts tune a node's config.
type nodeOpts struct {
	ram        string // RAM tier size, default "64MiB"
	extra      string // more top-level TOML
	remoteTier string // more keys in the sftp tier table
}

func newNode(t *testing.T, name string, remote *sshdtest.Server, o nodeOpts) *node {
	t.Helper()
	dir := t.TempDir()
	n := &node{t: t, name: name, dir: dir, mnt: filepath.Join(dir, "mnt"), config: filepath.Join(dir, "config.toml"), remote: remote}
	if err := os.Mkdir(n.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if o.ram == "" {
		o.ram = "64MiB"
	}
	cfg := fmt.Sprintf(`# %s
negative_ttl = "1s"
remote_timeout = "5s"
spool_dir = %q
%s

[[tier]]
kind = "memory"
size = %q

[[tier]]
kind = "bolt"
path = %q
size = "1GiB"
`, name, filepath.Join(dir, "spool"), o.extra, o.ram, filepath.Join(dir, "cache.db"))
	if remote != nil {
		cfg += fmt.Sprintf(`
[[tier]]
kind = "sftp"
url = %q
identity = [%q]
known_hosts = %q
agent = false
timeout = "5s"
%s
`, remote.URL(), remote.IdentityFile, remote.KnownHosts, o.remoteTier)
	}
	if err := os.WriteFile(n.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.stop)
	n.start()
	return n
}

// start runs `flechefs mount` and waits for the mount to appear.
func (n *node) start() {
	n.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	cmd := exec.Command(bin, "mount", "--config", n.config, n.mnt)
	n.stderr = &lockedBuffer{}
	cmd.Stderr = n.stderr
	cmd.Stdout = n.stderr
	cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+n.dir, "XDG_CONFIG_HOME="+n.dir, "GORACE=halt_on_error=1")
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	n.cmd, n.done = cmd, done
	deadline := time.Now().Add(20 * time.Second)
	for !isMounted(n.mnt) {
		select {
		case <-done:
			n.t.Fatalf("%s: flechefs mount exited: %v\n%s", n.name, cmd.ProcessState, n.stderr)
		default:
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("%s: not mounted after 20s\n%s", n.name, n.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends SIGTERM and checks a clean exit and unmount.
func (n *node) stop() {
	n.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(30 * time.Second):
		n.cmd.Process.Kill()
		<-n.done
		n.t.Errorf("%s: flechefs did not exit 30s after SIGTERM\n%s", n.name, n.stderr)
	}
	if st := n.cmd.ProcessState; st != nil && !st.Success() {
		n.t.Errorf("%s: flechefs exited with %v\n%s", n.name, st, n.stderr)
	}
	if strings.Contains(n.stderr.String(), "DATA RACE") {
		n.t.Errorf("%s: the race detector fired in the daemon:\n%s", n.name, n.stderr)
	}
	if isMounted(n.mnt) {
		n.t.Errorf("%s: still mounted after exit", n.name)
		exec.Command("umount", "-l", n.mnt).Run()
	}
	n.cmd = nil
}

// kill sends SIGKILL and cleans the dead mount up, as a user would.
func (n *node) kill() {
	n.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return
	}
	n.cmd.Process.Kill()
	<-n.done
	n.cmd = nil
	if isMounted(n.mnt) {
		if out, err := exec.Command("umount", "-l", n.mnt).CombinedOutput(); err != nil {
			n.t.Fatalf("umount of the dead mount: %v %s", err, out)
		}
	}
}

func (n *node) restart() {
	n.t.Helper()
	n.stop()
	n.start()
}

func (n *node) path(key string) string { return filepath.Join(n.mnt, key) }

// run runs a command and fails the test on error.
func (n *node) run(name string, args ...string) string {
	n.t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = n.mnt
	out, err := cmd.CombinedOutput()
	if err != nil {
		n.t.Fatalf("%s %s: %v\n%s\ndaemon log:\n%s", name, strings.Join(args, " "), err, out, n.stderr)
	}
	return string(out)
}

func (n *node) sh(script string) string { n.t.Helper(); return n.run("sh", "-ec", script) }

// flechefs runs a subcommand of the binary.
func (n *node) flechefs(args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (n *node) sync(timeout time.Duration) {
	n.t.Helper()
	out, err := n.flechefs("sync", "--timeout", timeout.String(), n.mnt)
	if err != nil {
		n.t.Fatalf("%s: flechefs sync: %v\n%s\ndaemon:\n%s", n.name, err, out, n.stderr)
	}
}

func (n *node) stats() tiers.Stats {
	n.t.Helper()
	b, err := os.ReadFile(filepath.Join(n.mnt, ".flechefs", "stats"))
	if err != nil {
		n.t.Fatal(err)
	}
	var st tiers.Stats
	if err := json.Unmarshal(b, &st); err != nil {
		n.t.Fatalf("stats JSON: %v\n%s", err, b)
	}
	return st
}

func (n *node) tierStats(name string) tiers.TierStats {
	n.t.Helper()
	for _, ts := range n.stats().Tiers {
		if ts.Name == name {
			return ts
		}
	}
	n.t.Fatalf("no tier %q in stats", name)
	return tiers.TierStats{}
}

func xattr(t *testing.T, path, name string) string {
	t.Helper()
	buf := make([]byte, 4096)
	sz, err := syscall.Getxattr(path, name, buf)
	if err != nil {
		t.Fatalf("getxattr %s %s: %v", path, name, err)
	}
	return string(buf[:sz])
}

func eventually(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// key returns a 64-hex key (SHA-256) for s.
func key(s string) string { return fmt.Sprintf("%x", sha256.Sum256([]byte(s))) }

// lines is bufio sugar for command output.
func lines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out
}

var _ = context.Background
