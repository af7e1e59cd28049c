package fs

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

const (
	ctlName = ".flechefs"

	// Fixed inode numbers; entries get stableIno(key) >= firstEntryIno.
	ctlIno        = 2
	statsIno      = 3
	versionIno    = 4
	firstEntryIno = 16

	// listEntryTTL is the entry and attribute timeout of entries the kernel
	// learns from READDIRPLUS: their attributes come from Stack.List, whose
	// remote part may be a little stale, so they are confirmed by a real
	// lookup after this.
	listEntryTTL = time.Second

	// negCacheMax bounds the daemon's negative cache.
	negCacheMax = 8192
)

// root is the mount's root directory: a flat directory of entries named by
// keys, plus the control folder .flechefs.
type root struct {
	fusefs.Inode

	st      stack
	opt     Options
	log     *slog.Logger
	owner   fuse.Owner
	started time.Time
	ctl     *fusefs.Inode // .flechefs, persistent

	// ctx is cancelled when the filesystem is unmounted; it bounds the
	// background waits of trackDurable.
	ctx    context.Context
	cancel context.CancelFunc

	mu sync.Mutex
	// writing counts the open write handles per key (the names that must
	// look absent to lookups until their writer's close).
	writing map[digest.Key]int
	// neg is the daemon's negative cache: key -> expiry.
	neg map[digest.Key]time.Time
	// epoch is bumped by every publish, unlink and end of a write: a lookup
	// that saw a miss caches it only if no such event happened meanwhile.
	epoch uint64
	// live maps the stable inode numbers of entry inodes the kernel holds to
	// their keys, to catch two keys hashing to one inode number.
	live map[uint64]digest.Key
	// undurable holds the keys this mount published that may not yet be in
	// the persistent tier (for fsync of the directory). pruneDurable takes
	// out those persisted since, once pruneAt are held.
	undurable map[digest.Key]struct{}
	pruneAt   int
	pruning   bool
	// closing holds the keys whose writer was closed before it wrote
	// anything (touch, os.open(O_CREAT).close()): it publishes an empty
	// value at RELEASE, which the kernel sends after close(2) returned.
	// The channel is closed when that writer ends.
	closing map[digest.Key]chan struct{}
}

func newRoot(st stack, opt Options) *root {
	ctx, cancel := context.WithCancel(context.Background())
	return &root{
		st: st, opt: opt, log: opt.Logger,
		owner:   fuse.Owner{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())},
		started: time.Now(),
		ctx:     ctx, cancel: cancel,
		writing:   map[digest.Key]int{},
		neg:       map[digest.Key]time.Time{},
		live:      map[uint64]digest.Key{},
		undurable: map[digest.Key]struct{}{},
		pruneAt:   undurablePrune,
		closing:   map[digest.Key]chan struct{}{},
	}
}

func (r *root) errno(err error) syscall.Errno { return toErrno(r.log, err) }

// OnAdd builds the persistent control folder.
func (r *root) OnAdd(ctx context.Context) {
	ctl := r.NewPersistentInode(ctx, &ctlDir{r: r}, fusefs.StableAttr{Mode: syscall.S_IFDIR, Ino: ctlIno})
	r.AddChild(ctlName, ctl, false)
	ctl.AddChild("stats", ctl.NewPersistentInode(ctx, &ctlFile{r: r, gen: r.statsJSON},
		fusefs.StableAttr{Mode: syscall.S_IFREG, Ino: statsIno}), false)
	ctl.AddChild("version", ctl.NewPersistentInode(ctx, &ctlFile{r: r, gen: versionText},
		fusefs.StableAttr{Mode: syscall.S_IFREG, Ino: versionIno}), false)
	r.ctl = ctl
}

// OnForget is called for the root at unmount.
func (r *root) OnForget() { r.cancel() }

func (r *root) Getattr(ctx context.Context, f fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	r.dirAttr(&out.Attr, 0o755, 3)
	out.SetTimeout(r.opt.EntryTTL)
	return 0
}

func (r *root) dirAttr(a *fuse.Attr, perm uint32, nlink uint32) {
	a.Mode = syscall.S_IFDIR | perm
	a.Nlink = nlink
	a.Owner = r.owner
	a.SetTimes(&r.started, &r.started, &r.started)
}

