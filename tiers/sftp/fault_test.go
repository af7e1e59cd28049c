package sftp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

const (
	faultTimeout = 2 * time.Second
	// slack is what a failure may take beyond the bound it is tested
	// against, on a loaded 2-core machine under the race detector.
	slack = 1500 * time.Millisecond
)

var block = tiertest.Data(99, 1<<20)

// hookReader yields n bytes and calls hook once when at bytes have been read.
type hookReader struct {
	n, at, pos int64
	hook       func()
	once       sync.Once
}

func (h *hookReader) Read(p []byte) (int, error) {
	if h.pos >= h.n {
		return 0, io.EOF
	}
	if h.pos >= h.at {
		h.once.Do(h.hook)
	}
	p = p[:min(int64(len(p)), h.n-h.pos)]
	for i := 0; i < len(p); {
		i += copy(p[i:], block[(h.pos+int64(i))%int64(len(block)):])
	}
	h.pos += int64(len(p))
	return len(p), nil
}

// hookWriter calls hook once when at bytes have been written.
type hookWriter struct {
	at, n int64
	hook  func()
	once  sync.Once
}

func (h *hookWriter) Write(p []byte) (int, error) {
	h.n += int64(len(p))
	if h.n >= h.at {
		h.once.Do(h.hook)
	}
	return len(p), nil
}

func faultTier(t *testing.T, s *sshdtest.Server) *Tier {
	opt := options(s)
	opt.Timeout = faultTimeout
	return open(t, opt)
}

// within fails the test unless err wraps ErrUnavailable and the failure came
// no later than bound after since.
func within(t *testing.T, what string, err error, since time.Time, bound time.Duration) {
	t.Helper()
	el := time.Since(since)
	if !errors.Is(err, tiers.ErrUnavailable) {
		t.Fatalf("%s: %v, want ErrUnavailable", what, err)
	}
	if el > bound+slack {
		t.Fatalf("%s failed after %v, bound %v", what, el, bound)
	}
	t.Logf("%s failed after %v: %v", what, el.Round(time.Millisecond), err)
}

// noEntry checks that nothing is published under k, locally and through tr.
func noEntry(t *testing.T, tr *Tier, k digest.Key) {
	t.Helper()
	if _, err := os.Lstat(localPath(tr, k.String())); !os.IsNotExist(err) {
		t.Fatalf("data file under the key's name: %v", err)
	}
	if _, err := tr.Stat(context.Background(), k); !errors.Is(err, tiers.ErrNotFound) {
		t.Fatalf("stat after failed put: %v", err)
	}
	ents, _ := os.ReadDir(localPath(tr))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), k.String()) {
			t.Fatalf("file %s in the root", e.Name())
		}
	}
}

// eventuallyNoTemps waits for the temp files of failed puts to be removed
// after the reconnect.
func eventuallyNoTemps(t *testing.T, tr *Tier) {
	t.Helper()
	tiertest.Eventually(t, "the temp files to be removed after the reconnect", func() bool {
		ents, err := os.ReadDir(localPath(tr, ".flechefs", "tmp"))
		if err != nil {
			t.Fatal(err)
		}
		return len(ents) == 0
	})
}

// works checks that the tier reconnects and serves a put and a get.
func works(t *testing.T, tr *Tier, name string) {
	t.Helper()
	k := tiertest.Key(name)
	b := tiertest.Data(7, 5<<20)
	tiertest.Put(t, tr, k, b)
	if !bytes.Equal(tiertest.Get(t, tr, k), b) {
		t.Fatal("read back differs")
	}
}

func TestKillDuringPut(t *testing.T) {
	for _, lanes := range []bool{false, true} {
		t.Run(fmt.Sprintf("lanes=%v", lanes), func(t *testing.T) { killDuringPut(t, lanes) })
	}
}

