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
	extraCtlIno   = 5 // Options.Ctl's files: 5 to 15
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

	// writers holds the write handles not yet ended, per key.
	writers *pendingWrites
	// scratch holds the scratch files (names that are not keys).
	scratch *scratchFiles
	// counts are the mount's write counters (.flechefs/stats "writes").
	counts writeCounters

	mu sync.Mutex
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
}

func newRoot(st stack, opt Options) *root {
	ctx, cancel := context.WithCancel(context.Background())
	return &root{
		st: st, opt: opt, log: opt.Logger,
		owner:   fuse.Owner{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())},
		started: time.Now(),
		ctx:     ctx, cancel: cancel,
		writers:   newPendingWrites(),
		scratch:   newScratchFiles(),
		neg:       map[digest.Key]time.Time{},
		live:      map[uint64]digest.Key{},
		undurable: map[digest.Key]struct{}{},
		pruneAt:   undurablePrune,
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
	ino := uint64(extraCtlIno)
	for _, name := range slices.Sorted(maps.Keys(r.opt.Ctl)) {
		if ino >= firstEntryIno || name == "stats" || name == "version" {
			r.log.Error("flechefs: control file not added", "name", name)
			continue
		}
		ctl.AddChild(name, ctl.NewPersistentInode(ctx, &ctlFile{r: r, gen: r.opt.Ctl[name]},
			fusefs.StableAttr{Mode: syscall.S_IFREG, Ino: ino}), false)
		ino++
	}
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
		if sf := r.scratch.get(name); sf != nil {
			return r.scratchInode(ctx, sf, out), 0
		}
		out.SetEntryTimeout(r.opt.NegativeTTL)
		return nil, syscall.ENOENT
	}
	r.writers.wait(k)
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
	if r.epoch != epoch || r.writers.writing(k) {
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

// Create starts a write handle for a new entry, or a scratch file for a
// name that is not a key. The inode it returns is the writer's own, with
// zero timeouts, distinct from the published entry's inode: other
// processes' lookups miss until the value is published.
//
// Without O_EXCL the name is not looked up: if the key exists, or another
// writer publishes it first, this value is dropped at its last close (first
// writer wins), and the open succeeds whichever way the race went.
func (r *root) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fusefs.Inode, fusefs.FileHandle, uint32, syscall.Errno) {
	k, err := digest.Parse(name)
	if err != nil {
		if name == ctlName {
			return nil, nil, 0, syscall.EEXIST
		}
		return r.createScratch(ctx, name, flags, mode, out)
	}
	r.writers.wait(k)
	if flags&syscall.O_EXCL != 0 && !r.recentMiss(k) {
		// A miss this daemon recorded within NegativeTTL is as sure as
		// the kernel's negative entry that sent this create, and saves a
		// remote Stat per lock file. A key published elsewhere meanwhile
		// is caught by Publish (ErrExist: first writer wins).
		if _, err := r.st.Stat(uninterrupted(ctx), k); err == nil {
			r.settled(k, false) // the kernel drops its negative entry too
			return nil, nil, 0, syscall.EEXIST
		} else if !errors.Is(err, tiers.ErrNotFound) {
			return nil, nil, 0, r.errno(err)
		}
	}
	h := newWriteHandle(ctx, r, k, false)
	r.mu.Lock()
	delete(r.neg, k)
	r.epoch++
	r.mu.Unlock()

	h.attr(&out.Attr)
	out.SetEntryTimeout(0)
	out.SetAttrTimeout(0)
	ch := r.NewInode(ctx, &writerNode{h: h}, fusefs.StableAttr{Mode: syscall.S_IFREG})
	// Writes bypass the page cache: the writer's inode is dropped after
	// publishing, so its pages would be a copy nobody reads.
	return ch, h, fuse.FOPEN_DIRECT_IO, 0
}

// recentMiss reports whether this daemon saw k missing within NegativeTTL.
func (r *root) recentMiss(k digest.Key) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	exp, ok := r.neg[k]
	return ok && time.Now().Before(exp)
}

