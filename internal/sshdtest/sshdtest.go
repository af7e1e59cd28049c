// Package sshdtest starts a real OpenSSH sshd on 127.0.0.1 for tests and
// benchmarks of the SFTP tier.
//
// The server gets fresh ed25519 host and user keys, an authorized_keys file,
// a known_hosts file naming "[127.0.0.1]:PORT", and serves SFTP with
// internal-sftp. Everything lives under one directory; the served directory
// is Server.Dir, a plain local directory that tests may inspect and damage
// directly.
//
// # Processes
//
// sshd forks a monitor per connection, which forks the session process that
// runs internal-sftp; each child calls setsid, so neither killing the
// listener nor killing its process group drops open connections. Kill and
// Stop therefore SIGSTOP the listener and all its descendants (found by
// parent pid in /proc, scanning until no new one appears), then SIGKILL
// every process they stopped, including one whose parent exited meanwhile
// and which is no longer below the listener. Freeze stops the same way and
// Thaw continues every process Freeze stopped.
//
// # Requirements
//
// OpenSSH's sshd at /usr/sbin/sshd (or on PATH). Start fails the test when it
// is missing; it never skips. As root the daemon runs normally; as another
// user it can only log in as that user, which is all the tests need.
package sshdtest

import (
	"bytes"
	"cmp"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Server is a running (or stopped) sshd.
type Server struct {
	Addr         string // "127.0.0.1:PORT", or Options.ListenAddr:PORT
	Port         int
	User         string // the current user, who may log in with IdentityFile
	Dir          string // the remote root: an absolute local directory served over SFTP
	IdentityFile string // the user's private key, OpenSSH format, mode 0600
	KnownHosts   string // known_hosts naming [127.0.0.1]:PORT with the host key
	HostKeyFile  string // the host's private key
	ConfigFile   string // sshd_config
	LogFile      string // sshd's stderr (-e), appended across restarts

	sshd    string // absolute path of the sshd binary
	base    string
	opt     Options
	signer  ssh.Signer
	hostPub ssh.PublicKey

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{} // closed when cmd has been waited for
	frozen map[int]proc  // processes Freeze stopped
}

// Options run the server somewhere else than 127.0.0.1 of the test's own
// network namespace, e.g. inside a namespace made with ip netns:
//
//	sshdtest.StartWith(t, sshdtest.Options{
//		ListenAddr: "10.213.0.1",
//		Wrap:       []string{"ip", "netns", "exec", "srv"},
//		Dial:       dialInNamespace, // the readiness probe's dialer
//	})
type Options struct {
	// ListenAddr is the IP address sshd listens on (default 127.0.0.1);
	// Addr, URL and KnownHosts name it.
	ListenAddr string
	// Wrap is a command prefix that runs sshd; it must exec sshd so that
	// the process started is sshd itself.
	Wrap []string
	// Dial connects the readiness probe (default net.Dial).
	Dial func(network, addr string) (net.Conn, error)
	// MaxSessions is sshd's limit of sessions (channels) per connection
	// (default 200).
	MaxSessions int
	// Forwarding lets clients open TCP connections through the server: a
	// jump host (ProxyJump). Its log (LogFile) then says, at DEBUG1, every
	// connection forwarded ("server_request_direct_tcpip").
	Forwarding bool
}

// Start starts an sshd in a new t.TempDir and stops it at cleanup. It fails
// the test (never skips) when sshd is not installed or does not come up.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith is Start with Options.
func StartWith(t testing.TB, o Options) *Server {
	t.Helper()
	s, err := StartWithE(t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// StartE starts an sshd with its files under dir (created if missing). The
// caller must call Stop.
func StartE(dir string) (*Server, error) { return StartWithE(dir, Options{}) }

// StartWithE is StartE with Options.
func StartWithE(dir string, o Options) (*Server, error) {
	if o.ListenAddr == "" {
		o.ListenAddr = "127.0.0.1"
	}
	sshd, err := findSSHD()
	if err != nil {
		return nil, err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	u, err := user.Current()
	if err != nil {
		return nil, fmt.Errorf("sshdtest: current user: %w", err)
	}
	s := &Server{
		User:         u.Username,
		Dir:          filepath.Join(dir, "remote"),
		IdentityFile: filepath.Join(dir, "etc", "id_ed25519"),
		KnownHosts:   filepath.Join(dir, "etc", "known_hosts"),
		HostKeyFile:  filepath.Join(dir, "etc", "ssh_host_ed25519_key"),
		ConfigFile:   filepath.Join(dir, "etc", "sshd_config"),
		LogFile:      filepath.Join(dir, "sshd.log"),
		sshd:         sshd,
		base:         dir,
		opt:          o,
	}
	for _, d := range []string{s.Dir, filepath.Join(dir, "etc")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("sshdtest: %w", err)
		}
	}
	// sshd wants its privilege separation directory even when unprivileged.
	if os.Geteuid() == 0 {
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			return nil, fmt.Errorf("sshdtest: %w", err)
		}
	}
	if err := s.writeKeys(); err != nil {
		return nil, err
	}
	// The port is free when we look; another process may take it before
	// sshd binds, so try a few.
	var lastErr error
	for range 5 {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s.Port = port
		s.Addr = net.JoinHostPort(o.ListenAddr, strconv.Itoa(port))
		if err := s.writeConfig(); err != nil {
			return nil, err
		}
		if lastErr = s.start(); lastErr == nil {
			return s, nil
		}
	}
	return nil, lastErr
}

func findSSHD() (string, error) {
	for _, p := range []string{"/usr/sbin/sshd", "/usr/local/sbin/sshd"} {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	if p, err := exec.LookPath("sshd"); err == nil {
		return filepath.Abs(p)
	}
	return "", errors.New("sshdtest: sshd not found: apt-get install openssh-server (the SFTP tests need a real OpenSSH sshd)")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("sshdtest: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func writeKey(path string, key ed25519.PrivateKey, comment string) error {
	blk, err := ssh.MarshalPrivateKey(key, comment)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(blk), 0o600); err != nil {
		return err
	}
	return os.Chmod(path, 0o600) // WriteFile keeps the mode of an existing file
}

func (s *Server) writeKeys() error {
	_, hostKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	_, userKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	if err := writeKey(s.HostKeyFile, hostKey, "sshdtest host"); err != nil {
		return fmt.Errorf("sshdtest: host key: %w", err)
	}
	if err := writeKey(s.IdentityFile, userKey, "sshdtest user"); err != nil {
		return fmt.Errorf("sshdtest: user key: %w", err)
	}
	if s.signer, err = ssh.NewSignerFromKey(userKey); err != nil {
		return err
	}
	hs, err := ssh.NewSignerFromKey(hostKey)
	if err != nil {
		return err
	}
	s.hostPub = hs.PublicKey()
	if err := os.WriteFile(s.IdentityFile+".pub", ssh.MarshalAuthorizedKey(s.signer.PublicKey()), 0o644); err != nil {
		return err
	}
	return os.WriteFile(s.authorizedKeys(), ssh.MarshalAuthorizedKey(s.signer.PublicKey()), 0o600)
}

func (s *Server) authorizedKeys() string { return filepath.Join(s.base, "etc", "authorized_keys") }
func (s *Server) pidFile() string        { return filepath.Join(s.base, "sshd.pid") }

func (s *Server) writeConfig() error {
	forwarding, logLevel := "no", "ERROR"
	if s.opt.Forwarding {
		forwarding, logLevel = "yes", "DEBUG1"
	}
	line := knownhosts.Line([]string{knownhosts.Normalize(s.Addr)}, s.hostPub)
	if err := os.WriteFile(s.KnownHosts, []byte(line+"\n"), 0o644); err != nil {
		return err
	}
	cfg := fmt.Sprintf(`# written by sshdtest
ListenAddress %s
Port %d
HostKey %s
PidFile %s
AuthorizedKeysFile %s
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
AllowTcpForwarding %s
X11Forwarding no
LogLevel %s
LoginGraceTime 30
MaxStartups 200
MaxSessions %d
MaxAuthTries 10
Subsystem sftp internal-sftp
`, s.opt.ListenAddr, s.Port, s.HostKeyFile, s.pidFile(), s.authorizedKeys(), forwarding, logLevel, cmp.Or(s.opt.MaxSessions, 200))
	// OpenSSH 9.8+ penalises sources whose connections crash or fail; the
	// fault tests kill sessions on purpose. Older versions reject the option.
	withPenalties := cfg + "PerSourcePenalties no\n"
	if err := os.WriteFile(s.ConfigFile, []byte(withPenalties), 0o600); err != nil {
		return err
	}
	if out, err := exec.Command(s.sshd, "-t", "-f", s.ConfigFile).CombinedOutput(); err != nil {
		if !bytes.Contains(out, []byte("PerSourcePenalties")) {
			return fmt.Errorf("sshdtest: sshd -t rejects the config: %v: %s", err, bytes.TrimSpace(out))
		}
		return os.WriteFile(s.ConfigFile, []byte(cfg), 0o600)
	}
	return nil
}

// URL returns "sftp://USER@ADDR:PORT/DIR" (ADDR is 127.0.0.1 by default).
func (s *Server) URL() string {
	return fmt.Sprintf("sftp://%s@%s%s", s.User, s.Addr, filepath.ToSlash(s.Dir))
}

// ClientConfig returns an ssh client configuration that logs in as User with
// IdentityFile and checks the host key against KnownHosts.
func (s *Server) ClientConfig() *ssh.ClientConfig {
	return &ssh.ClientConfig{
		User:              s.User,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(s.signer)},
		HostKeyCallback:   ssh.FixedHostKey(s.hostPub),
		HostKeyAlgorithms: []string{s.hostPub.Type()},
		Timeout:           5 * time.Second,
	}
}

// Restart starts sshd again on the same port with the same keys, after Kill
// or Stop. It is a no-op when the server is running.
func (s *Server) Restart() error {
	s.mu.Lock()
	running := s.cmd != nil
	s.mu.Unlock()
	if running {
		return nil
	}
	var err error
	// The old listener's port may take a moment to be released.
	for range 20 {
		if err = s.start(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

func (s *Server) start() error {
	logf, err := os.OpenFile(s.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	args := append(append([]string{}, s.opt.Wrap...), s.sshd, "-D", "-e", "-f", s.ConfigFile)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("sshdtest: start %s: %w", s.sshd, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()

	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-done:
			s.mu.Lock()
			s.cmd = nil
			s.mu.Unlock()
			return fmt.Errorf("sshdtest: sshd exited at start (%v); log %s:\n%s", cmd.ProcessState, s.LogFile, s.tailLog())
		default:
		}
		if err = s.probe(); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			s.Kill()
			return fmt.Errorf("sshdtest: sshd on %s not ready: %v; log %s:\n%s", s.Addr, err, s.LogFile, s.tailLog())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// probe does a full SSH handshake and authentication.
func (s *Server) probe() error {
	if s.opt.Dial == nil {
		c, err := ssh.Dial("tcp", s.Addr, s.ClientConfig())
		if err != nil {
			return err
		}
		return c.Close()
	}
	nc, err := s.opt.Dial("tcp", s.Addr)
	if err != nil {
		return err
	}
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	sc, chans, reqs, err := ssh.NewClientConn(nc, s.Addr, s.ClientConfig())
	if err != nil {
		nc.Close()
		return err
	}
	return ssh.NewClient(sc, chans, reqs).Close()
}

func (s *Server) tailLog() string {
	b, _ := os.ReadFile(s.LogFile)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// PID returns the listener's process id, or 0 when stopped.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Freeze SIGSTOPs the listener and all its children: connections stay open
// but the server answers nothing, as with a hung host or a lost route. Thaw
// undoes it; Kill and Stop work on a frozen server.
func (s *Server) Freeze() {
	pid := s.PID()
	if pid == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.frozen == nil {
		s.frozen = map[int]proc{}
	}
	stopTree(pid, s.frozen)
}

// Thaw resumes a frozen server.
func (s *Server) Thaw() {
	pid := s.PID()
	if pid == 0 {
		return
	}
	s.mu.Lock()
	frozen := s.frozen
	s.frozen = nil
	s.mu.Unlock()
	// Also the processes stopped while their parent was exiting: they are
	// children of init now and no longer below the listener.
	for _, p := range frozen {
		if p.same() {
			syscall.Kill(p.pid, syscall.SIGCONT)
		}
	}
	for _, p := range descendants(pid) {
		syscall.Kill(p.pid, syscall.SIGCONT)
	}
	syscall.Kill(pid, syscall.SIGCONT)
}

// Kill SIGKILLs the listener and every process it forked (one monitor and one
// session process per connection), as a crash or power loss would: open
// connections drop at once. Restart brings the server back.
func (s *Server) Kill() { s.stop() }

// Stop SIGKILLs every process the listener forked, so that open connections
// drop, then the listener, and waits for it. Restart brings the server back.
// It is Kill: the listener cannot be let run again to exit on SIGTERM (see
// stop).
func (s *Server) Stop() { s.stop() }

func (s *Server) stop() {
	s.mu.Lock()
	cmd, done, seen := s.cmd, s.done, s.frozen
	s.cmd, s.frozen = nil, nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	pid := cmd.Process.Pid
	if seen == nil {
		seen = map[int]proc{}
	}
	// Stop the whole tree first, so that nothing forks or exits from under
	// us, then kill every process that was ever in it.
	stopTree(pid, seen)
	for _, p := range seen {
		if p.same() {
			syscall.Kill(p.pid, syscall.SIGKILL)
		}
	}
	// The listener too is killed while stopped, never continued: stopped
	// between accept(2) and fork(2), it would fork a session for that
	// connection once continued, after the scans, and the session would
	// serve the client after Stop returned.
	syscall.Kill(pid, syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		syscall.Kill(pid, syscall.SIGKILL)
		<-done
	}
}

// stopTree SIGSTOPs pid and every process below it, scanning again until no
// new one shows up, and adds them to seen. A process stays in seen when its
// parent exits and it moves to init: only seen still names it.
//
// A signal is delivered asynchronously: a process in the middle of fork(2)
// stops only once its child exists, possibly after a scan missed the
// child, which would then survive Stop and keep serving its connection.
// So each round waits until the processes it signalled have stopped.
func stopTree(pid int, seen map[int]proc) {
	syscall.Kill(pid, syscall.SIGSTOP)
	waitStopped(pid)
	for range 10 {
		var added []int
		for _, p := range descendants(pid) {
			if _, ok := seen[p.pid]; !ok {
				seen[p.pid] = p
				syscall.Kill(p.pid, syscall.SIGSTOP)
				added = append(added, p.pid)
			}
		}
		if len(added) == 0 {
			return
		}
		for _, p := range added {
			waitStopped(p)
		}
	}
}

// waitStopped waits up to a second until pid is stopped or gone.
func waitStopped(pid int) {
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		st, ok := readStat(pid)
		if !ok || st.state == "T" || st.state == "t" || st.state == "Z" || st.state == "X" {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// proc names a process across pid reuse.
type proc struct {
	pid   int
	start uint64 // start time in clock ticks after boot
}

// same reports whether p still runs (or is stopped) as the same process.
func (p proc) same() bool {
	st, ok := readStat(p.pid)
	return ok && st.start == p.start && st.state != "Z"
}

type procStat struct {
	state string
	ppid  int
	start uint64
}

func readStat(pid int) (procStat, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, false
	}
	return parseStat(b)
}

// descendants returns every process below pid, found by their parent ids in
// /proc/*/stat.
func descendants(pid int) []proc {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]proc{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, ok := readStat(p); ok {
			children[st.ppid] = append(children[st.ppid], proc{p, st.start})
		}
	}
	var out []proc
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c.pid)
		}
	}
	return out
}

// parseStat reads state, parent pid and start time from /proc/PID/stat. The
// command name in parentheses may contain spaces and parentheses; the other
// fields follow the last ')', starting with field 3 (state).
func parseStat(b []byte) (procStat, bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return procStat{}, false
	}
	ppid, err1 := strconv.Atoi(f[1])
	start, err2 := strconv.ParseUint(f[19], 10, 64) // field 22
	return procStat{state: f[0], ppid: ppid, start: start}, err1 == nil && err2 == nil
}

// Children returns the pids of the processes sshd forked for connections.
func (s *Server) Children() []int {
	pid := s.PID()
	if pid == 0 {
		return nil
	}
	var pids []int
	for _, p := range descendants(pid) {
		pids = append(pids, p.pid)
	}
	return pids
}