func killDuringPut(t *testing.T, lanes bool) {
	s := sshdtest.Start(t)
	tr := faultTier(t, s)
	if lanes {
		tr.laneRTT = 0
	}
	killServerDuringPut(t, s, tr)
}

// killServerDuringPut kills s 48 MiB into a put through tr: the put fails
// with ErrUnavailable within the bound, nothing is left under the key nor
// in the temp directory, and tr works once s is back.
func killServerDuringPut(t *testing.T, s *sshdtest.Server, tr *Tier) {
	works(t, tr, "before")
	k := tiertest.Key("killed put")
	var killed time.Time
	r := &hookReader{n: 4 << 30, at: 48 << 20, hook: func() { s.Kill(); killed = time.Now() }}
	_, err := tr.Put(context.Background(), k, r, tiers.UnknownMeta)
	within(t, "put", err, killed, faultTimeout)
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	noEntry(t, tr, k)
	eventuallyNoTemps(t, tr)
	works(t, tr, "after")
}

func TestFreezeDuringPut(t *testing.T) {
	s := sshdtest.Start(t)
	tr := faultTier(t, s)
	k := tiertest.Key("frozen put")
	var frozen time.Time
	r := &hookReader{n: 4 << 30, at: 48 << 20, hook: func() { s.Freeze(); frozen = time.Now() }}
	_, err := tr.Put(context.Background(), k, r, tiers.UnknownMeta)
	within(t, "put", err, frozen, faultTimeout)
	if !strings.Contains(err.Error(), "no answer") {
		t.Errorf("error does not say the server stopped answering: %v", err)
	}
	s.Thaw()
	noEntry(t, tr, k)
	eventuallyNoTemps(t, tr)
	works(t, tr, "after")
}

func TestKillDuringWriteTo(t *testing.T) {
	for _, lanes := range []bool{false, true} {
		t.Run(fmt.Sprintf("lanes=%v", lanes), func(t *testing.T) { killDuringWriteTo(t, lanes) })
	}
}

