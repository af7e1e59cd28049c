package tiers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/pagemem"
)

// The fetcher reads values from the remote tiers: one fetch per key at a
// time (keyState.fetch), which readers join, verified as it arrives and
// handed to the promoter once whole; and the remote readers lookups open,
// parked for the Open that follows (keyState.parked).
type fetcher struct {
	s *Stack
	// memHeld is the bytes held by fetches in memory of values over
	// memFetch (holdMem).
	memHeld atomic.Int64
}

// A fetch is one value being read from a remote tier into an unlinked spool
// file, or into memory when it is at most memFetch bytes or one the RAM
// tier takes at once (holdMem). Readers join it and read
// what has arrived; the last byte is released only after the whole value
// matched its hash. On success the spool is copied into the faster tiers;
// either way it is removed when the last reader and the fetch are done.
type fetch struct {
	s    *Stack
	l    *layer
	info Info
	f    *os.File // the spool file, or nil
	mem  []byte   // the spool of a value fetched into memory, or nil

	mu      sync.Mutex
	written int64
	done    bool
	err     error
	changed chan struct{}
	refs    int
	hasher  *digest.Hasher

	ready   chan struct{} // closed once the remote copy is open (or failed to)
	openErr error         // set before ready is closed

	deleted bool // a Delete of the key ran during the fetch: no promotion; guarded by s.mu
	// prefetch: started by a Stat (lookupByOpen). An Open does not join it
	// once it has failed, but fetches again.
	prefetch bool
}

// memFetch is the largest value a fetch keeps in memory rather than in a
// spool file (the size the mount keeps in memory for a value being
// written). A small value then costs one read request and no file:
// creating a file costs more than the transfer of a value of a few KiB.
const memFetch = 1 << 20

// openRemote opens k from remote layer l. Concurrent opens of one key share
// one fetch: the first registers the fetch before it talks to the remote,
// the others wait for it to be opened.
func (fe *fetcher) openRemote(ctx context.Context, l *layer, k digest.Key, want digest.Sum) (Reader, error) {
	s := fe.s
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, Wrap("stack", "open", k, ErrClosed)
	}
	if f := fe.joinableFetch(k, l); f != nil {
		s.mu.Unlock()
		return f.join(ctx, want)
	}
	f := &fetch{s: s, l: l, changed: make(chan struct{}), ready: make(chan struct{}), refs: 2, hasher: digest.NewHasher(),
		deleted: s.keys.fenced(k)}
	s.keys.edit(k, func(ks *keyState) { ks.fetch = f })
	s.wg.Add(1)
	s.mu.Unlock()

	r, err := fe.startFetch(ctx, f, k, want)
	if err != nil {
		f.openErr = err
		s.mu.Lock()
		fe.endFetchLocked(k, f)
		s.mu.Unlock()
		close(f.ready)
		s.wg.Done()
		return nil, err
	}
	close(f.ready)
	go f.run(r)
	return &fetchReader{f: f}, nil
}

// lookupByOpen looks k up in remote layer l by opening it, which costs the
// tier about what a Stat does. A value of at most memFetch bytes is fetched
// at once, in the background: the Open that usually follows a lookup joins
// that fetch, and the whole lookup, open and read of a small remote value
// costs one remote open and one read instead of a stat, an open and a read.
// A larger value is not fetched. A copy without a checksum record is
// found when the tier serves it (its foreign setting, which answers
// ErrNotFound for one it does not): the fetch hashes it and the tier
// records that sum (Adopter).
func (fe *fetcher) lookupByOpen(ctx context.Context, l *layer, k digest.Key) (Info, error) {
	s := fe.s
	octx, cancel := context.WithTimeout(ctx, s.opt.RemoteTimeout)
	start := time.Now()
	r, err := l.Tier.Open(octx, k)
	s.observe(l, "lookup", start, err)
	cancel()
	if errors.Is(err, ErrCorrupt) {
		s.corrupt(l, k, err)
		return Info{}, err
	}
	s.noteErr(l, err)
	if err != nil {
		return Info{}, err
	}
	info := r.Info()
	// Found: the cached listing names it from now on, as the next refresh
	// would (a lookup and a listing of one mount agree).
	s.mu.Lock()
	deleting := s.keys.fenced(k)
	s.mu.Unlock()
	if !deleting {
		s.list.add(Info{Key: k, Size: info.Size, Created: info.Created})
	}
	s.foundRemote(k, info.Sum)
	if info.Size > memFetch {
		fe.park(l, k, r)
		return info, nil
	}
	s.mu.Lock()
	if ks := s.keys.get(k); ks.fetch != nil || s.closed || ks.deleting > 0 {
		s.mu.Unlock()
		go r.Close()
		return info, nil
	}
	ready := make(chan struct{})
	close(ready)
	f := &fetch{s: s, l: l, info: info, mem: pagemem.Bytes(int(info.Size)), changed: make(chan struct{}),
		ready: ready, refs: 1, hasher: digest.NewHasher(), prefetch: true}
	s.keys.edit(k, func(ks *keyState) { ks.fetch = f })
	s.wg.Add(1)
	s.mu.Unlock()
	l.hits.Add(1)
	go f.run(r)
	return info, nil
}

