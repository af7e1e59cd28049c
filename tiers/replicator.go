package tiers

import (
	"container/heap"
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flechefs/flechefs/digest"
)

// The replicator copies published values to the writable remote tiers and
// keeps the upload queue: the durable one in the persistent tier (Queue) and
// its in-memory mirror. See doc.go, "Uploads", for an upload's states.
type replicator struct {
	s *Stack
	q uploadQueue // under Stack.mu
	// deq: uploads done whose durable record is to remove (dequeuer).
	deq   chan uploaded
	large chan struct{} // a slot per upload of a large value
	// early counts the EarlyUploads running (BeginUpload); under Stack.mu.
	early int

	uploaded, uploadedBytes, uploadErrors, conflicts atomic.Int64
	lastErr                                          atomic.Value // string
	// retryNow: a writable remote answers again, so the keys waiting for
	// a retry go now (taken by the next worker).
	retryNow atomic.Bool
	probing  atomic.Bool // a worker is probing a remote that is down
}

func (rp *replicator) init(s *Stack) {
	rp.s = s
	rp.q.init(&s.keys)
	rp.deq = make(chan uploaded, 4096)
	rp.large = make(chan struct{}, s.pol.LargeUploads)
}

func (q *uploadQueue) init(keys *keyTable) {
	q.set = map[digest.Key]*upItem{}
	q.keys = keys
	q.kick = make(chan struct{}, 1)
}

// uploadQueue is the in-memory mirror of the durable queue: keys in order,
// with per-key retry times. A key waiting for its upload is in ready (due)
// or in waiting (before its retry time), so that next costs the same
// whatever the backlog: during an outage every key of a large queue waits,
// and every publish asks next under the stack's lock.
type uploadQueue struct {
	order   list.List // of digest.Key, oldest first: a removal costs O(1) however long the queue
	ready   list.List // of *upItem due, in the order they are tried
	waiting waitHeap  // of *upItem before their retry time, soonest first
	set     map[digest.Key]*upItem
	keys    *keyTable // the uploads in flight are keyState.upload
	kick    chan struct{}
}

// upItem is one key's place in the upload queue. Its state moves
//
//	queued ──start──▶ inFlight ──settle──▶ sent ──(persisted)──▶ out of the queue
//	   ▲                  │                                      (durable record removed
//	   └──────fail────────┘                                       by the dequeuer)
//
// whoever uploads: a worker (uploader), the upload that streamed the value
// while it was written (an EarlyUpload, adopted at publish), or the
// publishing caller (write-through, uploadNow). All three start with
// startUploadLocked, put the value on the writable remotes (uploadTo; an
// early upload's PutGrowing), settle with settleUpload and end with
// endUploadLocked. A failure puts the item back
// (after a backoff, except an early upload's: the workers take over at
// once). A Delete takes the item out of the queue in any state and
// cancels the upload in flight; a publish of the key after it makes a new
// item, which the ending upload leaves alone.
type upItem struct {
	key   digest.Key
	state upState
	since time.Time // when it entered the queue
	retry
	elem    *list.Element // in uploadQueue.order
	readyAt *list.Element // in uploadQueue.ready, or nil
	heapAt  int           // in uploadQueue.waiting, or -1
}

type upState uint8

const (
	upQueued   upState = iota // waiting for an uploader, or for its retry time
	upInFlight                // an upload runs (keyState.upload)
	upSent                    // on every writable remote; waits for its persistence, then leaves the queue
)

