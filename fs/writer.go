package fs

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// writerNode is the inode of one value being written, created by Create
// and used only through the creator's file descriptor: lookups of the name
// miss until the value is published, and then find the entry's own inode.
type writerNode struct {
	fusefs.Inode
	h *writeHandle
}

func (n *writerNode) Getattr(ctx context.Context, f fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.h.mu.Lock()
	n.h.attr(&out.Attr)
	n.h.mu.Unlock()
	out.SetTimeout(0)
	return 0
}

// Setattr applies ftruncate to the value being written. Mode, owner and
// times are accepted and ignored, as on a published entry (entryNode.Setattr):
// an entry is r--r--r-- and its mtime is its publish time, so `touch`,
// `cp -p` and Python's shutil.copy2 work.
func (n *writerNode) Setattr(ctx context.Context, f fusefs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	h := n.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if size, ok := in.GetSize(); ok {
		if errno := h.truncateLocked(int64(size)); errno != 0 {
			return errno
		}
	}
	h.attr(&out.Attr)
	out.SetTimeout(0)
	return 0
}

// Open of the writer's inode by another path (/proc/self/fd/N) is refused:
// only the creator's descriptor works.
func (n *writerNode) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	return nil, 0, syscall.EACCES
}

func (n *writerNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return 0, syscall.ENODATA
}

func (n *writerNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) { return 0, 0 }

func (n *writerNode) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return xattrRefusal(attr)
}

func (n *writerNode) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return xattrRefusal(attr)
}

type writeState int

const (
	stateWriting   writeState = iota
	statePublished            // handed to the stack (or dropped: another writer won)
	stateFailed               // dropped or refused; nothing published
)

// writeHandle spools one value and publishes it when the last descriptor
// of its open file is gone (RELEASE), or at fsync (see doc.go).
type writeHandle struct {
	r      *root
	key    digest.Key
	opened time.Time
	// shadow: opened on an entry that exists (open(O_CREAT) of a
	// published name): the handle works, its value is always dropped.
	shadow bool
	pid    uint32 // the opener's thread id (0: unknown)
	// ended is closed when the handle leaves stateWriting.
	ended chan struct{}
	// flushedAt is the time of the last FLUSH (unix ns; 0: none yet):
	// lookups of the name wait for the RELEASE that may follow it.
	flushedAt atomic.Int64
	// releasing is set when RELEASE has come: the value is being
	// published, and lookups wait for that however long it takes
	// (hashing a large value written out of order).
	releasing atomic.Bool

	mu    sync.Mutex
	state writeState
	errno syscall.Errno // stateFailed: what close and fsync report
	sp    *spool        // nil once published or failed
	size  int64         // the value's size, kept after sp is handed over
	// hash is the running SHA-256 while every write appended at the end;
	// nil once a write went elsewhere or the size was changed, and the
	// value is hashed again at publish.
	hash *runningHash
	// early uploads the value while it is written (nil: none); earlyAt is
	// the size at which to ask the stack for one.
	early   *tiers.EarlyUpload
	earlyAt int64
	// earlyTimer looks again once the handle is earlyAfter old.
	earlyTimer *time.Timer
}

func newWriteHandle(ctx context.Context, r *root, k digest.Key, shadow bool) *writeHandle {
	pid, _ := callerPid(ctx)
	h := &writeHandle{
		r: r, key: k, opened: time.Now(), shadow: shadow, pid: pid,
		ended: make(chan struct{}),
		sp:    newSpool(r.opt.SpoolDir, r.opt.SpoolThreshold),
		hash:  newRunningHash(),

		earlyAt: r.opt.UploadWhileWriting,
	}
	if shadow {
		h.earlyAt = math.MaxInt64 // never uploaded
	}
	r.writers.add(h)
	return h
}

// attr fills the writer inode's attributes; h.mu held.
func (h *writeHandle) attr(a *fuse.Attr) {
	a.Mode = syscall.S_IFREG | 0o644
	a.Size = uint64(h.size)
	a.Blocks = (a.Size + 511) / 512
	a.Blksize = maxIO
	a.Nlink = 1
	a.Owner = h.r.owner
	a.SetTimes(&h.opened, &h.opened, &h.opened)
}