// startFetch opens the remote copy and the spool for f.
func (fe *fetcher) startFetch(ctx context.Context, f *fetch, k digest.Key, want digest.Sum) (Reader, error) {
	s := fe.s
	l := f.l
	r := fe.unpark(l, k)
	if r == nil {
		octx, cancel := context.WithTimeout(ctx, s.opt.RemoteTimeout)
		var err error
		r, err = l.Tier.Open(octx, k)
		cancel()
		if errors.Is(err, ErrCorrupt) {
			s.corrupt(l, k, err) // counted, logged and quarantined, as after a read
		} else {
			s.noteErr(l, err)
		}
		if errors.Is(err, ErrNotFound) {
			if derr := s.damaged.take(k); derr != nil {
				err = derr // quarantined by the lookup's fetch a moment ago
			}
		}
		if err != nil {
			l.misses.Add(1)
			return nil, err
		}
	}
	info := r.Info()
	if !want.IsZero() && info.Sum != want {
		r.Close()
		return nil, Wrap(l.name, "open", k, ErrNotFound)
	}
	s.foundRemote(k, info.Sum)
	if info.Size <= memFetch || fe.holdMem(l, info.Size) {
		l.hits.Add(1)
		f.info, f.mem = info, pagemem.Bytes(int(info.Size))
		return r, nil
	}
	sp, err := os.CreateTemp(s.opt.SpoolDir, "fetch-*")
	if err != nil {
		r.Close()
		// The local spool failed, not the remote: said so, and not as
		// the file system's errno (EACCES would read as the entry's).
		err = &spoolError{fmt.Errorf("cannot fetch from %s: the spool directory %s (spool_dir) is not usable: %v", l.name, s.opt.SpoolDir, err)}
		s.log.Error("remote fetch failed in the local spool", "key", k.String(), "err", err)
		return nil, Wrap("stack", "open", k, err)
	}
	os.Remove(sp.Name()) // unlinked: gone with the last close, even after a crash
	l.hits.Add(1)
	f.info, f.f = info, sp
	return r, nil
}

// fetchingLocked returns the Info of a fetch of k in progress that has
// opened its remote copy and not failed: a lookup made meanwhile answers
// from it rather than open the remote copy again: a second process's
// lookup while the first reads, or the kernel's after an open answered
// ESTALE (fs.entryNode.Open). s.mu is held.
func (fe *fetcher) fetchingLocked(k digest.Key) (Info, bool) {
	s := fe.s
	ks := s.keys.get(k)
	f := ks.fetch
	if f == nil || f.deleted || ks.deleting > 0 {
		return Info{}, false
	}
	select {
	case <-f.ready:
	default:
		return Info{}, false
	}
	if f.openErr != nil || f.failed() {
		return Info{}, false
	}
	return f.info, true
}

// joinableFetch returns the fetch of k from l that an Open can join (any
// layer when l is nil), with a reference taken for it; or nil. s.mu is held.
func (fe *fetcher) joinableFetch(k digest.Key, l *layer) *fetch {
	s := fe.s
	f := s.keys.get(k).fetch
	// A fetch that failed has nothing to give: the caller fetches again
	// (and finds a damaged copy damaged again, not absent).
	if f == nil || (l != nil && f.l != l) || f.failed() {
		return nil
	}
	f.mu.Lock()
	f.refs++
	f.mu.Unlock()
	return f
}

// endFetchLocked takes f, which has ended, out of the key table.
func (fe *fetcher) endFetchLocked(k digest.Key, f *fetch) {
	s := fe.s
	s.keys.edit(k, func(ks *keyState) {
		if ks.fetch == f {
			ks.fetch = nil
		}
	})
}

