package tiers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flechefs/flechefs/digest"
)

// The publisher makes written values entries: it serves a published value
// from its blob until the persistent tier has it (the key table's pub),
// persists it there in batches (persisters), and answers WaitDurable.
type publisher struct {
	s *Stack

	persistCh   chan *pub
	persistFull chan struct{} // poked when persistCh is half full
	persistWG   sync.WaitGroup
	publishing  sync.WaitGroup // Publish calls between the closed check and the persist queue
	heldBytes   atomic.Int64   // of the entries persisters hold (collect)
	// hurried is closed and replaced when an entry is waited for: the
	// persisters stop holding entries (collect). Under Stack.mu.
	hurried chan struct{}
	// settled counts entries that left the key table for the tiers (see
	// publish). Under Stack.mu.
	settled uint64
	dropped atomic.Int64 // publishes of a key that existed (first writer won)
}

func (pb *publisher) init(s *Stack) {
	pb.s = s
	pb.persistCh = make(chan *pub, 1024)
	pb.persistFull = make(chan struct{}, 1)
	pb.hurried = make(chan struct{})
}

// pub is a published entry that is not yet in the persistent tier (or, with
// no persistent tier, not yet uploaded). It is served from its blob.
type pub struct {
	info      Info
	blob      Blob
	refs      int           // the pending map's reference plus open readers
	upload    bool          // to be queued for upload once persisted; written under Stack.mu
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

// unrefLocked drops a reference to p (under Stack.mu); the last releases its blob.
func (p *pub) unrefLocked() {
	p.refs--
	if p.refs == 0 {
		p.blob.Release()
	}
}

// publish is Stack.Publish.
func (pb *publisher) publish(ctx context.Context, k digest.Key, b Blob, sum digest.Sum) (Info, error) {
	s := pb.s
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
	settled := pb.settled
	s.mu.Unlock()
	if pb.heldLocally(ctx, k) {
		pb.dropped.Add(1)
		b.Release()
		return Info{}, Wrap("stack", "publish", k, ErrExist)
	}
	p := &pub{info: info, blob: b, refs: 1, persisted: make(chan struct{}), hurry: make(chan struct{}),
		sent: make(chan struct{}), upload: s.hasWritableRemote()}
	s.mu.Lock()
	for pb.settled != settled && !s.closed {
		// Published entries left the pending map for the tiers since the
		// Stat: k may be one of them, which the Stat did not see in
		// either place. Look again in the local tiers.
		settled = pb.settled
		s.mu.Unlock()
		if pb.heldLocally(ctx, k) {
			pb.dropped.Add(1)
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
		pb.dropped.Add(1)
		b.Release()
		return Info{}, Wrap("stack", "publish", k, ErrExist)
	}
	s.keys.edit(k, func(ks *keyState) { ks.pub = p })
	p.refs++ // the persister's
	if p.upload {
		// The upload starts now, from the blob, alongside the
		// persistence; it leaves the durable queue once both are done.
		s.rep.q.add(k)
		if early != nil {
			if adopted = s.rep.adoptLocked(early, p); adopted {
				p.early = early
			}
		}
	}
	pb.publishing.Add(1)
	s.mu.Unlock()
	defer pb.publishing.Done()
	if adopted {
		early.finish(info)
	}
	s.list.add(info)

	// Tier 0 at once when it is RAM-fast and not the persistent tier; the
	// rest in the background.
	if l := s.layers[0]; !l.Remote && l.writable() && l != s.persist {
		p.inTier0 = pb.putLayer(l, p) == nil
	}
	pb.persistCh <- p
	if len(pb.persistCh) > cap(pb.persistCh)/2 {
		select { // wake a persister that holds entries (collect)
		case pb.persistFull <- struct{}{}:
		default:
		}
	}

	if s.opt.WriteThrough && s.hasWritableRemote() {
		// Published here whatever happens below: an error says the
		// value is not on the remote yet (ErrNotUploaded), not that
		// the publish failed.
		notUploaded := func(err error) error {
			return Wrap("stack", "publish", k, fmt.Errorf("%w: %w", ErrNotUploaded, err))
		}
		if err := s.WaitDurable(ctx, k); err != nil {
			return info, notUploaded(err)
		}
		if _, err := s.deleter.settleTomb(ctx, k); err != nil {
			return info, notUploaded(err)
		}
		if err := s.rep.uploadNow(ctx, k); err != nil {
			return info, notUploaded(err)
		}
	}
	return info, nil
}

// putLayer copies a published value into l: into a tier that keeps values
// in memory (a BytesPutter), the blob's own bytes when it has them (the
// copy of a small value cost as much as the rest of Publish: a new buffer
// is new pages, faulted in).
func (pb *publisher) putLayer(l *layer, p *pub) error {
	s := pb.s
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
func (pb *publisher) persister() {
	s := pb.s
	defer pb.persistWG.Done()
	for p := range pb.persistCh {
		if p.info.Size > s.pol.PersistSmall {
			pb.persistOne(p)
			continue
		}
		pb.persistAll(pb.collect(p))
	}
}

// collect returns p and the small entries queued after it: what is queued
// now, up to Policy.PersistBatch, or while persistHold says to wait, everything
// published until then. Large entries met meanwhile persist on their own
// goroutines: the batch does not wait for them (their persistence may wait
// for their early upload).
func (pb *publisher) collect(p *pub) []*pub {
	s := pb.s
	s.mu.Lock()
	hurried := pb.hurried // closed by WaitDurable and Delete from now on
	s.mu.Unlock()
	batch := []*pub{p}
	held := p.info.Size
	pb.heldBytes.Add(held)
	defer func() { pb.heldBytes.Add(-held) }()
	// stop ends the hold: an entry of the batch is waited for.
	stop := isClosed(p.hurry)
	take := func(q *pub) {
		if q.info.Size > s.pol.PersistSmall {
			pb.persistWG.Add(1)
			go func() {
				defer pb.persistWG.Done()
				pb.persistOne(q)
			}()
			return
		}
		batch = append(batch, q)
		held += q.info.Size
		pb.heldBytes.Add(q.info.Size)
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
		for stop || len(batch) < s.pol.PersistBatch || pb.persistHold(time.Now()) > 0 {
			select {
			case q, ok := <-pb.persistCh:
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
		wait := pb.persistHold(time.Now())
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
		case <-pb.persistFull:
		case <-hurried:
			// Some entry is waited for: stop only if it is one of this
			// batch's (or still queued: the drain takes it). Other
			// persisters keep holding theirs, so an fsync during a burst
			// shares its commits with no other batch.
			s.mu.Lock()
			hurried = pb.hurried
			s.mu.Unlock()
			for _, q := range batch {
				stop = stop || isClosed(q.hurry)
			}
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
func (pb *publisher) persistAll(batch []*pub) {
	s := pb.s
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
			wg.Go(func() { pb.persistOne(q) })
		}
		pb.persistOne(batch[0])
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
func (pb *publisher) persistHold(now time.Time) time.Duration {
	s := pb.s
	if !s.act.inBurst() || pb.heldBytes.Load() >= s.pol.PersistHoldBytes {
		return 0
	}
	return s.act.publishHold(now)
}

// hurryLocked ends the hold of the persisters (see collect): p is waited
// for.
func (pb *publisher) hurryLocked(p *pub) {
	if !isClosed(p.hurry) {
		close(p.hurry)
	}
	close(pb.hurried)
	pb.hurried = make(chan struct{})
}

func (pb *publisher) persistOne(p *pub) {
	s := pb.s
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
		err := pb.putLayer(l, p)
		if l == s.persist {
			switch {
			case err == nil:
				persisted = true
			case errors.Is(err, ErrExist):
				persisted = true
				// The tier held the key already (promoted from the
				// remote): nothing new to upload. Under the lock:
				// UploadState reads it.
				s.mu.Lock()
				p.upload = false
				s.mu.Unlock()
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
			s.rep.q.add(k)
		}
		pb.dropPendingLocked(p)
	default:
		// No persistent tier, or it failed: the blob keeps serving the
		// entry. With a remote, the (in-memory) queue uploads it from the
		// blob and drops it then; without, it stays unless tier 0 took it.
		if p.upload {
			s.rep.q.add(k)
		} else if p.inTier0 {
			pb.dropPendingLocked(p)
		}
	}
	p.unrefLocked() // the persister's reference
	s.broadcastLocked()
}

// dropPendingLocked removes p from the pending map once a tier serves it.
func (pb *publisher) dropPendingLocked(p *pub) {
	s := pb.s
	k := p.info.Key
	if s.keys.get(k).pub == p {
		s.keys.edit(k, func(ks *keyState) { ks.pub = nil })
		p.unrefLocked()
		pb.settled++
	}
}

// heldLocally reports whether a local tier holds k.
func (pb *publisher) heldLocally(ctx context.Context, k digest.Key) bool {
	s := pb.s
	for l := range s.layers.local() {
		if _, err := l.Tier.Stat(ctx, k); err == nil {
			return true
		}
	}
	return false
}

func (pb *publisher) unpersistedLocked() int {
	s := pb.s
	n := 0
	s.keys.each(func(_ digest.Key, ks *keyState) bool {
		if ks.pub != nil && !isClosed(ks.pub.persisted) {
			n++
		}
		return true
	})
	return n
}

func (pb *publisher) waitDurable(ctx context.Context, k digest.Key, hurry bool) error {
	s := pb.s
	s.mu.Lock()
	p := s.keys.get(k).pub
	ok := p != nil
	if ok && hurry {
		pb.hurryLocked(p)
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
	fg     bool // returned by Open: its reads are uses (promoter.go)
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
		r.p.unrefLocked()
	}
	return nil
}
