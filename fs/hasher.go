package fs

import (
	"io"
	"sync"

	"github.com/flechefs/flechefs/digest"
)

// runningHash is the SHA-256 of a value written sequentially, kept up to
// date as it is written. While the spool is in memory it hashes each write
// at once. Once the spool is a file it hashes behind the writer on its own
// goroutine, reading back what was written (from the page cache): the
// WRITE is answered as soon as its bytes are in the spool, and the hash,
// the largest CPU cost of a large write (0.6 ms per MiB against 0.4 for
// everything else), runs on the other core while the kernel brings the
// next request. sum waits for it to catch up.
type runningHash struct {
	h *digest.Hasher

	mu      sync.Mutex
	idle    sync.Cond   // signalled when the goroutine stops
	f       io.ReaderAt // the spool file, once the hashing is behind
	done    int64       // bytes hashed
	want    int64       // bytes written
	err     error       // a read of the spool failed
	running bool        // the goroutine runs
	stopped bool        // dropped: the goroutine stops at its next step
}

// hashStep is what the goroutine reads and hashes at a time.
const hashStep = 1 << 20

var hashBufs = sync.Pool{New: func() any { b := make([]byte, hashStep); return &b }}

func newRunningHash() *runningHash {
	r := &runningHash{h: digest.NewHasher()}
	r.idle.L = &r.mu
	return r
}

// appended takes the write data that made sp grow to end, appended at
// the previous end.
func (r *runningHash) appended(sp *spool, data []byte) {
	if sp.f == nil {
		r.h.Write(data)
		r.done += int64(len(data))
		r.want = r.done
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		r.f = sp.f // the spool's file never changes once it has one
	}
	r.want = sp.size
	if !r.running {
		r.running = true
		go r.run()
	}
}

func (r *runningHash) run() {
	bufp := hashBufs.Get().(*[]byte)
	defer hashBufs.Put(bufp)
	r.mu.Lock()
	defer r.mu.Unlock()
	for !r.stopped && r.err == nil && r.done < r.want {
		f, off, n := r.f, r.done, min(r.want-r.done, hashStep)
		r.mu.Unlock()
		m, err := f.ReadAt((*bufp)[:n], off)
		if err == io.EOF && int64(m) == n {
			err = nil
		}
		r.h.Write((*bufp)[:m])
		r.mu.Lock()
		r.done += int64(m)
		if err == nil && int64(m) < n {
			err = io.ErrUnexpectedEOF
		}
		r.err = err
	}
	r.running = false
	r.idle.Broadcast()
}

// sum waits until everything written is hashed and returns the SHA-256.
func (r *runningHash) sum() (digest.Sum, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for r.running {
		r.idle.Wait()
	}
	if r.err != nil {
		return digest.Sum{}, r.err
	}
	if r.done != r.want {
		// Not reached: the goroutine runs until it has caught up.
		return digest.Sum{}, io.ErrUnexpectedEOF
	}
	return r.h.Sum(), nil
}

// drop abandons the hash and waits until the goroutine no longer reads
// the spool, which the caller may then close.
func (r *runningHash) drop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
	for r.running {
		r.idle.Wait()
	}
}
