package sftp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	xsftp "github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/flechefs/flechefs/tiers"
)

// Reconnect backoff after a failed dial: minBackoff doubling up to
// maxBackoff, each wait drawn within ±backoffJitter of it so that the mounts
// of a server that restarts do not all dial in step. While the server stays
// unreachable the tier dials again in the background after each backoff, so
// a server that comes back is found within maxBackoffWait whether or not
// anyone asks; callers meanwhile fail at once with the last dial error.
const (
	minBackoff     = 250 * time.Millisecond
	maxBackoff     = 5 * time.Second
	backoffJitter  = 0.2
	maxBackoffWait = maxBackoff + maxBackoff/5
	// warnEvery: while an outage lasts, the same dial failure is logged
	// at warning level at most this often (a changed error at once).
	warnEvery = time.Minute
	// keepaliveEvery: an idle connection sends keepalive@openssh.com this
	// often (or every Timeout if that is longer) to find a dead peer.
	keepaliveEvery = 15 * time.Second
	// staleTemp: temp files in .flechefs/tmp untouched this long belong to
	// writers that died; the first connection sweeps them.
	staleTemp = time.Hour
	// settledConn: a connection lost after living this long is dialed
	// again at once, in the background (lostConn); one lost younger waits
	// for a caller, so that a server that accepts and then drops
	// connections is not dialed in a loop.
	settledConn = 30 * time.Second
)

// conn is one SSH connection with its SFTP session. It never comes back to
// life: once dead, Tier.conn dials a new one.
type conn struct {
	t    *Tier
	tr   transport // the SSH connection (transport.go)
	sftp *xsftp.Client
	// packet is the SFTP payload size in use on this connection.
	packet int

	dead     chan struct{} // closed by kill
	deadOnce sync.Once
	deadErr  error // why it died; set before dead is closed

	lastRecv atomic.Int64 // unix nanos of the last bytes from the server

	lanes lanePool      // more SFTP sessions for large transfers (lanes.go)
	rtt   time.Duration // one round trip, measured at the dial
	born  time.Time     // when the dial ended
}

func (c *conn) ok() bool {
	select {
	case <-c.dead:
		return false
	default:
		return true
	}
}

// cause says why the connection died.
func (c *conn) cause() error {
	<-c.dead
	return c.deadErr
}

// kill marks the connection dead and closes it, which fails every request
// waiting on it.
func (c *conn) kill(err error) {
	c.deadOnce.Do(func() {
		if err == nil {
			err = errors.New("connection closed")
		}
		c.deadErr = err
		close(c.dead)
		// The SSH connection first: closing SFTP waits for its reader,
		// which only ends when the connection does.
		c.tr.close()
		if c.sftp != nil {
			go c.sftp.Close()
		}
		c.closeLanes()
		if !errors.Is(err, tiers.ErrClosed) {
			c.t.log.Warn("sftp connection lost", "tier", c.t.opt.Name, "addr", c.t.rem.addr, "err", err)
			go c.t.lostConn(c)
		}
	})
}

// lostConn dials again at once, in the background, after the current
// connection c was lost, so that the next caller finds a connection (or
// an outage already known, which fails it at once) instead of waiting out
// a dial: a whole Timeout on a frozen host. Not after a connection younger
// than t.settled: its caller dials, as before, and an outage's backoff
// takes over from there.
func (t *Tier) lostConn(c *conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || t.cur != c || t.dialing != nil || time.Since(c.born) < t.settled {
		return
	}
	t.startDial()
}

func (c *conn) touch() { c.lastRecv.Store(time.Now().UnixNano()) }

// touchReader notes every read of server data as a sign of life.
type touchReader struct {
	r io.Reader
	c *conn
}

func (r touchReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.c.touch()
	}
	return n, err
}

// watch is the watchdog of one operation: if the server sends nothing for
// Timeout while the operation waits on it, the connection is killed, which
// makes the operation (and every other one on the connection) fail at once.
// While the operation waits on its caller (pause), the clock does not run.
type watch struct {
	c       *conn
	timeout time.Duration
	mark    atomic.Int64 // unix nanos of start or last resume
	paused  atomic.Bool
	stopped atomic.Bool
	mu      sync.Mutex // orders the timer's creation before its use in check
	timer   *time.Timer
}

func (c *conn) watch() *watch {
	w := &watch{c: c, timeout: c.t.opt.Timeout}
	w.mark.Store(time.Now().UnixNano())
	w.mu.Lock()
	w.timer = time.AfterFunc(w.timeout, w.check)
	w.mu.Unlock()
	return w
}