// holdMem reports whether a value of size bytes fetched from l is fetched
// into memory rather than into a spool file, and counts it. It is for the
// values whose copy into tier 0 is made as soon as they are fetched
// (promoter.deferrable): fetched into memory, that copy is the fetch's own
// buffer (BytesPutter) where it was a second allocation filled from the
// spool file, and the spool's writes and reads are copies in memory. Such
// fetches hold at most the deferred copies' bound at once (a quarter of
// tier 0, at most 64 MiB); over it, a value goes to a spool file.
func (fe *fetcher) holdMem(l *layer, size int64) bool {
	pm := &fe.s.promoter
	limit := pm.deferq.limit
	targets := pm.promoteTargets(l.idx)
	if !pm.deferrable(size, targets) {
		return false
	}
	if _, ok := targets[0].Tier.(BytesPutter); !ok {
		return false
	}
	for {
		held := fe.memHeld.Load()
		if held+size > limit {
			return false
		}
		if fe.memHeld.CompareAndSwap(held, held+size) {
			return true
		}
	}
}

// spoolError is a fetch that failed in the local spool directory: the
// reader is told that, not that the remote tier is unavailable.
type spoolError struct{ err error }

func (e *spoolError) Error() string { return e.err.Error() }

// join waits for f to be opened and returns a reader of it, or drops the
// reference joinableFetch took.
func (f *fetch) join(ctx context.Context, want digest.Sum) (Reader, error) {
	select {
	case <-f.ready:
	case <-ctx.Done():
		f.unref()
		return nil, ctx.Err()
	}
	var err error
	switch {
	case f.openErr != nil:
		err = f.openErr
	case f.failed():
		f.mu.Lock()
		err = f.err // a damaged copy reads as damaged, not as absent
		f.mu.Unlock()
	case !want.IsZero() && f.infoNow().Sum != want:
		err = Wrap(f.l.name, "open", f.info.Key, ErrNotFound)
	default:
		return &fetchReader{f: f}, nil
	}
	f.unref()
	return nil, err
}

// infoNow is f.info, whose Sum the fetch of a copy without a checksum
// record sets once it has hashed the value (run).
func (f *fetch) infoNow() Info {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.info
}

func (f *fetch) failed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.done && f.err != nil
}

// Write appends fetched bytes to the spool (io.Writer for WriterTo).
func (f *fetch) Write(p []byte) (int, error) {
	if f.s.ctx.Err() != nil {
		return 0, f.s.ctx.Err()
	}
	f.mu.Lock()
	off := f.written
	f.mu.Unlock()
	if off+int64(len(p)) > f.info.Size {
		return 0, fmt.Errorf("%w: remote sent more than the %d bytes announced", ErrCorrupt, f.info.Size)
	}
	var n int
	var err error
	if f.mem != nil {
		n = copy(f.mem[off:], p) // hashed behind, by hashBehind
	} else {
		n, err = f.f.WriteAt(p, off)
		f.hasher.Write(p[:n])
	}
	f.l.bytesOut.Add(int64(n))
	f.mu.Lock()
	f.written += int64(n)
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
	return n, err
}

