package fs

import (
	"context"
	"io"
	"strings"
	"sync"
	"syscall"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Extended attributes of a published entry.
const (
	xattrTiers  = "user.flechefs.tiers"
	xattrSHA256 = "user.flechefs.sha256"
	xattrUpload = "user.flechefs.upload"
	xattrLocal  = "user.flechefs.local"
)

var xattrList = []byte(xattrTiers + "\x00" + xattrSHA256 + "\x00" + xattrUpload + "\x00" + xattrLocal + "\x00")

// entryNode is a published entry: read-only, immutable.
type entryNode struct {
	fusefs.Inode
	r   *root
	key digest.Key
	ino uint64 // stable inode number, 0 if automatic
	// info is the value this inode was made for; its generation is
	// valueGen(info). Another value of the key gets another inode.
	info tiers.Info

	mu sync.Mutex
	// cached identifies the value whose pages the kernel may hold for this
	// inode: an open of the same value keeps them (FOPEN_KEEP_CACHE), an
	// open of another value (the key was deleted and published again) has
	// the kernel drop them.
	cached valueID
}

type valueID struct {
	size    int64
	sum     digest.Sum
	created int64
}

func idOf(i tiers.Info) valueID {
	return valueID{size: i.Size, sum: i.Sum, created: i.Created.UnixNano()}
}

func (n *entryNode) OnForget() { n.r.forgetIno(n.ino, n.key) }

// current is the key this inode's value is under now: its name in the
// tree. A rename moves the kernel's dentry (and go-fuse's) to the new name
// with the same inode, whose value the new key now holds (root.Rename).
func (n *entryNode) current() digest.Key {
	if name, p := n.Parent(); p != nil && name != n.key.String() {
		if k, err := digest.Parse(name); err == nil {
			return k
		}
	}
	return n.key
}

func (n *entryNode) Getattr(ctx context.Context, f fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	var info tiers.Info
	if h, ok := f.(*readHandle); ok {
		info = h.rd.Info()
	} else {
		var err error
		if info, err = n.r.st.Stat(uninterrupted(ctx), n.current()); err != nil {
			return n.r.errno(err)
		}
		if valueGen(info) != n.StableAttr().Gen {
			// The key holds another value now; this inode (open
			// descriptors, a dentry not yet revalidated) is the old one,
			// and its size must stay the old value's.
			info = n.info
		}
	}
	n.r.fillEntryAttr(&out.Attr, info)
	out.SetTimeout(n.r.opt.EntryTTL)
	return 0
}

// Open opens the entry for reading. An open for writing with O_CREAT
// (a writer that found the key absent and lost the race, a rerun of rsync
// --inplace) gets a shadow write handle whose value is dropped at close:
// first writer wins, and the writer does not fail. Without O_CREAT, or
// with O_APPEND, an intent to write is EACCES.
func (n *entryNode) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&(syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		// O_APPEND means changing the value there, which an entry
		// never allows: refused aloud rather than dropped at close.
		if flags&syscall.O_ACCMODE == syscall.O_RDONLY || flags&syscall.O_APPEND != 0 {
			return nil, 0, syscall.EACCES
		}
		if pid, ok := callerPid(ctx); !ok || !openCreates(pid) {
			return nil, 0, syscall.EACCES
		}
		// Direct I/O: the shadow's writes never reach the entry's
		// page cache, which other readers share.
		return newWriteHandle(ctx, n.r, n.current(), true), fuse.FOPEN_DIRECT_IO, 0
	}
	rd, err := n.r.st.Open(uninterrupted(ctx), n.current())
	if err != nil {
		return nil, 0, n.r.errno(err)
	}
	if valueGen(rd.Info()) != n.StableAttr().Gen && !n.listedAs(rd.Info()) {
		// The key was deleted and published again since the lookup: the
		// kernel's size for this inode is the old value's. ESTALE makes it
		// look the name up again (LOOKUP_REVAL) and open the new inode.
		rd.Close()
		return nil, 0, syscall.ESTALE
	}
	id := idOf(rd.Info())
	n.mu.Lock()
	keep := n.cached == id
	n.cached = id
	n.mu.Unlock()
	// No FLUSH at close: a read handle has nothing to flush (fs/doc.go).
	fl := uint32(fuse.FOPEN_NOFLUSH)
	if keep {
		fl |= fuse.FOPEN_KEEP_CACHE
	}
	return &readHandle{r: n.r, key: n.current(), rd: rd}, fl, 0
}

