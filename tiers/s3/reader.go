package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/pagemem"
	"github.com/flechefs/flechefs/tiers"
)

// Reads.
//
// Open is one GET of the object's first headSize bytes: its answer carries
// the metadata a HEAD would (the checksum, the size in Content-Range, the
// ETag), so a lookup costs one round trip, and a value of at most headSize
// bytes (most results) is read whole by it.
//
// WriteTo, which the stack's fetch uses, reads the rest with ranged GETs of
// RangeSize bytes, Ranges of them in flight, and writes them to dst in
// order: the range at the front is written as its bytes arrive (a reader of
// the spool gets them at once), the ones behind it are held in their
// buffers until it is done. Memory is bounded by Ranges × RangeSize per
// fetch, whatever the value's size. One GET streams no faster than one TCP
// connection and one request stream of the server; several ranges at once
// fill the link (on loopback, SeaweedFS served a 64 MiB value at 8 MB/s
// through minio-go's sequential reads).
//
// Every GET after Open carries If-Match with the ETag Open saw: an object
// replaced meanwhile (deleted, then written again by another mount) fails
// the read rather than mixing two values.

// headSize is how much of a value Open reads.
const headSize = 64 << 10

// Defaults of Options.Ranges and Options.RangeSize.
const (
	defaultRanges    = 4
	defaultRangeSize = 4 << 20
)

// errChanged: the value opened is gone, another in its place.
var errChanged = fmt.Errorf("%w: the object changed while it was read (its ETag is not the one opened)", tiers.ErrNotFound)

type reader struct {
	t      *Tier
	k      digest.Key
	info   tiers.Info
	etag   string
	head   []byte // the value's first min(size, headSize) bytes
	ctx    context.Context
	cancel context.CancelFunc // Close ends the requests in flight
}

var (
	_ tiers.Reader         = (*reader)(nil)
	_ io.WriterTo          = (*reader)(nil)
	_ tiers.CopyIdentifier = (*reader)(nil)
)

// CopyID is the ETag of the object opened: another object put under the
// key later has another.
func (r *reader) CopyID() string { return r.etag }

// Open opens the object: one GET of its head, whose headers give its Info.
func (t *Tier) Open(ctx context.Context, k digest.Key) (tiers.Reader, error) {
	if err := t.unavailable("open", k); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, t.opt.Timeout)
	defer cancel()
	opts := minio.GetObjectOptions{}
	opts.SetRange(0, headSize-1)
	body, o, h, err := t.core.GetObject(ctx, t.opt.Bucket, t.object(k), opts)
	if err != nil {
		if minio.ToErrorResponse(err).Code == minio.InvalidRange {
			// An empty object has no byte 0: its HEAD says the rest.
			return t.openEmpty(ctx, k)
		}
		return nil, t.wrap("open", k, err)
	}
	defer body.Close()
	size, err := totalSize(h, o.Size)
	if err != nil {
		return nil, t.wrap("open", k, err)
	}
	o.Size = size
	info, err := t.info(k, o)
	if err != nil {
		return nil, t.wrap("open", k, err)
	}
	head := pagemem.Bytes(int(min(size, headSize)))
	if _, err := io.ReadFull(body, head); err != nil {
		return nil, t.wrap("open", k, fmt.Errorf("reading the first %d bytes: %w", len(head), err))
	}
	t.used(k)
	return t.newReader(k, info, o.ETag, head), nil
}

func (t *Tier) openEmpty(ctx context.Context, k digest.Key) (tiers.Reader, error) {
	o, err := t.c.StatObject(ctx, t.opt.Bucket, t.object(k), minio.StatObjectOptions{})
	if err != nil {
		return nil, t.wrap("open", k, err)
	}
	info, err := t.info(k, o)
	if err != nil {
		return nil, t.wrap("open", k, err)
	}
	if info.Size != 0 {
		return nil, t.wrap("open", k, fmt.Errorf("the store refused the range of the first bytes of %d", info.Size))
	}
	return t.newReader(k, info, o.ETag, nil), nil
}