func (f *fetch) run(r Reader) {
	defer f.s.wg.Done()
	k := f.info.Key
	start := time.Now()
	var err error
	if f.mem != nil && !f.held() {
		err = f.fetchSmall(r)
	} else {
		var fin chan int64
		var hashed chan struct{}
		if f.mem != nil {
			fin, hashed = make(chan int64, 1), make(chan struct{})
			go f.hashBehind(fin, hashed)
		}
		if wt, ok := r.(io.WriterTo); ok {
			_, err = wt.WriteTo(f)
		} else {
			buf := make([]byte, 1<<20)
			_, err = io.CopyBuffer(f, io.NewSectionReader(r, 0, f.info.Size), buf)
		}
		if fin != nil {
			f.mu.Lock()
			fin <- f.written
			f.mu.Unlock()
			<-hashed
		}
	}
	if err == nil && f.hasher.Size() != f.info.Size {
		err = fmt.Errorf("%w: got %d bytes, the remote announced %d", ErrCorrupt, f.hasher.Size(), f.info.Size)
	}
	unrecorded := f.info.Sum.IsZero() // a copy without a checksum record, served by the tier's foreign setting
	if err == nil && !unrecorded && f.hasher.Sum() != f.info.Sum {
		err = fmt.Errorf("%w: sha256 %s, the remote's checksum says %s", ErrCorrupt, f.hasher.Sum(), f.info.Sum)
	}
	if unrecorded && errors.Is(err, ErrCorrupt) {
		// Nothing vouched for these bytes: a size that differs is a file
		// that changed under the reader, not damage. Not served, not moved.
		err = fmt.Errorf("the remote copy has no checksum record and changed while it was read: %v", err)
	}
	if a, ok := r.(Adopter); ok && err == nil {
		// A copy without a record, read whole: checked unchanged and its
		// sum recorded, before the last byte is released.
		actx, cancel := context.WithTimeout(f.s.ctx, f.s.opt.RemoteTimeout)
		err = a.Adopt(actx, f.hasher.Sum())
		cancel()
		if err == nil && unrecorded {
			f.s.mu.Lock()
			f.mu.Lock()
			f.info.Sum = f.hasher.Sum()
			f.mu.Unlock()
			f.s.mu.Unlock()
		}
	}
	if err != nil {
		if errors.Is(err, ErrCorrupt) {
			// The quarantine takes this copy only, not one another mount
			// may have put in its place while it was read.
			err = judgedBy(r, err)
			if f.prefetch {
				// For the Open that follows the lookup; before the
				// quarantine, which makes the copy absent.
				f.s.damaged.add(k, err)
			}
			f.s.corrupt(f.l, k, err)
		} else {
			f.s.noteErr(f.l, err)
			f.s.log.Warn("remote fetch failed", "tier", f.l.name, "key", k.String(), "err", err)
		}
		err = Wrap(f.l.name, "read", k, err)
	}
	f.s.observe(f.l, "fetch", start, err)
	f.mu.Lock()
	f.done, f.err = true, err
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
	// Readers have the value: closing a remote handle costs a round trip.
	r.Close()

	if err == nil {
		// Readers go on reading the spool while it is copied.
		f.s.promoter.fetched(f.l, &spoolReader{f: f}, func() bool {
			f.s.mu.Lock()
			defer f.s.mu.Unlock()
			return f.deleted
		})
	}
	f.s.mu.Lock()
	f.s.fetcher.endFetchLocked(k, f)
	f.s.mu.Unlock()
	f.unref()
}

// hashBehind hashes what the fetch writes into memory, on its own
// goroutine, so that the fetch's writer, which receives and stores the
// bytes, does not also hash them: in series, the hash held up the transfer
// while another core idled. It follows f.written until it has hashed the
// end sent on fin (the bytes written when the transfer ended), then closes
// done. A fetch into a spool file hashes as it writes: reading the file
// back to hash it costs a copy of every byte more than it saves
// (docs/performance.md).
func (f *fetch) hashBehind(fin <-chan int64, done chan<- struct{}) {
	defer close(done)
	var off int64
	end := int64(-1)
	for {
		f.mu.Lock()
		avail, ch := f.written, f.changed
		f.mu.Unlock()
		f.hasher.Write(f.mem[off:avail])
		off = avail
		if end >= 0 && off >= end {
			return
		}
		select {
		case <-ch:
		case end = <-fin:
			fin = nil
		}
	}
}

// fetchSmall reads a value that fits in memory with one ReadAt: one round
// trip, where a remote WriterTo asks for the size first.
func (f *fetch) fetchSmall(r Reader) error {
	n, err := r.ReadAt(f.mem, 0)
	if err == io.EOF && n == len(f.mem) {
		err = nil
	}
	f.hasher.Write(f.mem[:n])
	f.l.bytesOut.Add(int64(n))
	f.mu.Lock()
	f.written = int64(n)
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
	return err
}

func (f *fetch) unref() {
	f.mu.Lock()
	f.refs--
	last := f.refs == 0
	f.mu.Unlock()
	if last && f.f != nil {
		f.f.Close()
	}
	if last && f.held() {
		f.s.fetcher.memHeld.Add(-f.info.Size)
	}
}

// held reports whether f holds a value over memFetch in memory, counted in
// fetcher.memHeld (holdMem): smaller ones are fetched into memory always.
func (f *fetch) held() bool { return f.mem != nil && f.info.Size > memFetch }

// readAt serves p at off once the bytes are there (and, for the last byte,
// verified), or fails with the fetch's error.
func (f *fetch) readAt(p []byte, off int64) (int, error) {
	size := f.info.Size
	need := min(off+int64(len(p)), size)
	for {
		f.mu.Lock()
		avail, done, err, ch := f.written, f.done, f.err, f.changed
		f.mu.Unlock()
		if err != nil {
			return 0, err
		}
		if off >= size {
			// The end, once the fetch has ended well: an empty value is
			// verified too (its remote copy may not be a file at all).
			if done {
				return 0, io.EOF
			}
			select {
			case <-ch:
				continue
			case <-f.s.ctx.Done():
				return 0, Wrap("stack", "read", f.info.Key, ErrClosed)
			}
		}
		if !done && avail == size {
			avail = size - 1 // the tail waits for the hash
		}
		if need <= avail {
			n, rerr := f.readSpool(p[:need-off], off)
			if rerr == nil && need == size && int64(len(p)) > need-off {
				rerr = io.EOF
			}
			return n, rerr
		}
		select {
		case <-ch:
		case <-f.s.ctx.Done():
			return 0, Wrap("stack", "read", f.info.Key, ErrClosed)
		}
	}
}