func (w *watch) check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped.Load() || !w.c.ok() {
		return
	}
	if w.paused.Load() {
		w.timer.Reset(w.timeout)
		return
	}
	last := max(w.mark.Load(), w.c.lastRecv.Load())
	idle := time.Duration(time.Now().UnixNano() - last)
	if idle >= w.timeout {
		w.c.kill(fmt.Errorf("no answer from %s for %v", w.c.t.rem.addr, w.timeout.Round(time.Millisecond)))
		return
	}
	w.timer.Reset(w.timeout - idle)
}

func (w *watch) pause() { w.paused.Store(true) }

func (w *watch) resume() {
	w.mark.Store(time.Now().UnixNano())
	w.paused.Store(false)
}

func (w *watch) stop() {
	w.stopped.Store(true)
	w.mu.Lock()
	w.timer.Stop()
	w.mu.Unlock()
}

// dialAttempt is one dial in progress; err is set before done is closed.
type dialAttempt struct {
	done chan struct{}
	c    *conn
	err  error
}

// conn returns a live connection, dialing if there is none. Concurrent
// callers share one dial. During an outage (the last dial failed) callers
// never wait on a dial: they fail at once with its error while the tier
// dials again in the background (reprobe). The first dial after a lost
// connection is waited for, so a server restart costs its callers one dial;
// after a connection that had lived settledConn, that dial starts when the
// loss is seen (lostConn), not when the next caller comes.
func (t *Tier) conn(ctx context.Context) (*conn, error) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, tiers.ErrClosed
	}
	if c := t.cur; c != nil && c.ok() {
		t.mu.Unlock()
		return c, nil
	}
	a := t.dialing
	if err := t.dialErr; err != nil {
		when := "trying again now"
		if a == nil {
			if wait := time.Until(t.retryAt); wait > 0 {
				when = "next attempt in " + wait.Round(time.Millisecond).String()
			} else {
				t.startDial() // the timer has not run yet
			}
		}
		t.mu.Unlock()
		return nil, fmt.Errorf("%w (%s)", err, when)
	}
	if a == nil {
		a = t.startDial()
	}
	t.mu.Unlock()
	select {
	case <-a.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	// A connection that died right after the dial is returned all the
	// same: the operation fails, and the next one dials again.
	return a.c, a.err
}

// startDial starts a dial; t.mu is held and no dial runs.
func (t *Tier) startDial() *dialAttempt {
	a := &dialAttempt{done: make(chan struct{})}
	t.dialing = a
	go t.redial(a)
	return a
}

// reprobe runs when a backoff ends: it dials again unless the tier is
// closed, connected or dialing already.
func (t *Tier) reprobe() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || t.dialing != nil || (t.cur != nil && t.cur.ok()) {
		return
	}
	t.startDial()
}

func (t *Tier) redial(a *dialAttempt) {
	c, err := t.dial()
	t.mu.Lock()
	defer t.mu.Unlock()
	defer close(a.done)
	t.dialing = nil
	if err == nil && t.closed {
		c.kill(tiers.ErrClosed)
		err = tiers.ErrClosed
	}
	if err != nil {
		if !errors.Is(err, tiers.ErrClosed) {
			err = unavailable(t.rem.addr, err)
		}
		a.err = err
		wait := t.backoff.NextBackOff()
		t.retryAt = time.Now().Add(wait)
		t.dialErr = err
		t.failedDials++
		if !t.closed {
			t.retry = time.AfterFunc(wait, t.reprobe)
			t.warnDial(err, wait)
		}
		return
	}
	a.c = c
	c.born = time.Now()
	if t.failedDials > 0 {
		t.log.Info("sftp server reachable again", "tier", t.opt.Name, "addr", t.rem.addr, "failed_dials", t.failedDials)
	}
	t.backoff.Reset()
	t.cur, t.dialErr, t.failedDials, t.warned = c, nil, 0, ""
	t.dials++
	t.log.Info("sftp connected", "tier", t.opt.Name, "addr", t.rem.addr, "root", t.rem.root, "packet", c.packet, "rtt", c.rtt, "connections", t.dials)
	orphans := t.orphans
	t.orphans = nil
	sweep := !t.swept && !t.opt.ReadOnly
	t.swept = true
	go t.cleanup(c, orphans, sweep)
}

// warnDial logs a failed dial: the first of an outage, a changed error, and
// then once every warnEvery; the dials in between at debug level.
func (t *Tier) warnDial(err error, wait time.Duration) {
	msg := err.Error()
	level := slog.LevelDebug
	if msg != t.warned || time.Since(t.warnedAt) >= warnEvery {
		level = slog.LevelWarn
		t.warned, t.warnedAt = msg, time.Now()
	}
	t.log.Log(context.Background(), level, "sftp connect failed", "tier", t.opt.Name, "addr", t.rem.addr,
		"err", err, "failed_dials", t.failedDials, "retry_in", wait.Round(time.Millisecond))
}

