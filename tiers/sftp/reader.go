package sftp

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

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
	head   []byte     // the value's first bytes, read by Open
	wmu    sync.Mutex // WriteTo uses and moves the handle's offset
	closed atomic.Bool
}

var (
	_ tiers.Reader = (*reader)(nil)
	_ io.WriterTo  = (*reader)(nil)
)

func (r *reader) Info() tiers.Info { return r.info }

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
	if off+int64(len(want)) <= int64(len(r.head)) {
		n := copy(want, r.head[off:])
		if len(want) < len(p) {
			return n, io.EOF
		}
		return n, nil
	}
	w := r.c.watch()
	n, err := r.f.ReadAt(want, off)
	w.stop()
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
func (r *reader) WriteTo(dst io.Writer) (int64, error) {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if err := r.usable(); err != nil {
		return 0, r.err(err)
	}
	w := r.c.watch()
	defer w.stop()
	lw := &limitWriter{w: dst, left: r.info.Size, watch: w}
	// The head Open read goes first; the rest is read from where it ends.
	hn, err := lw.Write(r.head)
	if err != nil || int64(hn) == r.info.Size {
		return int64(hn), r.err(lw.err)
	}
	if _, err := r.f.Seek(int64(hn), io.SeekStart); err != nil {
		return int64(hn), r.err(err)
	}
	n, err := r.f.WriteTo(lw)
	n += int64(hn)
	switch {
	case lw.err == errTooLong:
		return n, r.err(fmt.Errorf("%w: remote file is longer than the %d bytes recorded", tiers.ErrCorrupt, r.info.Size))
	case lw.err != nil:
		return n, r.err(lw.err)
	case err != nil:
		return n, r.err(r.t.failure(r.c, err))
	case n < r.info.Size:
		return n, r.err(r.short(n))
	}
	return n, nil
}

// limitWriter passes at most left bytes to w and pauses the watchdog while w
// runs.
type limitWriter struct {
	w     io.Writer
	left  int64
	watch *watch
	err   error // w's error, or errTooLong
}

func (l *limitWriter) Write(p []byte) (int, error) {
	var tooLong bool
	if int64(len(p)) > l.left {
		p, tooLong = p[:l.left], true
	}
	l.watch.pause()
	n, err := l.w.Write(p)
	l.watch.resume()
	l.left -= int64(n)
	switch {
	case err != nil:
		l.err = err
	case tooLong:
		l.err = errTooLong
	}
	return n, l.err
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