// listedAs reports whether n, made from a remote listing that gave a size
// but no hash (its generation is that size), may serve info: the kernel's
// size for n is then info's, which is all an open needs. Without it, every
// open of a remote entry after a readdir answered ESTALE, and the kernel
// looked the name up again: one more round trip to the remote per file.
func (n *entryNode) listedAs(info tiers.Info) bool {
	return n.info.Sum.IsZero() && n.info.Size == info.Size
}

// Setattr: a published entry never changes. A change of its size
// (truncate) is EPERM. A change of mode, owner or times is accepted and
// changes nothing (an entry is r--r--r--, its mtime the publish time):
// copiers set them after the data, once the entry is published, and an
// error then says the copy failed when it did not (Python's shutil.copy
// and copy2 raised PermissionError, `cp -p` exited 1, `mv` from another
// filesystem complained). The reply has the entry's real attributes.
//
// A size given through a shadow write handle (ftruncate) applies to the
// shadow's value, and so does the truncate to 0 of its open(O_TRUNC),
// which the kernel sends after the open without the handle; the reply
// keeps the entry's size, so the kernel keeps its pages.
func (n *entryNode) Setattr(ctx context.Context, f fusefs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if size, ok := in.GetSize(); ok {
		h, shadow := f.(*writeHandle)
		switch {
		case shadow:
			h.mu.Lock()
			errno := h.truncateLocked(int64(size))
			h.mu.Unlock()
			if errno != 0 {
				return errno
			}
		case size == 0 && n.openTruncate(ctx):
			// A shadow is empty when opened: nothing to truncate.
		default:
			return syscall.EPERM
		}
	}
	return n.Getattr(ctx, f, out)
}

// openTruncate reports whether the caller is opening this entry with a
// shadow write handle.
func (n *entryNode) openTruncate(ctx context.Context) bool {
	pid, ok := callerPid(ctx)
	return ok && n.r.writers.shadowOf(n.current(), pid)
}

// Fsync waits until the entry is in the persistent local tier.
func (n *entryNode) Fsync(ctx context.Context, f fusefs.FileHandle, flags uint32) syscall.Errno {
	return n.r.errno(n.r.st.WaitDurable(ctx, n.current()))
}

func (n *entryNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	var val string
	switch attr {
	case xattrTiers:
		val = strings.Join(n.r.st.Where(ctx, n.current()), ",")
	case xattrSHA256:
		info, err := n.r.st.Stat(ctx, n.current())
		if err != nil {
			return 0, n.r.errno(err)
		}
		if info.Sum.IsZero() {
			return 0, syscall.ENODATA
		}
		val = info.Sum.String()
	case xattrUpload:
		val = string(n.r.st.UploadState(n.current()))
	case xattrLocal:
		val = "no"
		if n.r.st.Local(ctx, n.current()) {
			val = "yes"
		}
	default:
		return 0, syscall.ENODATA
	}
	return xattrReply(dest, []byte(val))
}

func (n *entryNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return xattrReply(dest, xattrList)
}

// xattrReply copies val into dest, or says how large dest must be.
func xattrReply(dest, val []byte) (uint32, syscall.Errno) {
	if len(dest) < len(val) {
		return uint32(len(val)), syscall.ERANGE
	}
	return uint32(copy(dest, val)), 0
}

func (n *entryNode) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return xattrRefusal(attr)
}

func (n *entryNode) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return xattrRefusal(attr)
}

// readHandle reads a published entry through a tiers.Reader.
type readHandle struct {
	r   *root
	key digest.Key
	rd  tiers.Reader
}

// Read reads straight into dest, the buffer go-fuse took from its pool for
// this request and sends from: the read path allocates nothing.
func (h *readHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := h.rd.ReadAt(dest, off)
	if err != nil && err != io.EOF {
		return nil, h.r.errno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *readHandle) Release(ctx context.Context) syscall.Errno {
	if err := h.rd.Close(); err != nil {
		h.r.log.Debug("flechefs: closing a reader", "key", h.key, "err", err)
	}
	return 0
}