// stableIno derives an entry's inode number from its key: the same on every
// mount, never one of the fixed numbers, and below go-fuse's automatic
// range (2^63 and up) used for writers' inodes.
func stableIno(k digest.Key) uint64 {
	h := sha256.Sum256([]byte(k.String()))
	ino := binary.BigEndian.Uint64(h[:8]) &^ (1 << 63)
	if ino < firstEntryIno {
		ino += firstEntryIno
	}
	return ino
}

// fillEntryAttr fills the attributes of a published entry.
func (r *root) fillEntryAttr(a *fuse.Attr, info tiers.Info) {
	t := info.Created
	if t.IsZero() {
		t = r.started
	}
	a.Mode = syscall.S_IFREG | 0o444
	a.Size = uint64(info.Size)
	a.Blocks = (a.Size + 511) / 512
	a.Blksize = maxIO // a hint to cp, cat and friends to read 1 MiB at a time
	a.Nlink = 1
	a.Owner = r.owner
	a.SetTimes(&t, &t, &t)
}

// entryInode returns the inode of a published entry and fills out.
func (r *root) entryInode(ctx context.Context, k digest.Key, info tiers.Info, out *fuse.EntryOut, ttl time.Duration) *fusefs.Inode {
	ino := stableIno(k)
	r.mu.Lock()
	if old, ok := r.live[ino]; !ok {
		r.live[ino] = k
	} else if old != k {
		// Two live keys share 63 bits of SHA-256: give this one an
		// automatic number rather than the other key's inode.
		r.log.Warn("flechefs: inode number collision", "ino", ino, "key", k, "other", old)
		ino = 0
	}
	r.mu.Unlock()
	r.fillEntryAttr(&out.Attr, info)
	out.SetEntryTimeout(ttl)
	out.SetAttrTimeout(ttl)
	// go-fuse returns the inode it already has for this number and
	// generation, if any. The generation comes from the value: a key
	// deleted and published again with other bytes gets a new inode (the
	// same st_ino), so a descriptor still open on the old value, whose
	// GETATTR and short reads report the old size, cannot shrink or grow
	// the size the kernel holds for the new one.
	return r.NewInode(ctx, &entryNode{r: r, key: k, ino: ino, info: info}, fusefs.StableAttr{Mode: syscall.S_IFREG, Ino: ino, Gen: valueGen(info)})
}

// valueGen is the inode generation of a value: the first 64 bits of its
// SHA-256 (its size when the sum is unknown).
func valueGen(info tiers.Info) uint64 {
	if info.Sum.IsZero() {
		return uint64(info.Size)
	}
	return binary.BigEndian.Uint64(info.Sum[:8])
}

// forgetIno is called when the kernel forgot an entry inode.
func (r *root) forgetIno(ino uint64, k digest.Key) {
	if ino == 0 {
		return
	}
	r.mu.Lock()
	if r.live[ino] == k {
		delete(r.live, ino)
	}
	r.mu.Unlock()
}

func (r *root) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	if name == ctlName {
		r.dirAttr(&out.Attr, 0o555, 2)
		out.SetEntryTimeout(r.opt.EntryTTL)
		out.SetAttrTimeout(r.opt.EntryTTL)
		return r.ctl, 0
	}
	k, err := digest.Parse(name)
	if err != nil {
		out.SetEntryTimeout(r.opt.NegativeTTL)
		return nil, syscall.ENOENT
	}
	r.waitClosing(k)
	r.mu.Lock()
	epoch := r.epoch
	if exp, ok := r.neg[k]; ok {
		if left := time.Until(exp); left > 0 {
			r.mu.Unlock()
			// The kernel keeps the miss no longer than the daemon does.
			out.SetEntryTimeout(left)
			return nil, syscall.ENOENT
		}
		delete(r.neg, k)
	}
	r.mu.Unlock()

	// Not interrupted by signals (see uninterrupted).
	info, err := r.st.Stat(uninterrupted(ctx), k)
	if err == nil {
		return r.entryInode(ctx, k, info, out, r.opt.EntryTTL), 0
	}
	if !errors.Is(err, tiers.ErrNotFound) {
		return nil, r.errno(err)
	}
	ttl := r.opt.NegativeTTL
	if until, ok := tiers.MissValidUntil(err); ok {
		// Answered from a remote listing that holds only until then: the
		// miss is not remembered longer, or an entry published elsewhere
		// could stay invisible longer than NegativeTTL.
		ttl = min(ttl, time.Until(until))
	}
	out.SetEntryTimeout(r.missed(k, epoch, ttl))
	return nil, syscall.ENOENT
}

