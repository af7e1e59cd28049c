package tiertest

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
)

// growing is a tiers.Growing that the test writes piece by piece, then
// finishes or abandons. It records what the tier under test did with it.
type growing struct {
	mu       sync.Mutex
	buf      []byte
	m        tiers.Meta
	final    bool
	err      error
	reported int64         // the most Wait has returned
	blocked  int64         // offset of a Wait blocked now; -1: none
	changed  chan struct{} // closed and replaced at every change of the above
	misread  error         // a ReadAt past what Wait reported
	run      *putRun       // the PutGrowing reading it
}

func newGrowing() *growing {
	return &growing{blocked: -1, changed: make(chan struct{})}
}

// notify wakes whoever waits for a change. Called with mu held.
func (g *growing) notify() {
	close(g.changed)
	g.changed = make(chan struct{})
}

// write appends b to the value.
func (g *growing) write(b []byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.buf = append(g.buf, b...)
	g.notify()
}

// finish makes the value final with m, whose Size the caller sets.
func (g *growing) finish(m tiers.Meta) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.m, g.final = m, true
	g.notify()
}

// abort abandons the write with err.
func (g *growing) abort(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.err = err
	g.notify()
}

// Wait implements tiers.Growing.
func (g *growing) Wait(ctx context.Context, off int64) (int64, tiers.Meta, bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for {
		n := int64(len(g.buf))
		switch {
		case g.err != nil:
			return n, tiers.Meta{}, false, g.err
		case g.final:
			g.reported = n
			return n, g.m, true, nil
		case n > off:
			g.reported = n
			return n, tiers.Meta{}, false, nil
		}
		g.blocked = off
		g.notify()
		ch := g.changed
		g.mu.Unlock()
		var done bool
		select {
		case <-ch:
		case <-ctx.Done():
			done = true
		}
		g.mu.Lock()
		g.blocked = -1
		g.notify()
		if done {
			return n, tiers.Meta{}, false, ctx.Err()
		}
	}
}

// ReadAt implements tiers.Growing. Reading bytes Wait has not reported is
// the tier's error, recorded for checkReads; past the end of a final value
// it is io.ReaderAt's short read.
func (g *growing) ReadAt(p []byte, off int64) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	end := off + int64(len(p))
	if off < 0 || off > g.reported || end > g.reported && !g.final {
		if g.misread == nil {
			g.misread = fmt.Errorf("ReadAt of [%d, %d) when Wait had reported %d bytes", off, end, g.reported)
		}
		return 0, g.misread
	}
	return bytes.NewReader(g.buf).ReadAt(p, off)
}

// until waits for cond, which is called with mu held. It fails the test
// at once if the tier misread g or its PutGrowing returned meanwhile.
func (g *growing) until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	hang := time.After(time.Minute) // ends a test that would hang; not a figure checked
	for {
		g.mu.Lock()
		ok, ch, misread, run := cond(), g.changed, g.misread, g.run
		g.mu.Unlock()
		switch {
		case ok:
			return
		case misread != nil:
			t.Fatalf("waiting for %s: %v", what, misread)
		}
		select {
		case <-ch:
		case <-run.done:
			t.Fatalf("waiting for %s: PutGrowing returned %+v, %v", what, run.info, run.err)
		case <-hang:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// waitBlocked waits until the tier has read the first off bytes and waits
// for more.
func (g *growing) waitBlocked(t *testing.T, off int64) {
	t.Helper()
	g.until(t, fmt.Sprintf("the tier to wait for more than %d bytes", off), func() bool { return g.blocked == off })
}

// checkReads fails the test if the tier read bytes Wait had not reported.
func (g *growing) checkReads(t *testing.T) {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.misread != nil {
		t.Fatal(g.misread)
	}
}

// putRun is a PutGrowing running in the background.
type putRun struct {
	done chan struct{} // closed when it returned, with:
	info tiers.Info
	err  error
}

// startGrowing runs sp.PutGrowing(ctx, k, g) in the background.
func startGrowing(ctx context.Context, sp tiers.StreamPutter, k digest.Key, g *growing) *putRun {
	run := &putRun{done: make(chan struct{})}
	g.mu.Lock()
	g.run = run
	g.mu.Unlock()
	go func() {
		defer close(run.done)
		run.info, run.err = sp.PutGrowing(ctx, k, g)
	}()
	return run
}

// wait returns what PutGrowing returned.
func (run *putRun) wait(t *testing.T) (tiers.Info, error) {
	t.Helper()
	select {
	case <-run.done:
		return run.info, run.err
	case <-time.After(time.Minute): // ends a test that would hang; not a figure checked
		t.Fatal("PutGrowing did not return")
		return tiers.Info{}, nil
	}
}
