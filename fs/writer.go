package fs

import (
	"context"
	"errors"
	"math"
	"sync"
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
	stateFailed               // publishing failed or was refused; nothing published
)

// writeHandle spools one value and publishes it at the first close after a
// write (see doc.go).
type writeHandle struct {
	r      *root
	key    digest.Key
	opened time.Time

	mu    sync.Mutex
	state writeState
	errno syscall.Errno // stateFailed: what close reports
	sp    *spool        // nil once published or failed
	size  int64         // the value's size, kept after sp is handed over
	// hash is the running SHA-256 while every write appended at the end;
	// nil once a write went elsewhere or the size was changed, and the
	// value is hashed again at publish.
	hash        *runningHash
	written     bool // a write or truncate happened since open
	wantDurable bool // fsync came before the publish: close waits for durability
	// early uploads the value while it is written (nil: none); earlyAt is
	// the size at which to ask the stack for one.
	early   *tiers.EarlyUpload
	earlyAt int64
	// earlyTimer looks again once the handle is earlyAfter old.
	earlyTimer *time.Timer
}

func newWriteHandle(r *root, k digest.Key) *writeHandle {
	return &writeHandle{
		r: r, key: k, opened: time.Now(),
		sp:   newSpool(r.opt.SpoolDir, r.opt.SpoolThreshold),
		hash: newRunningHash(),

		earlyAt: r.opt.UploadWhileWriting,
	}
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
		return 0, syscall.EIO
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
		h.failLocked(errno)
		return 0, errno
	}
	if appending {
		h.hash.appended(h.sp, data)
		h.streamLocked()
	} else {
		h.dropHashLocked()
	}
	h.size = h.sp.size
	h.written = true
	return uint32(len(data)), 0
}

// truncateLocked changes the size of the value being written.
func (h *writeHandle) truncateLocked(size int64) syscall.Errno {
	if h.state != stateWriting {
		return syscall.EIO
	}
	if size != h.sp.size {
		h.abortEarlyLocked()
		if err := h.sp.truncate(size); err != nil {
			errno := h.r.errno(err)
			h.failLocked(errno)
			return errno
		}
		h.dropHashLocked()
	}
	h.size = size
	h.written = true
	return 0
}

// Read lets an O_RDWR writer read back what it wrote so far.
func (h *writeHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state != stateWriting {
		return nil, syscall.EIO
	}
	n, err := h.sp.readAt(dest, off)
	if err != nil && n == 0 && off < h.sp.size {
		return nil, h.r.errno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// Flush is close(2) of one descriptor of the handle. The first Flush after a
// write publishes; a Flush before any write (the shell's close after dup2)
// does nothing. A publish, once begun, is not cancelled by an interrupt:
// close either publishes or reports why not.
func (h *writeHandle) Flush(ctx context.Context) syscall.Errno {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch h.state {
	case stateFailed:
		return h.errno
	case statePublished:
		if h.wantDurable {
			return h.r.errno(h.r.st.WaitDurable(context.WithoutCancel(ctx), h.key))
		}
		return 0
	}
	if pid, ok := callerPid(ctx); ok && killedBySignal(pid) {
		// A process holding the value is dying of a signal: what it
		// wrote (or did not write yet) is likely cut short, and a cache
		// must not keep a partial result, nor an empty one at release.
		h.r.log.Info("flechefs: writer killed by a signal, value dropped", "key", h.key, "pid", pid)
		h.failLocked(syscall.EIO)
		return syscall.EIO
	}
	if !h.written {
		h.r.closedEmpty(h.key)
		return 0
	}
	return h.publishLocked(ctx)
}

// Fsync before the publish asks the publishing close to wait until the
// value is durable; after it, it waits now.
func (h *writeHandle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	h.mu.Lock()
	switch h.state {
	case stateFailed:
		defer h.mu.Unlock()
		return h.errno
	case stateWriting:
		defer h.mu.Unlock()
		h.wantDurable = true
		return 0
	}
	h.mu.Unlock()
	return h.r.errno(h.r.st.WaitDurable(ctx, h.key))
}

// Release is the last close of the handle. A handle that was never flushed
// after a write (no write at all: touch, ": > f") publishes here, so an
// empty entry appears slightly after close returns.
func (h *writeHandle) Release(ctx context.Context) syscall.Errno {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state == stateWriting {
		if errno := h.publishLocked(ctx); errno != 0 {
			h.r.log.Warn("flechefs: publish at release failed", "key", h.key, "errno", errno)
		}
	}
	return 0
}

// publishLocked hands the spool to the stack. ErrExist (another writer
// published the key first) counts as success: the name holds a complete
// value, and the stack counts the dropped one.
func (h *writeHandle) publishLocked(ctx context.Context) syscall.Errno {
	var sum digest.Sum
	var err error
	if h.hash != nil {
		sum, err = h.hash.sum()
	} else {
		sum, err = h.sp.sum()
	}
	if err != nil {
		errno := h.r.errno(err)
		h.failLocked(errno)
		return errno
	}
	b := h.sp.blob(h.early)
	h.sp, h.hash, h.early = nil, nil, nil
	_, err = h.r.st.Publish(context.WithoutCancel(ctx), h.key, b, sum)
	switch {
	case err == nil:
		h.state = statePublished
		h.r.doneWriting(h.key, true)
	case errors.Is(err, tiers.ErrExist):
		h.state = statePublished
		h.r.doneWriting(h.key, false)
		h.r.log.Debug("flechefs: key published by another writer first, value dropped", "key", h.key)
	default:
		errno := h.r.errno(err)
		h.failLocked(errno)
		return errno
	}
	if h.wantDurable {
		return h.r.errno(h.r.st.WaitDurable(context.WithoutCancel(ctx), h.key))
	}
	return 0
}

// earlyAfter is how long a handle must have been open before its value
// starts uploading while it is written. A burst (512 MiB written in 0.6 s)
// closes before an early upload could gain much, and on 2 cores the upload
// took CPU from the writer: its close took 0.9-1.2 s instead of 0.6. A
// value computed and written over seconds uploads while it is written.
// (2026-12-02, 250 ms tried again: of 512 MiB written in 0.62 s the upload
// had read 47 MB at close, and the rest took 1.64 s after it, about what
// it takes from close.)
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

// failLocked ends the handle without publishing.
func (h *writeHandle) failLocked(errno syscall.Errno) {
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
	h.r.doneWriting(h.key, false)
}