// uninterrupted detaches a lookup or an open from the request's
// cancellation. The kernel sends FUSE_INTERRUPT for any signal the caller
// gets while it waits, a Go program's preemption signal (SIGURG) included;
// a lookup given up then would answer EINTR from stat(2) or open(2), which
// few programs retry (SA_RESTART does not restart it). Lookups and opens
// are bounded by the stack's RemoteTimeout instead.
func uninterrupted(ctx context.Context) context.Context { return context.WithoutCancel(ctx) }

// missed records that a lookup begun at epoch did not find k, for ttl (at
// most NegativeTTL), and returns the kernel's negative timeout for it. A
// name being written, or any miss that raced with a publish or unlink, gets
// timeout 0 and is not cached: the writer's close must make the name
// visible at once.
func (r *root) missed(k digest.Key, epoch uint64, ttl time.Duration) time.Duration {
	if ttl <= 0 {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.epoch != epoch || r.writing[k] > 0 {
		return 0
	}
	now := time.Now()
	if len(r.neg) >= negCacheMax {
		r.pruneNegLocked(now)
	}
	r.neg[k] = now.Add(ttl)
	return ttl
}

func (r *root) pruneNegLocked(now time.Time) {
	for k, exp := range r.neg {
		if !now.Before(exp) {
			delete(r.neg, k)
		}
	}
	for k := range r.neg { // still full: forget arbitrary half
		if len(r.neg) <= negCacheMax/2 {
			break
		}
		delete(r.neg, k)
	}
}

// Create starts a write handle for a new entry. The inode it returns is the
// writer's own, with zero timeouts, distinct from the published entry's
// inode: other processes' lookups miss until the writer's close publishes.
func (r *root) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fusefs.Inode, fusefs.FileHandle, uint32, syscall.Errno) {
	k, err := digest.Parse(name)
	if err != nil {
		return nil, nil, 0, syscall.EINVAL
	}
	// The kernel looked the name up just before (or holds a negative
	// entry no older than NegativeTTL). If this daemon recorded that miss
	// within NegativeTTL, the name is known absent as surely as the kernel
	// knows it, and a remote Stat per create is saved. A key published
	// elsewhere meanwhile is caught by Publish (ErrExist: first writer wins).
	r.mu.Lock()
	exp, ok := r.neg[k]
	recentMiss := ok && time.Now().Before(exp)
	r.mu.Unlock()
	if !recentMiss {
		if _, err := r.st.Stat(uninterrupted(ctx), k); err == nil {
			return nil, nil, 0, syscall.EEXIST
		} else if !errors.Is(err, tiers.ErrNotFound) {
			return nil, nil, 0, r.errno(err)
		}
	}
	r.mu.Lock()
	r.writing[k]++
	delete(r.neg, k)
	r.epoch++
	r.mu.Unlock()

	h := newWriteHandle(r, k)
	h.attr(&out.Attr)
	out.SetEntryTimeout(0)
	out.SetAttrTimeout(0)
	ch := r.NewInode(ctx, &writerNode{h: h}, fusefs.StableAttr{Mode: syscall.S_IFREG})
	// Writes bypass the page cache: the writer's inode is dropped after
	// publishing, so its pages would be a copy nobody reads.
	return ch, h, fuse.FOPEN_DIRECT_IO, 0
}

// doneWriting ends a write handle's claim on k. published says the handle's
// value became k's value; then the key is tracked until it is durable.
func (r *root) doneWriting(k digest.Key, published bool) {
	r.mu.Lock()
	if r.writing[k] <= 1 {
		delete(r.writing, k)
	} else {
		r.writing[k]--
	}
	delete(r.neg, k)
	r.epoch++
	prune := false
	if published {
		r.undurable[k] = struct{}{}
		if len(r.undurable) >= r.pruneAt && !r.pruning {
			r.pruning, prune = true, true
		}
	}
	if c, ok := r.closing[k]; ok {
		close(c)
		delete(r.closing, k)
	}
	r.mu.Unlock()
	if prune {
		go r.pruneDurable()
	}
}

