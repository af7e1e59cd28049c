package sftp

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	xsftp "github.com/pkg/sftp"

	"github.com/flechefs/flechefs/tiers"
)

// reader reads one remote file through an open SFTP handle, which keeps
// reading the opened file after it is deleted or replaced on the server.
type reader struct {
	t      *Tier
	c      *conn
	f      *xsftp.File
	info   tiers.Info
	closed atomic.Bool

	// head is the value's first bytes and headErr what checking the
	// file's size against the record found, both set before headReady is
	// closed (readHead; in the background when Open had a record).
	head      []byte
	headErr   error
	headReady chan struct{}
	// mtime is the data file's modification time from the head's fstat
	// (zero when there was none): lanes check their handles against it.
	mtime time.Time
	// foreign: the file has no sum record and is served under
	// Options.Foreign (foreign.go); a file that turns out shorter is one
	// that changed, not damage, and Adopt records its sum.
	foreign bool
}

// headLen is how much of the value Open reads as the head.
func (r *reader) headLen() int64 { return int64(min(headSize, r.c.packet)) }

// waitHead waits for the head and returns headErr.
func (r *reader) waitHead() error {
	<-r.headReady
	return r.headErr
}

var (
	_ tiers.Reader         = (*reader)(nil)
	_ io.WriterTo          = (*reader)(nil)
	_ tiers.LiveReader     = (*reader)(nil)
	_ tiers.CopyIdentifier = (*reader)(nil)
)

// CopyID names the data file read by its size and modification time
// (copyID), once the head's fstat has given them; else "".
func (r *reader) CopyID() string {
	select {
	case <-r.headReady:
	default:
		return ""
	}
	if r.mtime.IsZero() {
		return ""
	}
	return copyID(r.info.Size, r.mtime)
}

// copyID names a data file by its size and modification time: a value is
// never rewritten in place, so another file under the name (removed and
// uploaded again) differs in one of them, unless it has the same size and
// was written in the same second (SFTP version 3 gives whole seconds).
func copyID(size int64, mtime time.Time) string { return fmt.Sprintf("%d@%d", size, mtime.Unix()) }

func (r *reader) Info() tiers.Info { return r.info }

// Live is false once the reader's connection has dropped (tiers.LiveReader).
func (r *reader) Live() bool { return !r.closed.Load() && r.c.ok() }

func (r *reader) err(err error) error { return tiers.Wrap(r.t.opt.Name, "read", r.info.Key, err) }

func (r *reader) usable() error {
	if r.closed.Load() {
		return errors.New("reader is closed")
	}
	if !r.c.ok() {
		return r.t.failure(r.c, xsftp.ErrSSHFxConnectionLost)
	}
	return nil
}

// ReadAt reads with up to Concurrency requests in flight. A file shorter
// than its recorded size gives ErrCorrupt.
func (r *reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, r.err(fmt.Errorf("negative offset %d", off))
	}
	// Even a read at the end waits for the head's check: an empty record
	// beside a directory must not read as an empty value.
	if err := r.waitHead(); err != nil {
		return 0, r.err(err)
	}
	size := r.info.Size
	if off >= size {
		return 0, io.EOF
	}
	want := p
	if int64(len(p)) > size-off {
		want = p[:size-off]
	}
	if err := r.usable(); err != nil {
		return 0, r.err(err)
	}
	// What the head holds is copied from it; the rest is read.
	var n int
	if off < int64(len(r.head)) {
		n = copy(want, r.head[off:])
	}
	if n == len(want) {
		if len(want) < len(p) {
			return n, io.EOF
		}
		return n, nil
	}
	w := r.c.watch()
	m, err := r.f.ReadAt(want[n:], off+int64(n))
	w.stop()
	n += m
	if n < len(want) {
		if err == nil || err == io.EOF {
			err = r.short(off + int64(n))
		} else {
			err = r.t.failure(r.c, err)
		}
		return n, r.err(err)
	}
	if len(want) < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// short explains a read that ended at offset at, before the recorded size.
func (r *reader) short(at int64) error {
	w := r.c.watch()
	fi, err := r.f.Stat()
	w.stop()
	if err != nil {
		return r.t.failure(r.c, err)
	}
	if fi.Size() < r.info.Size && r.foreign {
		return errChanged
	}
	if fi.Size() < r.info.Size {
		r.t.log.Warn("sftp entry is truncated", "tier", r.t.opt.Name, "key", r.info.Key, "size", fi.Size(), "recorded", r.info.Size)
		return fmt.Errorf("%w: remote file has %d bytes, %d were recorded", tiers.ErrCorrupt, fi.Size(), r.info.Size)
	}
	return fmt.Errorf("server returned a short read at offset %d of %d bytes", at, r.info.Size)
}

// WriteTo writes the whole entry to dst, from offset 0, with up to
// Concurrency read requests in flight and the data written in order. It is
// the fast way to fetch an entry. The watchdog does not count time spent in
// dst.Write.
//
// The head Open reads goes first; the rest is read in chunks of a few
// packets, several chunks at once (fetch), asked for at once, beside the
// head read when that is still out. pkg/sftp's own File.WriteTo asks for
// the file's size first, a round trip (40 ms on the bench's slow link)
// before any data; the size is known here, and a file that grew behind its
// record fails the head's check.
func (r *reader) WriteTo(dst io.Writer) (int64, error) {
	if err := r.usable(); err != nil {
		return 0, r.err(err)
	}
	w := r.c.watch()
	defer w.stop()
	lw := &watchWriter{w: dst, watch: w}
	headLen := r.headLen()
	if r.info.Size <= headLen {
		if err := r.waitHead(); err != nil {
			return 0, r.err(err)
		}
		hn, _ := lw.Write(r.head)
		return int64(hn), r.err(lw.err)
	}
	hw := &headFirst{r: r, w: lw}
	n, err := r.fetch(hw, headLen)
	n += hw.hn
	if herr := r.waitHead(); herr != nil {
		return n, r.err(herr)
	}
	switch {
	case lw.err != nil:
		return n, r.err(lw.err)
	case err != nil:
		return n, r.err(err)
	case n < r.info.Size:
		return n, r.err(r.short(n))
	}
	return n, nil
}

