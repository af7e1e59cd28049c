package sftp

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
)

var _ tiers.StreamPutter = (*Tier)(nil)

// PutGrowing uploads g while it is being written, the way Put does (temp
// file, size and hash check, sum file, rename: see put), with the Meta
// that g reports once it is final. Waiting on g pauses the watchdog, as
// reading Put's reader does; a connection that dies meanwhile (found by
// the keepalive) ends the wait at once, so the put fails with
// ErrUnavailable rather than when g next grows.
func (t *Tier) PutGrowing(ctx context.Context, k digest.Key, g tiers.Growing) (tiers.Info, error) {
	if t.opt.ReadOnly {
		return tiers.Info{}, t.wrap("put", k, tiers.ErrReadOnly)
	}
	c, w, err := t.begin(ctx, k)
	if err != nil {
		return tiers.Info{}, t.wrap("put", k, err)
	}
	defer w.stop()
	gctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-c.dead:
			cancel()
		case <-gctx.Done():
		}
	}()
	gr := &growingReader{t: t, ctx: gctx, c: c, g: g}
	info, err := t.putFinal(ctx, c, w, k, gr, tiers.UnknownMeta, gr.meta)
	if err == nil || errors.Is(err, tiers.ErrExist) {
		t.markUsed(k)
	}
	return info, t.wrap("put", k, err)
}

// growingReader reads a tiers.Growing as a stream that ends at the value's
// final size. pkg/sftp calls Read from one goroutine at a time.
type growingReader struct {
	t     *Tier
	ctx   context.Context // ends when the connection dies
	c     *conn
	g     tiers.Growing
	off   int64 // bytes read
	avail int64 // bytes written, as last reported by Wait
	final bool
	m     tiers.Meta
}

func (r *growingReader) Read(p []byte) (int, error) {
	for r.off >= r.avail {
		if r.final {
			return 0, io.EOF
		}
		n, m, final, err := r.g.Wait(r.ctx, r.off)
		if err != nil {
			if !r.c.ok() {
				return 0, unavailable(r.t.rem.addr, r.c.cause())
			}
			return 0, err
		}
		if n < r.off || final && n != m.Size {
			return 0, fmt.Errorf("%w: value shrank to %d bytes after %d were sent", tiers.ErrCorrupt, n, r.off)
		}
		r.avail, r.final, r.m = n, final, m
	}
	want := min(int64(len(p)), r.avail-r.off)
	n, err := r.g.ReadAt(p[:want], r.off)
	r.off += int64(n)
	switch {
	case errors.Is(err, io.EOF) && int64(n) == want:
		err = nil
	case errors.Is(err, io.EOF):
		// Shorter than Wait said: never a clean end.
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// meta is the final Meta, asked for after Read returned io.EOF.
func (r *growingReader) meta() (tiers.Meta, error) {
	if !r.final {
		return tiers.Meta{}, errors.New("growing value ended before it was final")
	}
	return r.m, nil
}
