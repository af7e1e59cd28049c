package fs

import (
	"context"
	"sync"
	"syscall"
	"time"

	"github.com/flechefs/flechefs/digest"
	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Scratch files: a name that is not a key may be created as a private file
// of this mount, so tools that write a temporary name and rename it into
// place (rsync, mkstemp + os.replace, write-file-atomic) work. A scratch
// file is reachable by name on this mount, is not listed, is never
// uploaded, and lives in memory and SpoolDir until it is unlinked, renamed
// to a key (which publishes its bytes; see root.Rename) or the mount ends.
const (
	// maxScratch bounds the scratch files held at once: a create beyond
	// it fails with ENOSPC, after the idle ones are dropped.
	maxScratch = 1024
	// scratchIdle: a scratch file neither open nor used for this long is
	// dropped when the table is full (a killed tool's temporary file).
	scratchIdle = time.Hour
	// scratchMem is how much of a scratch file is kept in memory before it
	// moves to SpoolDir, so a full table holds at most 64 MiB of RAM.
	scratchMem = 64 << 10
	// firstScratchIno numbers scratch inodes above the entries' stable
	// numbers (below 2^63) and far from go-fuse's automatic ones (2^63 up).
	firstScratchIno = 3 << 62
)

// scratchFiles is the table of scratch files by name.
type scratchFiles struct {
	mu      sync.Mutex
	byName  map[string]*scratchFile
	nextIno uint64
}

func newScratchFiles() *scratchFiles {
	return &scratchFiles{byName: map[string]*scratchFile{}, nextIno: firstScratchIno}
}

// scratchFile is one scratch file's data and attributes.
type scratchFile struct {
	ino uint64

	mu      sync.Mutex
	sp      *spool // nil once published or removed
	mode    uint32
	mtime   time.Time
	ctime   time.Time
	used    time.Time
	handles int
	// removed: unlinked, or renamed to a key; the data goes with the
	// last handle.
	removed bool
	// target is the key the file was renamed to while open: its bytes are
	// published when its last handle is released.
	target digest.Key
	// unflushed counts the handles that had no FLUSH yet; flushedAt is
	// the last FLUSH; released is closed (and replaced) at each RELEASE.
	// A rename to a key waits for the RELEASEs of closed handles
	// (waitReleases).
	unflushed int
	flushedAt time.Time
	released  chan struct{}
}

func (s *scratchFiles) get(name string) *scratchFile {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byName[name]
}

func (s *scratchFiles) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byName)
}

// create adds an empty scratch file under name, or returns the one there.
func (s *scratchFiles) create(r *root, name string, mode uint32, excl bool) (*scratchFile, syscall.Errno) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.byName[name]; f != nil {
		if excl {
			return nil, syscall.EEXIST
		}
		return f, 0
	}
	if len(s.byName) >= maxScratch {
		s.dropIdleLocked()
		if len(s.byName) >= maxScratch {
			r.log.Warn("flechefs: too many scratch files, create refused", "name", name, "limit", maxScratch)
			return nil, syscall.ENOSPC
		}
	}
	now := time.Now()
	f := &scratchFile{ino: s.nextIno, sp: newSpool(r.opt.SpoolDir, min(scratchMem, r.opt.SpoolThreshold)),
		mode: mode & 0o7777, mtime: now, ctime: now, used: now}
	s.nextIno++
	s.byName[name] = f
	return f, 0
}

func (s *scratchFiles) dropIdleLocked() {
	for name, f := range s.byName {
		f.mu.Lock()
		idle := f.handles == 0 && time.Since(f.used) > scratchIdle
		if idle {
			f.discardLocked()
		}
		f.mu.Unlock()
		if idle {
			delete(s.byName, name)
		}
	}
}

// take removes name from the table and returns its file.
func (s *scratchFiles) take(name string) *scratchFile {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.byName[name]
	delete(s.byName, name)
	return f
}

// put adds f under name, replacing (and discarding) a file there.
func (s *scratchFiles) put(name string, f *scratchFile) {
	s.mu.Lock()
	old := s.byName[name]
	s.byName[name] = f
	s.mu.Unlock()
	if old != nil && old != f {
		old.discard()
	}
}

func (s *scratchFiles) unlink(name string) syscall.Errno {
	f := s.take(name)
	if f == nil {
		return syscall.ENOENT
	}
	f.discard()
	return 0
}

