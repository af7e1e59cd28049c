package tiers

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flechefs/flechefs/digest"
)

// EarlyUpload is the upload of a value to the remote tier that starts
// while the value is still being written (see doc.go, "Early uploads").
// The writer reports its progress with Written, then either publishes a
// Blob whose EarlyUpload method returns it (an UploadingBlob), which makes
// Publish adopt it as the value's upload, or calls Abort. Its methods are
// safe for concurrent use and never wait for the remote.
type EarlyUpload struct {
	s      *Stack
	key    digest.Key
	src    io.ReaderAt
	r      *layer
	ctx    context.Context
	cancel context.CancelFunc
	wake   chan struct{} // capacity 1: progress since the upload last looked
	ended  chan struct{} // closed when PutGrowing returned
	read   atomic.Int64  // bytes read from src, for the log

	mu      sync.Mutex
	written int64 // bytes of src that are final
	meta    Meta  // set with final
	final   bool  // published: meta is the value's
	aborted bool

	// Guarded by Stack.mu.
	done    bool    // PutGrowing returned
	adopted bool    // Publish made it the upload of the queued item
	p       *pub    // the published entry, once adopted (a reference)
	item    *upItem // the queue item it uploads, once adopted
	// at publish: how much was read, and when
	readAtPublish int64
	published     time.Time
}

// UploadingBlob is a Blob whose bytes an EarlyUpload is already sending to
// the remote. Publish adopts that upload instead of starting another.
type UploadingBlob interface {
	Blob
	EarlyUpload() *EarlyUpload
}

var errAbandoned = errors.New("early upload abandoned by its writer")

// BeginUpload starts uploading k while it is being written; src reads the
// bytes written so far (Written says how many are final). It returns nil
// when the stack does not upload early, and the writer then publishes as
// usual: no writable remote tier, or one that is not a StreamPutter, or
// more than one, a remote known to be down, min(UploadWorkers, 2)
// early uploads running already, or the stack closed.
func (s *Stack) BeginUpload(k digest.Key, src io.ReaderAt) *EarlyUpload {
	r := s.streamRemote()
	if r == nil || k.IsZero() || r.unavailable.Load() {
		return nil
	}
	s.mu.Lock()
	if ks := s.keys.get(k); s.closed || s.rep.early >= min(s.opt.UploadWorkers, s.pol.LargeUploads) || ks.deleting > 0 || ks.tomb != nil {
		s.mu.Unlock()
		return nil
	}
	s.rep.early++
	s.wg.Add(1)
	s.mu.Unlock()
	u := &EarlyUpload{s: s, key: k, src: src, r: r, wake: make(chan struct{}, 1), ended: make(chan struct{})}
	u.ctx, u.cancel = context.WithCancel(s.ctx)
	go u.run(r.Tier.(StreamPutter))
	return u
}

// streamRemote is the remote tier early uploads go to, or nil.
func (s *Stack) streamRemote() *layer {
	var out *layer
	for r := range s.layers.writableRemote() {
		if out != nil {
			return nil // several: the queue uploads to each
		}
		out = r
	}
	if out == nil {
		return nil
	}
	if _, ok := out.Tier.(StreamPutter); !ok {
		return nil
	}
	return out
}

// Written reports that the first n bytes of the value are written and will
// not change. It never blocks.
func (u *EarlyUpload) Written(n int64) {
	u.mu.Lock()
	u.written = max(u.written, n)
	u.mu.Unlock()
	u.kick()
}

// Abort ends an upload whose value will not be published as it was sent (a
// write below what was written, a truncate, a failed or killed writer):
// nothing reaches the remote under its key and its temporary file is
// removed, in the background. It never blocks, and does nothing once the
// value was published.
func (u *EarlyUpload) Abort() {
	u.mu.Lock()
	if u.final {
		u.mu.Unlock()
		return
	}
	u.aborted = true
	u.mu.Unlock()
	u.cancel()
}

func (u *EarlyUpload) kick() {
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

// finish gives the upload the published value's size and hash.
func (u *EarlyUpload) finish(info Info) {
	u.mu.Lock()
	u.meta = Meta{Size: info.Size, Sum: info.Sum, Created: info.Created}
	u.written = info.Size
	u.final = true
	u.mu.Unlock()
	u.kick()
}

// Wait implements Growing.
func (u *EarlyUpload) Wait(ctx context.Context, off int64) (int64, Meta, bool, error) {
	for {
		u.mu.Lock()
		n, m, final, aborted := u.written, u.meta, u.final, u.aborted
		u.mu.Unlock()
		switch {
		case aborted:
			return 0, Meta{}, false, errAbandoned
		case final || n > off:
			return n, m, final, nil
		}
		select {
		case <-u.wake:
		case <-ctx.Done():
			return 0, Meta{}, false, ctx.Err()
		}
	}
}

// ReadAt implements Growing.
func (u *EarlyUpload) ReadAt(p []byte, off int64) (int, error) {
	n, err := u.src.ReadAt(p, off)
	u.r.bytesIn.Add(int64(n))
	u.read.Add(int64(n))
	return n, err
}

// run is the upload. Until Publish adopts it, its result is dropped; once
// adopted it is the upload of the queued item, as uploadOne is for a
// worker: success takes the item out of the queue, failure hands it back
// to the workers at once (no backoff: the early attempt was not theirs).
func (u *EarlyUpload) run(sp StreamPutter) {
	s := u.s
	defer s.wg.Done()
	defer u.cancel()
	info, err := sp.PutGrowing(u.ctx, u.key, u)
	s.mu.Lock()
	u.done = true
	close(u.ended)
	s.rep.early--
	adopted, p, item := u.adopted, u.p, u.item
	s.mu.Unlock()
	if !adopted {
		s.log.Debug("early upload abandoned", "key", u.key.String(), "err", err)
		return
	}
	if err == nil {
		s.log.Debug("early upload done", "key", u.key.String(), "size", info.Size,
			"read_at_publish", u.readAtPublish, "after_publish", time.Since(u.published))
		s.rep.noteUpload(u.r, info, nil)
		s.rep.lastErr.Store("")
		err = s.rep.settleUpload(u.ctx, u.key, item, p.persisted)
	} else {
		if !errors.Is(err, ErrExist) && u.ctx.Err() == nil {
			s.noteErr(u.r, err)
		}
		s.log.Info("early upload failed; the upload queue takes over", "key", u.key.String(), "err", err)
	}
	s.mu.Lock()
	s.rep.endUploadLocked(u.key, item, err, false)
	p.unrefLocked()
	s.mu.Unlock()
	select { // a worker takes over a failed one
	case s.rep.q.kick <- struct{}{}:
	default:
	}
}
