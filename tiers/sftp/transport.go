package sftp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// A transport carries the SFTP sessions of one connection: Go's SSH client
// over one TCP connection (the default, TransportGo), or the system's ssh
// client, one process per session (TransportSSH), which reads the user's
// ~/.ssh/config: ProxyJump, host aliases, certificates, Kerberos, hardware
// keys, ControlMaster. SFTP runs over either's pipes (pkg/sftp's
// NewClientPipe).
type transport interface {
	// session starts an SFTP subsystem and returns its output and input.
	session() (io.Reader, io.WriteCloser, error)
	// ping makes one round trip to the server through c.
	ping(c *conn) error
	// dialed ends the dial's time bound.
	dialed()
	// close ends every session; wait returns once the transport is gone,
	// with why.
	close()
	wait() error
}

// goTransport is an SSH connection of golang.org/x/crypto/ssh.
type goTransport struct {
	client *ssh.Client
	nc     interface{ SetDeadline(time.Time) error }
}

func (g *goTransport) session() (io.Reader, io.WriteCloser, error) {
	s, err := g.client.NewSession()
	if err != nil {
		return nil, nil, err
	}
	w, err := s.StdinPipe()
	if err != nil {
		return nil, nil, err
	}
	r, err := s.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := s.RequestSubsystem("sftp"); err != nil {
		return nil, nil, err
	}
	return r, w, nil
}

func (g *goTransport) ping(*conn) error {
	_, _, err := g.client.SendRequest("keepalive@openssh.com", true, nil)
	return err
}

func (g *goTransport) dialed()     { g.nc.SetDeadline(time.Time{}) }
func (g *goTransport) close()      { g.client.Close() }
func (g *goTransport) wait() error { return g.client.Wait() }

// execTransport runs `ssh [options] HOST -s sftp` once per session. The
// connection lives as long as its first process: when that one exits, the
// transport is gone (its lanes' processes are stopped with it).
type execTransport struct {
	t     *Tier
	timer *time.Timer // stops the first process if the dial outlives Timeout

	mu    sync.Mutex
	procs []*exec.Cmd
	first *sshProc
}

// sshProc is one ssh process: its exit, and what it said on stderr.
type sshProc struct {
	cmd    *exec.Cmd
	stderr *tailBuffer
	done   chan struct{} // closed once it has exited
	err    error         // its exit, set before done is closed
}

func newExecTransport(t *Tier) *execTransport {
	e := &execTransport{t: t}
	e.timer = time.AfterFunc(t.opt.Timeout, func() { e.close() })
	return e
}

// sshArgs are the ssh client's arguments for one SFTP session. Options the
// user's ssh_config may set (ConnectTimeout, ServerAlive*) are set here
// only when flechefs needs them: a dead peer must end the process, and a
// password prompt would hang (BatchMode).
func (t *Tier) sshArgs() []string {
	secs := strconv.Itoa(max(1, int(t.opt.Timeout.Round(time.Second)/time.Second)))
	args := []string{"-x", "-a", "-T",
		"-o", "BatchMode=yes",
		"-o", "ConnectTimeout=" + secs,
		"-o", "ServerAliveInterval=" + strconv.Itoa(int(keepaliveEvery/time.Second)),
		"-o", "ServerAliveCountMax=3",
	}
	if t.opt.SSHConfig != "" {
		args = append(args, "-F", t.opt.SSHConfig)
	}
	if len(t.opt.Ciphers) > 0 {
		args = append(args, "-c", strings.Join(t.opt.Ciphers, ","))
	}
	for _, f := range t.opt.IdentityFiles {
		args = append(args, "-i", f)
	}
	if t.opt.KnownHosts != "" && t.opt.knownHostsSet {
		args = append(args, "-o", "UserKnownHostsFile="+t.opt.KnownHosts)
	}
	if t.rem.portSet {
		args = append(args, "-p", strconv.Itoa(t.rem.port))
	}
	if t.rem.userSet {
		args = append(args, "-l", t.rem.user)
	}
	return append(args, "-s", "--", t.rem.host, "sftp")
}

func (e *execTransport) session() (io.Reader, io.WriteCloser, error) {
	cmd := exec.Command(e.t.opt.SSHCommand, e.t.sshArgs()...)
	w, err := cmd.StdinPipe()
	if err != nil {
		return nil, nil, err
	}
	r, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	p := &sshProc{cmd: cmd, stderr: &tailBuffer{max: 4 << 10}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	// Its own process group: a terminal's ^C to the daemon does not reach it
	// (the daemon stops it when it closes).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("running %s: %w", e.t.opt.SSHCommand, err)
	}
	e.procs = append(e.procs, cmd)
	if e.first == nil {
		e.first = p
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return r, w, nil
}

// ping asks the server for the real path of ".": the one SFTP request
// every server answers at once.
func (e *execTransport) ping(c *conn) error {
	_, err := c.sftp.RealPath(".")
	return err
}

func (e *execTransport) dialed() { e.timer.Stop() }

func (e *execTransport) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, cmd := range e.procs {
		if cmd.Process != nil {
			cmd.Process.Signal(syscall.SIGTERM)
		}
	}
}

func (e *execTransport) wait() error {
	e.mu.Lock()
	p := e.first
	e.mu.Unlock()
	if p == nil {
		return errors.New("no ssh process")
	}
	<-p.done
	return p.exitError()
}

// exitError says why the process exited: ssh's last words, which name the
// reason (a host key, a refused login, an unknown host alias).
func (p *sshProc) exitError() error {
	msg := strings.TrimSpace(p.stderr.String())
	if msg == "" {
		return fmt.Errorf("ssh exited: %v", p.err)
	}
	return fmt.Errorf("ssh: %s (%v)", msg, p.err)
}

// failure explains a dial that failed at err: when the first ssh process
// exited (it usually has, once its pipe closed), its own words and the
// stage they mean.
func (e *execTransport) failure(err error, stage *string) error {
	e.mu.Lock()
	p := e.first
	e.mu.Unlock()
	if p == nil {
		return err
	}
	select {
	case <-p.done:
	case <-time.After(time.Second):
		return err
	}
	msg := p.stderr.String()
	switch {
	case strings.Contains(msg, "Host key verification failed"),
		strings.Contains(msg, "REMOTE HOST IDENTIFICATION HAS CHANGED"),
		strings.Contains(msg, "host key is known"):
		*stage = "host key"
	case strings.Contains(msg, "Permission denied"):
		*stage = "login"
	case strings.Contains(msg, "Bad configuration option"), strings.Contains(msg, "bad configuration option"),
		strings.Contains(msg, "Unsupported option"), strings.Contains(msg, "Can't open user config file"),
		strings.Contains(msg, "no argument after keyword"):
		*stage = "ssh config"
	}
	return p.exitError()
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.TrimSpace(t.b))
}
