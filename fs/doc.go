// Package fs is the flechefs mount: a FUSE filesystem (go-fuse v2) that
// shows a tiers.Stack as one flat directory of immutable entries named by
// their keys (digest.Key: lowercase hex, optionally one suffix).
//
//	srv, err := fs.Mount("/cache", stack, fs.Options{SpoolDir: "/var/tmp/flechefs"})
//	...
//	srv.Wait()
//
// A program stores a computed result by creating the file under its key and
// closing it; any program reads it back by opening that name. Nothing else
// is possible: an entry is never modified, only deleted.
//
// # Visibility and publishing
//
// open(O_CREAT) of a valid name returns a write descriptor. Until the
// value is published, the name does not exist for anybody, the writer
// included: lookups of it (stat, access, open, ls) miss on this mount and
// the writer's descriptor is the only way to the data. The descriptor
// supports write and pwrite at any offset, ftruncate, fstat (the current
// size) and reading back what was written (O_RDWR).
//
// The value is published when the last descriptor of its open file is
// gone: every dup, every copy inherited by a child, in every process (the
// kernel's RELEASE). So "{ cmd1; cmd2; } > f", "( cmd1; cmd2 ) > f", dash's
// "exec 3> f; cmd >&3; cmd >&3; exec 3>&-", Python's
// subprocess.run(cmd, stdout=fh) followed by fh.write, and a file that is
// never written (": > f", touch, a lock file) all publish the whole value.
// close(2) of one descriptor (the kernel's FLUSH) never publishes.
//
// Read-after-close: RELEASE is queued by the kernel before the last
// close(2) (or the exit of the last holder) returns, but it is not
// synchronised with the caller, and a later lookup may reach the daemon
// first. So a lookup, open, unlink, create or rename of a name whose open
// file has had a FLUSH, and a listing or an open of .flechefs/stats (which
// "flechefs sync" reads), waits for that file's RELEASE, at
// most until 1 s after its last FLUSH (releaseWait), and once RELEASE has
// come, until its publish is done (hashing a value written out of order
// takes as long as reading it): once the last close
// has returned, every process on this mount that stats, opens or lists
// the name sees the complete value. A FLUSH that is not the last close (the
// shell's own close after its dup2, a child's exit inside a brace group)
// makes lookups of that name in the next second wait that long, then
// answer absent.
//
// A value is dropped, never published, when:
//
//   - a process holding the file is killed by a signal (SIGKILL, SIGTERM,
//     timeout(1)), whether or not that process wrote: the close made by its
//     death is recognised at FLUSH (the task is exiting and its exit code
//     holds a signal, read from /proc/<pid>/stat), so a cache never keeps a
//     result cut short;
//   - a process holding the file exits with a non-zero status, unless
//     Options.PublishFailed: "./simulate > f" that fails midway leaves
//     nothing, as make's .DELETE_ON_ERROR does. This includes a command
//     that fails inside a group, "{ grep x; echo; } > f" with a grep that
//     matched nothing; a pipeline hides the producer's status ("cmd | cat
//     > f" publishes whatever cmd wrote), so "cmd > f" is the form to use;
//   - a write or ftruncate failed (ENOSPC from a full SpoolDir, EIO): the
//     writer was told its value is incomplete; later writes fail with the
//     same error, and so do close and fsync;
//   - the key has a value already (another writer published first: first
//     writer wins);
//   - the stack refuses it at RELEASE (ENOSPC, EROFS...): nobody waits for
//     a RELEASE, so the error is logged and counted and the name stays
//     absent. A writer that must know calls fsync.
//
// Each drop is counted by reason in .flechefs/stats ("writes", "dropped")
// and shown by flechefs status. Detecting a writer's death needs the
// daemon to see the writer's pid namespace.
//
// Racing writers: several processes may find a key absent and write it.
// Each one's open succeeds whichever way the race goes: a create without
// O_EXCL never looks the key up, and an open(O_CREAT) of an entry that
// exists (the kernel sends it without O_CREAT; the daemon reads the flags
// from the caller's /proc/<pid>/syscall) returns a shadow write handle.
// The first value to be published stays, the others are dropped and
// counted; a shadow handle's value is always dropped. O_EXCL of an
// existing entry is EEXIST; an open for writing without O_CREAT, or with
// O_APPEND ("cmd >> f": it means to change the value), is EACCES.
// To replace a value: rm, then write.
//
// # Scratch files and renames
//
// A name that is not a key (".KEY.x81Ab", "tmpa1b2", "KEY.npy.tmp") may be
// created as a private scratch file of this mount: it is reachable by name
// on this mount (stat, open, read back, chmod, utimes, fsync), is not
// listed, is never uploaded, lives in memory (64 KiB) and SpoolDir, and is
// gone when unlinked, renamed to a key or when the mount ends (a writer
// killed mid-way leaves it until then). At most 1024 are held at once: a
// create beyond that first drops the ones neither open nor used for an
// hour, then fails with ENOSPC. Note that "KEY.tmp" is itself a key (one
// suffix): it is an entry, published at its last close.
//
// rename(2) within the mount:
//
//   - a scratch file to a key publishes its bytes under the key,
//     atomically; if the key has a value, the rename succeeds and that value
//     stays (first writer wins). A scratch file still open is published at
//     its last close instead; one whose descriptors were all closed before
//     the rename (close(2) returns before the kernel's RELEASE) is waited
//     for, at most releaseWait, so that the key is readable when the
//     rename returns;
//   - an entry to an absent key gives that key the same value and deletes
//     the entry (to an existing key: the existing value stays, the source
//     is deleted);
//   - an entry to a name that is not a key is EXDEV (mv copies instead);
//   - RENAME_NOREPLACE onto an existing name is EEXIST; RENAME_EXCHANGE
//     is EINVAL.
//
// So rsync (default and --inplace), Python's mkstemp + os.replace,
// "KEY.tmp" then os.replace, mv within the mount and npm's
// write-file-atomic work.
//
// # Durability
//
// Publishing makes an entry visible, not durable: the stack persists it in
// the background (entries written in a burst once the burst pauses, at
// most 2 s after it began; one over 1 MiB, with a remote to upload to, once
// its upload has ended, at most 30 s later; see tiers/doc.go).
//
//   - close(2) returns 0 once the data is in the spool; it does not publish,
//     and neither it nor the last close waits for durability or reports a
//     publish error (close reports a failed write's error).
//   - fsync(2) of a write descriptor publishes the value at once, waits
//     until it is in the persistent local tier (Stack.WaitDurable) and
//     returns any error (ENOSPC, EROFS, EIO): it is how a writer learns that
//     its value is kept. Later writes through that open file fail with EIO.
//     fsync of a read descriptor, and fsync of the root directory (every
//     entry this mount published), wait likewise.
//   - "flechefs sync" waits until every entry published before it started
//     is uploaded (see the README).
//
// The publish and its durability wait are not interrupted by signals;
// fsync's wait is. Lookups and opens are not interrupted either (a signal
// to a process waiting in stat or open, a Go program's preemption signal
// included, would otherwise make it fail with EINTR, which SA_RESTART does
// not restart): the stack bounds them by its remote timeout.
// When the persistence fails (ENOSPC: the disk under the persistent tier is
// full), fsync returns the error but the entry stays published, complete,
// served from memory or its spool until it is evicted or the mount stops (a
// second write of the name finds it existing).
//
// # Errors
//
// Every error from the stack or the spool goes through ToErrno:
//
//	tiers.ErrNotFound          ENOENT
//	tiers.ErrExist             EEXIST
//	digest.ErrInvalid          EINVAL
//	tiers.ErrReadOnly          EROFS   (no writable tier: the reason, not a permission)
//	tiers.ErrNoSpace           ENOSPC
//	tiers.ErrCorrupt           EIO     (logged; the stack never serves bad bytes)
//	tiers.ErrUnavailable       EIO     (logged)
//	tiers.ErrClosed            EIO     (logged)
//	context.Canceled           EINTR   (the caller was interrupted)
//	context.DeadlineExceeded   EIO     (logged)
//	a syscall.Errno            itself, also wrapped in *os.PathError (a full spool disk is ENOSPC)
//	fs.ErrPermission           EACCES
//	anything else              EIO     (logged; never ENOTSUP)
//
// What the mount answers by itself:
//
//	lookup of a name that is neither a key nor a   ENOENT
//	scratch file
//	create of a name that is not a key              a scratch file (see above)
//	create of a name with a control character       EINVAL
//	create of a name longer than NAME_MAX (255)     ENAMETOOLONG
//	create of an existing entry with O_EXCL         EEXIST
//	open of an entry for writing with O_CREAT       a shadow handle; its value is dropped
//	open of an entry for writing without O_CREAT,   EACCES (O_RDONLY|O_TRUNC: EPERM, the kernel's truncate)
//	  or with O_APPEND
//	mkdir, mknod, symlink, link, rmdir              EPERM
//	rename into or of .flechefs                     EPERM
//	rename of an entry to a name that is not a key  EXDEV
//	truncate of an entry                            EPERM
//	chmod, chown, utimes of an entry, of a file     0, and nothing changes: an entry is
//	being written or of the root directory          r--r--r--, its mtime the publish time
//	                                                (so cp -p, cp -a, tar -x, mv from another
//	                                                filesystem and shutil.copy/copy2 work)
//	setxattr, removexattr                           EPERM (of a POSIX ACL, system.posix_acl_*:
//	                                                EOPNOTSUPP, so copiers fall back to chmod)
//	getxattr of an unknown name                     ENODATA
//	unlink of an absent or invalid name             ENOENT
//	write after the value was published (fsync)     EIO
//	write after the value was dropped               EIO (or the failed write's error)
//	open of a writer's inode by another path        EACCES (/proc/self/fd/N)
//	create of more than 1024 scratch files          ENOSPC
//	create, mkdir... in .flechefs; write to its files  EACCES; unlink, rename there: EPERM
//
// unlink(2) deletes the entry from the stack (Stack.Delete). With
// delete_remote and the remote unreachable it still succeeds: the local
// copies are gone, the remote delete is queued durably (a tombstone, see
// tiers/doc.go) and the remote's copy is not served here meanwhile. Descriptors
// opened before keep reading the old value from the RAM tier, the spool or
// the page cache; one that reads from the bbolt tier fails with ENOENT at
// its next read past the cached pages (the chunks are gone), never
// returning other bytes.
//
// # Entries, directory, xattrs, .flechefs
//
// Only the mounting user can use the mount unless Options.AllowOther; with
// it, the kernel checks the modes (default_permissions), so other users
// list and read entries but cannot create or delete them.
//
// An entry is a regular file, mode 0444, owned by the mounting user, nlink
// 1, mtime (and atime, ctime) the publish time, st_blksize 1 MiB, and an
// inode number derived from the key (the first 63 bits of SHA-256 of the
// name; the same on every mount). readdir lists ".flechefs" and the keys of
// Stack.List, sorted; names being written are not listed. Each entry has
// the extended attributes user.flechefs.tiers (the tiers holding it, fastest
// first, comma-separated; "unpersisted" first while the stack has not
// copied it yet), user.flechefs.sha256 (hex) and user.flechefs.upload
// (none, pending, done, or conflict: the remote holds another value, and
// this mount dropped its own), and user.flechefs.local ("yes" when a local
// tier, or a publish not yet persisted, holds it: no round trip to answer,
// where user.flechefs.tiers asks every tier).
//
// .flechefs is a read-only directory (0555) with "stats", the JSON of
// Stack.Stats generated at each open, "version", and the program's own
// files (Options.Ctl: flechefs's "retention", "prune", "prune-dry-run").
// All are served with FOPEN_DIRECT_IO and report size 0, like /proc
// files: read them to EOF.
//
// # Kernel caching
//
// Entries are immutable, so the kernel is told to cache them:
//
//   - Entry and attribute timeouts of published entries are EntryTTL
//     (default 1 h); entries learnt from READDIRPLUS get 1 s, since a
//     remote listing may be slightly stale, and are confirmed by a lookup
//     after that.
//   - A read-only open answers FOPEN_NOFLUSH: the kernel sends no FLUSH at
//     its close (a read handle has nothing to flush), one request less per
//     file read; a read loop of cold 16 KiB files spent 60 µs a file in
//     close(2) before, 9 µs after.
//   - Reads use the page cache with FOPEN_KEEP_CACHE: a second open of the
//     same value reuses the cached pages. The daemon remembers which value
//     (size, sha256, publish time) an inode's pages belong to; an open of a
//     different value under the same key (deleted and published again) is
//     done without KEEP_CACHE, which makes the kernel drop the old pages.
//   - Each value of a key is an inode of its own: st_ino comes from the key,
//     the inode generation from the value's SHA-256. A key deleted and
//     published again with other bytes is a new inode, so descriptors still
//     open on the old value, whose GETATTR and reads report the old size,
//     never change the size the kernel holds for the new one (it would
//     clip reads of the new value short). An open through a name the
//     kernel still maps to the old value is answered ESTALE, on which the
//     kernel looks the name up again and opens the new one. An inode made
//     from a remote listing, which gives a size but no hash (its
//     generation is the size), serves any value of that size: the kernel's
//     size is right, and an ESTALE there cost every read after a readdir
//     one more lookup, a round trip to the remote.
//   - READ and WRITE requests are up to 1 MiB (MaxWrite), and after
//     mounting, as root, /sys/class/bdi/<dev>/read_ahead_kb is raised to
//     ReadAheadKB (default 1024; the kernel starts a FUSE mount at 128).
//   - A miss is cached NegativeTTL (default 1 s, at most 2 s) by the
//     daemon (a bounded map) and by the kernel (the negative entry timeout
//     of the reply, never longer than the daemon's remaining time). A
//     publish through this mount forgets the daemon's miss; the kernel has
//     none: the writer's create replaced it, and lookups during the write
//     are answered with timeout 0. A miss that raced with a publish is not
//     cached. A miss the stack answered from a remote listing
//     (tiers.MissValidUntil) is cached only until that listing's answer
//     ends, so the NegativeTTL bound holds from the listing's start. The timeouts are set in each reply rather than in
//     fs.Options, because go-fuse would replace the zero timeouts of the
//     writer's inode with the mount-wide ones.
//   - The writer's inode is not the entry's: Create returns a fresh inode
//     (go-fuse's automatic numbers, 2^63 and up) with zero entry and
//     attribute timeouts and FOPEN_DIRECT_IO, so no other process can reach
//     it through the name and its page cache, which could hold a losing
//     writer's bytes, is never read by anyone. After the publish, the next
//     lookup of the name revalidates the writer's dentry, finds the entry's
//     inode and the kernel switches to it.
//
// # Spool
//
// A write handle keeps up to SpoolThreshold bytes (default 1 MiB) in
// memory; beyond that it moves them to a temporary file in SpoolDir that is
// unlinked at once, so a 10 GiB result needs 10 GiB of SpoolDir, not RAM,
// and a crash leaves nothing behind. The SHA-256 is computed while the
// writes are sequential appends; a write elsewhere or a truncate makes
// publish hash the spool again. At publish the spool becomes the
// tiers.Blob the stack owns and releases (closing the file) when a tier
// holds the value. Memory: at most SpoolThreshold per open write handle.
//
// A value written by sequential appends starts its upload to the remote
// once its spool file holds UploadWhileWriting bytes (default 8 MiB) and
// its handle has been open for a second (a faster writer closes before an
// early upload gains much, and on 2 cores it would only take the writer's
// CPU):
// the handle asks Stack.BeginUpload for an early upload, which follows the
// spool file's tail, and the publishing last close hands it to the stack with
// the value (see tiers/doc.go, "Early uploads"). Smaller values take the
// usual path, uploaded after publish. A write anywhere but at the end, or a
// truncate, abandons the early upload before it changes the spool (the published value is uploaded by the queue
// as usual), and so does a handle that ends unpublished (a failed write,
// a killed writer): nothing of it stays on the remote. The writer's write
// calls never wait for the remote; close does not wait for the upload.
//
// # Concurrency and locks
//
// go-fuse serves requests concurrently. The locks, none held across a call
// into the kernel:
//
//   - root.mu guards the negative cache, the epoch counter, the
//     inode-number map and the set of entries not yet durable. It is never
//     held during stack I/O.
//   - writeHandle.mu serialises a handle's writes, truncates, flushes,
//     fsyncs and release; it is held while that handle publishes (a
//     concurrent write waits, then gets EIO).
//   - entryNode.mu guards the identity of the cached value.
//
// The mount sends one kind of notification to the kernel: after a rename,
// an INVAL_ENTRY of the new name, from its own goroutine (an INVAL_ENTRY
// takes the directory's lock, which the rename holds until the daemon has
// answered; the goroutine waits for it). Visibility after close relies on
// the zero timeouts above and on lookups waiting for RELEASE.
//
//   - root.writers (pendingWrites) has its own lock: the write handles not
//     yet ended, per key, which lookups wait for.
//   - root.scratch (scratchFiles) has its own lock, and each scratch file
//     one for its data.
//
// # Caveats
//
//   - Modes, owners and times given by chmod, chown, utimes or
//     `install -m` are accepted and not kept on entries (scratch files keep
//     mode and mtime until they are renamed into place).
//   - A daemon started inside the redirection that inherits the
//     descriptor delays the publish until it exits (or closes it).
//   - The value a writer's descriptor reads back before close is its own;
//     after close, reads through that descriptor fail (EIO).
//   - A file being written cannot be mapped shared and writable (its
//     descriptor uses direct I/O); published entries can be mapped for
//     reading.
//   - Another user of the same Stack that publishes a key this mount has
//     just missed (another process of the daemon, another mount) is seen
//     here within NegativeTTL, not at once.
//   - Attributes come from Stat or List when the kernel looks a name up; a
//     key deleted and published again with another size elsewhere can show
//     the old size until the entry timeout (1 s for READDIRPLUS entries).
//   - statfs (df) reports the largest local tier (bbolt by default): its
//     size, its values' bytes as used, and the rest as free, at most what
//     its disk has free. The RAM tier and the remote are not in it (the
//     remote's room would take a round trip); .flechefs/stats has every
//     tier.
package fs
