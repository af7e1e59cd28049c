package tiers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flechefs/flechefs/digest"
)

// Stack is the ordered stack of tiers (fleche's CacheStack). See doc.go.
type Stack struct {
	opt    StackOptions
	pol    Policy // opt.Policy with its defaults
	log    *slog.Logger
	layers layers
	// persist is the first writable local tier after tier 0 that keeps the
	// durable upload queue, or nil.
	persist *layer
	queue   Queue
	remotes []*layer

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // background goroutines

	mu      sync.Mutex
	closed  bool
	closing chan struct{} // closed when Close begins
	keys    keyTable      // per-key state (keys.go)
	changed chan struct{} // closed and replaced when the queue or pending set shrinks

	act       activity   // the foreground's clock (activity.go)
	publisher publisher  // publishes and their persistence (publisher.go)
	rep       replicator // uploads (replicator.go)
	list      listCache
	absent    absentSet  // absence snapshots of the remotes (absent.go)
	damaged   damagedSet // remote copies just found damaged (damaged.go)
	promoter  promoter   // copies into faster tiers (promoter.go)
	fetcher   fetcher    // reads from the remotes (fetcher.go)
	deleter   deleter    // remote deletes and their tombstones (deleter.go)

	// settling counts the drops of values that lost a conflict still
	// running (lost.go). Under mu.
	settling int
}

