package tiers

import (
	"context"
	"errors"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/flechefs/flechefs/digest"
)

// The promoter copies a hit in a slower tier into the faster ones (see
// doc.go, "The Stack"): one copy per key at a time, registered in the key
// table (keyState.promoting) so that a Delete waits for it; a fetched
// value's copies into the slower local tiers may wait for a pause in reads
// (the deferred queue, below).
type promoter struct {
	s      *Stack
	gate   chan struct{} // promoteGate's window, closed at its end; under Stack.mu
	deferq deferQueue
}

// promoteTargets are the writable local layers a hit at index i is copied to.
func (pm *promoter) promoteTargets(i int) []*layer {
	s := pm.s
	var out []*layer
	for l := range s.layers[:i].writableLocal() {
		if s.opt.Promote == PromoteBase && l.idx != 0 {
			continue
		}
		out = append(out, l)
	}
	return out
}

// promoteLocal copies k, a hit of size bytes in local layer src, to
// targets, one copy at a time per key. Every copy is checked against the
// hash by the target's Put. A value small beside tier 0 (deferrable) is
// copied once reads pause, as a fetched value's slower copies are: the copy
// reads the value again and hashes it, which beside a loop of reads from
// bbolt took half of the loop's time on 2 cores. A larger one is copied now,
// in the background.
func (pm *promoter) promoteLocal(src *layer, k digest.Key, size int64, targets []*layer) {
	s := pm.s
	if pm.deferrable(size, targets) {
		pm.deferCopies(src, k, size, targets)
		return
	}
	done := pm.startPromotion(k)
	if done == nil {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer pm.endPromotion(k, done)
		r, err := src.Tier.Open(s.ctx, k)
		if err != nil {
			return
		}
		defer r.Close()
		pm.copyTo(src, r, targets)
	}()
}

// fetched copies a value fetched from remote layer src, verified whole (r
// reads the fetch's spool), into the faster tiers, after any copy of the
// key running; not when deleted says a Delete of the key ran during the
// fetch. The copies after tier 0 of a small value wait for a pause in
// reads (deferred, below).
func (pm *promoter) fetched(src *layer, r Reader, deleted func() bool) {
	k, size := r.Info().Key, r.Info().Size
	done := pm.startPromotionAfter(k)
	if done == nil {
		return
	}
	if deleted() {
		pm.endPromotion(k, done)
		return
	}
	targets, later := pm.promoteTargets(src.idx), []*layer(nil)
	if len(targets) > 1 && pm.deferrable(size, targets) {
		// Into tier 0 now, into the slower tiers once reads pause,
		// queued once this copy ends.
		if pm.copyTo(nil, r, targets[:1]) {
			targets, later = nil, targets[1:]
		} else {
			targets = targets[1:]
		}
	}
	pm.copyTo(nil, r, targets)
	pm.endPromotion(k, done)
	if later != nil {
		pm.deferCopies(nil, k, size, later)
	}
}

// startPromotion registers a copy of k into faster tiers. It returns nil,
// and the copy must not be made, when one is running already, when a
// Delete of k is (it would put back what the Delete removes) or when the
// stack is closed. Delete waits for the copies registered before it.
func (pm *promoter) startPromotion(k digest.Key) chan struct{} {
	s := pm.s
	s.mu.Lock()
	defer s.mu.Unlock()
	return pm.registerPromotionLocked(k)
}

// registerPromotionLocked registers a copy of k, or returns nil (see
// startPromotion).
func (pm *promoter) registerPromotionLocked(k digest.Key) chan struct{} {
	s := pm.s
	if ks := s.keys.get(k); ks.promoting != nil || ks.deleting > 0 || s.closed {
		return nil
	}
	done := make(chan struct{})
	s.keys.edit(k, func(ks *keyState) { ks.promoting = done })
	return done
}