func (q *uploadQueue) add(k digest.Key) {
	if _, ok := q.set[k]; ok {
		return
	}
	it := &upItem{key: k, elem: q.order.PushBack(k), since: time.Now(), heapAt: -1}
	it.readyAt = q.ready.PushBack(it)
	q.set[k] = it
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

func (q *uploadQueue) has(k digest.Key) bool { _, ok := q.set[k]; return ok }

func (q *uploadQueue) len() int { return len(q.set) }

// oldest is when the longest-waiting key entered the queue (in this
// process: a key resumed after a restart counts from the restart), or zero.
func (q *uploadQueue) oldest() time.Time {
	if e := q.order.Front(); e != nil {
		return q.set[e.Value.(digest.Key)].since
	}
	return time.Time{}
}

// remove takes k out of the queue and cancels its upload in flight.
func (q *uploadQueue) remove(k digest.Key) {
	it, ok := q.set[k]
	if !ok {
		return
	}
	delete(q.set, k)
	q.order.Remove(it.elem)
	q.unready(it)
	if u := q.keys.get(k).upload; u != nil {
		u.cancel()
	}
}

// next returns the first key due for upload, or the time to wait.
// A key for which held says so waits (its queued remote delete comes
// first: the remote keeps the first value it gets).
func (q *uploadQueue) next(now time.Time, held func(digest.Key) bool) (digest.Key, time.Duration, bool) {
	// Keys whose retry time came go first, the earliest first.
	q.readyFront(func(it *upItem) bool { return !it.next.After(now) }, false)
	for e := q.ready.Front(); e != nil; {
		it := e.Value.(*upItem)
		e = e.Next()
		if q.keys.get(it.key).upload != nil || held(it.key) {
			continue // in flight (it leaves ready when it starts), or held: stays
		}
		if it.next.After(now) {
			q.unready(it)
			heap.Push(&q.waiting, it)
			continue
		}
		return it.key, 0, true
	}
	wait := time.Minute
	if len(q.waiting) > 0 {
		wait = min(wait, q.waiting[0].next.Sub(now))
	}
	return digest.Key{}, wait, false
}

// unready takes it out of ready and waiting: its upload starts, or it
// leaves the queue.
func (q *uploadQueue) unready(it *upItem) {
	if it.readyAt != nil {
		q.ready.Remove(it.readyAt)
		it.readyAt = nil
	}
	if it.heapAt >= 0 {
		heap.Remove(&q.waiting, it.heapAt)
	}
}

// wait puts it, not in flight, back to wait for its retry time (at the
// front of ready when that has come: a retry goes before newer keys).
func (q *uploadQueue) wait(it *upItem) {
	q.unready(it)
	if it.next.IsZero() || !it.next.After(time.Now()) {
		it.readyAt = q.ready.PushFront(it)
		return
	}
	heap.Push(&q.waiting, it)
}

// retryAll makes every key waiting for its retry time due now, before
// newer keys, soonest retry first.
func (q *uploadQueue) retryAll() {
	q.readyFront(func(*upItem) bool { return true }, true)
}

// readyFront moves the waiting items, soonest retry first, while due says
// so, to the front of ready in that order; with reset, their retry times
// are cleared (they are due now).
func (q *uploadQueue) readyFront(due func(*upItem) bool, reset bool) {
	var moved []*upItem
	for len(q.waiting) > 0 && due(q.waiting[0]) {
		it := heap.Pop(&q.waiting).(*upItem)
		if reset {
			it.next = time.Time{}
		}
		moved = append(moved, it)
	}
	for i := len(moved) - 1; i >= 0; i-- {
		moved[i].readyAt = q.ready.PushFront(moved[i])
	}
}

// waitHeap orders items by retry time (container/heap).
type waitHeap []*upItem

func (h waitHeap) Len() int           { return len(h) }
func (h waitHeap) Less(i, j int) bool { return h[i].next.Before(h[j].next) }
func (h waitHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapAt, h[j].heapAt = i, j
}
func (h *waitHeap) Push(x any) {
	it := x.(*upItem)
	it.heapAt = len(*h)
	*h = append(*h, it)
}
func (h *waitHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	it.heapAt = -1
	return it
}

func (rp *replicator) uploader() {
	s := rp.s
	defer s.wg.Done()
	for {
		if d := s.act.publishHold(time.Now()); d > 0 {
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(d):
			}
			continue
		}
		s.mu.Lock()
		if rp.retryNow.Swap(false) {
			rp.q.retryAll()
		}
		k, wait, ok := rp.q.next(time.Now(), s.deleter.tombstonedLocked)
		waiting := len(rp.q.waiting) > 0
		var ctx context.Context
		var item *upItem
		if ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithCancel(s.ctx)
			item = rp.q.set[k]
			rp.startUploadLocked(k, item, cancel)
		}
		s.mu.Unlock()
		if !ok {
			if waiting && !s.remotesUp() {
				// Uploads wait for a remote that is down: ask it now and
				// then, so that they go once it answers, not at their
				// own retry times up to RetryMax later.
				wait = min(wait, remoteProbeEvery)
			}
			select {
			case <-s.ctx.Done():
				return
			case <-rp.q.kick:
			case <-time.After(wait):
				if waiting && !s.remotesUp() {
					rp.probe()
				}
			}
			continue
		}
		err := rp.uploadOne(ctx, k, item)
		s.mu.Lock()
		rp.endUploadLocked(k, item, err, true)
		s.mu.Unlock()
		select { // wake another worker if more is due
		case rp.q.kick <- struct{}{}:
		default:
		}
		if s.ctx.Err() != nil {
			return
		}
	}
}