// discard drops the data; open handles read nothing and write nowhere.
func (f *scratchFile) discard() {
	f.mu.Lock()
	f.discardLocked()
	f.mu.Unlock()
}

func (f *scratchFile) discardLocked() {
	f.removed, f.target = true, digest.Key{}
	if f.sp != nil && f.handles == 0 {
		f.sp.close()
		f.sp = nil
	}
}

// waitReleases waits, when every open handle of f has been closed (had a
// FLUSH), for their RELEASEs, at most releaseWait after the last FLUSH:
// close(2) returns before the kernel's RELEASE is served, and a program
// that writes a temp file, closes it and renames it to a key (Python's
// NamedTemporaryFile, then os.replace) reads the key next. A handle still
// open somewhere keeps the publish for its last close.
func (f *scratchFile) waitReleases() {
	for {
		f.mu.Lock()
		if f.handles == 0 || f.unflushed > 0 {
			f.mu.Unlock()
			return
		}
		left := time.Until(f.flushedAt.Add(releaseWait))
		if f.released == nil {
			f.released = make(chan struct{})
		}
		ch := f.released
		f.mu.Unlock()
		if left <= 0 {
			return
		}
		t := time.NewTimer(left)
		select {
		case <-ch:
		case <-t.C:
		}
		t.Stop()
	}
}

// takeForKey marks f renamed to k and returns its data to publish now, or
// nil when handles are open: the last one publishes.
func (f *scratchFile) takeForKey(k digest.Key) *spool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removed = true
	if f.handles > 0 {
		f.target = k
		return nil
	}
	sp := f.sp
	f.sp = nil
	return sp
}

func (f *scratchFile) attr(r *root, a *fuse.Attr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a.Mode = syscall.S_IFREG | f.mode
	if f.sp != nil {
		a.Size = uint64(f.sp.size)
	}
	a.Blocks = (a.Size + 511) / 512
	a.Blksize = maxIO
	a.Nlink = 1
	a.Owner = r.owner
	a.SetTimes(&f.used, &f.mtime, &f.ctime)
}

// scratchNameErr says whether name may be a scratch file's: at most
// NAME_MAX bytes (this kernel passes longer names to FUSE daemons; a local
// filesystem refuses them with ENAMETOOLONG, and so does the mount), and
// no control characters (EINVAL: no temp-file idiom makes such names, and
// a newline or an escape in a name is a bug in the caller's script).
func scratchNameErr(name string) syscall.Errno {
	if len(name) > nameMax {
		return syscall.ENAMETOOLONG
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c == 0x7f {
			return syscall.EINVAL
		}
	}
	return 0
}

// nameMax is NAME_MAX of Linux.
const nameMax = 255

// createScratch creates (or, without O_EXCL, opens) the scratch file name.
func (r *root) createScratch(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fusefs.Inode, fusefs.FileHandle, uint32, syscall.Errno) {
	if errno := scratchNameErr(name); errno != 0 {
		return nil, nil, 0, errno
	}
	f, errno := r.scratch.create(r, name, mode, flags&syscall.O_EXCL != 0)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	h, errno := f.open(r, flags)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	return r.scratchInode(ctx, f, out), h, fuse.FOPEN_DIRECT_IO, 0
}

// scratchInode returns f's inode, with zero timeouts: the name may be
// renamed to a key or removed at any time.
func (r *root) scratchInode(ctx context.Context, f *scratchFile, out *fuse.EntryOut) *fusefs.Inode {
	f.attr(r, &out.Attr)
	out.SetEntryTimeout(0)
	out.SetAttrTimeout(0)
	return r.NewInode(ctx, &scratchNode{r: r, f: f}, fusefs.StableAttr{Mode: syscall.S_IFREG, Ino: f.ino})
}

// open returns a handle of f; O_TRUNC empties it.
func (f *scratchFile) open(r *root, flags uint32) (*scratchHandle, syscall.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sp == nil {
		return nil, syscall.ENOENT
	}
	if flags&syscall.O_TRUNC != 0 {
		if err := f.sp.truncate(0); err != nil {
			return nil, syscall.EIO
		}
	}
	f.handles++
	f.unflushed++
	f.used = time.Now()
	return &scratchHandle{r: r, f: f}, 0
}

// scratchNode is the inode of a scratch file.
type scratchNode struct {
	fusefs.Inode
	r *root
	f *scratchFile
}