// startPromotionAfter is startPromotion, except that it waits for a copy
// of k already running to end instead of giving up. A fetch's copies
// need it: a local hit's copy that finds that copy corrupt (and removes
// it) may still run when the fetch that replaces it from the remote ends,
// and a fetch that gave up then left the value in no local tier.
func (pm *promoter) startPromotionAfter(k digest.Key) chan struct{} {
	s := pm.s
	s.mu.Lock()
	for ks := s.keys.get(k); ks.promoting != nil && !s.closed && ks.deleting == 0; ks = s.keys.get(k) {
		busy := ks.promoting
		s.mu.Unlock()
		select {
		case <-busy:
		case <-s.ctx.Done():
			return nil
		}
		s.mu.Lock()
	}
	defer s.mu.Unlock()
	return pm.registerPromotionLocked(k)
}

func (pm *promoter) endPromotion(k digest.Key, done chan struct{}) {
	s := pm.s
	s.mu.Lock()
	s.keys.edit(k, func(ks *keyState) {
		if ks.promoting == done {
			ks.promoting = nil
		}
	})
	s.mu.Unlock()
	close(done)
}

// copyTo puts the value of r (read from layer src, which may be nil for a
// spool) into every target and reports whether every target holds it. A
// hash mismatch blames the source.
func (pm *promoter) copyTo(src *layer, r Reader, targets []*layer) bool {
	s := pm.s
	info := r.Info()
	all := true
	for _, t := range targets {
		if t.idx > 0 && info.Size <= memFetch {
			pm.promoteGate()
		}
		// From a fetch's spool (src nil), the bytes were hashed as they
		// arrived and matched the remote's sum: the tier need not hash
		// them again. From a tier, they are checked.
		m := Meta{Size: info.Size, Sum: info.Sum, Created: info.Created, Verified: src == nil}
		var err error
		if b, bp := memBytes(r, t); b != nil {
			// Fetched into memory (holdMem): tier 0 keeps that buffer.
			_, err = bp.PutBytes(s.ctx, info.Key, b, m)
			t.bytesIn.Add(int64(len(b)))
		} else {
			_, err = t.Tier.Put(s.ctx, info.Key, &countingReader{r: copyReader(r, info.Size), n: &t.bytesIn}, m)
		}
		switch {
		case err == nil:
			t.promotions.Add(1)
		case errors.Is(err, ErrExist):
		case errors.Is(err, ErrNoSpace), errors.Is(err, context.Canceled):
			all = false
		case errors.Is(err, ErrCorrupt) && src != nil:
			s.corrupt(src, info.Key, err)
			return false
		default:
			all = false
			s.noteErr(t, err)
		}
	}
	return all
}

// memBytes returns the bytes of a value fetched into memory, and t's
// BytesPutter, when t keeps values in memory; else nil.
func memBytes(r Reader, t *layer) ([]byte, BytesPutter) {
	sr, ok := r.(*spoolReader)
	if !ok {
		return nil, nil
	}
	bp, ok := t.Tier.(BytesPutter)
	if b := sr.Bytes(); ok && b != nil {
		return b, bp
	}
	return nil, nil
}

// promoteGate returns at the end of the current Policy.PromoteDelay window,
// opening one if none is open.
func (pm *promoter) promoteGate() {
	s := pm.s
	s.mu.Lock()
	g := pm.gate
	if g == nil {
		g = make(chan struct{})
		pm.gate = g
		time.AfterFunc(s.pol.PromoteDelay, func() {
			s.mu.Lock()
			pm.gate = nil
			s.mu.Unlock()
			close(g)
		})
	}
	s.mu.Unlock()
	select {
	case <-g:
	case <-s.ctx.Done():
	}
}

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
	src     *layer // nil: tier 0
	targets []*layer
	at      time.Time
}

// deferKey names a queued copy by its key and source: a read loop over a
// local hit queues its copy once, while a fetched value's copies into the
// slower tiers are queued beside a local hit's copy of the same key that
// can no longer be made (its source found the value damaged and dropped it).
type deferKey struct {
	key digest.Key
	src int // layer index of the source
}

type deferQueue struct {
	items   []deferredCopy        // under Stack.mu
	keys    map[deferKey]struct{} // of items, under Stack.mu
	bytes   int64                 // under Stack.mu
	limit   int64                 // set by NewStack
	running int64                 // copies being drained, under Stack.mu
	kick    chan struct{}
	drainMu sync.Mutex // one drain at a time: Close's waits for the drainer's
}