type fetchReader struct {
	f    *fetch
	once sync.Once
}

func (r *fetchReader) Info() Info { return r.f.infoNow() }

func (r *fetchReader) ReadAt(p []byte, off int64) (int, error) {
	r.f.s.act.used()
	return r.f.readAt(p, off)
}

func (r *fetchReader) Close() error { r.once.Do(r.f.unref); return nil }

// spoolReader reads the verified spool for promotion.
type spoolReader struct{ f *fetch }

func (r *spoolReader) Info() Info { return r.f.info }

func (r *spoolReader) ReadAt(p []byte, off int64) (int, error) { return r.f.readSpool(p, off) }

func (r *spoolReader) Close() error { return nil }

// Bytes is the verified value when it was fetched into memory, else nil:
// it never changes, so a BytesPutter may keep it.
func (r *spoolReader) Bytes() []byte { return r.f.mem }

// readSpool reads the spool like io.ReaderAt.
func (f *fetch) readSpool(p []byte, off int64) (int, error) {
	if f.mem == nil {
		return f.f.ReadAt(p, off)
	}
	if off >= int64(len(f.mem)) {
		return 0, io.EOF
	}
	n := copy(p, f.mem[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// A lookup of a value too large to prefetch (lookupByOpen) opens the remote
// copy, and the Open that usually follows a lookup at once would open it
// again: the lookup parks its reader for Policy.ParkTTL instead, and the
// fetch takes it (unpark): that saves the open's two round trips per value
// read.
const maxParked = 64 // open remote handles kept; a reader over the limit is closed

type parked struct {
	l     *layer
	r     Reader
	timer *time.Timer
}

// park keeps r, opened from l by a lookup of k, for the fetch that follows.
func (fe *fetcher) park(l *layer, k digest.Key, r Reader) {
	s := fe.s
	s.mu.Lock()
	if ks := s.keys.get(k); s.closed || ks.deleting > 0 || ks.fetch != nil || ks.parked != nil || s.keys.n.parked >= maxParked {
		s.mu.Unlock()
		go r.Close()
		return
	}
	p := &parked{l: l, r: r}
	s.keys.edit(k, func(ks *keyState) { ks.parked = p })
	p.timer = time.AfterFunc(s.pol.ParkTTL, func() {
		s.mu.Lock()
		mine := s.keys.get(k).parked == p
		if mine {
			s.keys.edit(k, func(ks *keyState) { ks.parked = nil })
		}
		s.mu.Unlock()
		if mine {
			r.Close()
		}
	})
	s.mu.Unlock()
}

// unpark takes the reader a lookup parked for k in l, or returns nil; a
// reader whose connection dropped meanwhile is closed, not returned.
func (fe *fetcher) unpark(l *layer, k digest.Key) Reader {
	s := fe.s
	s.mu.Lock()
	p := s.keys.get(k).parked
	if p == nil || p.l != l || !p.timer.Stop() {
		s.mu.Unlock()
		return nil
	}
	s.keys.edit(k, func(ks *keyState) { ks.parked = nil })
	s.mu.Unlock()
	if lr, ok := p.r.(LiveReader); ok && !lr.Live() {
		go p.r.Close()
		return nil
	}
	return p.r
}

// dropParked closes the readers parked for k (all of them when k is nil).
func (fe *fetcher) dropParked(k *digest.Key) {
	s := fe.s
	s.mu.Lock()
	var rs []Reader
	drop := func(pk digest.Key, p *parked) {
		if p != nil && p.timer.Stop() {
			rs = append(rs, p.r)
			s.keys.edit(pk, func(ks *keyState) { ks.parked = nil })
		}
	}
	if k != nil {
		drop(*k, s.keys.get(*k).parked)
	} else {
		var all []digest.Key
		s.keys.each(func(pk digest.Key, ks *keyState) bool {
			if ks.parked != nil {
				all = append(all, pk)
			}
			return true
		})
		for _, pk := range all {
			drop(pk, s.keys.get(pk).parked)
		}
	}
	s.mu.Unlock()
	for _, r := range rs {
		r.Close()
	}
}