// publish hands a finished spool to the stack as k's value. hash is the
// running hash of sequential writes (nil: hash the spool now); early is the
// upload begun while writing (nil: none). won is false when k had a value
// already (first writer wins): this one is dropped. won with an error is a
// value published here that is not on the remote yet (write = "through",
// tiers.ErrNotUploaded). The spool is the stack's (or closed) afterwards,
// whatever happens.
func (r *root) publish(ctx context.Context, k digest.Key, sp *spool, hash *runningHash, early *tiers.EarlyUpload) (won bool, err error) {
	var sum digest.Sum
	if hash != nil {
		sum, err = hash.sum()
	} else {
		sum, err = sp.sum()
	}
	if err != nil {
		if early != nil {
			early.Abort()
		}
		if hash != nil {
			hash.drop()
		}
		sp.close()
		return false, err
	}
	// Not cancelled by an interrupt: a publish, once begun, ends.
	_, err = r.st.Publish(context.WithoutCancel(ctx), k, sp.blob(early), sum)
	switch {
	case err == nil:
		r.counts.published.Add(1)
		return true, nil
	case errors.Is(err, tiers.ErrExist):
		return false, nil
	case errors.Is(err, tiers.ErrNotUploaded):
		// write = "through": the value is k's here, queued for upload;
		// the writer is told that it is not on the remote yet.
		r.counts.published.Add(1)
		return true, err
	}
	return false, err
}

// doneWriting ends a write handle's claim on its key. published says the
// handle's value became the key's value; then the key is tracked until it
// is durable.
func (r *root) doneWriting(h *writeHandle, published bool) {
	r.writers.remove(h)
	r.settled(h.key, published)
}

// settled records that a write of k ended: a cached miss of k is stale, and
// a published value is tracked until it is durable.
func (r *root) settled(k digest.Key, published bool) {
	r.mu.Lock()
	delete(r.neg, k)
	r.epoch++
	prune := false
	if published {
		r.undurable[k] = struct{}{}
		if len(r.undurable) >= r.pruneAt && !r.pruning {
			r.pruning, prune = true, true
		}
	}
	r.mu.Unlock()
	if prune {
		go r.pruneDurable()
	}
}

// undurablePrune is how many published keys undurable holds before
// pruneDurable runs, instead of a goroutine per publish waiting for its
// persistence: each would wake a thread on the writer's cores.
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
	// A failed local tier (a damaged or deleted database) keeps nothing
	// durable, including what was persisted there before.
	for _, t := range r.st.Stats().Tiers {
		if !t.Remote && t.Failed != "" {
			r.log.Error("fsync: a local tier has failed; nothing is durable on this machine", "tier", t.Name, "reason", t.Failed)
			return syscall.EIO
		}
	}
	return 0
}

func (r *root) Unlink(ctx context.Context, name string) syscall.Errno {
	if name == ctlName {
		return syscall.EPERM
	}
	k, err := digest.Parse(name)
	if err != nil {
		return r.scratch.unlink(name)
	}
	r.writers.wait(k)
	return r.deleteKey(ctx, k)
}