// remoteProbeEvery is how often the workers ask a writable remote that is
// down whether it answers again, while uploads wait for it.
const remoteProbeEvery = 2 * time.Second

// ProbeKey is a key no entry has: a Stat of it tells whether a remote
// answers.
var ProbeKey = digest.MustParse("0000000000000000")

// probe asks each writable remote that is down for ProbeKey, once at a
// time among the workers; an answer marks it available (noteErr), which
// sends the waiting uploads (wakeRetries).
func (rp *replicator) probe() {
	s := rp.s
	if !rp.probing.CompareAndSwap(false, true) {
		return
	}
	defer rp.probing.Store(false)
	for r := range s.layers.writableRemote() {
		if !r.unavailable.Load() {
			continue
		}
		ctx, cancel := context.WithTimeout(s.ctx, s.opt.RemoteTimeout)
		_, err := r.Tier.Stat(ctx, ProbeKey)
		cancel()
		if s.ctx.Err() == nil {
			s.noteErr(r, err)
		}
	}
}

// wakeRetries sends the uploads waiting for a retry now: a writable remote
// answers again.
func (rp *replicator) wakeRetries() {
	rp.retryNow.Store(true)
	select {
	case rp.q.kick <- struct{}{}:
	default:
	}
}

// uploadNow uploads k's queued item in the caller (write-through), once
// an upload of k in flight has ended: k is on every writable remote when
// it returns nil. A failure leaves the item queued, retried by the workers
// after a backoff. ctx bounds the wait for another upload of k; the upload
// itself is not cut by it (a cancelled upload reads as one a Delete
// stopped).
func (rp *replicator) uploadNow(ctx context.Context, k digest.Key) error {
	s := rp.s
	for {
		s.mu.Lock()
		item := rp.q.set[k]
		if item == nil {
			s.mu.Unlock()
			return nil // uploaded, or deleted
		}
		if u := s.keys.get(k).upload; u != nil {
			s.mu.Unlock()
			select {
			case <-u.done:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		uctx, cancel := context.WithCancel(s.ctx)
		rp.startUploadLocked(k, item, cancel)
		s.mu.Unlock()
		err := rp.uploadOne(uctx, k, item)
		s.mu.Lock()
		rp.endUploadLocked(k, item, err, true)
		s.mu.Unlock()
		return err
	}
}

// startUploadLocked marks an upload of item, k's, running; cancel stops it.
func (rp *replicator) startUploadLocked(k digest.Key, item *upItem, cancel context.CancelFunc) {
	s := rp.s
	item.state = upInFlight
	rp.q.unready(item)
	s.keys.edit(k, func(ks *keyState) { ks.upload = &inflight{cancel: cancel, done: make(chan struct{})} })
}

// endUploadLocked ends the upload of k in flight, which took item: on
// success k leaves the queue; on failure it is retried, after a backoff
// when backoff is set, else at once.
func (rp *replicator) endUploadLocked(k digest.Key, item *upItem, err error, backoff bool) {
	s := rp.s
	if u := s.keys.get(k).upload; u != nil {
		u.cancel()
		close(u.done)
		s.keys.edit(k, func(ks *keyState) { ks.upload = nil })
	}
	// Only the item this upload took: a Delete and a new publish of k
	// while it ran replaced it with another, for the new value, which
	// is still to upload.
	if it, ok := rp.q.set[k]; ok && it == item {
		switch {
		case err == nil:
			rp.q.remove(k)
			if p := s.keys.get(k).pub; p != nil && isClosed(p.persisted) {
				s.publisher.dropPendingLocked(p)
			}
		case backoff:
			it.state = upQueued
			it.failed(&s.pol)
			rp.q.wait(it)
		default:
			it.state = upQueued
			it.next = time.Time{}
			rp.q.wait(it)
		}
	}
	s.broadcastLocked()
}

// uploadOne copies k from the local tiers to every writable remote and
// takes it out of the durable queue.
func (rp *replicator) uploadOne(ctx context.Context, k digest.Key, item *upItem) error {
	s := rp.s
	var src Reader
	var persisted chan struct{} // of the published entry uploaded from its blob
	verified := false           // src is the blob its writer hashed
	var sent func()             // ends the wait of the blob's persistence
	s.mu.Lock()
	if p := s.keys.get(k).pub; p != nil {
		p.refs++
		src = &pubReader{s: s, p: p}
		persisted = p.persisted
		verified = true
		sent = p.endSent
	}
	s.mu.Unlock()
	var openErr error // why a local tier could not open k, other than not holding it
	if src == nil {
		for l := range s.layers.local() {
			r, err := l.Tier.Open(ctx, k)
			if err == nil {
				// As a reader's: a bad copy is counted and removed, and
				// the read goes on from the next copy of the same value.
				src = &stackReader{s: s, l: l, k: k, r: r}
				break
			}
			if !errors.Is(err, ErrNotFound) {
				openErr = err
			}
		}
	}
	if sent != nil {
		defer sent()
	}
	if src == nil {
		switch {
		case ctx.Err() != nil && s.ctx.Err() == nil:
			return nil // cancelled by Delete, which takes the queue record
		case ctx.Err() != nil:
			// Closing: the opens failed because of it. The value stays
			// queued for the next start; dropping it here lost the
			// record of a value the tiers still held.
			return ctx.Err()
		case openErr != nil:
			return fmt.Errorf("reading the value to upload: %w", openErr)
		}
		// Deleted, or lost: nothing to upload.
		s.log.Warn("queued upload has no local copy; dropping it", "key", k.String())
		return rp.dequeue(k)
	}
	defer src.Close()
	if src.Info().Size > s.pol.SmallUpload {
		select {
		case rp.large <- struct{}{}:
			defer func() { <-rp.large }()
		case <-ctx.Done():
			return nil // cancelled by Delete, or closing
		}
	}
	for r := range s.layers.writableRemote() {
		start := time.Now()
		err := rp.uploadTo(ctx, r, src.Info(), src, verified)
		if s.log.Enabled(ctx, slog.LevelDebug) {
			s.log.Debug("upload", "key", k.String(), "tier", r.name, "size", src.Info().Size, "took", time.Since(start), "err", err)
		}
		if err != nil {
			if ctx.Err() != nil && s.ctx.Err() == nil {
				return nil // cancelled by Delete
			}
			rp.uploadErrors.Add(1)
			rp.lastErr.Store(err.Error())
			s.log.Warn("upload failed; will retry", "key", k.String(), "err", err)
			return err
		}
	}
	rp.lastErr.Store("")
	if sent != nil {
		sent() // before waiting for the persistence, which waits for it
	}
	return rp.settleUpload(ctx, k, item, persisted)
}

// uploadTo puts one value on remote r. A remote that already holds the
// key ends the upload (uploadExisting): with the same value it is done,
// with another it is a conflict, and this mount drops its own (first
// writer wins). verified says that src is the published blob whose
// SHA-256 its writer computed, info.Sum (Meta.Verified): the remote tier
// need not hash it again.
func (rp *replicator) uploadTo(ctx context.Context, r *layer, info Info, src io.ReaderAt, verified bool) error {
	s := rp.s
	put := func() error {
		_, err := r.Tier.Put(ctx, info.Key, &countingReader{r: copyReader(src, info.Size), n: &r.bytesIn},
			Meta{Size: info.Size, Sum: info.Sum, Created: info.Created, Verified: verified})
		return err
	}
	start := time.Now()
	err := put()
	conflict := false
	if errors.Is(err, ErrExist) {
		conflict, err = rp.uploadExisting(ctx, r, info, put)
	}
	s.observe(r, "upload", start, err)
	if conflict {
		s.noteErr(r, nil)
		s.absent.added(r, info.Key)
		return nil
	}
	rp.noteUpload(r, info, err)
	return err
}

// noteUpload counts the upload of info to r.
func (rp *replicator) noteUpload(r *layer, info Info, err error) {
	s := rp.s
	s.noteErr(r, err)
	if err == nil {
		rp.uploaded.Add(1)
		rp.uploadedBytes.Add(info.Size)
		s.list.add(info)
		s.absent.added(r, info.Key)
	}
}

// settleUpload ends an upload of k that reached the remote, for the queue
// and for an early upload alike. Uploaded before it was persisted
// (persisted not nil), the value's durable queue record is written by the
// persisting commit, so that is waited for; then the record is taken out
// of the durable queue, unless ctx was cancelled by a Delete meanwhile:
// the queue may already hold a new value of k, whose record must stay.
func (rp *replicator) settleUpload(ctx context.Context, k digest.Key, item *upItem, persisted <-chan struct{}) error {
	rp.s.mu.Lock()
	item.state = upSent
	rp.s.mu.Unlock()
	s := rp.s
	if persisted != nil {
		select {
		case <-persisted:
		case <-ctx.Done():
		}
	}
	if ctx.Err() != nil && s.ctx.Err() == nil {
		return nil
	}
	if s.queue != nil {
		// The durable record goes in the background, with others: a
		// worker waiting for its own commit (fdatasync included) before
		// its next upload spent a third of its time there. Lost at a
		// crash, the record only makes the next start check that the
		// remote has the value.
		select {
		case rp.deq <- uploaded{k, item}:
			return nil
		default:
		}
	}
	return rp.dequeue(k)
}

// uploaded is an upload done, whose durable queue record is to remove.
type uploaded struct {
	k    digest.Key
	item *upItem // the upload queue's item it took
}

// flushDequeues takes what the dequeuer left out of the durable queue; Close
// runs it once the workers are done, before it closes the tiers.
func (rp *replicator) flushDequeues() {
	rp.dequeueBatch(rp.drainDeq(nil, len(rp.deq)))
}

// dequeuer takes uploaded entries out of the durable queue, many per
// commit.
func (rp *replicator) dequeuer() {
	s := rp.s
	defer s.wg.Done()
	for {
		select {
		case <-s.ctx.Done():
			return
		case u := <-rp.deq:
			// Linger a little for more: a commit rewrites every page its
			// keys fall on, and uploads finishing one by one made a
			// commit each. A record lost at a crash only makes the next
			// start check the remote for that value.
			select {
			case <-time.After(s.pol.DequeueLinger):
			case <-s.ctx.Done():
			}
			rp.dequeueBatch(rp.drainDeq([]uploaded{u}, 1023))
		}
	}
}

// drainDeq appends to batch up to n more uploads that are waiting in rp.deq.
func (rp *replicator) drainDeq(batch []uploaded, n int) []uploaded {
	for range n {
		select {
		case u := <-rp.deq:
			batch = append(batch, u)
		default:
			return batch
		}
	}
	return batch
}

// dequeueBatch takes keys out of the durable queue at once (the bolt tier's
// group commit writes them together), except a key deleted and published
// again since its upload: its record is the new value's. A key still queued
// with the item its upload took is not renewed: the uploader hands it over
// before it ends the upload (endUploadLocked).
func (rp *replicator) dequeueBatch(batch []uploaded) {
	s := rp.s
	var wg sync.WaitGroup
	for _, u := range batch {
		s.mu.Lock()
		it, queued := rp.q.set[u.k]
		renewed := queued && it != u.item
		s.mu.Unlock()
		if !renewed {
			wg.Go(func() { rp.dequeue(u.k) })
		}
	}
	wg.Wait()
}

// dequeue takes k out of the durable queue. Not with s.ctx: Close cancels
// it right after the last uploads, and a dequeue failing then would leave
// uploaded entries in the queue, to be read and checked again at the next
// start. The commit is local and short; Close waits for it.
func (rp *replicator) dequeue(k digest.Key) error {
	s := rp.s
	if s.queue != nil {
		if err := s.queue.Uploaded(context.Background(), k); err != nil {
			s.log.Error("could not take entry out of the upload queue", "key", k.String(), "err", err)
			return err
		}
	}
	return nil
}

// adoptLocked makes u the upload of p's queued item: the workers leave the
// key to it (it is in flight) and a Delete cancels and waits for it as for
// theirs. False when u has ended (failed), or another upload of the key is
// still in flight (the value's previous incarnation): the queue uploads p.
func (rp *replicator) adoptLocked(u *EarlyUpload, p *pub) bool {
	s := rp.s
	k := p.info.Key
	item := rp.q.set[k]
	if u.s != s || u.key != k || u.done || item == nil || s.keys.get(k).upload != nil {
		return false
	}
	u.adopted, u.p, u.item = true, p, item
	u.readAtPublish, u.published = u.read.Load(), time.Now()
	p.refs++
	rp.startUploadLocked(k, item, u.cancel)
	return true
}

// uploadExisting decides an upload the remote refused because it holds
// the key. It never removes or replaces a copy it cannot prove is its own
// value: it learns the remote's value (remoteValue: its record, or its
// bytes hashed), and the same value ends the upload, another is a
// conflict (reported true: this mount's copies are dropped). A copy that
// fails verification (ErrCorrupt: its size disagrees with its record) is
// handed to s.corrupt and ours put again. A failure to tell is an error:
// the upload is retried.
func (rp *replicator) uploadExisting(ctx context.Context, r *layer, info Info, put func() error) (conflict bool, err error) {
	s := rp.s
	for range 3 {
		rinfo, serr := rp.remoteValue(ctx, r, info.Key, info.Size)
		switch {
		case serr == nil && rinfo.Size == info.Size && rinfo.Sum == info.Sum:
			return false, nil
		case serr == nil && info.Key.Ext() == "" && info.Key.Hex() == info.Sum.String():
			// The key is our value's SHA-256: no other value can be
			// the key's, so the remote copy is damage (or a write in
			// progress), not a conflict. Ours is not dropped for it;
			// the upload is retried.
			return false, Wrap(r.name, "put", info.Key, fmt.Errorf("%w: the remote copy (%d bytes, sha256 %s) is not the value its name is the hash of",
				ErrCorrupt, rinfo.Size, rinfo.Sum))
		case serr == nil:
			rp.conflict(r, info, rinfo)
			return true, nil
		case errors.Is(serr, ErrForeign):
			// A file flechefs did not write that the tier does not
			// serve (its foreign setting): left alone, and ours kept,
			// since the remote serves no value for the key.
			rp.conflicts.Add(1)
			s.log.Warn("remote holds a file flechefs did not write under this key and does not serve it (its foreign setting); not uploaded, the file is left alone",
				"key", info.Key.String(), "tier", r.name)
			return false, nil
		case errors.Is(serr, ErrCorrupt):
			s.corrupt(r, info.Key, serr) // counted, logged and quarantined; then ours is put
		case errors.Is(serr, ErrNotFound):
			// Removed since the Put looked: put again.
		default:
			return false, serr
		}
		if err := put(); !errors.Is(err, ErrExist) {
			return false, err
		}
	}
	return false, Wrap(r.name, "put", info.Key, errors.New("the remote copy keeps changing; will retry"))
}

// remoteValue returns the value remote r holds for k: its Info, with the
// hash from its record, or, when it has none after Policy.RecordWait, from its
// bytes (a copy whose writer died between its rename and its record, or
// one copied in by hand; hashing it is how it is adopted). ErrNotFound
// when it is gone.
func (rp *replicator) remoteValue(ctx context.Context, r *layer, k digest.Key, size int64) (Info, error) {
	s := rp.s
	deadline := time.Now().Add(s.pol.RecordWait)
	wait := 50 * time.Millisecond
	for {
		sctx, cancel := context.WithTimeout(ctx, s.opt.RemoteTimeout)
		rinfo, err := r.Tier.Stat(sctx, k)
		cancel()
		// Not found right after the Put was refused: a copy without a
		// record that the tier hides while it may still be written (a
		// young one, tiers/sftp's foreign rules), or one removed since.
		// Both are asked again until the deadline.
		hidden := errors.Is(err, ErrNotFound) && !errors.Is(err, ErrForeign)
		if err != nil && !hidden || err == nil && (!rinfo.Sum.IsZero() || rinfo.Size != size) {
			// A record, an error, or a size that already tells another
			// value (its hash is not needed to call it a conflict).
			return rinfo, err
		}
		if time.Now().After(deadline) {
			if hidden {
				return Info{}, err
			}
			return rp.hashRemote(ctx, r, k)
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return Info{}, ctx.Err()
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// hashRemote reads k's copy in r whole and hashes it; when its Reader is
// an Adopter, it records the hash, so that readers verify the copy from
// now on. A copy that changed while it was hashed, or whose record came
// meanwhile and disagrees, is an error: the caller asks again.
func (rp *replicator) hashRemote(ctx context.Context, r *layer, k digest.Key) (Info, error) {
	s := rp.s
	rd, err := r.Tier.Open(ctx, k)
	if err != nil {
		return Info{}, err
	}
	defer rd.Close()
	info := rd.Info()
	h := digest.NewHasher()
	var n int64
	if wt, ok := rd.(io.WriterTo); ok {
		n, err = wt.WriteTo(h)
	} else {
		n, err = io.Copy(h, io.NewSectionReader(rd, 0, info.Size))
	}
	if err != nil {
		return Info{}, err
	}
	if n != info.Size {
		return Info{}, fmt.Errorf("%w: remote copy ended at %d bytes of %d", ErrCorrupt, n, info.Size)
	}
	if !info.Sum.IsZero() {
		if h.Sum() != info.Sum {
			return Info{}, fmt.Errorf("%w: remote copy does not match its sum record", ErrCorrupt)
		}
		return info, nil // a record appeared meanwhile
	}
	info.Sum = h.Sum()
	s.log.Info("remote copy has no checksum record; hashed it to learn its value", "tier", r.name, "key", k.String(),
		"sha256", info.Sum.String(), "size", info.Size)
	if a, ok := rd.(Adopter); ok && r.writable() {
		if err := a.Adopt(ctx, info.Sum); err != nil {
			// A record that disagrees, or a copy replaced while it was
			// hashed: what was hashed is not the remote's value.
			return Info{}, err
		}
	}
	return info, nil
}

// conflict handles an upload of info to r that found another value
// there: counted, logged once, and this mount's copies of the losing value
// dropped from its local tiers (in the background: the upload that found
// it still holds them; Sync waits for it).
func (rp *replicator) conflict(r *layer, info Info, remote Info) {
	s := rp.s
	rp.conflicts.Add(1)
	s.log.Warn("remote holds another value for this key; this mount drops its own and will read the remote's (first writer wins)",
		"key", info.Key.String(), "tier", r.name, "local_sha256", info.Sum.String(), "remote_sha256", remote.Sum.String(),
		"local_size", info.Size, "remote_size", remote.Size)
	s.mu.Lock()
	if s.keys.n.lost >= maxLost {
		s.keys.each(func(k digest.Key, ks *keyState) bool {
			if !ks.lost {
				return true
			}
			s.keys.edit(k, func(ks *keyState) { ks.lost, ks.lostSum = false, digest.Sum{} })
			return false
		})
	}
	s.keys.edit(info.Key, func(ks *keyState) { ks.lost, ks.lostSum = true, info.Sum })
	s.settling++
	s.wg.Add(1)
	s.mu.Unlock()
	go s.dropLost(info.Key, info.Sum)
}
