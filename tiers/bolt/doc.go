// Package bolt is a tier stored in one bbolt file (go.etcd.io/bbolt): the
// local, persistent, bounded tier of the stack, and the keeper of the
// durable upload queue (tiers.Queue).
//
// # On-disk layout
//
// All integers are big-endian, so that bbolt's byte order is numeric order.
//
//	meta     "format" → "flechefs-bolt/1"
//	         "stats"  → entries, bytes, evictions, pinned bytes (4 × uint64)
//	keys     key name → entry record (77 bytes): version 1, id, size,
//	         sha256, created and last access (unix ns), queue sequence
//	         number (0: not pending), chunk size
//	chunks   id (8) ‖ chunk index (4) → CRC32C (Castagnoli) of the data (4) ‖ data
//	lru      last access (8) ‖ id (8) → key name, for unpinned entries only
//	queue    sequence number (8) → key name, for entries waiting for upload,
//	         or "tombstone <key> <sha256 hex or ->", a queued remote
//	         delete (tombstone.go: older binaries refuse to mount with one)
//	staging  id (8) → start time (unix ns), for puts not yet published
//
// Entry ids come from the chunks bucket's sequence and are never reused; a
// staged put's id becomes its entry's id. Every chunk but the last of a value
// holds exactly the entry's chunk size. The stats record is updated in the
// transaction of every change it counts, so Open reads it instead of
// scanning.
//
// # Guarantees
//
//   - Put is atomic and durable: when it returns nil the entry is committed
//     and fsynced (bbolt's default sync on commit is kept); when it fails
//     nothing is visible. A value announced at most 8 MiB is written in one
//     transaction; a larger one (or one of unknown size) is staged 4 MiB per
//     transaction under an id recorded in
//     "staging" and published by one last transaction that writes the entry
//     record and removes the staging mark. A failed put deletes its staged
//     chunks; Open deletes those a killed process left.
//   - Concurrent puts, deletes and queue changes share transactions (group
//     commit, see commit.go): a lone writer commits at once, writers that
//     arrive while a commit runs share the next one and its fsync.
//   - The logical bytes held never exceed Options.Limit. The publishing
//     transaction evicts least recently used entries first, walking the lru
//     bucket from its start: O(log n) per evicted entry. Entries waiting for
//     upload are not in the lru bucket and are never evicted; a value that
//     cannot fit fails with tiers.ErrNoSpace, as do disk-full errors.
//   - Open records an access in memory; accesses are written to the lru
//     bucket once a second, before an eviction, and at Close. After a crash
//     the last second of accesses is lost, nothing else.
//   - Every ReadAt checks the CRC32C of each chunk it touches (whole chunks,
//     even for a short read). A mismatch, a chunk of the wrong length or a
//     missing chunk is tiers.ErrCorrupt, and the entry is deleted so that the
//     bad copy is not served again. A Reader whose entry was deleted or
//     evicted fails with tiers.ErrNotFound: its chunks are gone and its id is
//     never reused, so it can never read other bytes. Readers hold no
//     transaction between calls and also implement io.WriterTo (the whole
//     value, in 4 MiB pieces), for copies between tiers.
//   - A second Open of the same file, in this process or another, fails
//     after Options.LockTimeout with an error wrapping tiers.ErrUnavailable.
//
// # Locks
//
// bbolt allows one write transaction at a time and any number of read
// transactions. Reads (Stat, Open, ReadAt, List, Pending, IsPending) run in
// their own short read transactions and never call back into the caller
// while one is open: List reads a page of entries, closes the transaction,
// then calls fn. Writes that change the published state run through the
// group commit, under Tier.wmu, which also orders the in-memory counters.
// Staging transactions take only bbolt's writer lock.
//
// # Caveats
//
//   - The file never shrinks. Pages freed by deletes and evictions are reused
//     by later writes; the file is larger than the logical bytes held by the
//     staged puts in flight, the pages freed by a transaction (reusable only
//     by later ones, so about the largest value), partly filled pages, and
//     the growth step (an eighth of the limit, at most 16 MiB). Churning ten
//     times a 64 MiB limit through the tier in values of up to 20 MiB leaves
//     a file of 85 MiB (1.33 times the limit); with a 256 MiB limit, 1.17
//     times. `bbolt compact` on a closed file gives the space back.
//   - Each entry costs about 400 bytes on disk besides its data (its record
//     in a B+tree of random keys, pages about two-thirds full; its LRU record
//     and chunk keys in full pages, as those keys only grow): a million
//     entries of 16 bytes make a 413 MB file (which opens in 1 ms).
//   - Staged bytes of puts in flight are on disk but not counted in
//     Usage.Bytes; a put whose size is announced evicts room for it before it
//     stages, so the file does not grow by it on top of a full tier.
//   - Only one process can use the file at a time, read-only opens included
//     (bbolt's flock). The database is memory-mapped (1 GiB of address space
//     reserved up front on 64-bit systems).
//   - Stat does not count as an access; Open does.
package bolt
