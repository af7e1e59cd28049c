package tiers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/flechefs/flechefs/digest"
)

// Sentinel errors. Test with errors.Is: every error a tier returns wraps one
// of these when it means one of these things, inside an *Error that names the
// tier, the operation and the key.
var (
	// ErrNotFound: the tier has no entry under the key.
	ErrNotFound = errors.New("not found")
	// ErrExist: Put of a key the tier already holds. First writer wins; the
	// existing entry is left as it is.
	ErrExist = errors.New("already exists")
	// ErrCorrupt: bytes do not match the size or hash they were stored or
	// announced with. A tier that detects it on read keeps no bad copy served.
	ErrCorrupt = errors.New("content does not match its hash")
	// ErrReadOnly: the tier is configured read-only.
	ErrReadOnly = errors.New("tier is read-only")
	// ErrUnavailable: the tier cannot be reached now (remote down, timeout).
	ErrUnavailable = errors.New("tier unavailable")
	// ErrNoSpace: the value does not fit (larger than the tier admits, or the
	// disk under it is full).
	ErrNoSpace = errors.New("no space left in tier")
	// ErrClosed: the tier was closed.
	ErrClosed = errors.New("tier closed")
	// ErrForeign: a remote tier holds a file under the key that flechefs
	// did not record and, by the tier's setting (foreign = "ignore", or
	// "verify" and a name that is not a SHA-256), never serves. It wraps
	// ErrNotFound: lookups answer "absent". An upload that finds one there
	// leaves it alone (first writer wins).
	ErrForeign = fmt.Errorf("%w: a file flechefs did not write, not served by the tier's foreign setting", ErrNotFound)
	// ErrQuarantineFull: a damaged remote copy could not be moved aside
	// because the quarantine holds its maximum; it stays in place, unserved.
	ErrQuarantineFull = errors.New("quarantine is full")
	// ErrFailed: the tier has failed for good in this process (its
	// database is damaged, or its file was deleted or replaced while in
	// use). The stack goes on with the other tiers; nothing it holds is
	// durable any more. FailureReporter says why.
	ErrFailed = errors.New("tier failed")
	// ErrNotUploaded: a write-through Publish made the value the key's
	// here (served, and queued for upload) but could not put it on the
	// remote; the error also wraps why.
	ErrNotUploaded = errors.New("published here, not yet on the remote")
)

// Error is the error type of tier operations.
type Error struct {
	Tier string     // tier name, e.g. "ram", "bolt", "sftp"
	Op   string     // "stat", "open", "read", "put", "delete", "list"
	Key  digest.Key // zero for operations without a key
	Err  error
}