func (n *scratchNode) Getattr(ctx context.Context, fh fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.f.attr(n.r, &out.Attr)
	out.SetTimeout(0)
	return 0
}

// Setattr changes the size, mode and times, as tools expect of their
// temporary file (rsync sets them before its rename). Owners are ignored.
func (n *scratchNode) Setattr(ctx context.Context, fh fusefs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	f := n.f
	f.mu.Lock()
	if f.sp == nil {
		f.mu.Unlock()
		return syscall.ENOENT
	}
	if size, ok := in.GetSize(); ok {
		if err := f.sp.truncate(int64(size)); err != nil {
			f.mu.Unlock()
			return n.r.errno(err)
		}
		f.mtime = time.Now()
	}
	if mode, ok := in.GetMode(); ok {
		f.mode = mode & 0o7777
	}
	if t, ok := in.GetMTime(); ok {
		f.mtime = t
	}
	f.ctime = time.Now()
	f.mu.Unlock()
	return n.Getattr(ctx, fh, out)
}

func (n *scratchNode) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	h, errno := n.f.open(n.r, flags)
	if errno != 0 {
		return nil, 0, errno
	}
	return h, fuse.FOPEN_DIRECT_IO, 0
}

func (n *scratchNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return 0, syscall.ENODATA
}

func (n *scratchNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return 0, 0
}

func (n *scratchNode) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return xattrRefusal(attr)
}

func (n *scratchNode) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return xattrRefusal(attr)
}

// scratchHandle is an open descriptor of a scratch file.
type scratchHandle struct {
	r       *root
	f       *scratchFile
	flushed bool // under f.mu
}

func (h *scratchHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	f := h.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sp == nil {
		return 0, syscall.EIO
	}
	if off < 0 {
		return 0, syscall.EINVAL
	}
	if err := f.sp.writeAt(data, off); err != nil {
		return 0, toErrno(nil, err)
	}
	f.mtime = time.Now()
	f.used = f.mtime
	return uint32(len(data)), 0
}

func (h *scratchHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f := h.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sp == nil {
		return nil, syscall.EIO
	}
	n, err := f.sp.readAt(dest, off)
	if err != nil && n == 0 && off < f.sp.size {
		return nil, syscall.EIO
	}
	f.used = time.Now()
	return fuse.ReadResultData(dest[:n]), 0
}

// Fsync of a scratch file has nothing to make durable: it is never
// persisted; the rename to a key publishes it.
func (h *scratchHandle) Fsync(ctx context.Context, flags uint32) syscall.Errno { return 0 }

// Flush notes the close(2) of a descriptor: a rename of the file to a key
// then waits for the handle's RELEASE (waitReleases).
func (h *scratchHandle) Flush(ctx context.Context) syscall.Errno {
	f := h.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if !h.flushed {
		h.flushed = true
		f.unflushed--
	}
	f.flushedAt = time.Now()
	return 0
}

// Release ends the handle. The last handle of a file renamed to a key
// while open publishes it; that of an unlinked file drops its data.
func (h *scratchHandle) Release(ctx context.Context) syscall.Errno {
	f := h.f
	f.mu.Lock()
	f.handles--
	if !h.flushed {
		f.unflushed--
	}
	if f.released != nil {
		close(f.released)
		f.released = nil
	}
	var sp *spool
	k := f.target
	if f.handles == 0 && f.removed {
		sp, f.sp, f.target = f.sp, nil, digest.Key{}
	}
	f.mu.Unlock()
	if sp == nil {
		return 0
	}
	if k.IsZero() {
		sp.close()
		return 0
	}
	h.r.publishScratch(ctx, k, sp)
	return 0
}

// publishScratch publishes the data of a scratch file renamed to k and
// counts what became of it.
func (r *root) publishScratch(ctx context.Context, k digest.Key, sp *spool) error {
	won, err := r.publish(ctx, k, sp, nil, nil)
	switch {
	case err != nil && won:
		r.settled(k, true)
		r.log.Warn("flechefs: a renamed scratch file was published here, not on the remote yet (queued)", "key", k, "err", err)
	case err != nil:
		r.counts.dropped[dropPublishError].Add(1)
		r.log.Warn("flechefs: publish of a renamed scratch file failed, value dropped", "key", k, "err", err)
	case !won:
		r.counts.dropped[dropExists].Add(1)
	default:
		r.settled(k, true)
	}
	return err
}
