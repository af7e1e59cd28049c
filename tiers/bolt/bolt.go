package bolt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
)

// Defaults and bounds of Options.
const (
	DefaultName        = "bolt"
	DefaultChunkSize   = 256 << 10
	MinChunkSize       = 4 << 10
	MaxChunkSize       = 16 << 20
	DefaultLockTimeout = 3 * time.Second
)

const (
	// stageBytes is how much of a value one staging transaction writes: a
	// value announced at most twice this is written whole in one
	// transaction; a larger one (or one of unknown size) in several of this
	// many bytes, so that a put never holds more than about this much in
	// buffers and its transaction as much again in dirty pages. It was
	// 8 MiB (each value over 8 MiB): persisting the bench's 512 MiB value
	// then raised the daemon's peak RSS (64 MiB RAM tier) to 123-125 MiB,
	// against 114-118 with 4 MiB (bench/run.sh -only memory -repeats 3,
	// two pairs). The price is twice the commits for a large value: three
	// puts of 128 MiB took 567-760 ms against 439-586 with 8 MiB.
	stageBytes = 4 << 20
	// flushInterval is how often access times are written to the LRU index.
	flushInterval = time.Second
	// listPage is how many entries List reads per read transaction.
	listPage = 1024
)

// Options configures Open. The zero value is usable.
type Options struct {
	// Name of the tier in errors, logs and stats (default "bolt").
	Name string
	// Limit bounds the sum of the logical sizes of the values held, in
	// bytes; least recently used entries are evicted to stay under it.
	// 0: unbounded.
	Limit int64
	// ReadOnly opens an existing database with a shared lock and refuses
	// Put, Delete and Uploaded with tiers.ErrReadOnly.
	ReadOnly bool
	// ChunkSize is the size of the pieces values are stored in, from
	// MinChunkSize to MaxChunkSize (default 256 KiB). Each entry records its
	// own, so it can change between runs.
	ChunkSize int
	// LockTimeout is how long Open waits for another process (or another
	// Open in this one) to release the database (default 3s).
	LockTimeout time.Duration
	// Logger receives the tier's log lines (default slog.Default()).
	Logger *slog.Logger
}

// Tier is a tier stored in one bbolt file. See the package documentation.
type Tier struct {
	name     string
	path     string
	db       *bolt.DB
	log      *slog.Logger
	chunk    int
	stage    int // bytes per staging transaction, a multiple of chunk
	limit    int64
	readOnly bool
	bufs     sync.Pool // *[]byte of crcLen+chunk bytes

	faults
	closing
	groupCommit
	pending
}

// faults is what the tier knows of damage and of its file (fault.go).
type faults struct {
	failure  atomic.Pointer[failure]
	aside    *Aside   // the damaged database Open replaced, if it did
	file     *os.File // the database file bbolt opened
	fileSize int64    // its size when last watched; by the flusher
}

// closing is the tier's end: Close, and the flusher it stops.
type closing struct {
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	stop      chan struct{} // closed by Close to stop the flusher
	flusher   chan struct{} // closed when the flusher has stopped
}

// groupCommit is the state of the group commit (commit.go).
type groupCommit struct {
	gmu     sync.Mutex
	queue   []*call
	leading bool

	// wmu is held while a group commit transaction runs and its effects are
	// applied in memory: st is the committed stats.
	wmu       sync.Mutex
	sinceDrop int64     // bytes committed since the last dropMap, under wmu
	lastDrop  time.Time // under wmu
	st        stats
	// Published copies of st for Usage and early checks.
	entries, bytes, evictions, pinned atomic.Int64
}

// pending is work the flusher writes later.
type pending struct {
	// Access times not yet written to the LRU index.
	tmu     sync.Mutex
	touched map[digest.Key]int64

	// Staging ids whose cleanup failed; retried by the flusher.
	omu     sync.Mutex
	orphans []uint64
}

// ErrLocked is why Open fails on a database another process has open: bbolt
// holds an exclusive lock on the file while it is open for writing.
var ErrLocked = errors.New("locked")