// NewStack builds a stack over layers, fastest first, and resumes the upload queue.
func NewStack(layers []Layer, opt StackOptions) (*Stack, error) {
	if len(layers) == 0 {
		return nil, errors.New("stack: no tiers")
	}
	switch opt.Promote {
	case "":
		opt.Promote = PromoteAll
	case PromoteAll, PromoteBase:
	default:
		return nil, fmt.Errorf("stack: promote %q: want %q or %q", opt.Promote, PromoteAll, PromoteBase)
	}
	if opt.RemoteTimeout <= 0 {
		opt.RemoteTimeout = 10 * time.Second
	}
	if opt.ListTTL <= 0 {
		opt.ListTTL = 30 * time.Second
	}
	if opt.SpoolDir == "" {
		opt.SpoolDir = os.TempDir()
	}
	if opt.UploadWorkers <= 0 {
		opt.UploadWorkers = DefaultUploadWorkers
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	opt.Policy = opt.Policy.withDefaults()
	if err := os.MkdirAll(opt.SpoolDir, 0o700); err != nil {
		return nil, fmt.Errorf("stack: spool dir: %w", err)
	}
	s := &Stack{
		opt: opt, pol: opt.Policy, log: opt.Logger,
		keys:    newKeyTable(),
		changed: make(chan struct{}),
		closing: make(chan struct{}),
	}
	s.rep.init(s)
	s.publisher.init(s)
	s.promoter.s = s
	s.fetcher.s = s
	s.deleter.s, s.deleter.kick = s, make(chan struct{}, 1)
	s.act.pol = &s.pol
	s.damaged.ttl = s.pol.DamagedTTL
	s.ctx, s.cancel = context.WithCancel(context.Background())
	for i, l := range layers {
		if l.Tier == nil {
			return nil, fmt.Errorf("stack: tier %d is nil", i)
		}
		ly := &layer{Layer: l, idx: i, name: l.Tier.Name()}
		s.layers = append(s.layers, ly)
		if l.Remote {
			s.remotes = append(s.remotes, ly)
			continue
		}
		if q, ok := l.Tier.(Queue); ok && s.persist == nil && !l.ReadOnly && i > 0 {
			s.persist, s.queue = ly, q
		}
		if q, ok := l.Tier.(Queue); ok && s.persist == nil && !l.ReadOnly && i == 0 && len(layers) == 1 {
			s.persist, s.queue = ly, q
		}
	}
	s.absent.init(s.remotes, opt)
	if s.persist == nil {
		// A persistent tier at index 0 is fine too.
		for _, ly := range s.layers {
			if q, ok := ly.Tier.(Queue); ok && !ly.Remote && !ly.ReadOnly {
				s.persist, s.queue = ly, q
				break
			}
		}
	}
	if s.queue != nil && s.hasWritableRemote() {
		keys, err := s.queue.Pending(s.ctx)
		if err != nil {
			return nil, fmt.Errorf("stack: reading the upload queue: %w", err)
		}
		for _, k := range keys {
			s.rep.q.add(k)
		}
		if len(keys) > 0 {
			s.log.Info("resuming upload queue", "entries", len(keys))
		}
	}
	if s.hasWritableRemote() {
		if err := s.deleter.loadTombs(); err != nil {
			return nil, fmt.Errorf("stack: reading the queued remote deletes: %w", err)
		}
	}
	s.promoter.initDefer()
	for range 4 {
		s.publisher.persistWG.Add(1)
		go s.publisher.persister()
	}
	if s.hasWritableRemote() {
		for range opt.UploadWorkers {
			s.wg.Add(1)
			go s.rep.uploader()
		}
		s.wg.Add(1)
		go s.rep.dequeuer()
		s.wg.Add(1)
		go s.deleter.run()
	}
	return s, nil
}

func (s *Stack) hasWritableRemote() bool {
	for range s.layers.writableRemote() {
		return true
	}
	return false
}

// remotesUp reports whether every writable remote tier is reachable, as far
// as the stack knows.
func (s *Stack) remotesUp() bool {
	for r := range s.layers.writableRemote() {
		if r.unavailable.Load() {
			return false
		}
	}
	return true
}

// Stat finds k in the first tier (or the unpersisted publishes) that holds it.
// A miss everywhere is ErrNotFound, also when a remote tier was unavailable.
func (s *Stack) Stat(ctx context.Context, k digest.Key) (Info, error) {
	s.act.used()
	s.mu.Lock()
	if p := s.keys.get(k).pub; p != nil {
		s.mu.Unlock()
		return p.info, nil
	}
	info, fetching := s.fetcher.fetchingLocked(k)
	tombstoned := s.deleter.tombstonedLocked(k)
	s.mu.Unlock()
	if fetching {
		return info, nil
	}
	var listedUntil time.Time // the earliest end of the snapshots that answered
	var asked []*layer        // the layers that answered "absent"
	for _, l := range s.layers {
		if l.Remote && tombstoned {
			continue // deleted here; the remote's delete is queued
		}
		if !l.Remote {
			info, err := s.statLayer(ctx, l, k)
			if err == nil {
				return info, nil
			}
			if errors.Is(err, ErrNotFound) {
				asked = append(asked, l)
			}
			continue
		}
		if until, ok := s.absent.known(l, k); ok {
			// Absent from l's listing (absent.go): no round trip.
			if listedUntil.IsZero() || until.Before(listedUntil) {
				listedUntil = until
			}
			s.noteMiss(l)
			asked = append(asked, l)
			continue
		}
		info, err := s.fetcher.lookupByOpen(ctx, l, k)
		if err == nil {
			return info, nil
		}
		if errors.Is(err, ErrNotFound) {
			s.noteMiss(l)
			asked = append(asked, l)
		}
	}
	if err := ctx.Err(); err != nil {
		// Cancelled by the caller: not a miss, which would be cached.
		return Info{}, Wrap("stack", "stat", k, err)
	}
	// A lookup of a key no tier holds is a miss of each tier that said so
	// (a key found is counted by the Open that reads it: a hit where it
	// was found, a miss in each faster tier).
	for _, l := range asked {
		l.misses.Add(1)
	}
	if !listedUntil.IsZero() {
		return Info{}, Wrap("stack", "stat", k, &listedMiss{until: listedUntil})
	}
	return Info{}, Wrap("stack", "stat", k, ErrNotFound)
}

func (s *Stack) statLayer(ctx context.Context, l *layer, k digest.Key) (Info, error) {
	if l.Remote {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.opt.RemoteTimeout)
		defer cancel()
	}
	start := time.Now()
	info, err := l.Tier.Stat(ctx, k)
	s.observe(l, "stat", start, err)
	if errors.Is(err, ErrCorrupt) {
		// A copy found bad before any read (a remote data file whose size
		// differs from its sum file, a garbled sum file) is a corruption
		// like one found by reading: counted, logged, and removed (local) or
		// moved to the quarantine (remote): corrupt.
		s.corrupt(l, k, err)
		return info, err
	}
	s.noteErr(l, err)
	return info, err
}

// observe tells StackOptions.Observe that op on l, started at start, ended
// with err.
func (s *Stack) observe(l *layer, op string, start time.Time, err error) {
	if s.opt.Observe != nil {
		s.opt.Observe(l.name, op, time.Since(start), err)
	}
}