func (t *Tier) newReader(k digest.Key, info tiers.Info, etag string, head []byte) *reader {
	ctx, cancel := context.WithCancel(context.Background())
	return &reader{t: t, k: k, info: info, etag: etag, head: head, ctx: ctx, cancel: cancel}
}

// totalSize is the object's size from a ranged GET's Content-Range
// ("bytes 0-65535/1048576"); a store that ignored the range answered the
// whole object, whose size is its length.
func totalSize(h http.Header, length int64) (int64, error) {
	cr := h.Get("Content-Range")
	if cr == "" {
		if length < 0 {
			return 0, errors.New("the store gave neither Content-Range nor Content-Length")
		}
		return length, nil
	}
	_, total, ok := strings.Cut(cr, "/")
	n, err := strconv.ParseInt(total, 10, 64)
	if !ok || err != nil || n < 0 {
		return 0, fmt.Errorf("Content-Range %q: no total size", cr)
	}
	return n, nil
}

func (r *reader) Info() tiers.Info { return r.info }

// err makes err a read error of the tier.
func (r *reader) err(err error) error {
	if errors.Is(err, tiers.ErrUnavailable) {
		return tiers.Wrap(r.t.opt.Name, "read", r.k, err)
	}
	return r.t.wrap("read", r.k, err)
}

// Close ends the requests in flight.
func (r *reader) Close() error {
	r.cancel()
	return nil
}