// Open opens (creating if needed, unless read-only) the database at path.
// It fails within Options.LockTimeout with an error wrapping
// tiers.ErrUnavailable and ErrLocked when another process holds the
// database. A damaged
// database is moved aside and replaced by a fresh one holding what could be
// salvaged of its upload queue (salvage.go; MovedAside says so), or, for a
// read-only tier, refused with an error wrapping tiers.ErrCorrupt.
func Open(path string, opt Options) (*Tier, error) {
	if opt.Name == "" {
		opt.Name = DefaultName
	}
	t, err := open(path, opt)
	var dmg *damagedError
	if errors.As(err, &dmg) && !opt.ReadOnly {
		t, err = moveAside(path, opt, dmg)
	}
	if err != nil {
		return nil, tiers.Wrap(opt.Name, "open", digest.Key{}, err)
	}
	return t, nil
}

func open(path string, opt Options) (*Tier, error) {
	if opt.ChunkSize == 0 {
		opt.ChunkSize = DefaultChunkSize
	}
	if opt.ChunkSize < MinChunkSize || opt.ChunkSize > MaxChunkSize {
		return nil, fmt.Errorf("chunk size %d is not between %d and %d", opt.ChunkSize, MinChunkSize, MaxChunkSize)
	}
	if opt.LockTimeout <= 0 {
		opt.LockTimeout = DefaultLockTimeout
	}
	if opt.Limit < 0 {
		return nil, fmt.Errorf("negative limit %d", opt.Limit)
	}
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("tier", opt.Name)

	if opt.ReadOnly {
		if _, err := os.Stat(path); err != nil {
			return nil, err
		}
	} else if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	bopt := &bolt.Options{
		Timeout:         opt.LockTimeout,
		ReadOnly:        opt.ReadOnly,
		FreelistType:    bolt.FreelistMapType,
		PreLoadFreelist: true, // for Check in read-only mode; always done in write mode
	}
	if strconv.IntSize == 64 {
		// Map 1 GiB up front: growing the map waits for every read transaction.
		bopt.InitialMmapSize = 1 << 30
	}
	db, file, err := openDB(path, bopt, true)
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("database %s is in use by another flechefs (%w): %w", path, ErrLocked, tiers.ErrUnavailable)
	}
	if errors.Is(err, bolt.ErrChecksum) {
		return nil, damaged(path, err)
	}
	if errors.Is(err, bolt.ErrInvalid) || errors.Is(err, bolt.ErrVersionMismatch) {
		// Not a bbolt file (or another version's): not ours to move.
		return nil, fmt.Errorf("database %s: %w: %w", path, tiers.ErrCorrupt, err)
	}
	if errors.As(err, new(*damagedError)) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("database %s: %w", path, err)
	}
	if opt.Limit > 0 {
		// Grow the file in steps of an eighth of the limit (bbolt's default,
		// 16 MiB, at most): a small tier keeps a small file.
		db.AllocSize = int(min(max(opt.Limit/8, 1<<20), int64(db.AllocSize)))
	}
	t := &Tier{
		name:     opt.Name,
		path:     path,
		db:       db,
		faults:   faults{file: file},
		log:      log,
		chunk:    opt.ChunkSize,
		stage:    max(stageBytes/opt.ChunkSize, 1) * opt.ChunkSize,
		limit:    opt.Limit,
		readOnly: opt.ReadOnly,
		closing:  closing{stop: make(chan struct{}), flusher: make(chan struct{})},
		pending:  pending{touched: map[digest.Key]int64{}},
	}
	t.bufs.New = func() any { b := make([]byte, crcLen+t.chunk); return &b }
	if fi, err := file.Stat(); err == nil {
		t.fileSize = fi.Size()
	}
	if err := t.load(); err != nil {
		if f := t.failure.Load(); f != nil {
			// A fault or a bbolt panic while reading it: damaged.
			t.closeDamaged()
			return nil, damaged(path, f.reason)
		}
		db.Close()
		return nil, fmt.Errorf("database %s: %w", path, err)
	}
	if t.readOnly {
		close(t.flusher)
		return t, nil
	}
	if t.limit > 0 && t.st.bytes > t.limit {
		// Opened with a smaller limit than before.
		err := t.commit(0, func(w *wtx) error {
			if err := w.applyTouches(); err != nil {
				return err
			}
			return w.evict(w.st.bytes - t.limit)
		})
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("database %s: evicting down to the limit of %d bytes: %w", path, t.limit, err)
		}
	}
	go t.flush()
	return t, nil
}

