// Package mounttest runs real flechefs mounts for the integration and fault
// tests: it builds the binary once per test process (with -race), starts
// nodes as `flechefs mount --config` subprocesses with a RAM and a bbolt tier
// and optionally an SFTP tier on an sshdtest.Server, and fails the run when a
// mount or a daemon is left behind.
//
// A package that uses it calls Main from its TestMain:
//
//	func TestMain(m *testing.M) { mounttest.Main(m) }
//
// # Nodes
//
// A Node is one machine: a private directory (Dir) holding its config,
// bbolt file and spool, and a mount point (Mnt). NewNode writes the config,
// starts the daemon, waits for the mount and stops it at cleanup (SIGTERM,
// expecting a clean exit, an unmount and no report from the race detector).
// Kill is a crash: SIGKILL, then `umount -l` of the dead mount as a user
// would. Start after Stop or Kill mounts again with the same files.
//
// # Caveats
//
//   - Main sets TMPDIR for the whole test process, so t.TempDir() and the
//     daemons' temporary files land under one folder that it removes.
//   - Every helper that takes a testing.TB fails the test with t.Fatal and
//     must run on the test's goroutine; from other goroutines use the
//     error-returning forms (FlechefsE, StatsE, XattrE).
package mounttest

import (
	"bufio"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flechefs/flechefs/internal/mountinfo"
	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

var (
	bin  string // the flechefs binary built by Main
	base string // the folder every test's files live under
)

// Main builds the binary under a fresh temporary folder, runs the tests,
// fails the run when a mount under that folder or a daemon started from the
// binary is left behind, removes the folder and exits.
func Main(m *testing.M) {
	var err error
	base, err = os.MkdirTemp("", "flechefs-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("TMPDIR", base) // t.TempDir() and every child's temp files land here
	bin = filepath.Join(base, "flechefs")
	build := exec.Command("go", "build", "-race", "-o", bin, "github.com/flechefs/flechefs/cmd/flechefs")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "mounttest: building flechefs:", err)
		os.RemoveAll(base)
		os.Exit(1)
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		fmt.Fprintln(os.Stderr, "mounttest: /dev/fuse is missing: these tests need FUSE (apt-get install fuse3; modprobe fuse)")
		os.RemoveAll(base)
		os.Exit(1)
	}
	code := m.Run()
	if leaks := Leftovers(); len(leaks) > 0 {
		fmt.Fprintln(os.Stderr, "mounttest: left behind:\n  "+strings.Join(leaks, "\n  "))
		for _, p := range daemons() {
			syscall.Kill(p, syscall.SIGKILL)
		}
		for _, mp := range MountsUnder(base) {
			exec.Command("umount", "-l", mp).Run()
		}
		code = 1
	}
	if err := os.RemoveAll(base); err != nil {
		fmt.Fprintln(os.Stderr, "mounttest: removing", base, ":", err)
		code = 1
	}
	os.Exit(code)
}

// Bin is the path of the flechefs binary built by Main.
func Bin(t testing.TB) string {
	t.Helper()
	if bin == "" {
		t.Fatal("mounttest: call mounttest.Main(m) from TestMain")
	}
	return bin
}

// Base is the folder Main created; every test file lives below it.
func Base() string { return base }

// Leftovers lists mounts under Base and flechefs processes started from the
// binary.
func Leftovers() []string {
	var out []string
	for _, mp := range MountsUnder(base) {
		out = append(out, "mount "+mp)
	}
	for _, p := range daemons() {
		out = append(out, fmt.Sprintf("process %d", p))
	}
	return out
}

func daemons() []int {
	var out []int
	procs, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, p := range procs {
		if exe, err := os.Readlink(p); err == nil && exe == bin {
			var pid int
			fmt.Sscan(filepath.Base(filepath.Dir(p)), &pid)
			out = append(out, pid)
		}
	}
	return out
}

// MountsUnder lists the mount points at or below dir.
func MountsUnder(dir string) []string {
	all, _ := mountinfo.Read()
	var out []string
	for _, e := range all {
		if e.Point == dir || strings.HasPrefix(e.Point, dir+"/") {
			out = append(out, e.Point)
		}
	}
	return out
}