// noteErr counts and logs unexpected errors of a layer and tracks availability.
func (s *Stack) noteErr(l *layer, err error) {
	if err == nil || errors.Is(err, ErrNotFound) {
		if l.unavailable.Swap(false) {
			s.log.Info("tier available again", "tier", l.name)
			if l.Remote && l.writable() {
				s.rep.wakeRetries()
			}
		}
		return
	}
	l.errs.Add(1)
	msg := err.Error()
	l.lastErr.Store(&msg)
	if errors.Is(err, ErrFailed) {
		// The tier logged why, once; Stats shows it.
		return
	}
	if errors.Is(err, ErrUnavailable) {
		if !l.unavailable.Swap(true) {
			s.log.Warn("tier unavailable; serving from the other tiers", "tier", l.name, "err", err)
		}
		return
	}
	if errors.Is(err, context.Canceled) {
		return
	}
	s.log.Warn("tier error", "tier", l.name, "err", err)
}

// failed returns why l's tier failed for good, or nil.
func failed(l *layer) error {
	if f, ok := l.Tier.(FailureReporter); ok {
		return f.Failed()
	}
	return nil
}

// Open opens k from the fastest tier that holds it, promoting a hit from a
// slower tier. A remote hit streams: ReadAt returns data as soon as it has
// arrived; the last byte is held back until the whole value has matched its
// hash, so a reader never reaches EOF on a bad value (it gets ErrCorrupt).
func (s *Stack) Open(ctx context.Context, k digest.Key) (Reader, error) {
	s.act.used()
	s.mu.Lock()
	if p := s.keys.get(k).pub; p != nil {
		p.refs++
		s.mu.Unlock()
		return &pubReader{p: p, s: s, fg: true}, nil
	}
	// A fetch in progress (one a lookup started, say) is joined before the
	// local tiers are asked: it leaves the key table only once its promotion into
	// them is done, so either it is found here or they have the value. The
	// other way round, a fetch that ended between the local misses and the
	// remote's turn would be made again.
	f := s.fetcher.joinableFetch(k, nil)
	s.mu.Unlock()
	if f != nil {
		if r, err := f.join(ctx, digest.Sum{}); err == nil {
			return r, nil
		}
	}
	r, err := s.openFrom(ctx, k, 0, digest.Sum{})
	return r, err
}

// openFrom opens k from the first layer at index ≥ from that holds a copy
// whose hash is want (or any copy when want is zero).
func (s *Stack) openFrom(ctx context.Context, k digest.Key, from int, want digest.Sum) (Reader, error) {
	unavailable := false
	var spoolErr *spoolError
	var corrupt error // a remote copy found damaged: the read fails with it
	tombstoned := s.deleter.tombstoned(k)
	for _, l := range s.layers[from:] {
		if l.Remote && tombstoned {
			continue // deleted here; the remote's delete is queued
		}
		if l.Remote {
			r, err := s.fetcher.openRemote(ctx, l, k, want)
			if err == nil {
				return r, nil
			}
			switch {
			case errors.Is(err, ErrCorrupt):
				corrupt = err
			case !errors.Is(err, ErrNotFound) && !errors.As(err, &spoolErr):
				unavailable = true
			}
			continue
		}
		start := time.Now()
		r, err := l.Tier.Open(ctx, k)
		s.observe(l, "open", start, err)
		s.noteErr(l, err)
		if err != nil {
			l.misses.Add(1)
			continue
		}
		info := r.Info()
		if !want.IsZero() && !info.Sum.IsZero() && info.Sum != want {
			r.Close()
			continue
		}
		l.hits.Add(1)
		if targets := s.promoter.promoteTargets(l.idx); len(targets) > 0 {
			s.promoter.promoteLocal(l, k, info.Size, targets)
		}
		return &stackReader{s: s, l: l, k: k, r: r, fg: true}, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, Wrap("stack", "open", k, err)
	}
	if corrupt != nil {
		return nil, Wrap("stack", "open", k, corrupt)
	}
	if unavailable {
		return nil, Wrap("stack", "open", k, ErrUnavailable)
	}
	if spoolErr != nil {
		return nil, Wrap("stack", "open", k, spoolErr)
	}
	return nil, Wrap("stack", "open", k, ErrNotFound)
}