// load checks the format, creates the buckets of a new database, loads the
// stats record and removes what staged puts of an earlier process left.
func (t *Tier) load() error {
	var fresh, dirty bool
	err := t.view(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		if m == nil {
			empty := true
			tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil })
			if !empty {
				return fmt.Errorf("%w: not a flechefs bolt database (no %q bucket)", tiers.ErrCorrupt, bucketMeta)
			}
			fresh = true
			return nil
		}
		if f := m.Get(metaFormat); string(f) != formatID {
			return fmt.Errorf("%w: format %q, want %q", tiers.ErrCorrupt, f, formatID)
		}
		for _, b := range allBuckets {
			if tx.Bucket(b) == nil {
				return fmt.Errorf("%w: no %q bucket", tiers.ErrCorrupt, b)
			}
		}
		if k, _ := tx.Bucket(bucketStaging).Cursor().First(); k != nil {
			dirty = true
		}
		v := m.Get(metaStats)
		if v == nil {
			dirty = true // rebuilt below
			return nil
		}
		st, err := decodeStats(v)
		t.st = st
		return err
	})
	if err != nil {
		return err
	}
	if fresh && t.readOnly {
		return fmt.Errorf("%w: empty database opened read-only", tiers.ErrCorrupt)
	}
	if (fresh || dirty) && !t.readOnly {
		err = t.update(func(tx *bolt.Tx) error {
			for _, b := range allBuckets {
				if _, err := tx.CreateBucketIfNotExists(b); err != nil {
					return err
				}
			}
			m := tx.Bucket(bucketMeta)
			if fresh {
				if err := m.Put(metaFormat, []byte(formatID)); err != nil {
					return err
				}
			}
			if err := t.collectStaging(tx); err != nil {
				return err
			}
			if m.Get(metaStats) == nil {
				st, err := scanStats(tx)
				if err != nil {
					return err
				}
				if st.entries > 0 {
					t.log.Warn("stats record missing: rebuilt by a scan", "entries", st.entries, "bytes", st.bytes)
				}
				t.st = st
				return m.Put(metaStats, st.encode())
			}
			return nil
		})
		if err != nil {
			return t.classify(err)
		}
	}
	t.setStats(t.st)
	return nil
}

// collectStaging deletes the chunks of puts that never published.
func (t *Tier) collectStaging(tx *bolt.Tx) error {
	s, ch := tx.Bucket(bucketStaging), tx.Bucket(bucketChunks)
	var ids []uint64
	s.ForEach(func(k, _ []byte) error {
		if len(k) == 8 {
			ids = append(ids, uint64FromKey(k))
		}
		return nil
	})
	for _, id := range ids {
		if err := deleteChunks(ch, id); err != nil {
			return err
		}
		if err := s.Delete(u64(id)); err != nil {
			return err
		}
	}
	if len(ids) > 0 {
		t.log.Info("removed the chunks of unfinished puts", "count", len(ids))
	}
	return nil
}

// scanStats counts the entries; only for a database without a stats record.
func scanStats(tx *bolt.Tx) (stats, error) {
	var st stats
	err := tx.Bucket(bucketKeys).ForEach(func(k, v []byte) error {
		rec, err := decodeRecord(v)
		if err != nil {
			return err
		}
		st.entries++
		st.bytes += rec.size
		if rec.seq != 0 {
			st.pinned += rec.size
		}
		return nil
	})
	return st, err
}