// undurablePrune is how many published keys undurable holds before
// pruneDurable runs. A goroutine per publish waiting for its persistence
// made a loop writing small files 10% slower on 2 cores (each woke a
// thread on the writer's cores).
const undurablePrune = 1024

// pruneDurable forgets from undurable the keys the stack has persisted. It
// does not hurry the persistence (WaitPersisted): that waits for a burst of
// publishes to pause, or for the value's early upload.
func (r *root) pruneDurable() {
	r.mu.Lock()
	keys := slices.Collect(maps.Keys(r.undurable))
	r.mu.Unlock()
	for _, k := range keys {
		if err := r.st.WaitPersisted(r.ctx, k); err != nil {
			if r.ctx.Err() != nil {
				break // unmounted
			}
			continue // left for an fsync of the directory to report
		}
		r.mu.Lock()
		delete(r.undurable, k)
		r.mu.Unlock()
	}
	r.mu.Lock()
	r.pruning = false
	r.pruneAt = len(r.undurable) + undurablePrune
	r.mu.Unlock()
}

// syncPublished waits until every entry this mount published is durable.
func (r *root) syncPublished(ctx context.Context) syscall.Errno {
	r.mu.Lock()
	keys := make([]digest.Key, 0, len(r.undurable))
	for k := range r.undurable {
		keys = append(keys, k)
	}
	r.mu.Unlock()
	for _, k := range keys {
		if err := r.st.WaitDurable(ctx, k); err != nil {
			return r.errno(err)
		}
		r.mu.Lock()
		delete(r.undurable, k)
		r.mu.Unlock()
	}
	return 0
}

func (r *root) Unlink(ctx context.Context, name string) syscall.Errno {
	if name == ctlName {
		return syscall.EPERM
	}
	k, err := digest.Parse(name)
	if err != nil {
		return syscall.ENOENT
	}
	r.waitClosing(k)
	// A delete that has begun is finished even if the caller is interrupted.
	err = r.st.Delete(context.WithoutCancel(ctx), k)
	r.mu.Lock()
	r.epoch++
	delete(r.undurable, k)
	r.mu.Unlock()
	return r.errno(err)
}

func (r *root) OpendirHandle(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	return &dirHandle{r: r}, 0, 0
}

// Statfs reports, for df(1), the capacity of the local cache: that of the
// local tier with the largest size (bbolt, by default), with its size as
// the total, its values' bytes as used, and the rest as free, but no more
// than the disk that holds it has free. The remote's room is not asked
// for: df would wait on the server. Without a bounded local tier the
// figures are zero. Files counts the entries, and one more free per free
// block.
func (r *root) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	const bsize = 4096
	out.Bsize = bsize
	out.Frsize = bsize
	out.NameLen = digest.MaxNameLen
	var c *tiers.TierStats
	st := r.st.Stats()
	for i := range st.Tiers {
		if t := &st.Tiers[i]; !t.Remote && t.Limit > 0 && (c == nil || t.Limit > c.Limit) {
			c = t
		}
	}
	if c == nil {
		return 0
	}
	free := max(c.Limit-c.Bytes, 0)
	if c.DiskFree > 0 {
		free = min(free, c.DiskFree)
	}
	out.Blocks = uint64(c.Limit / bsize)
	out.Bfree = uint64(free / bsize)
	out.Bavail = out.Bfree
	out.Ffree = out.Bfree
	out.Files = uint64(c.Entries) + out.Ffree
	return 0
}

// Refusals: the namespace holds only entries created by Create.

func (r *root) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (r *root) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (r *root) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (r *root) Link(ctx context.Context, target fusefs.InodeEmbedder, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (r *root) Rename(ctx context.Context, name string, newParent fusefs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return syscall.EPERM
}

func (r *root) Rmdir(ctx context.Context, name string) syscall.Errno { return syscall.EPERM }

func (r *root) Setattr(ctx context.Context, f fusefs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EPERM
}

func (r *root) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return 0, syscall.ENODATA
}