func (e *Error) Error() string {
	if e.Key.IsZero() {
		return fmt.Sprintf("%s: %s: %v", e.Tier, e.Op, e.Err)
	}
	return fmt.Sprintf("%s: %s %s: %v", e.Tier, e.Op, e.Key, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Wrap wraps err for tier, op and key; nil stays nil and an *Error is not
// wrapped twice.
func Wrap(tier, op string, key digest.Key, err error) error {
	if err == nil {
		return nil
	}
	var te *Error
	if errors.As(err, &te) && te.Tier == tier {
		return err
	}
	return &Error{Tier: tier, Op: op, Key: key, Err: err}
}

// Info describes one stored entry. It is what Put returned for as long as
// the entry is held, across a Close and reopen too (Sum may be zero where
// the tier does not know it).
type Info struct {
	Key     digest.Key
	Size    int64
	Sum     digest.Sum // SHA-256 of the content; zero if the tier does not know it
	Created time.Time  // publish time
}

// Meta is what the writer of a Put knows in advance. Put checks the content
// against every field that is set and fails with ErrCorrupt, storing nothing,
// when it differs.
type Meta struct {
	Size    int64      // -1: unknown
	Sum     digest.Sum // zero: unknown; the tier computes it
	Created time.Time  // zero: now
	// Pending asks a tier that implements Queue to record the entry as
	// waiting for upload in the same commit that publishes it, and to pin it
	// (never evict it) until Uploaded. Other tiers ignore it.
	Pending bool
	// Verified says that Sum was computed by the caller from the very
	// bytes it passes (a publish: the writer hashed what it wrote), so a
	// tier may skip hashing them again. Size is still checked. Copies
	// between tiers never set it: they are checked against Sum.
	Verified bool
}

// Summer computes what a tier records of a value it receives: its size and
// SHA-256, or only its size when Meta.Verified vouches for Meta.Sum.
type Summer struct {
	h   *digest.Hasher // nil when verified
	n   int64
	sum digest.Sum
}

// NewSummer returns the Summer for a put with m.
func NewSummer(m Meta) *Summer {
	if m.Verified && !m.Sum.IsZero() {
		return &Summer{sum: m.Sum}
	}
	return &Summer{h: digest.NewHasher()}
}

// Write adds p; it never fails.
func (s *Summer) Write(p []byte) (int, error) {
	if s.h != nil {
		s.h.Write(p)
	}
	s.n += int64(len(p))
	return len(p), nil
}

// Size is the number of bytes written.
func (s *Summer) Size() int64 { return s.n }

// Sum is their SHA-256 (Meta.Sum when verified).
func (s *Summer) Sum() digest.Sum {
	if s.h == nil {
		return s.sum
	}
	return s.h.Sum()
}

// UnknownMeta is the Meta of a stream of unknown size and hash.
var UnknownMeta = Meta{Size: -1}

// Reader reads one entry at any offset. It stays valid after the entry is
// deleted or evicted from its tier (it reads the value it opened, or fails
// with ErrNotFound/ErrCorrupt, never other bytes). ReadAt may be called
// concurrently. ReadAt at or past Size returns 0, io.EOF.
type Reader interface {
	io.ReaderAt
	io.Closer
	Info() Info
}

// LiveReader is implemented by Readers that read through a connection:
// Live is true while the reader can read, and false once its connection
// has dropped (the link was lost, or the tier closed) or the reader was
// closed. It never turns true again, and the reader can only fail. The
// stack then opens again rather than use a reader it kept.
type LiveReader interface {
	Live() bool
}

// Tier is one level of the stack. All methods are safe for concurrent use.
// Errors are *Error values wrapping the sentinels above where they apply.
type Tier interface {
	// Name is a short name for logs, stats and xattrs ("ram", "bolt", "sftp").
	Name() string
	// Stat returns the entry's info or ErrNotFound.
	Stat(ctx context.Context, k digest.Key) (Info, error)
	// Open opens the entry for reading at offsets. A copy found damaged
	// gives ErrCorrupt, from Open or, for checks a remote tier makes while
	// Open has returned already, from the Reader's first reads.
	Open(ctx context.Context, k digest.Key) (Reader, error)
	// Put stores the bytes read from r until EOF under k, atomically: the
	// entry becomes visible complete or not at all; a failure (r's error, a
	// dropped connection, a size or hash that differs from m) leaves no entry
	// and no partial data visible. A key that exists gives ErrExist.
	Put(ctx context.Context, k digest.Key, r io.Reader, m Meta) (Info, error)
	// Delete removes the entry; ErrNotFound if it was not there.
	Delete(ctx context.Context, k digest.Key) error
	// List calls fn for every entry, in no particular order, until fn
	// returns an error (which List returns).
	List(ctx context.Context, fn func(Info) error) error
	// Close releases the tier. Open Readers may fail after it.
	Close() error
}

// Adopter is implemented by the Readers of a remote copy that has no
// checksum record (a file flechefs did not write, or an upload cut between
// its rename and its record) and that the tier serves anyway (its foreign
// setting). Such a Reader's Info has a zero Sum, or, for a name that is a
// SHA-256 under foreign = "verify", the name's. Once the stack has read the
// whole value and hashed it, Adopt checks that the copy has not changed
// since it was opened and records sum beside it, so that later readers
// verify it; a record that appeared meanwhile is kept when it agrees. An
// error means the bytes read must not be served (they changed under the
// reader, or a record says otherwise). Adopt of a Reader whose copy had a
// record does nothing.
type Adopter interface {
	Adopt(ctx context.Context, sum digest.Sum) error
}

// Quarantiner is implemented by remote tiers, which never delete a copy
// that failed verification: Quarantine moves k's data file (and its record)
// aside, out of every lookup and listing, and keeps it. ErrQuarantineFull
// when the quarantine holds its maximum; ErrNotFound when k is not there.
//
// copyID is the copy found damaged, as the tier identifies copies
// (CopyIdentifier, Judged): a copy under k that is not that one (put there
// by another mount's repair since) is left in place and the answer is
// ErrNotFound, since the damaged one is gone. An empty copyID moves
// whatever copy k has.
type Quarantiner interface {
	Quarantine(ctx context.Context, k digest.Key, copyID string) error
}

// CopyIdentifier is implemented by the Readers of a remote tier that can
// tell one copy of a key from another put under the same name later (an
// S3 object's ETag, an SFTP file's size and modification time): CopyID
// names the copy the Reader reads, or is empty when it is not known.
type CopyIdentifier interface {
	CopyID() string
}

// Judged marks an error that found a copy damaged (ErrCorrupt) with the
// copy's CopyID, so that only that copy is moved to the quarantine.
type Judged struct {
	Copy string
	Err  error
}

func (e *Judged) Error() string { return e.Err.Error() }
func (e *Judged) Unwrap() error { return e.Err }

// JudgedCopy returns the copy err judged (Judged), or "".
func JudgedCopy(err error) string {
	if j, ok := errors.AsType[*Judged](err); ok {
		return j.Copy
	}
	return ""
}

// judgedBy marks err, when it finds a copy damaged, with the copy r reads.
func judgedBy(r Reader, err error) error {
	id, ok := r.(CopyIdentifier)
	if !ok || !errors.Is(err, ErrCorrupt) || JudgedCopy(err) != "" {
		return err
	}
	if c := id.CopyID(); c != "" {
		return &Judged{Copy: c, Err: err}
	}
	return err
}

// QuarantineMax is how many damaged copies a remote tier's quarantine
// keeps. When it is full, a damaged copy is left in place, unserved, and
// logged: the quarantine never grows without bound from a failing disk,
// and nothing is ever deleted to make room.
const QuarantineMax = 1000

// Usage is a tier's fill, for status and stats.
type Usage struct {
	Entries   int64
	Bytes     int64 // logical bytes of the values held; never over Limit
	Limit     int64 // 0: unbounded
	Evictions int64 // entries removed to stay under Limit (deletes are not counted)
	DiskBytes int64 // bytes on disk, where there is a disk
	DiskFree  int64 // bytes the disk holding it has free for it, where known
}

// FailureReporter is implemented by tiers that can fail for good (ErrFailed):
// Failed returns why, or nil while the tier works.
type FailureReporter interface {
	Failed() error
}

// UsageReporter is implemented by tiers that know their fill. Usage counts
// every Put and Delete that has returned, and only the entries List shows.
type UsageReporter interface {
	Usage() Usage
}

// Queue is implemented by a persistent tier that keeps the durable upload
// queue: entries Put with Meta.Pending are recorded (in the same commit) as
// waiting for upload and are never evicted until Uploaded; a Put that
// would need to evict one to fit fails with ErrNoSpace. A Put that fails
// queues nothing, and Delete takes its entry off the queue.
type Queue interface {
	// Pending returns the keys waiting for upload, oldest first: in the
	// order their Puts published them. A key is in it at most once (Put
	// of a held key is ErrExist); put again after a Delete, it is the
	// newest.
	Pending(ctx context.Context) ([]digest.Key, error)
	// IsPending reports whether k waits for upload.
	IsPending(k digest.Key) bool
	// Uploaded removes k from the queue and unpins it. No error if k is not
	// queued.
	Uploaded(ctx context.Context, k digest.Key) error
}

// BytesPutter is implemented by tiers that keep values in memory: PutBytes
// is Put of b, keeping b itself instead of a copy. The caller never changes
// b afterwards, nor does the tier.
type BytesPutter interface {
	PutBytes(ctx context.Context, k digest.Key, b []byte, m Meta) (Info, error)
}

// Syncer is implemented by tiers whose Put may return before the data is on
// stable storage. Sync returns when everything Put before it is durable.
type Syncer interface {
	Sync() error
}

// Growing is a value that is still being written, for StreamPutter. Bytes
// below what Wait reported are final and readable with ReadAt.
type Growing interface {
	io.ReaderAt
	// Wait blocks until more than off bytes are written, the value is
	// complete, the write was abandoned (an error) or ctx is done (its
	// error). It returns how many bytes are written; once the value is
	// complete, final is true and m is its Meta (m.Size == n).
	Wait(ctx context.Context, off int64) (n int64, m Meta, final bool, err error)
}

// StreamPutter is implemented by remote tiers that can receive a value
// while it is being written, before its size and hash are known.
type StreamPutter interface {
	// PutGrowing is Put of g: it sends g's bytes as they are written,
	// reading only below what g's Wait has reported, and, once g is final,
	// checks them against g's Meta and publishes them as Put does
	// (atomically, first writer wins: ErrExist). An error from g's Wait,
	// or ctx ending, aborts it: PutGrowing returns an error wrapping that
	// one (ctx's), nothing is published and the tier removes its temporary
	// data (at once, or after it reconnects). Waiting on g is not a remote
	// operation: it is never timed out by the tier.
	PutGrowing(ctx context.Context, k digest.Key, g Growing) (Info, error)
}

// Tombstone is a queued remote delete: Key was deleted on this stack while
// its remote copy could not be; Sum is the value deleted (zero when no
// local tier held it). ID is the queue's name for it.
type Tombstone struct {
	Key digest.Key
	Sum digest.Sum
	ID  uint64
}

// TombstoneQueue is implemented by a persistent tier that also keeps
// queued remote deletes durably (the bbolt tier, in its upload queue). A
// tombstone is not an upload: Queue.Pending does not list it. The key may
// be Put again while its tombstone waits.
type TombstoneQueue interface {
	// DeleteQueued deletes k's entry, if any (and with it its upload, if
	// queued), and records a tombstone for it, in one commit. It returns
	// the tombstone's ID, which no other tombstone has.
	DeleteQueued(ctx context.Context, k digest.Key, sum digest.Sum) (uint64, error)
	// Tombstones returns the queued deletes, oldest first.
	Tombstones(ctx context.Context) ([]Tombstone, error)
	// TombstoneDone removes tombstone id; no error if it is gone.
	TombstoneDone(ctx context.Context, id uint64) error
}