func (t *Tier) setStats(st stats) {
	t.st = st
	t.entries.Store(st.entries)
	t.bytes.Store(st.bytes)
	t.evictions.Store(st.evictions)
	t.pinned.Store(st.pinned)
}

// flush writes access times to the LRU index every flushInterval and
// retries the cleanup of failed puts, until Close.
func (t *Tier) flush() {
	defer close(t.flusher)
	tick := time.NewTicker(flushInterval)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
			t.watch()
			if err := t.flushTouches(); err != nil && !errors.Is(err, tiers.ErrFailed) {
				t.log.Warn("recording access times", "err", err)
			}
			t.retryOrphans()
		}
	}
}

func (t *Tier) flushTouches() error {
	t.tmu.Lock()
	n := len(t.touched)
	t.tmu.Unlock()
	if n == 0 {
		return nil
	}
	return t.commit(0, (*wtx).applyTouches)
}

func nowNano() int64 { return time.Now().UnixNano() }

// touch records an access to k, written to the LRU index later.
func (t *Tier) touch(k digest.Key) {
	if t.readOnly {
		return
	}
	now := nowNano()
	t.tmu.Lock()
	t.touched[k] = now
	t.tmu.Unlock()
}

// Name returns the tier's name.
func (t *Tier) Name() string { return t.name }

// Path returns the database file's path.
func (t *Tier) Path() string { return t.path }

// Usage reports the tier's fill. DiskBytes is the size of the file,
// DiskFree what an unprivileged writer may still add to the filesystem
// that holds it.
func (t *Tier) Usage() tiers.Usage {
	u := tiers.Usage{
		Entries:   t.entries.Load(),
		Bytes:     t.bytes.Load(),
		Limit:     t.limit,
		Evictions: t.evictions.Load(),
	}
	if fi, err := os.Stat(t.path); err == nil {
		u.DiskBytes = fi.Size()
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(filepath.Dir(t.path), &fs); err == nil {
		u.DiskFree = int64(fs.Bavail) * fs.Bsize
	}
	return u
}

// Close writes the pending access times and closes the database. It waits
// for running transactions. Readers fail with ErrClosed after it.
func (t *Tier) Close() error {
	t.closeOnce.Do(func() {
		var err error
		if !t.readOnly {
			close(t.stop)
			<-t.flusher
			err = t.flushTouches()
		}
		t.closed.Store(true)
		if t.failedErr(true) != nil {
			// Damaged: its locks may be held by a transaction that
			// panicked; nothing more is written to it.
			t.closeErr = tiers.Wrap(t.name, "close", digest.Key{}, t.closeDamaged())
			return
		}
		if errors.Is(err, tiers.ErrFailed) {
			err = nil // gone: the failure was logged
		}
		t.closeErr = tiers.Wrap(t.name, "close", digest.Key{}, errors.Join(err, t.db.Close()))
	})
	return t.closeErr
}

// usable fails when the tier is closed or failed (for reads: damaged), or
// ctx is done.
func (t *Tier) usable(ctx context.Context) error {
	if t.closed.Load() {
		return tiers.ErrClosed
	}
	if err := t.failedErr(true); err != nil {
		return err
	}
	return ctx.Err()
}

// writable is usable for operations that write.
func (t *Tier) writable(ctx context.Context) error {
	if t.readOnly {
		return tiers.ErrReadOnly
	}
	if err := t.failedErr(false); err != nil {
		return err
	}
	return t.usable(ctx)
}

func isNoSpace(err error) bool {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	// bbolt formats some I/O errors with %s, losing the errno.
	s := err.Error()
	return strings.Contains(s, "no space left on device") || strings.Contains(s, "disk quota exceeded")
}

func checkKey(k digest.Key) error {
	if k.IsZero() {
		return fmt.Errorf("%w: the zero key", digest.ErrInvalid)
	}
	return nil
}