// corrupt counts and logs a bad copy in l and removes it from a local tier
// (which only holds what this stack wrote). A remote copy is never
// deleted: it may be a file flechefs did not write, or the evidence of a
// failing disk. It is moved into the tier's quarantine (Quarantiner; only
// the copy err judged, when it names one: Judged); when
// that is full, or the move fails, it stays in place, unserved (it fails
// verification again at every read), and is logged. An upload that finds
// it in the way tries again (uploadExisting), which repairs the remote
// from the verified local copy once the name is free.
func (s *Stack) corrupt(l *layer, k digest.Key, err error) {
	l.corruptions.Add(1)
	if l.Remote {
		s.log.Error("corrupt remote copy detected; not served, moving it to quarantine", "tier", l.name, "key", k.String(), "err", err)
		q, ok := l.Tier.(Quarantiner)
		if !ok || !l.writable() {
			l.unquarantined.Add(1)
			return
		}
		ctx, cancel := context.WithTimeout(s.ctx, s.opt.RemoteTimeout)
		defer cancel()
		switch qerr := q.Quarantine(ctx, k, JudgedCopy(err)); {
		case qerr == nil:
			l.quarantined.Add(1)
		case errors.Is(qerr, ErrNotFound):
		default:
			l.unquarantined.Add(1)
			s.log.Error("damaged remote copy left in place, unserved", "tier", l.name, "key", k.String(), "err", qerr)
		}
		return
	}
	s.log.Error("corrupt copy detected; not served, removing it", "tier", l.name, "key", k.String(), "err", err)
	if l.writable() {
		ctx, cancel := context.WithTimeout(s.ctx, s.opt.RemoteTimeout)
		defer cancel()
		if derr := l.Tier.Delete(ctx, k); derr != nil && !errors.Is(derr, ErrNotFound) {
			s.log.Warn("could not remove corrupt copy", "tier", l.name, "key", k.String(), "err", derr)
		}
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

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
	return s.publisher.publish(ctx, k, b, sum)
}

// WaitDurable returns when k (if published here) is in the persistent local
// tier. Its persistence starts at once: it no longer waits for a burst of
// publishes to pause, nor for its early upload.
func (s *Stack) WaitDurable(ctx context.Context, k digest.Key) error {
	return s.publisher.waitDurable(ctx, k, true)
}

// WaitPersisted is WaitDurable without hurrying: it waits for the
// persistence to happen when it would have anyway (to keep track of it).
func (s *Stack) WaitPersisted(ctx context.Context, k digest.Key) error {
	return s.publisher.waitDurable(ctx, k, false)
}

// Delete removes k from every writable tier (remote ones too unless
// KeepRemoteOnDelete) and cancels its pending upload. ErrNotFound if no tier held it.
func (s *Stack) Delete(ctx context.Context, k digest.Key) error {
	return s.deleter.delete(ctx, k)
}

// Where returns the names of the tiers that hold k, fastest first.
func (s *Stack) Where(ctx context.Context, k digest.Key) []string {
	var out []string
	s.mu.Lock()
	pend := s.keys.get(k).pub != nil
	s.mu.Unlock()
	if pend {
		out = append(out, "unpersisted")
	}
	tombstoned := s.deleter.tombstoned(k)
	for _, l := range s.layers {
		if l.Remote && tombstoned {
			continue
		}
		if _, err := s.statLayer(ctx, l, k); err == nil {
			out = append(out, l.name)
		}
	}
	return out
}

// Local reports whether this stack holds k without a remote tier: a
// publish not yet persisted, or a copy in a local tier. It costs no round
// trip.
func (s *Stack) Local(ctx context.Context, k digest.Key) bool {
	s.mu.Lock()
	pend := s.keys.get(k).pub != nil
	s.mu.Unlock()
	return pend || s.publisher.heldLocally(ctx, k)
}

// UploadState says whether k waits for upload.
func (s *Stack) UploadState(k digest.Key) UploadState {
	if !s.hasWritableRemote() {
		return UploadNone
	}
	if s.lostState(k) {
		return UploadConflict
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rep.q.has(k) {
		return UploadPending
	}
	if p := s.keys.get(k).pub; p != nil && p.upload {
		return UploadPending
	}
	return UploadDone
}

// Sync waits until every published entry is persisted, every queued
// upload has reached the remote, every queued remote delete is done, and
// every value that lost a conflict has left the local tiers, calling
// progress (if not nil) with the
// number of entries still waiting as it changes.
func (s *Stack) Sync(ctx context.Context, progress func(queued int64)) error {
	last := int64(-1)
	for {
		s.mu.Lock()
		n := int64(s.rep.q.len() + s.publisher.unpersistedLocked() + s.settling + s.keys.n.tombs)
		ch := s.changed
		s.mu.Unlock()
		if progress != nil && n != last {
			progress(n)
			last = n
		}
		if n == 0 {
			return nil
		}
		select {
		case <-ch:
		case <-time.After(time.Second):
		case <-ctx.Done():
			msg, _ := s.rep.lastErr.Load().(string)
			if msg != "" {
				return fmt.Errorf("%d entries still waiting for upload (last error: %s): %w", n, msg, ctx.Err())
			}
			return fmt.Errorf("%d entries still waiting for upload: %w", n, ctx.Err())
		}
	}
}

func (s *Stack) broadcastLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Stats returns the counters.
func (s *Stack) Stats() Stats {
	st := Stats{
		Uploaded: s.rep.uploaded.Load(), UploadedBytes: s.rep.uploadedBytes.Load(), UploadErrors: s.rep.uploadErrors.Load(),
		Conflicts: s.rep.conflicts.Load(), DroppedPublishes: s.publisher.dropped.Load(),
	}
	st.LastUploadError, _ = s.rep.lastErr.Load().(string)
	s.mu.Lock()
	st.Queue, st.QueueOldest = int64(s.rep.q.len()), s.rep.q.oldest()
	st.Deletes = int64(s.keys.n.tombs)
	st.Unpersisted = int64(s.publisher.unpersistedLocked())
	st.Fetching = int64(s.keys.n.fetches)
	st.Deferred = s.promoter.deferredLenLocked()
	s.mu.Unlock()
	for _, l := range s.layers {
		ts := TierStats{
			Name: l.name, Remote: l.Remote, ReadOnly: l.ReadOnly, Available: !l.unavailable.Load(),
			Hits: l.hits.Load(), Misses: l.misses.Load(), BytesIn: l.bytesIn.Load(), BytesOut: l.bytesOut.Load(),
			Promotions: l.promotions.Load(), Corruptions: l.corruptions.Load(), Errors: l.errs.Load(),
			Quarantined: l.quarantined.Load(), Unquarantined: l.unquarantined.Load(),
		}
		ts.Listings, ts.ListedMisses = s.absent.counts(l)
		if e := l.lastErr.Load(); e != nil {
			ts.LastError = *e
		}
		if err := failed(l); err != nil {
			ts.Failed, ts.Available = err.Error(), false
		}
		if u, ok := l.Tier.(UsageReporter); ok {
			us := u.Usage()
			ts.Entries, ts.Bytes, ts.Limit, ts.Evictions, ts.DiskBytes, ts.DiskFree = us.Entries, us.Bytes, us.Limit, us.Evictions, us.DiskBytes, us.DiskFree
		}
		st.Tiers = append(st.Tiers, ts)
	}
	return st
}

// Close finishes the persistence of every published entry, stops uploads
// and fetches (the durable queue resumes at the next start) and closes
// every tier.
func (s *Stack) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.closing) // persisters stop waiting for uploads
	s.mu.Unlock()
	s.publisher.publishing.Wait()
	close(s.publisher.persistCh)
	s.publisher.persistWG.Wait()
	s.promoter.drainDeferred(true)
	s.cancel()
	s.wg.Wait()
	s.fetcher.dropParked(nil)
	s.rep.flushDequeues()
	var errs []error
	for _, l := range s.layers {
		if err := l.Tier.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// stackReader serves a local tier's reader and fails over to the next tier
// holding the same value when a read detects corruption.
type stackReader struct {
	s  *Stack
	k  digest.Key
	fg bool // returned by Open: its reads are uses (promoter.go)
	mu sync.Mutex
	l  *layer
	r  Reader
}

func (r *stackReader) Info() Info {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.r.Info()
}

func (r *stackReader) ReadAt(p []byte, off int64) (int, error) {
	if r.fg {
		r.s.act.used()
	}
	for {
		r.mu.Lock()
		cur, l := r.r, r.l
		r.mu.Unlock()
		n, err := cur.ReadAt(p, off)
		if l != nil {
			l.bytesOut.Add(int64(n))
		}
		corrupt := errors.Is(err, ErrCorrupt)
		if l == nil || !corrupt && !errors.Is(err, ErrNotFound) {
			return n, err
		}
		// A bad copy: remove it and continue from the next tier holding
		// the same value. A copy that vanished under the reader (another
		// reader or a promotion found it corrupt and removed it, or it was
		// evicted) is continued likewise: the next copy has the same sum.
		if corrupt {
			r.s.corrupt(l, r.k, err)
		}
		next, oerr := r.s.openFrom(r.s.ctx, r.k, l.idx+1, cur.Info().Sum)
		if oerr != nil {
			return 0, err
		}
		var nl *layer
		if sr, ok := next.(*stackReader); ok {
			next, nl = sr.r, sr.l
		}
		r.mu.Lock()
		if r.r == cur {
			cur.Close()
			r.r, r.l = next, nl
		} else {
			next.Close()
		}
		r.mu.Unlock()
	}
}

func (r *stackReader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.r.Close()
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}
