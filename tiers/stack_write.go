package tiers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/flechefs/flechefs/digest"
)

// pub is a published entry that is not yet in the persistent tier (or, with
// no persistent tier, not yet uploaded). It is served from its blob.
type pub struct {
	info      Info
	blob      Blob
	refs      int           // the pending map's reference plus open readers
	upload    bool          // to be queued for upload once persisted
	persisted chan struct{} // closed when the persistence attempt ended
	err       error         // its result, readable after persisted is closed
	deleted   bool
	inTier0   bool // tier 0 took a copy at publish
	// early is the upload that streamed the value while it was written,
	// adopted at publish; hurry is closed by WaitDurable (under s.mu).
	early *EarlyUpload
	hurry chan struct{}
	// sent is closed when an upload of the value from its blob ended
	// (sentOnce): a large value persists after it (see persistOne).
	sent     chan struct{}
	sentOnce sync.Once
}

// endSent closes p.sent once.
func (p *pub) endSent() { p.sentOnce.Do(func() { close(p.sent) }) }

// Publish makes b the value of k: visible to Stat/Open when it returns,
// persisted to the local persistent tier and uploaded in the background.
// The stack takes ownership of b and Releases it. sum is b's SHA-256.
// ErrExist if k already exists locally (first writer wins; b is released).
// The remote tiers are not asked, which would cost a round trip per
// publish: the caller looked k up before writing it (the mount's create
// does), and a remote that got k since keeps its value when the upload
// comes (a conflict, counted and logged).
//
// A b that is an UploadingBlob has its early upload adopted as the value's
// upload, or aborted when Publish fails or the value is not to be uploaded.
func (s *Stack) Publish(ctx context.Context, k digest.Key, b Blob, sum digest.Sum) (Info, error) {
	info := Info{Key: k, Size: b.Size(), Sum: sum, Created: time.Now()}
	s.act.published(info.Created)
	var early *EarlyUpload
	adopted := false
	if ub, ok := b.(UploadingBlob); ok && ub.EarlyUpload() != nil {
		early = ub.EarlyUpload()
		defer func() {
			if !adopted {
				early.Abort()
			}
		}()
	}
	s.mu.Lock()
	settled := s.settled
	s.mu.Unlock()
	if s.heldLocally(ctx, k) {
		s.dropped.Add(1)
		b.Release()
		return Info{}, Wrap("stack", "publish", k, ErrExist)
	}
	p := &pub{info: info, blob: b, refs: 1, persisted: make(chan struct{}), hurry: make(chan struct{}),
		sent: make(chan struct{}), upload: s.hasWritableRemote() && !s.opt.WriteThrough}
	s.mu.Lock()
	for s.settled != settled && !s.closed {
		// Published entries left the pending map for the tiers since the
		// Stat: k may be one of them, which the Stat did not see in
		// either place. Look again in the local tiers.
		settled = s.settled
		s.mu.Unlock()
		if s.heldLocally(ctx, k) {
			s.dropped.Add(1)
			b.Release()
			return Info{}, Wrap("stack", "publish", k, ErrExist)
		}
		s.mu.Lock()
	}
	if s.closed {
		s.mu.Unlock()
		b.Release()
		return Info{}, Wrap("stack", "publish", k, ErrClosed)
	}
	if s.keys.get(k).pub != nil {
		s.mu.Unlock()
		s.dropped.Add(1)
		b.Release()
		return Info{}, Wrap("stack", "publish", k, ErrExist)
	}
	s.keys.edit(k, func(ks *keyState) { ks.pub = p })
	p.refs++ // the persister's
	if p.upload {
		// The upload starts now, from the blob, alongside the
		// persistence; it leaves the durable queue once both are done.
		s.up.add(k)
		if early != nil {
			if adopted = s.adoptLocked(early, p); adopted {
				p.early = early
			}
		}
	}
	s.publishing.Add(1)
	s.mu.Unlock()
	defer s.publishing.Done()
	if adopted {
		early.finish(info)
	}
	s.list.add(info)

	// Tier 0 at once when it is RAM-fast and not the persistent tier; the
	// rest in the background.
	if l := s.layers[0]; !l.Remote && l.writable() && l != s.persist {
		p.inTier0 = s.putLayer(l, p) == nil
	}
	s.persistCh <- p
	if len(s.persistCh) > cap(s.persistCh)/2 {
		select { // wake a persister that holds entries (collect)
		case s.persistFull <- struct{}{}:
		default:
		}
	}

	if s.opt.WriteThrough && len(s.remotes) > 0 {
		if err := s.WaitDurable(ctx, k); err != nil {
			return info, err
		}
		if _, err := s.settleTomb(ctx, k); err != nil {
			return info, Wrap("stack", "publish", k, err)
		}
		for _, r := range s.remotes {
			if !r.writable() {
				continue
			}
			if err := s.uploadTo(ctx, r, p.info, p.blob, true); err != nil {
				return info, Wrap("stack", "publish", k, err)
			}
		}
	}
	return info, nil
}