func (r *root) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) { return 0, 0 }

func (r *root) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return xattrRefusal(attr)
}

func (r *root) Removexattr(ctx context.Context, attr string) syscall.Errno { return xattrRefusal(attr) }

// dirHandle lists the root: ".", "..", ".flechefs" and Stack.List's keys in
// name order, read once per opendir (or rewinddir).
type dirHandle struct {
	r *root

	mu     sync.Mutex
	loaded bool
	ents   []fuse.DirEntry
	infos  []tiers.Info // infos[i-3] belongs to ents[i]
	next   int
}

func (d *dirHandle) load(ctx context.Context) syscall.Errno {
	var infos []tiers.Info
	err := d.r.st.List(ctx, func(i tiers.Info) error {
		infos = append(infos, i)
		return nil
	})
	if err != nil {
		return d.r.errno(err)
	}
	slices.SortFunc(infos, func(a, b tiers.Info) int { return cmp.Compare(a.Key.String(), b.Key.String()) })
	ents := make([]fuse.DirEntry, 0, len(infos)+3)
	ents = append(ents,
		fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: fuse.FUSE_ROOT_ID},
		fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: fuse.FUSE_ROOT_ID},
		fuse.DirEntry{Name: ctlName, Mode: syscall.S_IFDIR, Ino: ctlIno})
	for _, i := range infos {
		ents = append(ents, fuse.DirEntry{Name: i.Key.String(), Mode: syscall.S_IFREG, Ino: stableIno(i.Key)})
	}
	d.ents, d.infos, d.loaded, d.next = ents, infos, true, 0
	return 0
}

func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.loaded {
		if errno := d.load(ctx); errno != 0 {
			return nil, errno
		}
	}
	if d.next >= len(d.ents) {
		return nil, 0
	}
	e := d.ents[d.next]
	d.next++
	e.Off = uint64(d.next)
	return &e, 0
}

func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off == 0 { // rewinddir: list again
		d.loaded, d.next = false, 0
		return 0
	}
	if !d.loaded || off > uint64(len(d.ents)) {
		return syscall.EINVAL
	}
	d.next = int(off)
	return 0
}

// Lookup answers READDIRPLUS for the entry Readdirent just produced, from
// the listing's Info rather than one Stat per entry.
func (d *dirHandle) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	d.mu.Lock()
	var info tiers.Info
	found := false
	if i := d.next - 1 - 3; i >= 0 && i < len(d.infos) && d.infos[i].Key.String() == name {
		info, found = d.infos[i], true
	}
	d.mu.Unlock()
	if !found {
		return d.r.Lookup(ctx, name, out)
	}
	return d.r.entryInode(ctx, info.Key, info, out, min(listEntryTTL, d.r.opt.EntryTTL)), 0
}

// Fsyncdir makes every entry this mount published durable.
func (d *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	return d.r.syncPublished(ctx)
}

func (d *dirHandle) Releasedir(ctx context.Context, flags uint32) {}

// closedEmpty records that k's writer was closed before any write.
func (r *root) closedEmpty(k digest.Key) {
	r.mu.Lock()
	if _, ok := r.closing[k]; !ok {
		r.closing[k] = make(chan struct{})
	}
	r.mu.Unlock()
}

// closingWait bounds how long a lookup or unlink waits for a writer closed
// before any write to publish at RELEASE. RELEASE comes microseconds after
// close(2) returns; but a shell's "cmd > f" closes its own descriptor
// before cmd writes, and a lookup of f meanwhile must not wait for cmd.
const closingWait = 250 * time.Millisecond

// waitClosing waits (at most closingWait) for the RELEASE of a writer of k
// that was closed before it wrote: a program that creates an empty file
// (a lock file) and then looks it up or removes it must find it.
func (r *root) waitClosing(k digest.Key) {
	r.mu.Lock()
	c, ok := r.closing[k]
	r.mu.Unlock()
	if !ok {
		return
	}
	t := time.NewTimer(closingWait)
	defer t.Stop()
	select {
	case <-c:
	case <-t.C:
	}
}
