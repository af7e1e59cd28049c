// Package tiers stores cache entries in an ordered stack of tiers, fastest
// first, the way fleche's CacheStack does: a RAM tier (tiers/memory), a
// local bbolt tier (tiers/bolt) and a remote SFTP tier shared by many
// machines (tiers/sftp).
//
// # The Tier contract
//
// A Tier maps keys (digest.Key) to immutable byte values.
//
//   - Put is atomic: the value becomes visible complete or not at all. A
//     failure midway (the reader's error, a dropped connection, a size or
//     SHA-256 that differs from what Meta announced) leaves no entry. Put of
//     a key that exists fails with ErrExist and leaves the entry alone: the
//     first writer wins.
//   - Open returns a Reader for any offset, safe for concurrent ReadAt. A
//     Reader opened before a Delete or an eviction reads the old value or
//     fails; it never returns other bytes.
//   - Stat, Delete and List do what they say; a missing key is ErrNotFound.
//   - Every error is an *Error naming the tier, the operation and the key,
//     and wraps one of the sentinels (ErrNotFound, ErrExist, ErrCorrupt,
//     ErrReadOnly, ErrUnavailable, ErrNoSpace, ErrClosed) where one applies;
//     test with errors.Is.
//   - Optional abilities are separate interfaces found by type assertion:
//     UsageReporter (fill and evictions), Queue (the durable upload queue),
//     Syncer (Put may return before data is on stable storage), BytesPutter
//     (a memory tier keeps a published value's buffer instead of a copy,
//     when the Blob is a BytesBlob), and the others tier.go declares
//     (StreamPutter, LiveReader, TombstoneQueue, FailureReporter, Adopter,
//     Quarantiner).
//
// The conformance suite in tiers/tiertest checks all of this for every
// tier, and the contract of each optional interface but Adopter and
// Quarantiner for the tiers that implement it.
//
// # The Stack
//
// Lookup (Stat, Open) walks the tiers in order. A hit at tier i > 0 is
// copied up: with Promote "all" (the default) to every writable local tier
// faster than i, with "base" to tier 0 only. Copies run in the background,
// one per key at a time; the copy of a local hit small beside tier 0 (the
// deferred copies' size rule below) waits, as those do, for a pause in
// reads: it reads and hashes the value again, which beside a loop of reads
// from bbolt on 2 cores halved the loop's speed. Every copy is checked against the value's
// SHA-256 by the receiving tier's Put: a mismatch is never stored, it is
// counted as a corruption of the source, logged, and the bad copy deleted
// (a local one) or moved to the quarantine (a remote one; see below).
//
// A remote hit streams: one fetch per key (concurrent readers share it)
// writes into an unlinked spool file in SpoolDir (into memory for a value
// of at most 1 MiB, fetched with one read request, and for one tier 0
// takes at once when tier 0 keeps values in memory, fetcher.holdMem),
// readers read what has arrived, the bytes are hashed behind the transfer,
// and the last byte is held back until the whole value matched the
// checksum the remote keeps beside it. A lookup (Stat) that finds a value
// only on a remote opens it there: a value of at most 1 MiB is fetched at
// once, and the reader of a larger one is kept for a second (at most 64
// such readers), for the Open that follows and takes it instead of opening
// again (a Delete of the key closes it). A reader therefore never reaches EOF
// on bad bytes: it gets ErrCorrupt (EIO at the mount). A remote copy found
// corrupt by Stat (sizes that disagree, a garbled checksum record) is
// counted likewise. Only a verified spool is promoted, and its copies
// into the faster tiers are Meta.Verified: its bytes were hashed as they
// arrived, so the tiers do not hash them again; a RAM tier keeps a spool in
// memory as it is (BytesPutter), with no copy.
//
// The timings and sizes of this background work (how long a copy, a
// persistence or an upload waits for the foreground to pause, how much each
// holds) are one Policy (policy.go), set through StackOptions.Policy: tests
// set them to an hour where they check that something waits, so that they
// assert the order of events rather than race a timer. One clock of
// foreground work (activity.go) tells that work how long to wait: while
// entries are being published, or until the stack is idle. The stack's loops
// over its tiers ask the layers type (local, writableLocal) instead of
// filtering by hand.
//
// # Remote copies without a checksum, and damaged ones
//
// The stack never deletes a remote copy except for a Delete (an explicit
// rm, unless KeepRemoteOnDelete). A remote copy without a checksum record
// (a file flechefs did not write, or an upload cut between its rename and
// its record) is whatever the tier makes of it: a tier answers ErrNotFound
// for one it does not serve (the SFTP tier: a write in progress, or its
// foreign setting) and otherwise returns it with a zero Info.Sum (or, for
// a name that vouches for its content, that sum). The stack serves it like
// any remote copy: it hashes the bytes as they arrive, and before it
// releases the last byte it calls the Reader's Adopt (Adopter) with that
// hash, which checks that the copy did not change meanwhile and records
// the sum beside it, so that later readers verify it; the fetch's Info
// then carries the sum and its promotions are Meta.Verified. A failed
// Adopt fails the read (EIO) and moves nothing. With a zero Sum, a size
// that differs is a copy that changed under the reader, not damage. An
// upload that finds such a copy under its key settles it as "Uploads"
// says (its record awaited, else its bytes hashed and adopted); one the
// tier does not serve (ErrForeign) is left alone, counted as a conflict,
// and the local value kept, since the remote serves none for the key.
//
// A remote copy that fails verification (its record against its content
// or size, a garbled record, a name that is not its content's SHA-256
// under foreign = "verify") is never served: it is counted (Corruptions)
// and logged, and the stack asks the tier to move it into its quarantine
// (Quarantiner; TierStats.Quarantined): the copy judged, when the error
// names it (Judged: an S3 ETag, an SFTP file's size and mtime), not one
// another mount put under the key since. When the quarantine is full or the
// move fails, the copy stays in place, unserved (TierStats.Unquarantined,
// logged). An upload that finds a damaged copy under its key does the same
// and then puts the verified local value, which repairs the remote once
// the name is free.
//
// The copies of a fetched value small beside tier 0 (at most a sixteenth
// of its limit and 16 MiB, or at most 1 MiB) into the tiers after tier
// 0 wait until the stack has not been used (Stat, Open, reads) for 250 ms,
// or until such values add up to a quarter of tier 0's limit or number
// 4096, or for at most 10 s, and are made at Close (promoter.go): the copy goes into tier 0
// at once, and a loop of cold reads no longer pays for a bbolt commit
// beside every read. The queue holds keys; the drain reads the values back
// from tier 0 (a local hit's, from the tier that held it), and one gone
// meanwhile is not copied. At Close only the copies out of tier 0 are made.
//
// A local read that hits ErrCorrupt (the bbolt tier checks a CRC-32C per
// chunk) removes the bad copy and continues from the next tier holding the
// same value; the promotion of that hit repairs the faster tier.
//
// # Publishing, durability and the upload queue
//
// Publish makes a value visible to this stack as soon as it returns: it is
// served from the writer's spool (the Blob) until a tier holds it. It is
// copied into tier 0 at once and into the persistent local tier (the first
// tier implementing Queue, the bbolt tier) in the background; WaitDurable
// returns once that commit (with fsync) is done. A lone publish is
// persisted at once; small entries (up to 64 KiB) published in a burst are
// held, like uploads, until the publishes pause for 20 ms, at most 2 s from
// the first of the burst and at most 64 MiB of them, and persisted together
// (the commits would otherwise take CPU from the writing program).
// WaitDurable and Delete of a held entry end the hold at once, and that
// entry is persisted first (one deleted meanwhile is not written);
// WaitPersisted waits without ending it. The same commit records
// the key in the durable upload queue when a writable remote tier exists:
// entries waiting for upload are never evicted, survive a restart and are
// uploaded by UploadWorkers goroutines with exponential backoff
// (Policy.RetryMin 1 s doubling to RetryMax 1 min, each ±50%) until the remote has them. The first upload
// starts at publish, from the Blob, alongside the persistence (or before,
// while the value is written: see Early uploads), unless entries are still
// being published: queued uploads wait until publishes pause for 20 ms, at
// most 2 s from the first of the burst, so that background uploads do not
// slow a writing program down; the entry
// leaves the durable queue once both are done. A value over 1 MiB with a
// writable remote that is not known to be down is persisted once its
// upload has ended (the early one, or the queue's from the Blob; at most
// 30 s later): both copy the whole value, and on 2 cores the bbolt commit
// slowed the upload by a third. WaitDurable ends that wait at once. An
// upload from the Blob is Meta.Verified (the writer hashed those very
// bytes, which nobody changes after Publish), so the remote tier does not
// hash it again; an early upload, whose bytes the writer could still
// change, and an upload of a persisted copy are hashed as they are sent.
// Sync returns when the queue
// is empty. WriteThrough makes Publish also wait for the value's upload,
// which it runs itself (after an upload of the key in flight, such as an
// early one): the entry is queued as with write-back, so one whose upload
// fails (Publish returns the error) is still served locally and reaches
// the remote when the queue's retries do. Publish
// refuses a key a local tier (or another publish) holds with ErrExist; it
// does not ask the remote, which would cost a round trip per publish (the
// mount looked the name up before creating it). A remote that already
// holds the key with another value keeps it (first writer wins); the
// conflict is counted and logged. A damaged remote copy is moved to the
// quarantine and replaced by the upload; one without a checksum record
// (its writer died between its rename and its record) is read, adopted
// and judged like a recorded one, never removed.
//
// Delete removes the key from every writable tier, the remote ones too
// unless KeepRemoteOnDelete, and cancels its pending upload. Whatever could
// write the old value back after the deletes is waited for first (its
// persistence, a copy into a faster tier, an upload in progress) or kept
// from starting (promotions, including that of a fetch in progress), so a
// deleted value never comes back and a value published again after the
// Delete is never removed by a late cleanup of the old one.
//
// # Deletes and tombstones
//
// With a writable remote (and not KeepRemoteOnDelete), Delete first
// records a tombstone for the key: in memory, and in the persistent tier's
// queue (TombstoneQueue; the bbolt tier writes it in the commit that
// deletes its copy, so a crash leaves both or neither). The tombstone
// names the value deleted (the SHA-256 of the local copy; none when no
// local tier held the key). While it exists, Stat, Open, List and Where do
// not ask the remote for the key: the deleted value does not come back on
// this stack, whether or not the remote is reachable. Then the remote
// delete is made at once, unless the remote is known to be down; if it
// fails, Delete still succeeds (the local copies are gone and the remote
// delete is queued), and a background deleter retries it with the
// uploads' backoff (Policy.RetryMin and RetryMax). Tombstones survive
// a restart; Sync waits for them, and Stats.Deletes counts them.
//
// Carrying a tombstone out: each writable remote's copy is removed if it
// holds the value the tombstone names, or when that cannot be told (the
// tombstone names none, or the copy has no checksum record). A copy with
// another SHA-256 is another writer's value, put there after this delete
// (first writer wins there too): it is left, and logged. The tombstone is
// then removed durably, and only then from memory.
//
// A newer write of the key on this stack (a Publish after the Delete) does
// not cancel the tombstone: the remote keeps the first value it gets, so
// the new value could never replace the old one there. Instead, the upload
// of a key with a tombstone waits (the workers skip it, an early upload
// does not start, a write-through Publish carries the tombstone out first), and
// starts once the tombstone is gone: the old value is removed from the
// remote first, then the new one uploaded. If another machine wrote the
// key meanwhile, the tombstone leaves that value and the upload meets it
// as any upload does (a conflict: the remote's value stays). A second
// Delete while a tombstone exists keeps the first: no value of the key
// has reached the remote from here since. A crash after the remote delete
// but before the tombstone's removal repeats the delete at the next start,
// which finds the copy gone, or another writer's value, which it leaves;
// the same bytes written again elsewhere meanwhile are the value the
// tombstone names, and are removed.
//
// # Absence snapshots
//
// A Stat that no local tier answers asks every remote tier, a round trip
// per name. With StackOptions.ListingTTL set (the mount passes its
// negative_ttl), misses of one remote that come in a burst (32 within a
// second) start one background listing of it (single-flight, bounded by
// RemoteTimeout, cancelled by Close). The listing keeps the 64-bit hashes
// (hash/maphash, a per-stack seed) of the names it returned and the time T0
// it started. Until T0 + ListingTTL, a name not in it is answered
// ErrNotFound for that remote without a round trip; the error then
// carries the end of that answer (MissValidUntil), and a caller caching
// the miss must not keep it longer. A name in it, or a hash collision,
// gets the usual Stat: a snapshot only ever answers "absent". Since a
// directory listing returns every entry that existed for the whole scan,
// an entry published elsewhere before T0 is in it, and one published after
// T0 is seen at most ListingTTL later: no later than with the per-name
// negative cache of the mount. A key this stack uploads is added to the
// current snapshot and to a listing in progress. While a listing runs, or
// after it expired, names are asked one by one as before; a new listing
// starts when misses keep coming and the snapshot is past half its life.
//
// Memory is 8 bytes per listed name, at most ListingMaxNames (default
// 1,000,000: 8 MiB) per remote, plus, while a listing runs, what the
// tier's List holds (the SFTP tier reads the whole directory before it
// reports a name, as for ls). A listing past that cap, or one taking
// longer than ListingTTL/2 (it would be of little use), is given up, logged
// once, and the remote is not listed for this again for 10 minutes; a
// failed listing (the remote down) is retried after 30 s. The counts are
// in TierStats.Listings and ListedMisses. Only Stat uses snapshots; Open
// asks the remote.
//
// # Early uploads
//
// A large value can be uploaded while it is still being written, so that it
// reaches the remote about when its writer closes it rather than an upload's
// time later. The writer (the mount's write handle) calls BeginUpload(k, src)
// once it has appended enough bytes, reports each append with Written, and
// then either publishes a Blob that is an UploadingBlob returning that
// EarlyUpload, or calls Abort. The contract:
//
//   - BeginUpload returns nil, and nothing changes, unless there is exactly
//     one writable remote tier, it implements StreamPutter (the SFTP tier
//     does), it is not known to be down, and fewer than
//     min(UploadWorkers, LargeUploads) early uploads run. Early uploads are
//     counted apart from the UploadWorkers that upload the queue.
//   - The remote's PutGrowing sends the bytes of src below what Written
//     reported, as they arrive, to a temp file. Written and Abort never
//     block; the upload reads src (the writer's spool file) itself, one
//     SFTP packet at a time, so a slow or dead remote never slows the
//     writer down and holds no more memory than a Put.
//   - Until Publish, the upload is nobody's: the value is not in the queue,
//     and whatever ends it (Abort, a failure, Close) drops it and removes
//     its temp file (a tier that cannot reach the server removes it after
//     reconnecting, or leaves it to the sweep of abandoned temp files).
//     Abort must come before the writer changes bytes it reported: a write
//     below the end, a truncate, a failed or killed writer.
//   - Publish records the value in the durable queue exactly as without an
//     early upload (a crash before the upload ends is recovered by the
//     queue at the next start) and adopts the early upload as the queued
//     item's upload in flight: the workers leave the key to it, Delete
//     cancels and waits for it as for theirs. It gives the upload the
//     value's size and SHA-256; the tier checks the bytes it sent against
//     them and publishes as Put does (temp file, rename, sum record; first
//     writer wins). Success takes the item out of the queue, after the
//     persistence, as a worker's upload does; any failure (ErrExist, a
//     mismatch, the remote down) hands the item back to the workers at
//     once, which upload it from the published value the usual way and
//     settle ErrExist as below.
//   - An upload refused with ErrExist learns the remote's value: its
//     record, or, when it has none after a few seconds, its bytes hashed
//     (and recorded, through its Reader's Adopt). The same value ends the
//     upload. Another value is a conflict: the remote wins; counted in
//     Stats.Conflicts, logged once, and this mount's copies of the losing
//     value are dropped from the local tiers (readers that have it open
//     finish), so the next read fetches the remote's; UploadState is
//     "conflict" until then, and Sync waits for the drop. A key that is
//     the local value's SHA-256 proves that value: another remote copy
//     under it is damage (ErrCorrupt, the upload retried), never a
//     conflict. No remote copy is ever removed or replaced by an
//     upload, save one that fails verification (ErrCorrupt), which goes
//     to corrupt (the tier's quarantine).
//
// # Failure
//
// One tier failing does not fail the stack. With the remote unreachable,
// local hits are served; Stat of a key held nowhere else is ErrNotFound and
// Open is ErrUnavailable, both within RemoteTimeout; publishes queue. List
// serves the remote listing from a cache refreshed in the background at most
// every ListTTL, waiting at most 2 s the first time.
//
// # Parts
//
// Stack is a facade: its methods (Stat, Open, Publish, Delete, Sync, ...)
// walk the layers and hand the work to parts that each own their state,
// each in its own file:
//
//   - keyTable (keys.go): what is being done with each key right now, one
//     keyState per key (a publish not yet persisted, a fetch, a parked
//     remote reader, a promotion, an upload in flight, a tombstone, a lost
//     value) and the key's delete fence. A Delete fences a key in one
//     place and finds there everything it must wait for.
//   - layers (layers.go): the tiers in order with their counters, and the
//     queries the loops ask of them (local, writableLocal, writableRemote).
//   - fetcher (fetcher.go): one fetch per key from a remote, joined by
//     readers, verified as it arrives; it hands the verified value to
//   - promoter (promoter.go): the copies into faster tiers, one per key at a
//     time, and the deferred copies into the slower local ones.
//   - publisher (publisher.go): Publish, the persisters and their batches,
//     WaitDurable.
//   - replicator (replicator.go): the upload queue and its one state machine
//     (upItem) shared by the workers, the early uploads (early.go) and
//     write-through; conflicts with the remote's value (lost.go drops the
//     losing value).
//   - deleter (deleter.go): Delete and the tombstones of remote deletes.
//   - absentSet (absent.go) and listCache (listing.go): what the remotes'
//     listings say.
//   - activity (activity.go) and Policy (policy.go): the foreground's clock
//     that background work yields to, and every timing and size of that
//     work.
//
// A part reaches another through the Stack it points back to; the state it
// owns is changed only by its own methods.
//
// # Concurrency
//
// All Stack methods are safe for concurrent use. Stack.mu is the one lock
// of the per-key state (the key table) and of the parts' small state that
// goes with it (the upload queue's mirror, the deferred copies, the
// persisters' hurry signal); no tier I/O happens under it. Each fetch has
// its own lock, as do the listing cache and the absence snapshots.
//
// # Caveats
//
//   - Without a persistent tier, published values that tier 0 refused (too
//     large) stay in their spool files until restart, and the upload queue
//     lives in memory only.
//   - The stack trusts a tier's Stat for existence; only reads are verified.
//   - A remote copy without a checksum record that the tier serves is
//     trusted as complete for its first read (nothing vouches for it
//     otherwise); that read's hash becomes its record.
package tiers