// putLayer copies a published value into l: into a tier that keeps values
// in memory (a BytesPutter), the blob's own bytes when it has them (the
// copy of a small value cost as much as the rest of Publish: a new buffer
// is new pages, faulted in).
func (s *Stack) putLayer(l *layer, p *pub) error {
	m := Meta{Size: p.info.Size, Sum: p.info.Sum, Created: p.info.Created,
		Pending: p.upload && l == s.persist, Verified: true}
	var err error
	bp, ok := l.Tier.(BytesPutter)
	if b := blobBytes(p.blob); ok && b != nil && int64(len(b)) == p.info.Size {
		if _, err = bp.PutBytes(s.ctx, p.info.Key, b, m); err == nil {
			l.bytesIn.Add(p.info.Size)
		}
	} else {
		_, err = l.Tier.Put(s.ctx, p.info.Key, &countingReader{r: copyReader(p.blob, p.info.Size), n: &l.bytesIn}, m)
	}
	if err != nil && !errors.Is(err, ErrExist) && !errors.Is(err, ErrNoSpace) {
		s.noteErr(l, err)
	}
	return err
}

// blobBytes returns the in-memory value of a BytesBlob, or nil.
func blobBytes(b Blob) []byte {
	if bb, ok := b.(BytesBlob); ok {
		return bb.Bytes()
	}
	return nil
}

// persister writes published entries to the local tiers after tier 0 and
// records their uploads, in the tier's own commit.
//
// A program that writes entries one after the other publishes them one at
// a time, and a persister taking them one at a time would give each its
// own commit (two fdatasyncs and a freelist rewrite per entry). So a
// persister takes what else is queued, up to Policy.PersistBatch small
// entries, and puts them at once: the bolt tier's group commit writes them
// in one transaction.
//
// While small entries are being published in a burst, the persisters also
// wait, as the uploads do (persistHold): commits beside a loop of writes
// take its CPU on 2 cores. The entries are served from tier 0 and their
// blobs meanwhile, and are persisted together once the publishes pause.
func (s *Stack) persister() {
	defer s.persistWG.Done()
	for p := range s.persistCh {
		if p.info.Size > s.pol.PersistSmall {
			s.persistOne(p)
			continue
		}
		s.persistAll(s.collect(p))
	}
}