// IsMounted reports whether dir is a mount point.
func IsMounted(dir string) bool {
	for _, mp := range MountsUnder(dir) {
		if mp == dir {
			return true
		}
	}
	return false
}

// Opts tune a node's config and how its daemon runs. The zero value is a
// 64 MiB RAM tier over a bbolt tier, remote_timeout 5s.
type Opts struct {
	RAM           string   // RAM tier size, default "64MiB"
	BoltSize      string   // bbolt tier size, default "1GiB"
	RemoteTimeout string   // remote_timeout and the sftp tier's timeout, default "5s"
	NegativeTTL   string   // negative_ttl, default "1s"
	Extra         string   // more top-level TOML
	RemoteTier    string   // more keys in the sftp tier table
	RemoteURL     string   // the sftp tier's URL, default remote.URL()
	Wrap          []string // a command prefix for the daemon, e.g. nsenter --net=...
	Env           []string // more environment for the daemon
	NoStart       bool     // write the config only; the test calls Start
	MoreTiers     string   // TOML appended after the tiers (another remote, as [[tier]])
	Args          []string // more flags of flechefs mount, after --config
}

// Node is one machine: its own cache dir (RAM + bbolt) and optionally a remote.
type Node struct {
	T      testing.TB
	Name   string
	Dir    string // private files: config, cache, spool
	Mnt    string // the mount point
	Config string // the config file
	Bolt   string // the bbolt file
	Spool  string // the spool dir
	Remote *sshdtest.Server
	Opts   Opts

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	stderr *tiertest.SyncBuffer
}