// full reports whether the queue is to be drained now. Under Stack.mu.
func (q *deferQueue) full() bool { return q.bytes >= q.limit || len(q.items) >= deferMaxCount }

// initDefer sets the queue's byte limit from tier 0's and starts its drainer.
func (pm *promoter) initDefer() {
	s := pm.s
	q := &pm.deferq
	q.kick = make(chan struct{}, 1)
	q.limit = deferMaxBytes
	if u, ok := s.layers[0].Tier.(UsageReporter); ok {
		if l := u.Usage().Limit; l > 0 {
			q.limit = min(q.limit, l/4)
		}
	}
	s.wg.Add(1)
	go pm.deferrer()
}

// deferrable reports whether copies of a value of size bytes into targets
// may wait: the first target is tier 0 and the value is small beside the
// queue's bound (at least four such values fit in it), or at most memFetch
// bytes. For a fetched value the copy into tier 0 is made at once and the
// others wait; for a local hit all of them wait.
func (pm *promoter) deferrable(size int64, targets []*layer) bool {
	return size <= max(memFetch, pm.deferq.limit/4) && len(targets) > 0 && targets[0].idx == 0
}

// deferCopies queues the copies of k into targets, read from layer src
// (nil: tier 0). A key queued already from the same source is not queued
// again.
func (pm *promoter) deferCopies(src *layer, k digest.Key, size int64, targets []*layer) {
	s := pm.s
	q := &pm.deferq
	s.mu.Lock()
	dk := deferKey{key: k}
	if src != nil {
		dk.src = src.idx
	}
	if _, ok := q.keys[dk]; ok {
		s.mu.Unlock()
		return
	}
	if q.keys == nil {
		q.keys = map[deferKey]struct{}{}
	}
	q.keys[dk] = struct{}{}
	q.items = append(q.items, deferredCopy{key: k, size: size, src: src, targets: targets, at: time.Now()})
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
func (pm *promoter) deferDue(now time.Time) time.Duration {
	s := pm.s
	q := &pm.deferq
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

func (pm *promoter) deferrer() {
	s := pm.s
	defer s.wg.Done()
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-pm.deferq.kick:
		case <-t.C:
		}
		wait := pm.deferDue(time.Now())
		if wait == 0 {
			pm.drainDeferred(false)
			wait = pm.deferDue(time.Now())
		}
		if wait > 0 {
			t.Reset(wait)
		}
	}
}

// drainDeferred makes the queued copies, deferWorkers at a time. Close
// calls it (closing) before it cancels the stack's context: it waits for a
// drain under way, then makes the copies still queued that outlive the
// stack, those out of tier 0 (a copy into tier 0 would be dropped with it).
func (pm *promoter) drainDeferred(closing bool) {
	s := pm.s
	q := &pm.deferq
	q.drainMu.Lock()
	defer q.drainMu.Unlock()
	s.mu.Lock()
	var items []deferredCopy
	for _, d := range q.items {
		if !closing || d.src == nil {
			items = append(items, d)
		}
	}
	q.items, q.bytes, q.keys = nil, 0, nil
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
			pm.copyDeferred(d)
		}()
	}
	wg.Wait()
}

// copyDeferred copies one value from its source (tier 0 unless said) into
// its targets, after any other copy of it, unless a Delete of it runs or the
// source no longer has it.
func (pm *promoter) copyDeferred(d deferredCopy) {
	s := pm.s
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
	defer pm.endPromotion(d.key, done)
	src := d.src
	if src == nil {
		src = s.layers[0]
	}
	r, err := src.Tier.Open(context.Background(), d.key)
	if err != nil {
		s.log.Debug("deferred copy: gone from its source", "tier", src.name, "key", d.key.String(), "err", err)
		return
	}
	defer r.Close()
	pm.copyTo(src, r, d.targets)
}

// deferredLen is the number of queued or running deferred copies.
func (pm *promoter) deferredLenLocked() int64 {
	return int64(len(pm.deferq.items)) + pm.deferq.running
}