// collect returns p and the small entries queued after it: what is queued
// now, up to Policy.PersistBatch, or while persistHold says to wait, everything
// published until then. Large entries met meanwhile persist on their own
// goroutines: the batch does not wait for them (their persistence may wait
// for their early upload).
func (s *Stack) collect(p *pub) []*pub {
	s.mu.Lock()
	hurried := s.hurried // closed by WaitDurable and Delete from now on
	s.mu.Unlock()
	batch := []*pub{p}
	held := p.info.Size
	s.heldBytes.Add(held)
	defer func() { s.heldBytes.Add(-held) }()
	// stop ends the hold: an entry of the batch is waited for.
	stop := isClosed(p.hurry)
	take := func(q *pub) {
		if q.info.Size > s.pol.PersistSmall {
			s.persistWG.Add(1)
			go func() {
				defer s.persistWG.Done()
				s.persistOne(q)
			}()
			return
		}
		batch = append(batch, q)
		held += q.info.Size
		s.heldBytes.Add(q.info.Size)
		stop = stop || isClosed(q.hurry)
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
	drain:
		for stop || len(batch) < s.pol.PersistBatch || s.persistHold(time.Now()) > 0 {
			select {
			case q, ok := <-s.persistCh:
				if !ok {
					return batch
				}
				take(q)
			default:
				break drain
			}
		}
		if stop {
			return batch
		}
		wait := s.persistHold(time.Now())
		if wait <= 0 {
			return batch
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		// Not woken by each publish (that costs a thread wake-up per
		// entry, on the writer's cores): the queue is drained when the
		// timer fires, or when it is half full.
		select {
		case <-timer.C:
		case <-s.persistFull:
		case <-hurried:
			stop = true
		case <-s.closing:
			stop = true // Close persists what is held at once
		case <-s.ctx.Done():
			return batch
		}
	}
}

// persistAll persists a batch of small entries, Policy.PersistBatch at a time.
// Entries waited for (WaitDurable, Delete) go first: an fsync during a
// burst waits for one commit, not for everything held.
func (s *Stack) persistAll(batch []*pub) {
	waited := make([]*pub, 0, len(batch))
	var rest []*pub
	for _, q := range batch {
		if isClosed(q.hurry) {
			waited = append(waited, q)
		} else {
			rest = append(rest, q)
		}
	}
	batch = append(waited, rest...)
	var wg sync.WaitGroup
	for len(batch) > 0 {
		n := min(len(batch), s.pol.PersistBatch)
		start := time.Now()
		for _, q := range batch[1:n] {
			wg.Go(func() { s.persistOne(q) })
		}
		s.persistOne(batch[0])
		wg.Wait()
		s.log.Debug("persisted", "entries", n, "took", time.Since(start))
		batch = batch[n:]
	}
}

// persistHold returns how long persisters should keep collecting published
// entries before they persist them: while a burst of publishes goes on (at
// least two, the last less than UploadQuiet ago), at most UploadMaxHold
// from its start and while the entries held are below PersistHoldBytes. A
// lone publish persists at once.
func (s *Stack) persistHold(now time.Time) time.Duration {
	if !s.act.inBurst() || s.heldBytes.Load() >= s.pol.PersistHoldBytes {
		return 0
	}
	return s.act.publishHold(now)
}

// hurryLocked ends the hold of the persisters (see collect): p is waited
// for.
func (s *Stack) hurryLocked(p *pub) {
	if !isClosed(p.hurry) {
		close(p.hurry)
	}
	close(s.hurried)
	s.hurried = make(chan struct{})
}

func (s *Stack) persistOne(p *pub) {
	k := p.info.Key
	if p.info.Size > s.pol.SmallUpload && p.upload {
		// A large value to upload is persisted once its upload ends
		// (the early one that streamed while it was written, or the
		// queue's from the blob): both copy the whole value, and on 2
		// cores the commit slows the upload. The value is
		// served from its spool meanwhile; an fsync does not wait.
		// A remote known to be down uploads nothing soon: no wait.
		ended := p.sent
		if u := p.early; u != nil {
			ended = u.ended
		}
		if p.early != nil || s.remotesUp() {
			select {
			case <-ended:
			case <-p.hurry:
			case <-s.closing:
			case <-time.After(s.pol.PersistDefer):
			}
		}
	}
	var perr error
	persisted := false
	s.mu.Lock()
	gone := p.deleted // while held: nothing to write, Delete waits for persisted
	s.mu.Unlock()
	for l := range s.layers.writableLocal() {
		if gone || l.idx == 0 && l != s.persist {
			// Tier 0 took its copy at publish, unless it is the
			// persistent tier (a stack with no RAM tier).
			continue
		}
		err := s.putLayer(l, p)
		if l == s.persist {
			switch {
			case err == nil:
				persisted = true
			case errors.Is(err, ErrExist):
				persisted = true
				if p.upload {
					// The tier held the key already (promoted from the remote):
					// nothing new to upload.
					p.upload = false
				}
			default:
				perr = err
				if !errors.Is(err, ErrFailed) { // the failed tier logged why, once
					s.log.Error("could not persist entry; it stays in memory until restart", "key", k.String(), "tier", l.name, "err", err)
				}
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p.err = perr
	close(p.persisted)
	switch {
	case p.deleted:
		// Deleted while we wrote it: Delete waits for persisted and then
		// removes what we wrote from every tier.
	case persisted:
		if p.upload {
			s.up.add(k)
		}
		s.dropPendingLocked(p)
	default:
		// No persistent tier, or it failed: the blob keeps serving the
		// entry. With a remote, the (in-memory) queue uploads it from the
		// blob and drops it then; without, it stays unless tier 0 took it.
		if p.upload {
			s.up.add(k)
		} else if p.inTier0 {
			s.dropPendingLocked(p)
		}
	}
	s.unrefLocked(p) // the persister's reference
	s.broadcastLocked()
}

// dropPendingLocked removes p from the pending map once a tier serves it.
func (s *Stack) dropPendingLocked(p *pub) {
	k := p.info.Key
	if s.keys.get(k).pub == p {
		s.keys.edit(k, func(ks *keyState) { ks.pub = nil })
		s.unrefLocked(p)
		s.settled++
	}
}

// heldLocally reports whether a local tier holds k.
func (s *Stack) heldLocally(ctx context.Context, k digest.Key) bool {
	for l := range s.layers.local() {
		if _, err := l.Tier.Stat(ctx, k); err == nil {
			return true
		}
	}
	return false
}

func (s *Stack) unrefLocked(p *pub) {
	p.refs--
	if p.refs == 0 {
		p.blob.Release()
	}
}

func (s *Stack) unpersistedLocked() int {
	n := 0
	s.keys.each(func(_ digest.Key, ks *keyState) bool {
		if ks.pub != nil && !isClosed(ks.pub.persisted) {
			n++
		}
		return true
	})
	return n
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// WaitDurable returns when k (if published here) is in the persistent local
// tier. Its persistence starts at once: it no longer waits for a burst of
// publishes to pause, nor for its early upload.
func (s *Stack) WaitDurable(ctx context.Context, k digest.Key) error {
	return s.waitDurable(ctx, k, true)
}

// WaitPersisted is WaitDurable without hurrying: it waits for the
// persistence to happen when it would have anyway (to keep track of it).
func (s *Stack) WaitPersisted(ctx context.Context, k digest.Key) error {
	return s.waitDurable(ctx, k, false)
}

func (s *Stack) waitDurable(ctx context.Context, k digest.Key, hurry bool) error {
	s.mu.Lock()
	p := s.keys.get(k).pub
	ok := p != nil
	if ok && hurry {
		s.hurryLocked(p)
	}
	s.mu.Unlock()
	if !ok {
		if s.persist != nil {
			if err := failed(s.persist); err != nil {
				// What was persisted there is no longer durable: say so
				// rather than claim it.
				return Wrap("stack", "fsync", k, fmt.Errorf("%w: %v", ErrFailed, err))
			}
		}
		return nil
	}
	select {
	case <-p.persisted:
		if p.err != nil {
			return Wrap("stack", "fsync", k, p.err)
		}
		if s.persist != nil {
			if sy, ok := s.persist.Tier.(Syncer); ok {
				return sy.Sync()
			}
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// pubReader reads a published entry from its blob.
type pubReader struct {
	s      *Stack
	p      *pub
	closed bool
	fg     bool // returned by Open: its reads are uses (stack_defer.go)
}

func (r *pubReader) Info() Info { return r.p.info }

func (r *pubReader) ReadAt(b []byte, off int64) (int, error) {
	if r.fg {
		r.s.act.used()
	}
	if off >= r.p.info.Size {
		return 0, io.EOF
	}
	n, err := r.p.blob.ReadAt(b, off)
	if err == nil && off+int64(n) >= r.p.info.Size && n < len(b) {
		err = io.EOF
	}
	return n, err
}

func (r *pubReader) Close() error {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	if !r.closed {
		r.closed = true
		r.s.unrefLocked(r.p)
	}
	return nil
}

// uploadQueue is the in-memory mirror of the durable queue: keys in order,
// with per-key retry times.
type uploadQueue struct {
	order []digest.Key
	set   map[digest.Key]*upItem
	keys  *keyTable // the uploads in flight are keyState.upload
	kick  chan struct{}
}

type upItem struct {
	next     time.Time
	attempts int
}

func (q *uploadQueue) init(keys *keyTable) {
	q.set = map[digest.Key]*upItem{}
	q.keys = keys
	q.kick = make(chan struct{}, 1)
}

func (q *uploadQueue) add(k digest.Key) {
	if _, ok := q.set[k]; ok {
		return
	}
	q.set[k] = &upItem{}
	q.order = append(q.order, k)
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

func (q *uploadQueue) has(k digest.Key) bool { _, ok := q.set[k]; return ok }
func (q *uploadQueue) len() int              { return len(q.set) }

func (q *uploadQueue) remove(k digest.Key) {
	if _, ok := q.set[k]; !ok {
		return
	}
	delete(q.set, k)
	if u := q.keys.get(k).upload; u != nil {
		u.cancel()
	}
	for i, o := range q.order {
		if o == k {
			q.order = append(q.order[:i], q.order[i+1:]...)
			break
		}
	}
}

// next returns the first key due for upload, or the time to wait.
// A key for which held says so waits (its queued remote delete comes
// first: the remote keeps the first value it gets).
func (q *uploadQueue) next(now time.Time, held func(digest.Key) bool) (digest.Key, time.Duration, bool) {
	wait := time.Minute
	for _, k := range q.order {
		if q.keys.get(k).upload != nil || held(k) {
			continue
		}
		it := q.set[k]
		if d := it.next.Sub(now); d > 0 {
			wait = min(wait, d)
			continue
		}
		return k, 0, true
	}
	return digest.Key{}, wait, false
}

func (s *Stack) uploader() {
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
		k, wait, ok := s.up.next(time.Now(), s.tombstonedLocked)
		var ctx context.Context
		var item *upItem
		if ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithCancel(s.ctx)
			s.startUploadLocked(k, cancel)
			item = s.up.set[k]
		}
		s.mu.Unlock()
		if !ok {
			select {
			case <-s.ctx.Done():
				return
			case <-s.up.kick:
			case <-time.After(wait):
			}
			continue
		}
		err := s.uploadOne(ctx, k, item)
		s.mu.Lock()
		s.endUploadLocked(k, item, err, true)
		s.mu.Unlock()
		select { // wake another worker if more is due
		case s.up.kick <- struct{}{}:
		default:
		}
		if s.ctx.Err() != nil {
			return
		}
	}
}

// startUploadLocked marks an upload of k running; cancel stops it.
func (s *Stack) startUploadLocked(k digest.Key, cancel context.CancelFunc) {
	s.keys.edit(k, func(ks *keyState) { ks.upload = &inflight{cancel: cancel, done: make(chan struct{})} })
}

// endUploadLocked ends the upload of k in flight, which took item: on
// success k leaves the queue; on failure it is retried, after a backoff
// when backoff is set, else at once.
func (s *Stack) endUploadLocked(k digest.Key, item *upItem, err error, backoff bool) {
	if u := s.keys.get(k).upload; u != nil {
		u.cancel()
		close(u.done)
		s.keys.edit(k, func(ks *keyState) { ks.upload = nil })
	}
	// Only the item this upload took: a Delete and a new publish of k
	// while it ran replaced it with another, for the new value, which
	// is still to upload.
	if it, ok := s.up.set[k]; ok && it == item {
		switch {
		case err == nil:
			s.up.remove(k)
			if p := s.keys.get(k).pub; p != nil && isClosed(p.persisted) {
				s.dropPendingLocked(p)
			}
		case backoff:
			it.attempts++
			backoff := min(time.Duration(1<<min(it.attempts, 6))*time.Second/2, time.Minute)
			it.next = time.Now().Add(backoff/2 + rand.N(backoff/2+1))
		default:
			it.next = time.Time{}
		}
	}
	s.broadcastLocked()
}

// uploadOne copies k from the local tiers to every writable remote and
// takes it out of the durable queue.
func (s *Stack) uploadOne(ctx context.Context, k digest.Key, item *upItem) error {
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
		return s.dequeue(k)
	}
	defer src.Close()
	if src.Info().Size > s.pol.SmallUpload {
		select {
		case s.largeUploads <- struct{}{}:
			defer func() { <-s.largeUploads }()
		case <-ctx.Done():
			return nil // cancelled by Delete, or closing
		}
	}
	for _, r := range s.remotes {
		if !r.writable() {
			continue
		}
		start := time.Now()
		err := s.uploadTo(ctx, r, src.Info(), src, verified)
		if s.log.Enabled(ctx, slog.LevelDebug) {
			s.log.Debug("upload", "key", k.String(), "tier", r.name, "size", src.Info().Size, "took", time.Since(start), "err", err)
		}
		if err != nil {
			if ctx.Err() != nil && s.ctx.Err() == nil {
				return nil // cancelled by Delete
			}
			s.uploadErrors.Add(1)
			s.lastUploadErr.Store(err.Error())
			s.log.Warn("upload failed; will retry", "key", k.String(), "err", err)
			return err
		}
	}
	s.lastUploadErr.Store("")
	if sent != nil {
		sent() // before waiting for the persistence, which waits for it
	}
	return s.settleUpload(ctx, k, item, persisted)
}

// settleUpload ends an upload of k that reached the remote, for the queue
// and for an early upload alike. Uploaded before it was persisted
// (persisted not nil), the value's durable queue record is written by the
// persisting commit, so that is waited for; then the record is taken out
// of the durable queue, unless ctx was cancelled by a Delete meanwhile:
// the queue may already hold a new value of k, whose record must stay.
func (s *Stack) settleUpload(ctx context.Context, k digest.Key, item *upItem, persisted <-chan struct{}) error {
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
		case s.deq <- uploaded{k, item}:
			return nil
		default:
		}
	}
	return s.dequeue(k)
}

// flushDequeues takes what the dequeuer left out of the durable queue; Close
// runs it once the workers are done, before it closes the tiers.
func (s *Stack) flushDequeues() {
	s.dequeueBatch(s.drainDeq(nil, len(s.deq)))
}

// dequeuer takes uploaded entries out of the durable queue, many per
// commit.
func (s *Stack) dequeuer() {
	defer s.wg.Done()
	for {
		select {
		case <-s.ctx.Done():
			return
		case u := <-s.deq:
			// Linger a little for more: a commit rewrites every page its
			// keys fall on, and uploads finishing one by one made a
			// commit each. A record lost at a crash only makes the next
			// start check the remote for that value.
			select {
			case <-time.After(s.pol.DequeueLinger):
			case <-s.ctx.Done():
			}
			s.dequeueBatch(s.drainDeq([]uploaded{u}, 1023))
		}
	}
}

// uploaded is an upload done, whose durable queue record is to remove.
type uploaded struct {
	k    digest.Key
	item *upItem // the upload queue's item it took
}

// drainDeq appends to batch up to n more uploads that are waiting in s.deq.
func (s *Stack) drainDeq(batch []uploaded, n int) []uploaded {
	for range n {
		select {
		case u := <-s.deq:
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
func (s *Stack) dequeueBatch(batch []uploaded) {
	var wg sync.WaitGroup
	for _, u := range batch {
		s.mu.Lock()
		it, queued := s.up.set[u.k]
		renewed := queued && it != u.item
		s.mu.Unlock()
		if !renewed {
			wg.Go(func() { s.dequeue(u.k) })
		}
	}
	wg.Wait()
}

// dequeue takes k out of the durable queue. Not with s.ctx: Close cancels
// it right after the last uploads, and a dequeue failing then would leave
// uploaded entries in the queue, to be read and checked again at the next
// start. The commit is local and short; Close waits for it.
func (s *Stack) dequeue(k digest.Key) error {
	if s.queue != nil {
		if err := s.queue.Uploaded(context.Background(), k); err != nil {
			s.log.Error("could not take entry out of the upload queue", "key", k.String(), "err", err)
			return err
		}
	}
	return nil
}

// uploadTo puts one value on remote r. A remote that already holds the
// key ends the upload (uploadExisting): with the same value it is done,
// with another it is a conflict, and this mount drops its own (first
// writer wins). verified says that src is the published blob whose
// SHA-256 its writer computed, info.Sum (Meta.Verified): the remote tier
// need not hash it again.
func (s *Stack) uploadTo(ctx context.Context, r *layer, info Info, src io.ReaderAt, verified bool) error {
	put := func() error {
		_, err := r.Tier.Put(ctx, info.Key, &countingReader{r: copyReader(src, info.Size), n: &r.bytesIn},
			Meta{Size: info.Size, Sum: info.Sum, Created: info.Created, Verified: verified})
		return err
	}
	err := put()
	conflict := false
	if errors.Is(err, ErrExist) {
		conflict, err = s.uploadExisting(ctx, r, info, put)
	}
	if conflict {
		s.noteErr(r, nil)
		s.absent.added(r, info.Key)
		return nil
	}
	s.noteUpload(r, info, err)
	return err
}

// noteUpload counts the upload of info to r.
func (s *Stack) noteUpload(r *layer, info Info, err error) {
	s.noteErr(r, err)
	if err == nil {
		s.uploaded.Add(1)
		s.uploadedBytes.Add(info.Size)
		s.list.add(info)
		s.absent.added(r, info.Key)
	}
}

// uploadExisting decides an upload the remote refused because it holds
// the key. It never removes or replaces a copy it cannot prove is its own
// value: it learns the remote's value (remoteValue: its record, or its
// bytes hashed), and the same value ends the upload, another is a
// conflict (reported true: this mount's copies are dropped). A copy that
// fails verification (ErrCorrupt: its size disagrees with its record) is
// handed to s.corrupt and ours put again. A failure to tell is an error:
// the upload is retried.
func (s *Stack) uploadExisting(ctx context.Context, r *layer, info Info, put func() error) (conflict bool, err error) {
	for range 3 {
		rinfo, serr := s.remoteValue(ctx, r, info.Key, info.Size)
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
			s.conflict(r, info, rinfo)
			return true, nil
		case errors.Is(serr, ErrForeign):
			// A file flechefs did not write that the tier does not
			// serve (its foreign setting): left alone, and ours kept,
			// since the remote serves no value for the key.
			s.conflicts.Add(1)
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