func (h *writeHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state != stateWriting {
		return 0, h.endedErrno()
	}
	if off < 0 {
		return 0, syscall.EINVAL
	}
	appending := h.hash != nil && off == h.sp.size
	if !appending {
		// Before the bytes it may have sent change.
		h.abortEarlyLocked()
	}
	if err := h.sp.writeAt(data, off); err != nil {
		// The spool may hold part of data and the writer was told its
		// value is incomplete: it is never published (see doc.go).
		errno := h.r.errno(err)
		h.failLocked(errno, dropWriteError)
		return 0, errno
	}
	if appending {
		h.hash.appended(h.sp, data)
		h.streamLocked()
	} else {
		h.dropHashLocked()
	}
	h.size = h.sp.size
	return uint32(len(data)), 0
}

// endedErrno is what a write, truncate or read of an ended handle gets.
func (h *writeHandle) endedErrno() syscall.Errno {
	if h.state == stateFailed && h.errno != 0 {
		return h.errno
	}
	return syscall.EIO
}

// truncateLocked changes the size of the value being written.
func (h *writeHandle) truncateLocked(size int64) syscall.Errno {
	if h.state != stateWriting {
		return h.endedErrno()
	}
	if size != h.sp.size {
		h.abortEarlyLocked()
		if err := h.sp.truncate(size); err != nil {
			errno := h.r.errno(err)
			h.failLocked(errno, dropWriteError)
			return errno
		}
		h.dropHashLocked()
	}
	h.size = size
	return 0
}

