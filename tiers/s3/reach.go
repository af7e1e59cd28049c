package s3

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"
)

// A store that is down must cost a request little: the stack asks the
// remote on every miss and expects an answer within its RemoteTimeout, and
// minio-go tries each request up to MaxRetries times. A stopped store
// refuses at once, but each refused try is followed by minio-go's backoff
// (up to 0.6 s in all); a hung store (a frozen server, a lost route)
// answers nothing, and each try waited Timeout for response headers: three
// times Timeout for one ReadAt, which no context bounds. So:
//
//   - A try waits Timeout/2 for response headers, so that a request has two
//     tries within Timeout: a store that stalls one request is asked
//     again in time. SeaweedFS stalls a read whose volume server died
//     while no other server holding the chunk is registered with its
//     master: the gateway tries the dead one again and again, with a
//     backoff, within the response (with a replica registered it reads
//     from the replica at once).
//   - reach remembers that the store could not be reached (a failed dial,
//     or two tries in a row without response headers) and then fails
//     requests at once, for a backoff of minBackoff doubling to
//     maxBackoff (each ±backoffJitter), after which one request at a time
//     goes through and the first response of any kind ends the outage. A
//     hung store then costs one request about Timeout, and its last try
//     fails at once (minio-go waits at most 0.6 s before it, within the
//     shortest backoff); the tier's methods ask reach first and skip
//     minio-go's backoff. A store that returns is used again within
//     maxBackoff (+20%) of its return.
//   - idleConn fails a connection on which nothing moves for Timeout/2
//     (+idleMargin): a response body that stops mid-way (the server frozen
//     while it sends) fails the read instead of hanging it, and the
//     reader makes that ReadAt again once, on a new request, unless the
//     store is known down. The margin lets the transport's own wait for
//     response headers (Timeout/2) end first: a read that fails on a
//     reused connection before any response makes net/http send the
//     request again on a new one, which waited as long once more. A body
//     that stalls counts as a try without an answer (stalled).
const (
	idleMargin    = time.Second
	minBackoff    = time.Second
	maxBackoff    = 5 * time.Second
	backoffJitter = 0.2
)

// errUnreachable is what a request gets, without trying, while the store is
// known to be unreachable.
var errUnreachable = errors.New("the store was unreachable moments ago; trying again after a backoff")

// reach is an http.RoundTripper that tracks whether the store answers.
type reach struct {
	next    http.RoundTripper
	timeout time.Duration // Options.Timeout

	mu      sync.Mutex
	wait    time.Duration // the current backoff; 0 while the store answers
	strikes int           // tries in a row that timed out
	until   time.Time     // requests fail at once before this
	trying  bool          // a request is trying the store after a backoff
	why     error         // the failure that began or prolonged the outage
	// lastStall: when a stalled body last counted (stalled).
	lastStall time.Time
}

// down returns why requests fail at once now, or nil when one may try.
func (r *reach) down() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.wait == 0 || (!r.trying && !time.Now().Before(r.until)) {
		return nil
	}
	return fmt.Errorf("%w (%v)", errUnreachable, r.why)
}

func (r *reach) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	probe := r.wait > 0
	if probe {
		if r.trying || time.Now().Before(r.until) {
			why := r.why
			r.mu.Unlock()
			return nil, fmt.Errorf("%w (%v)", errUnreachable, why)
		}
		r.trying = true
	}
	r.mu.Unlock()
	start := time.Now()
	resp, err := r.next.RoundTrip(req)
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case err == nil:
		r.wait, r.strikes, r.trying, r.why = 0, 0, false, nil
	case dialFailed(err):
		r.downLocked(err)
	case timedOut(err) && (req.Context().Err() == nil || time.Since(start) >= r.timeout/2):
		// A timeout of the caller's context counts once the try has
		// waited as long as the transport would have. A try after a
		// backoff has no second chance.
		r.strikeLocked(err, probe)
	case probe:
		// Cancelled by its caller, or a failure of an established
		// connection (minio-go tries again): nothing learnt, and the
		// next request tries.
		r.trying = false
	}
	return resp, err
}

// stalled counts a response body that stopped for the idle timeout as a
// try without an answer. Bodies that stop together (the ranges of one
// fetch, when the volume server under them dies) are one try: within
// timeout/2 of the last, a stall is not counted again, so that each range
// is tried once more (the reader's fill) rather than the store taken for
// down.
func (r *reach) stalled(err error) {
	if !timedOut(err) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.lastStall) < r.timeout/2 {
		return
	}
	r.lastStall = time.Now()
	r.strikeLocked(err, false)
}

// strikeLocked counts a try without an answer: the second in a row, or
// one after a backoff, begins or prolongs an outage. r.mu is held.
func (r *reach) strikeLocked(err error, probe bool) {
	r.strikes++
	if r.strikes >= 2 || probe {
		r.downLocked(err)
	}
}

// downLocked begins or prolongs an outage: requests fail at once for the
// next backoff. r.mu is held.
func (r *reach) downLocked(err error) {
	r.strikes = 0
	r.wait = min(max(2*r.wait, minBackoff), maxBackoff)
	f := 1 + backoffJitter*(2*rand.Float64()-1)
	r.until, r.trying, r.why = time.Now().Add(time.Duration(f*float64(r.wait))), false, err
}

// dialFailed reports whether err is a failed dial: the store refused, or
// is not there.
func dialFailed(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// timedOut reports whether err is a timeout: no response headers in time,
// an idleConn deadline, or the caller's deadline.
func timedOut(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// idleConn is a connection whose reads and writes fail once nothing has
// moved either way for timeout: bytes written count as progress for a
// read waiting meanwhile (the response to a long upload), and the reverse.
type idleConn struct {
	net.Conn
	timeout time.Duration
}

func (c *idleConn) Read(p []byte) (int, error) {
	c.Conn.SetReadDeadline(time.Now().Add(c.timeout))
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	}
	return n, err
}

func (c *idleConn) Write(p []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.Conn.SetReadDeadline(time.Now().Add(c.timeout))
	}
	return n, err
}

// dialIdle dials with d and wraps the connection in an idleConn.
func dialIdle(d *net.Dialer, timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &idleConn{Conn: c, timeout: timeout}, nil
	}
}