// dial connects, authenticates, starts SFTP and creates the layout, all
// within Timeout.
func (t *Tier) dial() (*conn, error) {
	stage := "connect"
	c, err := t.dialStages(&stage)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil, fmt.Errorf("no answer from %s within %v (%s)", t.rem.addr, t.opt.Timeout, stage)
	}
	if err == nil {
		return c, nil
	}
	if stage != "connect" && stage != "host key" && stage != "login" {
		err = fmt.Errorf("%s: %w", stage, err)
	}
	if permanentStage(stage, err) {
		err = permanentError{err}
	}
	return nil, err
}

// ErrPermanent marks a dial failure that trying again will not fix: the
// server answered, and refused this client (its host key is unknown or
// changed, the login was refused, the remote directory is missing or not
// writable), or the client's own files (known_hosts, identities) are
// unusable, or the ssh_config of TransportSSH is invalid. Open of a Lazy
// tier fails with it; any other failure (no route, no answer, a refused
// or dropped connection) starts the tier in degraded mode.
var ErrPermanent = errors.New("permanent")

type permanentError struct{ err error }

func (e permanentError) Error() string        { return e.err.Error() }
func (e permanentError) Unwrap() error        { return e.err }
func (e permanentError) Is(target error) bool { return target == ErrPermanent }

// permanentStage reports whether err, the failure of a dial at stage, is
// permanent (ErrPermanent).
func permanentStage(stage string, err error) bool {
	switch {
	case stage == "host key", stage == "login", stage == "known hosts", stage == "keys", stage == "ssh config":
		return true
	case strings.HasPrefix(stage, "remote directory"):
		// The server's answer (no such directory, permission denied, a
		// file in the way: pkg/sftp says those as a StatusError or a
		// PathError), not a connection lost meanwhile.
		var se *xsftp.StatusError
		var pe *os.PathError
		if errors.As(err, &se) {
			return true
		}
		return errors.As(err, &pe) && !errors.Is(pe.Err, xsftp.ErrSSHFxConnectionLost) &&
			!errors.Is(pe.Err, io.EOF) && !errors.Is(pe.Err, io.ErrUnexpectedEOF)
	}
	return false
}

func (t *Tier) dialStages(stage *string) (*conn, error) {
	var tr transport
	if t.opt.Transport == TransportSSH {
		e := newExecTransport(t)
		tr = e
		c, err := t.startConn(e, stage)
		if err != nil {
			e.close()
			return nil, e.failure(err, stage)
		}
		return c, nil
	}
	deadline := time.Now().Add(t.opt.Timeout)
	d := net.Dialer{
		Deadline:        deadline,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3},
	}
	nc, err := d.DialContext(t.ctx, "tcp", t.rem.addr)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			nc.Close()
		}
	}()
	nc.SetDeadline(deadline)

	*stage = "known hosts"
	hostKey, algos, err := t.hostKeys(nc.RemoteAddr())
	if err != nil {
		return nil, err
	}
	*stage = "keys"
	auth, authDone, err := t.authMethod()
	if err != nil {
		return nil, err
	}
	defer authDone()
	cfg := &ssh.ClientConfig{
		User:              t.rem.user,
		Auth:              []ssh.AuthMethod{auth},
		HostKeyCallback:   hostKey,
		HostKeyAlgorithms: algos,
		Timeout:           t.opt.Timeout,
	}
	cfg.Ciphers = t.opt.Ciphers
	*stage = "SSH handshake"
	sc, chans, reqs, err := ssh.NewClientConn(nc, t.rem.addr, cfg)
	if err != nil {
		var he *HostKeyError
		if errors.As(err, &he) {
			*stage = "host key"
			return nil, he
		}
		if strings.Contains(err.Error(), "unable to authenticate") {
			*stage = "login"
			return nil, fmt.Errorf("login as %s refused by %s: none of the keys offered is authorized (%s)",
				t.rem.user, t.rem.addr, t.keysOffered())
		}
		return nil, err
	}
	tr = &goTransport{client: ssh.NewClient(sc, chans, reqs), nc: nc}
	c, err := t.startConn(tr, stage)
	if err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