func killDuringWriteTo(t *testing.T, lanes bool) {
	s := sshdtest.Start(t)
	tr := faultTier(t, s)
	if lanes {
		tr.laneRTT = 0
	}
	k := tiertest.Key("fetch")
	b := tiertest.Data(3, 64<<20)
	tiertest.Put(t, tr, k, b)
	r, err := tr.Open(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var killed time.Time
	_, err = r.(io.WriterTo).WriteTo(&hookWriter{at: 8 << 20, hook: func() { s.Kill(); killed = time.Now() }})
	within(t, "WriteTo", err, killed, faultTimeout)
	// The reader stays failed; the tier reconnects.
	if _, err := r.ReadAt(make([]byte, 10), 0); !errors.Is(err, tiers.ErrUnavailable) {
		t.Fatalf("ReadAt on the old connection: %v", err)
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(tiertest.Get(t, tr, k), b) {
		t.Fatal("read after restart differs")
	}
}

func TestFreezeDuringRead(t *testing.T) {
	s := sshdtest.Start(t)
	tr := faultTier(t, s)
	k := tiertest.Key("fetch")
	b := tiertest.Data(3, 16<<20)
	tiertest.Put(t, tr, k, b)
	r, err := tr.Open(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	s.Freeze()
	start := time.Now()
	_, err = r.ReadAt(make([]byte, len(b)), 0)
	within(t, "ReadAt", err, start, faultTimeout)
	// A WriteTo on a new reader of a frozen server fails the same way.
	start = time.Now()
	_, err = tr.Open(context.Background(), k)
	within(t, "open", err, start, faultTimeout)
	s.Thaw()
	// The failed dial set a backoff; the tier is back after it.
	eventually(t, tr)
	if !bytes.Equal(tiertest.Get(t, tr, k), b) {
		t.Fatal("read after thaw differs")
	}
}

// eventually waits until tr reaches the server again.
func eventually(t *testing.T, tr *Tier) {
	t.Helper()
	deadline := time.Now().Add(maxBackoffWait + time.Second)
	for {
		_, err := tr.Stat(context.Background(), tiertest.Key("probe"))
		if errors.Is(err, tiers.ErrNotFound) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reconnect: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestFrozenStatAndDial(t *testing.T) {
	s := sshdtest.Start(t)
	tr := faultTier(t, s)
	s.Freeze()
	defer s.Thaw()
	start := time.Now()
	_, err := tr.Stat(context.Background(), tiertest.Key("x"))
	within(t, "stat on a frozen server", err, start, faultTimeout)
	// The handshake with a frozen server times out too.
	opt := options(s)
	opt.Timeout = faultTimeout
	start = time.Now()
	_, err = Open(context.Background(), opt)
	within(t, "open on a frozen server", err, start, faultTimeout)
}

func TestStoppedServer(t *testing.T) {
	s := sshdtest.Start(t)
	tr := faultTier(t, s)
	works(t, tr, "before")
	s.Stop()
	start := time.Now()
	_, err := tr.Stat(context.Background(), tiertest.Key("x"))
	within(t, "stat on a stopped server", err, start, faultTimeout)
	// A lazy tier opens while the server is down (degraded mode).
	opt := options(s)
	opt.Timeout = faultTimeout
	opt.Lazy = true
	lazy := open(t, opt)
	start = time.Now()
	_, err = lazy.Stat(context.Background(), tiertest.Key("x"))
	within(t, "lazy stat on a stopped server", err, start, faultTimeout)
	opt.Lazy = false
	if _, err := Open(context.Background(), opt); !errors.Is(err, tiers.ErrUnavailable) {
		t.Fatalf("open of a stopped server: %v", err)
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	// Both come back once the backoff has passed.
	eventually(t, tr)
	eventually(t, lazy)
	works(t, lazy, "after")
}

func TestClosed(t *testing.T) {
	s := sshdtest.Start(t)
	tr := faultTier(t, s)
	k := tiertest.Key("c")
	tiertest.Put(t, tr, k, []byte("abc"))
	r, err := tr.Open(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	tr.Close()
	if _, err := tr.Stat(context.Background(), k); !errors.Is(err, tiers.ErrClosed) {
		t.Fatalf("stat after close: %v", err)
	}
	if _, err := r.ReadAt(make([]byte, 3), 0); err == nil {
		t.Fatal("reader works after close")
	}
	r.Close()
}

// dialCounts returns the tier's successful dials and the failed dials of
// the current outage.
func dialCounts(tr *Tier) (ok, failed int) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.dials, tr.failedDials
}

// restartAndReconnect starts the stopped server again and waits, with no
// caller, until the tier has connected more often than the before it had.
func restartAndReconnect(t *testing.T, s *sshdtest.Server, tr *Tier, before int) {
	t.Helper()
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(maxBackoffWait + 5*time.Second)
	for ok, _ := dialCounts(tr); ok == before; ok, _ = dialCounts(tr) {
		if time.Now().After(deadline) {
			t.Fatalf("not connected %v after the server came back", maxBackoffWait+5*time.Second)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// During an outage a caller never waits on a dial, also once the backoff
// has ended: the dials go on in the background. A frozen host makes each of
// them last the whole Timeout, which a caller would otherwise wait out.
func TestOutageFailsFast(t *testing.T) {
	s := sshdtest.Start(t)
	tr := faultTier(t, s)
	stat := func() error {
		_, err := tr.Stat(context.Background(), tiertest.Key("x"))
		return err
	}
	if err := stat(); !errors.Is(err, tiers.ErrNotFound) {
		t.Fatal(err)
	}
	s.Freeze()
	defer s.Thaw()
	// The request on the connection times out, and so does the first dial
	// after it, which its caller waits for.
	start := time.Now()
	within(t, "stat on the frozen connection", stat(), start, faultTimeout)
	start = time.Now()
	within(t, "stat with the first dial", stat(), start, faultTimeout)
	const bound = time.Second // far below the 2 s a dial takes here
	var slowest time.Duration
	for end := time.Now().Add(2*faultTimeout + time.Second); time.Now().Before(end); {
		start := time.Now()
		err := stat()
		if !errors.Is(err, tiers.ErrUnavailable) {
			t.Fatalf("stat during the outage: %v", err)
		}
		slowest = max(slowest, time.Since(start))
		time.Sleep(50 * time.Millisecond)
	}
	if slowest > bound {
		t.Fatalf("a stat during the outage took %v, want ≤ %v", slowest, bound)
	}
	if _, failed := dialCounts(tr); failed < 2 {
		t.Fatalf("%d failed dials in the outage: the tier did not dial again in the background", failed)
	}
	s.Thaw()
	eventually(t, tr)
}

// A server that comes back is found by the background dials: the first
// caller after it gets a connection without waiting for a backoff.
func TestReconnectsInBackground(t *testing.T) {
	s := sshdtest.Start(t)
	tr := faultTier(t, s)
	works(t, tr, "before")
	s.Stop()
	// A stat finds the connection dropped and fails; one that comes after
	// that dials, and the dial fails (the first stat may instead have found
	// the connection dead already and dialed itself).
	deadline := time.Now().Add(5 * time.Second)
	for _, failed := dialCounts(tr); failed == 0; _, failed = dialCounts(tr) {
		if _, err := tr.Stat(context.Background(), tiertest.Key("x")); !errors.Is(err, tiers.ErrUnavailable) {
			t.Fatalf("stat on a stopped server: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("no failed dial 5s after the server stopped")
		}
	}
	// No callers from here on: only the tier dials.
	deadline = time.Now().Add(10 * time.Second)
	for _, failed := dialCounts(tr); failed < 3; _, failed = dialCounts(tr) {
		if time.Now().After(deadline) {
			t.Fatalf("%d failed dials in 10s: no background dials", failed)
		}
		time.Sleep(20 * time.Millisecond)
	}
	before, _ := dialCounts(tr)
	restartAndReconnect(t, s, tr, before)
	if _, failed := dialCounts(tr); failed != 0 {
		t.Fatalf("failed dials not reset after the reconnect: %d", failed)
	}
	works(t, tr, "after")
}

// A connection that had settled and is then lost, with nobody using the
// tier, is dialed again at once (lostConn): the outage's background dials
// start without a caller, and the server is used again as soon as it is
// back. A connection lost young is left to the next caller, so that a
// server that accepts and then drops connections is not dialed in a loop.
func TestRedialsWhenLost(t *testing.T) {
	for _, settled := range []bool{true, false} {
		t.Run(fmt.Sprintf("settled=%v", settled), func(t *testing.T) {
			s := sshdtest.Start(t)
			tr := faultTier(t, s)
			if settled {
				tr.mu.Lock()
				tr.settled = 0
				tr.mu.Unlock()
			}
			works(t, tr, "before")
			ok0, _ := dialCounts(tr)
			s.Stop()
			// No caller from here on: only the tier dials.
			if !settled {
				time.Sleep(2 * time.Second)
				if ok, failed := dialCounts(tr); ok != ok0 || failed != 0 {
					t.Fatalf("a young connection's loss was followed by %d dials and %d failed ones, with no caller", ok-ok0, failed)
				}
				return
			}
			deadline := time.Now().Add(5 * time.Second)
			for _, failed := dialCounts(tr); failed == 0; _, failed = dialCounts(tr) {
				if time.Now().After(deadline) {
					t.Fatal("no dial within 5s of losing the connection")
				}
				time.Sleep(20 * time.Millisecond)
			}
			restartAndReconnect(t, s, tr, ok0)
			works(t, tr, "after")
		})
	}
}