// ReadAt serves the head from memory and anything else with one ranged GET.
func (r *reader) ReadAt(p []byte, off int64) (int, error) {
	size := r.info.Size
	if off < 0 {
		return 0, r.t.wrap("read", r.k, fmt.Errorf("negative offset %d", off))
	}
	if off >= size {
		return 0, io.EOF
	}
	want := p[:min(int64(len(p)), size-off)]
	var n int
	if off < int64(len(r.head)) {
		n = copy(want, r.head[off:])
	}
	if n < len(want) {
		part := &rangeBuf{off: off + int64(n), buf: want[n:], more: make(chan struct{}, 1)}
		r.fill(part)
		n += part.n
		if part.err != nil {
			return n, r.err(part.err)
		}
	}
	if len(want) < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// rangeBuf is one ranged GET: bytes [off, off+len(buf)) of the value,
// arriving in buf.
type rangeBuf struct {
	off  int64
	buf  []byte
	pool *[]byte       // the pooled buffer buf is in, or nil
	more chan struct{} // a send after each arrival; capacity 1

	mu   sync.Mutex
	n    int // bytes arrived
	done bool
	err  error
}

// state returns the bytes arrived, whether the GET is over, and its error.
func (b *rangeBuf) state() (int, bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n, b.done, b.err
}

func (b *rangeBuf) notify() {
	select {
	case b.more <- struct{}{}:
	default:
	}
}

// fill runs the GET of b until it is whole or fails. A GET that hears
// nothing for the tier's Timeout is abandoned (ErrUnavailable). A GET that
// fails while the store answers others is made once more for the bytes
// still missing: a store may stall one response and answer the next
// (SeaweedFS, when a volume server dies while the chunk's other copies are
// not registered, until one is: reach.go).
func (r *reader) fill(b *rangeBuf) {
	t := r.t
	if h := t.rangeHook; h != nil {
		h(b.off)
	}
	t.rangesInFlight.Add(1)
	defer t.rangesInFlight.Add(-1)
	err := r.get(b)
	if err != nil && !errors.Is(err, errChanged) && r.ctx.Err() == nil && t.reach.down() == nil {
		err = r.get(b)
	}
	b.mu.Lock()
	b.done, b.err = true, err
	b.mu.Unlock()
	b.notify()
}

// get is one GET of the bytes of b still missing.
func (r *reader) get(b *rangeBuf) error {
	t := r.t
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	var stalled atomic.Bool
	watch := time.AfterFunc(t.opt.Timeout, func() { stalled.Store(true); cancel() })
	defer watch.Stop()
	err := func() error {
		b.mu.Lock()
		from := b.n
		b.mu.Unlock()
		opts := minio.GetObjectOptions{}
		opts.SetRange(b.off+int64(from), b.off+int64(len(b.buf))-1)
		if r.etag != "" {
			opts.SetMatchETag(r.etag)
		}
		body, _, _, err := t.core.GetObject(ctx, t.opt.Bucket, t.object(r.k), opts)
		if err != nil {
			if minio.ToErrorResponse(err).StatusCode == http.StatusPreconditionFailed {
				return errChanged
			}
			return err
		}
		defer body.Close()
		for {
			b.mu.Lock()
			n := b.n
			b.mu.Unlock()
			if n == len(b.buf) {
				return nil
			}
			m, err := body.Read(b.buf[n:])
			watch.Reset(t.opt.Timeout)
			if m > 0 {
				b.mu.Lock()
				b.n += m
				b.mu.Unlock()
				b.notify()
			}
			switch {
			case err == io.EOF && n+m < len(b.buf):
				return fmt.Errorf("%w: the range at %d ended after %d of %d bytes", io.ErrUnexpectedEOF, b.off, n+m, len(b.buf))
			case err == io.EOF:
				return nil
			case err != nil:
				return err
			}
		}
	}()
	if err != nil {
		// A body stopped by its connection's deadline counts as a try
		// without an answer. The GET's own watchdog does not: the ranges
		// in flight stall together when a volume server dies under them,
		// and each must be tried again (fill).
		t.reach.stalled(err)
	}
	if err != nil && stalled.Load() {
		err = fmt.Errorf("%w: %s: no data for %v", tiers.ErrUnavailable, t.opt.Endpoint, t.opt.Timeout)
	}
	return err
}

var rangeBufs sync.Pool

func (r *reader) getBuf() *[]byte {
	size := r.t.opt.RangeSize
	bp, _ := rangeBufs.Get().(*[]byte)
	if bp == nil || int64(cap(*bp)) != size {
		b := make([]byte, size)
		bp = &b
	}
	return bp
}

// WriteTo writes the whole value to dst: the head, then the rest with
// Options.Ranges ranged GETs in flight, in order (see the top of this
// file). The fetch of the stack verifies the SHA-256 of what it gets.
func (r *reader) WriteTo(dst io.Writer) (int64, error) {
	size := r.info.Size
	hn, err := dst.Write(r.head)
	written := int64(hn)
	if err != nil || written == size {
		return written, err
	}
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	slots := make(chan struct{}, r.t.opt.Ranges) // a buffer each
	parts := make(chan *rangeBuf, r.t.opt.Ranges)
	go func() {
		defer close(parts)
		for off := written; off < size; off += r.t.opt.RangeSize {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return
			}
			bp := r.getBuf()
			b := &rangeBuf{off: off, pool: bp, buf: (*bp)[:min(r.t.opt.RangeSize, size-off)], more: make(chan struct{}, 1)}
			parts <- b // never blocks: a slot was free
			go r.fill(b)
		}
	}()
	for b := range parts {
		if err := r.drain(b, dst, &written); err != nil {
			// The buffers of the GETs still running are left to the
			// collector, not the pool: they are still being written.
			cancel()
			for range parts {
			}
			return written, err
		}
		rangeBufs.Put(b.pool)
		<-slots
	}
	return written, nil
}

// drain writes b's bytes to dst as they arrive, until the GET is over.
func (r *reader) drain(b *rangeBuf, dst io.Writer, written *int64) error {
	at := 0
	for {
		n, done, err := b.state()
		if n > at {
			m, werr := dst.Write(b.buf[at:n])
			at += m
			*written += int64(m)
			if werr != nil {
				return werr
			}
			continue
		}
		if done {
			if err != nil {
				return r.err(err)
			}
			return nil
		}
		<-b.more
	}
}