// headFirst writes the reader's head to w before the first chunk.
type headFirst struct {
	r    *reader
	w    io.Writer
	hn   int64 // head bytes written
	done bool
}

func (h *headFirst) Write(p []byte) (int, error) {
	if !h.done {
		h.done = true
		if err := h.r.waitHead(); err != nil {
			return 0, err
		}
		if want := h.r.headLen(); int64(len(h.r.head)) != want {
			return 0, fmt.Errorf("head read returned %d bytes of %d", len(h.r.head), want)
		}
		n, err := h.w.Write(h.r.head)
		h.hn = int64(n)
		if err != nil {
			return 0, err
		}
	}
	return h.w.Write(p)
}

// fetchChunks is how many packets one ReadAt of a fetch with lanes (and of
// an upload with lanes) asks for: 1 MiB, the unit laneSlots counts in.
const fetchChunks = 4

// Through one session a fetch asks for one packet per ReadAt, so that the
// spool gets each packet as it arrives, in order, and readers of a value
// being fetched read it a packet at a time rather than a megabyte at a
// time, which matters most for values of a few MiB, read whole in about
// the time of one megabyte's round of requests. fetchDepth packets are in
// flight: about 4 MiB, twice the 2 MiB the session's window lets the
// server send ahead; each holds a buffer, so more only costs memory.
const fetchDepth = 16

var chunkBufs sync.Pool

// getChunk returns a buffer of at least n bytes from chunkBufs (put it
// back there).
func getChunk(n int) *[]byte {
	bp, _ := chunkBufs.Get().(*[]byte)
	if bp == nil || cap(*bp) < n {
		b := make([]byte, n)
		bp = &b
	}
	return bp
}

// fetch writes the value from offset from to its end to dst: through one
// session with fetchDepth ReadAts of one packet each in flight, with lanes
// with Concurrency/fetchChunks ReadAts of fetchChunks packets (laneSlots
// per session).
// It returns the bytes written and the first error (a short read is not one:
// the caller compares the count with the size).
func (r *reader) fetch(dst io.Writer, from int64) (int64, error) {
	size := r.info.Size
	lanes := r.c.wantLanes(size - from)
	chunk := int64(r.c.packet * fetchChunks)
	depth := max(1, r.t.opt.Concurrency/fetchChunks)
	if !lanes {
		chunk, depth = int64(r.c.packet), min(r.t.opt.Concurrency, fetchDepth)
	}
	type result struct {
		bp  *[]byte // from chunkBufs
		b   []byte  // the chunk asked for, in *bp
		n   int
		err error
	}
	// inflight holds each chunk's answer channel in offset order; its
	// capacity bounds the ReadAts running.
	inflight := make(chan chan result, depth)
	stop := make(chan struct{})
	lf := newLaneFiles(r.t, r.f, depth, lanes)
	if lanes {
		done := make(chan struct{})
		defer close(done)
		go r.openLanes(lf, done)
	}
	defer lf.end()
	start := time.Now()
	defer func() {
		n, at := lf.handles()
		r.t.log.Debug("sftp fetch", "tier", r.t.opt.Name, "key", r.info.Key, "bytes", size-from,
			"took", time.Since(start), "handles", n, "lanes_at", at)
	}()
	go func() {
		defer close(inflight)
		for off := from; off < size; off += chunk {
			hi, f, ok := lf.acquire(stop)
			if !ok {
				return
			}
			bp := getChunk(int(chunk))
			b := (*bp)[:min(chunk, size-off)]
			ch := make(chan result, 1)
			select {
			case inflight <- ch:
			case <-stop:
				lf.release(hi)
				chunkBufs.Put(bp)
				return
			}
			go func(off int64) {
				n, err := f.ReadAt(b, off)
				lf.release(hi)
				if err == io.EOF {
					err = nil
				}
				ch <- result{bp, b, n, err}
			}(off)
		}
	}()
	var written int64
	var firstErr error
	for ch := range inflight {
		res := <-ch
		if firstErr == nil {
			if res.n > 0 {
				m, err := dst.Write(res.b[:res.n])
				written += int64(m)
				if err != nil {
					firstErr = err
				}
			}
			switch {
			case firstErr != nil:
			case res.err != nil:
				firstErr = r.t.failure(r.c, res.err)
			case res.n < len(res.b):
				firstErr = errShort // the file ended early: the caller asks why
			}
			if firstErr != nil {
				close(stop)
			}
		}
		chunkBufs.Put(res.bp)
	}
	if firstErr == errShort {
		firstErr = nil
	}
	return written, firstErr
}

var errShort = errors.New("short read")

// watchWriter pauses the watchdog while w runs and keeps w's error: the
// time the fetch's consumer takes is not the server's.
type watchWriter struct {
	w     io.Writer
	watch *watch
	err   error
}

func (l *watchWriter) Write(p []byte) (int, error) {
	l.watch.pause()
	n, err := l.w.Write(p)
	l.watch.resume()
	if err != nil {
		l.err = err
	}
	return n, err
}

// Close releases the remote handle. The error of closing a read handle
// means nothing to the caller and is not returned.
func (r *reader) Close() error {
	if r.closed.Swap(true) || !r.c.ok() {
		return nil
	}
	w := r.c.watch()
	r.f.Close()
	w.stop()
	return nil
}
