package tiers

import (
	"context"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/flechefs/flechefs/digest"
)

// Deferred promotion. A value fetched from a remote tier that is small
// beside tier 0 (at most a sixteenth of its limit and 16 MiB, or at most
// 1 MiB whatever the limit) is copied into tier 0 (RAM) at once, and into
// the slower local tiers (bbolt) only when reads pause: otherwise a loop of
// cold reads of remote values pays for a bbolt commit beside every read,
// and on 2 cores the commits take CPU from the reads.
//
// The queue holds keys, not bytes: the drain reads each value back from
// tier 0, and a value tier 0 has evicted by then is not copied (the next
// read fetches it again). The queue is drained when
//   - the stack was not used for Policy.DeferIdle: no Stat, Open or read of a
//     reader Open returned (the reads of a large value fetched or read
//     from bbolt, which the drain would slow down, count), and no remote
//     fetch runs,
//   - its values add up to a quarter of tier 0's limit (at most
//     deferMaxBytes), so that tier 0 still holds them, or it holds
//     deferMaxCount of them (tiny values),
//   - its oldest entry waited Policy.DeferMaxAge,
//   - and at Close.
//
// A killed daemon loses the queue: those values are in no local tier
// after a restart, and are fetched from the remote again.

const (
	deferMaxBytes = 64 << 20
	deferMaxCount = 4096
	// deferWorkers copy at once, so that their puts share commits, and
	// the values they copy add up to at most deferInflight bytes (a value
	// larger than that is copied alone): each copy holds its value in the
	// target's buffers until their commit, which the daemon's memory bound
	// must cover.
	deferWorkers  = 32
	deferInflight = 4 << 20
)

type deferredCopy struct {
	key     digest.Key
	size    int64
	targets []*layer
	at      time.Time
}

type deferQueue struct {
	items   []deferredCopy // under Stack.mu
	bytes   int64          // under Stack.mu
	limit   int64          // set by NewStack
	running int64          // copies being drained, under Stack.mu
	kick    chan struct{}
	drainMu sync.Mutex // one drain at a time: Close's waits for the drainer's
}

// initDefer sets the queue's byte limit from tier 0's and starts its drainer.
func (s *Stack) initDefer() {
	q := &s.deferq
	q.kick = make(chan struct{}, 1)
	q.limit = deferMaxBytes
	if u, ok := s.layers[0].Tier.(UsageReporter); ok {
		if l := u.Usage().Limit; l > 0 {
			q.limit = min(q.limit, l/4)
		}
	}
	s.wg.Add(1)
	go s.deferrer()
}

// full reports whether the queue is to be drained now. Under Stack.mu.
func (q *deferQueue) full() bool { return q.bytes >= q.limit || len(q.items) >= deferMaxCount }

// deferrable reports whether the copies of a fetched value of size bytes
// into targets after the first may wait: the first is tier 0 and the value
// is small beside the queue's bound (at least four such values fit in it),
// or at most memFetch bytes.
func (s *Stack) deferrable(size int64, targets []*layer) bool {
	return size <= max(memFetch, s.deferq.limit/4) && len(targets) > 1 && targets[0].idx == 0
}

// deferCopies queues the copies of k into targets.
func (s *Stack) deferCopies(k digest.Key, size int64, targets []*layer) {
	q := &s.deferq
	s.mu.Lock()
	q.items = append(q.items, deferredCopy{key: k, size: size, targets: targets, at: time.Now()})
	q.bytes += size
	first, full := len(q.items) == 1, q.full()
	s.mu.Unlock()
	if first || full {
		select {
		case q.kick <- struct{}{}:
		default:
		}
	}
}

// deferDue says how long the queue may still wait: 0 to drain now, < 0
// when it is empty.
func (s *Stack) deferDue(now time.Time) time.Duration {
	q := &s.deferq
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(q.items) == 0 {
		return -1
	}
	if q.full() {
		return 0
	}
	idle := s.act.idleFor(now)
	if s.keys.n.fetches > 0 {
		idle = 0
	}
	age := now.Sub(q.items[0].at)
	if idle >= s.pol.DeferIdle || age >= s.pol.DeferMaxAge {
		return 0
	}
	return min(s.pol.DeferIdle-idle, s.pol.DeferMaxAge-age)
}

func (s *Stack) deferrer() {
	defer s.wg.Done()
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.deferq.kick:
		case <-t.C:
		}
		wait := s.deferDue(time.Now())
		if wait == 0 {
			s.drainDeferred()
			wait = s.deferDue(time.Now())
		}
		if wait > 0 {
			t.Reset(wait)
		}
	}
}

// drainDeferred makes the queued copies, deferWorkers at a time. Close
// calls it before it cancels the stack's context: it waits for a drain
// under way, then makes the copies still queued.
func (s *Stack) drainDeferred() {
	q := &s.deferq
	q.drainMu.Lock()
	defer q.drainMu.Unlock()
	s.mu.Lock()
	items := q.items
	q.items, q.bytes = nil, 0
	q.running += int64(len(items))
	s.mu.Unlock()
	// One weighted semaphore bounds both: a copy weighs its value's size,
	// at least deferInflight/deferWorkers (so at most deferWorkers run)
	// and at most deferInflight (so a larger value runs alone).
	sem := semaphore.NewWeighted(deferInflight)
	var wg sync.WaitGroup
	for _, d := range items {
		w := min(max(d.size, deferInflight/deferWorkers), deferInflight)
		sem.Acquire(context.Background(), w) // fails only on a done context
		wg.Add(1)
		go func() {
			defer func() {
				s.mu.Lock()
				q.running--
				s.mu.Unlock()
				sem.Release(w)
				wg.Done()
			}()
			s.copyDeferred(d)
		}()
	}
	wg.Wait()
}

// copyDeferred copies one value from tier 0 into its targets, after any
// other copy of it, unless a Delete of it runs or tier 0 no longer has it.
func (s *Stack) copyDeferred(d deferredCopy) {
	s.mu.Lock()
	for s.keys.get(d.key).promoting != nil {
		busy := s.keys.get(d.key).promoting
		s.mu.Unlock()
		<-busy // a fetch's or a local hit's copy: ends, at Close by cancel
		s.mu.Lock()
	}
	if s.keys.fenced(d.key) {
		s.mu.Unlock()
		return
	}
	done := make(chan struct{})
	s.keys.edit(d.key, func(ks *keyState) { ks.promoting = done })
	s.mu.Unlock()
	defer s.endPromotion(d.key, done)
	src := s.layers[0]
	r, err := src.Tier.Open(context.Background(), d.key)
	if err != nil {
		s.log.Debug("deferred copy: gone from the first tier", "key", d.key.String(), "err", err)
		return
	}
	defer r.Close()
	s.copyTo(src, r, d.targets)
}

// deferredLen is the number of queued or running deferred copies.
func (s *Stack) deferredLenLocked() int64 {
	return int64(len(s.deferq.items)) + s.deferq.running
}