// NewNode writes a config for a node named name (RAM + bbolt, plus an sftp
// tier on remote when it is not nil), starts it unless o.NoStart, and
// stops it at cleanup.
func NewNode(t testing.TB, name string, remote *sshdtest.Server, o Opts) *Node {
	t.Helper()
	Bin(t)
	dir := t.TempDir()
	n := &Node{T: t, Name: name, Dir: dir, Mnt: filepath.Join(dir, "mnt"),
		Config: filepath.Join(dir, "config.toml"), Bolt: filepath.Join(dir, "cache.db"),
		Spool: filepath.Join(dir, "spool"), Remote: remote, Opts: o}
	if err := os.Mkdir(n.Mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if o.RAM == "" {
		o.RAM = "64MiB"
	}
	if o.BoltSize == "" {
		o.BoltSize = "1GiB"
	}
	if o.RemoteTimeout == "" {
		o.RemoteTimeout = "5s"
	}
	if o.NegativeTTL == "" {
		o.NegativeTTL = "1s"
	}
	if o.RemoteURL == "" && remote != nil {
		o.RemoteURL = remote.URL()
	}
	cfg := fmt.Sprintf(`# %s
negative_ttl = %q
remote_timeout = %q
spool_dir = %q
%s

[[tier]]
kind = "memory"
size = %q

[[tier]]
kind = "bolt"
path = %q
size = %q
`, name, o.NegativeTTL, o.RemoteTimeout, n.Spool, o.Extra, o.RAM, n.Bolt, o.BoltSize)
	if remote != nil {
		cfg += fmt.Sprintf(`
[[tier]]
kind = "sftp"
url = %q
identity = [%q]
known_hosts = %q
agent = false
timeout = %q
%s
`, o.RemoteURL, remote.IdentityFile, remote.KnownHosts, o.RemoteTimeout, o.RemoteTier)
	}
	cfg += o.MoreTiers
	if err := os.WriteFile(n.Config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Stop)
	if !o.NoStart {
		n.Start()
	}
	return n
}

// Start runs `flechefs mount` and waits for the mount to appear.
func (n *Node) Start() {
	n.T.Helper()
	if err := n.StartE(); err != nil {
		n.T.Fatal(err)
	}
}

// StartE starts the daemon as Start does and returns, rather than fails
// the test with, the reason it did not mount: it exited (the error holds
// its log) or was not mounted after 20s (it is stopped).
func (n *Node) StartE() error {
	n.T.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		n.T.Fatalf("%s: Start of a running node", n.Name)
	}
	args := append(append([]string{}, n.Opts.Wrap...), bin, "mount", "--config", n.Config)
	args = append(append(args, n.Opts.Args...), n.Mnt)
	cmd := exec.Command(args[0], args[1:]...)
	n.stderr = &tiertest.SyncBuffer{}
	cmd.Stderr = n.stderr
	cmd.Stdout = n.stderr
	cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+n.Dir, "XDG_CONFIG_HOME="+n.Dir, "GORACE=halt_on_error=1")
	cmd.Env = append(cmd.Env, n.Opts.Env...)
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	n.cmd, n.done = cmd, done
	deadline := time.Now().Add(20 * time.Second)
	for !IsMounted(n.Mnt) {
		select {
		case <-done:
			n.cmd = nil
			return fmt.Errorf("%s: flechefs mount exited: %v\n%s", n.Name, cmd.ProcessState, n.stderr)
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-done
			n.cmd = nil
			return fmt.Errorf("%s: not mounted after 20s\n%s", n.Name, n.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// Running reports whether the daemon was started and not stopped or killed.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil
}

// PID is the daemon's process id, 0 when it is not running.
func (n *Node) PID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Stop sends SIGTERM and checks a clean exit and unmount.
func (n *Node) Stop() {
	n.T.Helper()
	n.Signal(syscall.SIGTERM)
}

// Signal sends sig (SIGTERM, SIGINT) and checks a clean exit within 30 s,
// the unmount and the absence of race reports.
func (n *Node) Signal(sig syscall.Signal) {
	n.T.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return
	}
	n.cmd.Process.Signal(sig)
	select {
	case <-n.done:
	case <-time.After(30 * time.Second):
		n.cmd.Process.Kill()
		<-n.done
		n.T.Errorf("%s: flechefs did not exit 30s after %v\n%s", n.Name, sig, n.stderr)
	}
	if st := n.cmd.ProcessState; st != nil && !st.Success() {
		n.T.Errorf("%s: flechefs exited with %v\n%s", n.Name, st, n.stderr)
	}
	if strings.Contains(n.stderr.String(), "DATA RACE") {
		n.T.Errorf("%s: the race detector fired in the daemon:\n%s", n.Name, n.stderr)
	}
	if IsMounted(n.Mnt) {
		n.T.Errorf("%s: still mounted after exit", n.Name)
		exec.Command("umount", "-l", n.Mnt).Run()
	}
	n.cmd = nil
}

// Kill sends SIGKILL and cleans the dead mount up (umount -l), as a user
// would. The daemon's log so far stays in Stderr until the next Start.
func (n *Node) Kill() {
	n.T.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return
	}
	n.cmd.Process.Kill()
	<-n.done
	n.cmd = nil
	if strings.Contains(n.stderr.String(), "DATA RACE") {
		n.T.Errorf("%s: the race detector fired in the daemon:\n%s", n.Name, n.stderr)
	}
	if IsMounted(n.Mnt) {
		if out, err := exec.Command("umount", "-l", n.Mnt).CombinedOutput(); err != nil {
			n.T.Fatalf("umount of the dead mount: %v %s", err, out)
		}
	}
}

// Restart stops (SIGTERM) and starts the daemon.
func (n *Node) Restart() {
	n.T.Helper()
	n.Stop()
	n.Start()
}

// Stderr is the daemon's output (stderr and stdout) since the last Start.
func (n *Node) Stderr() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stderr == nil {
		return ""
	}
	return n.stderr.String()
}

// Path is the entry key's path on the mount.
func (n *Node) Path(key string) string { return filepath.Join(n.Mnt, key) }

// Run runs a command in Mnt and fails the test on error.
func (n *Node) Run(name string, args ...string) string {
	n.T.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = n.Mnt
	out, err := cmd.CombinedOutput()
	if err != nil {
		n.T.Fatalf("%s %s: %v\n%s\ndaemon log:\n%s", name, strings.Join(args, " "), err, out, n.Stderr())
	}
	return string(out)
}

// Sh runs a sh -ec script in Mnt and fails the test on error.
func (n *Node) Sh(script string) string { n.T.Helper(); return n.Run("sh", "-ec", script) }

// Flechefs runs a subcommand of the binary (in the root network namespace)
// and returns its combined output.
func (n *Node) Flechefs(args ...string) (string, error) { return n.FlechefsStdin("", args...) }