// startConn starts SFTP over tr and checks the remote directory: the
// stages of a dial after the SSH connection, whatever carries it.
func (t *Tier) startConn(tr transport, stage *string) (*conn, error) {
	c := &conn{t: t, tr: tr, dead: make(chan struct{})}
	c.touch()

	*stage = "SFTP start"
	packet := t.opt.PacketSize
	if packet == 0 {
		packet = openSSHPacket
	}
	sc2, err := c.startSFTP(packet)
	if err == nil && t.opt.PacketSize == 0 {
		if _, ok := sc2.HasExtension("limits@openssh.com"); !ok {
			// Not a recent OpenSSH: large reads may come back short.
			sc2.Close()
			packet = minPacket
			sc2, err = c.startSFTP(packet)
		}
	}
	if err != nil {
		c.tr.close()
		return nil, err
	}
	c.sftp, c.packet = sc2, packet

	// The round trip, measured beside the directory's requests: it
	// decides whether transfers use lanes (lanes.go). The least of three,
	// so that a busy moment of this machine does not count as distance.
	rttc := make(chan time.Duration, 1)
	go func() {
		var least time.Duration
		for i := range 3 {
			start := time.Now()
			if err := c.tr.ping(c); err != nil {
				break
			}
			if d := time.Since(start); i == 0 || d < least {
				least = d
			}
		}
		rttc <- least
	}()
	*stage = "remote directory " + t.rem.root
	if t.opt.ReadOnly {
		_, err = c.sftp.Stat(t.rem.root)
	} else {
		err = t.mkdirs(c)
	}
	if err != nil {
		c.tr.close()
		<-rttc
		return nil, err
	}
	c.rtt = <-rttc
	tr.dialed()

	go func() { c.kill(lost(c.tr.wait())) }()
	go func() { c.kill(lost(c.sftp.Wait())) }()
	go c.keepalive()
	return c, nil
}

func (t *Tier) keysOffered() string {
	var parts []string
	if len(t.opt.IdentityFiles) > 0 {
		parts = append(parts, "identity files "+strings.Join(t.opt.IdentityFiles, ", "))
	}
	if t.opt.UseAgent {
		parts = append(parts, "ssh-agent keys")
	}
	if len(parts) == 0 {
		return "no keys"
	}
	return strings.Join(parts, " and ")
}

func (c *conn) startSFTP(packet int) (*xsftp.Client, error) {
	r, w, err := c.tr.session()
	if err != nil {
		return nil, err
	}
	return xsftp.NewClientPipe(touchReader{r, c}, w,
		xsftp.MaxPacketUnchecked(packet),
		xsftp.MaxConcurrentRequestsPerFile(c.t.opt.Concurrency),
		xsftp.UseConcurrentWrites(true),
		xsftp.UseFstat(true),
	)
}

// keepalive sends keepalive@openssh.com when the connection has been idle,
// so that a dead peer is found before the next operation needs it.
func (c *conn) keepalive() {
	every := max(keepaliveEvery, c.t.opt.Timeout)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-c.dead:
			return
		case <-tick.C:
		}
		if time.Since(time.Unix(0, c.lastRecv.Load())) < every {
			continue
		}
		w := c.watch()
		err := c.tr.ping(c)
		w.stop()
		if err != nil {
			c.kill(fmt.Errorf("keepalive: %w", err))
			return
		}
		c.touch()
	}
}

// cleanup removes temp files of failed puts that could not be removed when
// they failed, and on the first connection, temp files that any writer
// abandoned long ago.
func (t *Tier) cleanup(c *conn, orphans []string, sweep bool) {
	w := c.watch()
	defer w.stop()
	t.removeTemps(c, orphans...)
	if !sweep {
		return
	}
	ents, err := c.sftp.ReadDir(t.tmpDir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if e.Mode().IsRegular() && time.Since(e.ModTime()) > staleTemp {
			p := path.Join(t.tmpDir, e.Name())
			if err := c.sftp.Remove(p); err == nil {
				t.log.Info("removed abandoned temp file", "tier", t.opt.Name, "path", p)
			}
		}
	}
}

func lost(err error) error {
	if err == nil {
		return errors.New("connection closed by the server")
	}
	return fmt.Errorf("connection lost: %w", err)
}

// isConnErr reports errors that mean the connection is gone. io.EOF is one
// only where end of file is not a possible answer.
func isConnErr(err error) bool {
	var ne net.Error
	return errors.Is(err, xsftp.ErrSSHFxConnectionLost) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.As(err, &ne)
}

// failure turns an error from a remote operation on c into what the tier
// returns: sentinel errors and the context's errors pass; a broken
// connection (which it kills, so the next call redials) becomes
// ErrUnavailable with the reason.
func (t *Tier) failure(c *conn, err error) error {
	if err == nil {
		return nil
	}
	for _, s := range []error{tiers.ErrNotFound, tiers.ErrExist, tiers.ErrCorrupt, tiers.ErrReadOnly,
		tiers.ErrUnavailable, tiers.ErrNoSpace, tiers.ErrClosed, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, s) {
			return err
		}
	}
	if c == nil {
		return err
	}
	if c.ok() && !isConnErr(err) {
		return err
	}
	c.kill(lost(err))
	cause := c.cause()
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if closed {
		return tiers.ErrClosed
	}
	return fmt.Errorf("%w: %s: %v", tiers.ErrUnavailable, t.rem.addr, cause)
}