// deleteKey deletes k's value from every tier. A delete that has begun is
// finished even if the caller is interrupted.
func (r *root) deleteKey(ctx context.Context, k digest.Key) syscall.Errno {
	err := r.st.Delete(context.WithoutCancel(ctx), k)
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

// Rename moves a name within the root (see doc.go, "Renames"):
//
//   - a scratch file to a key publishes its bytes under the key (if the key
//     has a value, the rename succeeds and that value stays);
//   - a scratch file to another name that is not a key renames it;
//   - an entry to another key gives that key the entry's value and deletes
//     the entry;
//   - an entry to a name that is not a key is EXDEV (mv then copies).
//
// RENAME_NOREPLACE is EEXIST when the target exists; RENAME_EXCHANGE and
// renames into .flechefs are refused.
func (r *root) Rename(ctx context.Context, name string, newParent fusefs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if newParent.EmbeddedInode() != r.EmbeddedInode() || name == ctlName || newName == ctlName {
		return syscall.EPERM
	}
	if flags&^uint32(renameNoReplace) != 0 {
		return syscall.EINVAL
	}
	noReplace := flags&renameNoReplace != 0
	src, srcErr := digest.Parse(name)
	dst, dstErr := digest.Parse(newName)
	var errno syscall.Errno
	switch {
	case srcErr != nil && dstErr != nil:
		errno = r.renameScratch(name, newName, noReplace)
	case srcErr != nil:
		errno = r.publishRenamed(ctx, name, dst, noReplace)
	case dstErr != nil:
		return syscall.EXDEV
	default:
		errno = r.renameEntry(ctx, src, dst, noReplace)
	}
	if errno == 0 {
		// The kernel moves its dentry: newName now names the source's
		// inode, an entry's with a long timeout. Invalidate it once the
		// rename is done (the kernel holds the directory's lock until
		// then, and this waits for it), so the next lookup finds the
		// published value's own inode.
		go r.NotifyEntry(newName)
	}
	return errno
}

// renameNoReplace is RENAME_NOREPLACE of renameat2(2).
const renameNoReplace = 1

func (r *root) renameScratch(name, newName string, noReplace bool) syscall.Errno {
	if errno := scratchNameErr(newName); errno != 0 {
		return errno
	}
	if noReplace && r.scratch.get(newName) != nil {
		return syscall.EEXIST
	}
	f := r.scratch.take(name)
	if f == nil {
		return syscall.ENOENT
	}
	r.scratch.put(newName, f)
	return 0
}

// publishRenamed publishes the scratch file name under k.
func (r *root) publishRenamed(ctx context.Context, name string, k digest.Key, noReplace bool) syscall.Errno {
	sf := r.scratch.get(name)
	if sf == nil {
		return syscall.ENOENT
	}
	sf.waitReleases() // a closed temp file is published by the rename itself
	r.writers.wait(k)
	if noReplace {
		if errno := r.exists(ctx, k); errno != syscall.ENOENT {
			return cmp.Or(errno, syscall.EEXIST)
		}
	}
	f := r.scratch.take(name)
	if f == nil {
		return syscall.ENOENT
	}
	sp := f.takeForKey(k)
	if sp == nil {
		return 0 // published at the last close of its open handles
	}
	return r.errno(r.publishScratch(ctx, k, sp))
}

// exists answers 0 when k has a value, ENOENT when not, or the error.
func (r *root) exists(ctx context.Context, k digest.Key) syscall.Errno {
	_, err := r.st.Stat(uninterrupted(ctx), k)
	return r.errno(err)
}

// renameEntry gives dst the value of src and deletes src.
func (r *root) renameEntry(ctx context.Context, src, dst digest.Key, noReplace bool) syscall.Errno {
	r.writers.wait(src)
	r.writers.wait(dst)
	if src == dst {
		return r.exists(ctx, src)
	}
	if noReplace {
		if errno := r.exists(ctx, dst); errno != syscall.ENOENT {
			return cmp.Or(errno, syscall.EEXIST)
		}
	}
	rd, err := r.st.Open(uninterrupted(ctx), src)
	if err != nil {
		return r.errno(err)
	}
	sp := newSpool(r.opt.SpoolDir, r.opt.SpoolThreshold)
	err = sp.readFrom(rd)
	rd.Close()
	if err != nil {
		sp.close()
		return r.errno(err)
	}
	won, err := r.publish(ctx, dst, sp, nil, nil)
	if won {
		r.settled(dst, true)
	}
	if err != nil {
		return r.errno(err) // the source stays: the rename did not complete
	}
	if !won {
		r.settled(dst, false)
	}
	return r.deleteKey(ctx, src)
}

func (r *root) Rmdir(ctx context.Context, name string) syscall.Errno { return syscall.EPERM }

// Setattr of the root (chmod, chown, utimes: tar -x of an archive holding
// ".", cp -a dir/. mnt/) is accepted and changes nothing, as for entries.
func (r *root) Setattr(ctx context.Context, f fusefs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return r.Getattr(ctx, f, out)
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
	// A value whose last close has returned is listed.
	d.r.writers.waitAll()
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

// Fsyncdir makes every entry this mount published durable, those whose
// last close has returned included: it first waits for their RELEASE, as a
// lookup does, since close(2) returns before the kernel's RELEASE is served
// and the publish happens there.
func (d *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	d.r.writers.waitAll()
	return d.r.syncPublished(ctx)
}

func (d *dirHandle) Releasedir(ctx context.Context, flags uint32) {}