// FlechefsStdin is Flechefs with stdin as the command's standard input.
func (n *Node) FlechefsStdin(stdin string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Sync runs `flechefs sync --timeout` on the mount and fails the test on error.
func (n *Node) Sync(timeout time.Duration) {
	n.T.Helper()
	if err := n.SyncE(timeout); err != nil {
		n.T.Fatalf("%s: %v\ndaemon:\n%s", n.Name, err, n.Stderr())
	}
}

// SyncE is Sync returning the error.
func (n *Node) SyncE(timeout time.Duration) error {
	out, err := n.Flechefs("sync", "--timeout", timeout.String(), n.Mnt)
	if err != nil {
		return fmt.Errorf("flechefs sync: %v\n%s", err, out)
	}
	return nil
}

// Status runs `flechefs status` and fails the test on error.
func (n *Node) Status() string {
	n.T.Helper()
	out, err := n.Flechefs("status", n.Mnt)
	if err != nil {
		n.T.Fatalf("%s: flechefs status: %v\n%s", n.Name, err, out)
	}
	return out
}

// Stats reads .flechefs/stats.
func (n *Node) Stats() tiers.Stats {
	n.T.Helper()
	st, err := n.StatsE()
	if err != nil {
		n.T.Fatal(err)
	}
	return st
}

// StatsE is Stats returning the error.
func (n *Node) StatsE() (tiers.Stats, error) {
	var st tiers.Stats
	b, err := os.ReadFile(filepath.Join(n.Mnt, ".flechefs", "stats"))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("stats JSON: %v\n%s", err, b)
	}
	return st, nil
}

// TierStats returns the stats of the tier called name ("ram", "bolt", "sftp").
func (n *Node) TierStats(name string) tiers.TierStats {
	n.T.Helper()
	for _, ts := range n.Stats().Tiers {
		if ts.Name == name {
			return ts
		}
	}
	n.T.Fatalf("no tier %q in stats", name)
	return tiers.TierStats{}
}

// Xattr returns the extended attribute name of the entry key.
func (n *Node) Xattr(key, name string) string {
	n.T.Helper()
	return Xattr(n.T, n.Path(key), name)
}

// Xattr returns the extended attribute name of path, failing the test on error.
func Xattr(t testing.TB, path, name string) string {
	t.Helper()
	v, err := XattrE(path, name)
	if err != nil {
		t.Fatalf("getxattr %s %s: %v", path, name, err)
	}
	return v
}

// XattrE returns the extended attribute name of path.
func XattrE(path, name string) (string, error) {
	buf := make([]byte, 4096)
	// A FUSE request the kernel interrupts (the Go runtime's preemption
	// signal arrives while it waits) fails with EINTR; the os package
	// retries such calls, and syscall.Getxattr does not.
	sz, err := syscall.Getxattr(path, name, buf)
	for err == syscall.EINTR {
		sz, err = syscall.Getxattr(path, name, buf)
	}
	if err != nil {
		return "", err
	}
	return string(buf[:sz]), nil
}

// Eventually polls cond every 20 ms and fails the test after d.
func Eventually(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Key returns a 64-hex key (SHA-256) for s.
func Key(s string) string { return fmt.Sprintf("%x", sha256.Sum256([]byte(s))) }

// Sum returns the hex SHA-256 of b.
func Sum(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

// Lines splits command output into its non-empty, trimmed lines.
func Lines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// VisibleWithinTTL checks that a name missed at missed, and published
// since, is found by every stat that starts once the negative TTL has run
// out (with a kernel tick of slack). It asserts the order of each stat
// against the TTL, not how fast the machine runs them.
func VisibleWithinTTL(t testing.TB, missed time.Time, ttl time.Duration, p string) {
	t.Helper()
	expired := missed.Add(ttl + 50*time.Millisecond)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		start := time.Now()
		_, err := os.Stat(p)
		if err == nil {
			return
		}
		if !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		if start.After(expired) {
			t.Fatalf("a stat %v after the miss, past the negative TTL %v, still misses", start.Sub(missed), ttl)
		}
		if start.After(deadline) {
			t.Fatal("never visible")
		}
	}
}