// Read lets an O_RDWR writer read back what it wrote so far.
func (h *writeHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state != stateWriting {
		return nil, h.endedErrno()
	}
	n, err := h.sp.readAt(dest, off)
	if err != nil && n == 0 && off < h.sp.size {
		return nil, h.r.errno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// Flush is close(2) of one descriptor of the open file. It never
// publishes: other descriptors (dups, copies inherited by children, the
// shell's own) may still write. It drops the value when the closing
// process is dying of a signal, or exiting with a non-zero status unless
// PublishFailed: the value is likely cut short, and a cache must not keep
// it. Otherwise it notes the time, so lookups of the name wait for the
// RELEASE that may follow.
func (h *writeHandle) Flush(ctx context.Context) syscall.Errno {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch h.state {
	case stateFailed:
		return h.errno
	case statePublished:
		return 0
	}
	if h.shadow {
		// Its value is dropped whatever happens; the time only lets a
		// listing or the stats wait for its RELEASE (and its count).
		h.flushedAt.Store(time.Now().UnixNano())
		return 0
	}
	if pid, ok := callerPid(ctx); ok {
		switch exitOf(pid) {
		case exitKilled:
			h.r.log.Info("flechefs: a process holding the file was killed by a signal, value dropped", "key", h.key, "pid", pid)
			h.failLocked(syscall.EIO, dropKilled)
			return syscall.EIO
		case exitFailed:
			if !h.r.opt.PublishFailed {
				h.r.log.Info("flechefs: a process holding the file exited with a failure status, value dropped", "key", h.key, "pid", pid)
				h.failLocked(syscall.EIO, dropFailedExit)
				return syscall.EIO
			}
		}
	}
	h.flushedAt.Store(time.Now().UnixNano())
	return 0
}

// Fsync publishes the value now and waits until it is durable, returning
// any error: later writes through the open file fail with EIO. After the
// publish it waits for durability again.
func (h *writeHandle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	h.mu.Lock()
	switch h.state {
	case stateFailed:
		defer h.mu.Unlock()
		return h.errno
	case stateWriting:
		if h.shadow {
			h.mu.Unlock()
			return 0
		}
		if errno := h.publishLocked(ctx); errno != 0 || h.state != statePublished {
			h.mu.Unlock()
			return errno
		}
	}
	h.mu.Unlock()
	return h.r.errno(h.r.st.WaitDurable(ctx, h.key))
}

// Release is the last close of the open file: the value is published
// now, unless it was dropped. Nobody waits for the answer, so an error is
// logged and counted (see doc.go).
func (h *writeHandle) Release(ctx context.Context) syscall.Errno {
	h.releasing.Store(true)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state != stateWriting {
		return 0
	}
	if h.shadow {
		h.failLocked(0, dropExists)
		return 0
	}
	if errno := h.publishLocked(ctx); errno != 0 {
		h.r.log.Warn("flechefs: publish at the last close failed", "key", h.key, "errno", errno, "published", h.state == statePublished)
	}
	return 0
}

// publishLocked hands the spool to the stack. ErrExist (another writer
// published the key first) is not an error: the name holds a complete
// value, and the dropped one is counted.
func (h *writeHandle) publishLocked(ctx context.Context) syscall.Errno {
	if h.earlyTimer != nil {
		h.earlyTimer.Stop()
	}
	sp, hash, early := h.sp, h.hash, h.early
	h.sp, h.hash, h.early = nil, nil, nil
	won, err := h.r.publish(ctx, h.key, sp, hash, early)
	switch {
	case err != nil && won:
		// Published here, not on the remote yet (write = "through"):
		// the value is the key's, and the writer hears of the upload.
		h.state = statePublished
		h.endLocked(true)
		return h.r.errno(err)
	case err != nil:
		errno := h.r.errno(err)
		h.failLocked(errno, dropPublishError)
		return errno
	case !won:
		h.failLocked(0, dropExists)
		h.r.log.Debug("flechefs: key published by another writer first, value dropped", "key", h.key)
		return 0
	}
	h.state = statePublished
	h.endLocked(true)
	return 0
}

// earlyAfter is how long a handle must have been open before its value
// starts uploading while it is written. A writer that finishes sooner
// closes before an early upload gains much, and on a small machine the
// upload would take CPU from the writer; a value computed and written over
// seconds uploads while it is written.
const earlyAfter = time.Second

// streamLocked feeds the early upload what was appended, starting it when
// the value has grown past UploadWhileWriting in its spool file. A stack
// that declines (no remote that takes it, too many running) is asked again
// after as many bytes more. It never waits for the remote.
func (h *writeHandle) streamLocked() {
	if h.early == nil {
		if h.r.opt.UploadWhileWriting < 0 || h.sp.size < h.earlyAt || h.sp.f == nil {
			return
		}
		if wait := earlyAfter - time.Since(h.opened); wait > 0 {
			// A writer this fast is done soon: an upload now would
			// only take CPU from it. Look again when it is older.
			if h.earlyTimer == nil {
				h.earlyTimer = time.AfterFunc(wait, func() {
					h.mu.Lock()
					defer h.mu.Unlock()
					if h.state == stateWriting && h.sp != nil {
						h.streamLocked()
					}
				})
			}
			return
		}
		h.earlyAt = h.sp.size + h.r.opt.UploadWhileWriting
		if h.early = h.r.st.BeginUpload(h.key, h.sp.f); h.early == nil {
			return
		}
	}
	h.early.Written(h.sp.size)
}

// abortEarlyLocked abandons the early upload: the bytes sent are not the
// value's any more (a write below the end, a truncate), or nothing will be
// published. The value, if published, is uploaded by the queue.
func (h *writeHandle) abortEarlyLocked() {
	if h.early != nil {
		h.early.Abort()
		h.early = nil
	}
	h.earlyAt = math.MaxInt64
}

// dropHashLocked abandons the running hash: the value is hashed again at
// publish, if it is published.
func (h *writeHandle) dropHashLocked() {
	if h.hash != nil {
		h.hash.drop()
		h.hash = nil
	}
}

// failLocked ends the handle without publishing. errno is what its close
// and fsync report from now on (0: nothing, as for a value that lost).
func (h *writeHandle) failLocked(errno syscall.Errno, why dropReason) {
	h.abortEarlyLocked()
	if h.earlyTimer != nil {
		h.earlyTimer.Stop()
	}
	h.dropHashLocked() // before the spool it reads is closed
	if h.sp != nil {
		h.sp.close()
		h.sp = nil
	}
	h.state, h.errno = stateFailed, errno
	h.r.counts.dropped[why].Add(1)
	h.endLocked(false)
}

// endLocked takes the handle out of the pending writes: lookups of the
// name stop waiting for it.
func (h *writeHandle) endLocked(published bool) {
	close(h.ended)
	h.r.doneWriting(h, published)
}
