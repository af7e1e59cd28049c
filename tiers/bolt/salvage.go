package bolt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
)

// A damaged database at start. A database whose meta pages do not check
// out, that is truncated, or that makes bbolt fault or panic while it is
// opened and loaded is, for a cache, better replaced than refused: Open
// renames it to <path>.damaged-<UTC time> (nothing is deleted: it can be
// examined or repaired by hand), creates a fresh database at path and copies
// into it, pinned and queued for upload again, every entry of the old upload
// queue it can still read whose bytes match the SHA-256 recorded for them
// (Put checks them). The others are logged, one line each. A read-only tier
// refuses such a database instead: it never changes its file.
//
// A file that bbolt reads well but that is not a flechefs database, or a
// flechefs database of another format, is refused, never moved.

// damagedError is the open error of a damaged database ("path: reason"),
// which moving the file aside answers. It wraps tiers.ErrCorrupt and the
// cause.
type damagedError struct {
	path  string
	cause error
}

func damaged(path string, cause error) error { return &damagedError{path, cause} }

func (e *damagedError) Error() string {
	return fmt.Sprintf("%s: damaged database: %v", e.path, e.cause)
}
func (e *damagedError) Unwrap() []error { return []error{tiers.ErrCorrupt, e.cause} }

// Aside describes a damaged database Open moved aside.
type Aside struct {
	Path     string // where the damaged file is now
	Reason   error  // why it was found damaged
	Requeued int    // entries of its upload queue copied into the fresh database
	Lost     int    // entries of its upload queue that could not be read whole
}

// MovedAside returns what Open did with a damaged database, or nil when it
// opened the file it found.
func (t *Tier) MovedAside() *Aside { return t.aside }

// closeTimeout bounds how long closing a damaged database may wait for
// bbolt's locks, which a transaction that panicked may have left held.
const closeTimeout = 2 * time.Second

// closeDamaged closes a damaged database, giving up (and leaving it open)
// when bbolt's locks are not released. The file's flock is released then
// all the same, so that the file can be opened again (moved aside and
// salvaged, or replaced): nothing is written to it any more.
func (t *Tier) closeDamaged() error {
	done := make(chan error, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- fmt.Errorf("closing a damaged database: %v", p)
			}
		}()
		done <- t.db.Close()
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(closeTimeout):
		t.log.Warn("closing the damaged database timed out; left open", "path", t.path)
		if t.file != nil {
			syscall.Flock(int(t.file.Fd()), syscall.LOCK_UN)
		}
		return nil
	}
}

// moveAside renames the damaged database at path, opens a fresh one there
// and salvages the old upload queue into it.
func moveAside(path string, opt Options, cause error) (*Tier, error) {
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	aside := path + ".damaged-" + time.Now().UTC().Format("20060102T150405Z")
	for i := 1; ; i++ {
		if _, err := os.Lstat(aside); errors.Is(err, os.ErrNotExist) {
			break
		}
		aside = fmt.Sprintf("%s.damaged-%s.%d", path, time.Now().UTC().Format("20060102T150405Z"), i)
	}
	if err := os.Rename(path, aside); err != nil {
		return nil, fmt.Errorf("%w (moving it aside failed: %v)", cause, err)
	}
	log.Error("damaged database moved aside; starting a fresh one", "tier", opt.Name, "path", path, "moved_to", aside, "reason", cause)
	t, err := open(path, opt)
	if err != nil {
		return nil, err
	}
	t.aside = &Aside{Path: aside, Reason: cause}
	t.aside.Requeued, t.aside.Lost = t.salvage(aside)
	return t, nil
}

// salvage copies the readable, verified entries of the upload queue of the
// damaged database at aside into t, queued for upload.
func (t *Tier) salvage(aside string) (requeued, lost int) {
	// Not preflight: the file is known damaged, and a read-only bbolt
	// does not load the freelist, the part most often found wrong.
	db, file, err := openDB(aside, &bolt.Options{Timeout: time.Second, ReadOnly: true}, false)
	if err != nil {
		t.log.Error("damaged database: its upload queue cannot be read; nothing salvaged", "path", aside, "err", err)
		return 0, 0
	}
	old := &Tier{name: t.name + "(damaged)", path: aside, db: db, faults: faults{file: file}, log: t.log,
		chunk: t.chunk, readOnly: true, pending: pending{touched: map[digest.Key]int64{}}}
	defer old.closeDamaged()
	// The trees salvage reads are walked first: bbolt would loop through a
	// damaged one until its stack overflowed (checkTrees).
	m, ok, err := currentMeta(file)
	if err == nil && ok {
		err = checkTrees(file, m, [][]byte{bucketQueue, bucketKeys, bucketChunks}, nil)
	}
	if err != nil || !ok {
		t.log.Error("damaged database: its upload queue cannot be read; nothing salvaged", "path", aside, "err", err)
		return 0, 0
	}
	ctx := context.Background()
	keys, err := old.Pending(ctx)
	if err != nil {
		t.log.Error("damaged database: its upload queue cannot be read; nothing salvaged", "path", aside, "err", err)
		return 0, 0
	}
	for _, k := range keys {
		if err := t.salvageOne(ctx, old, k); err != nil {
			lost++
			t.log.Error("damaged database: a queued entry could not be salvaged; it is not uploaded", "path", aside, "key", k.String(), "err", err)
			continue
		}
		requeued++
	}
	t.log.Warn("damaged database: upload queue salvaged", "path", aside, "requeued", requeued, "lost", lost)
	return requeued, lost
}

func (t *Tier) salvageOne(ctx context.Context, old *Tier, k digest.Key) error {
	r, err := old.Open(ctx, k)
	if err != nil {
		return err
	}
	defer r.Close()
	in := r.Info()
	if in.Sum.IsZero() {
		return fmt.Errorf("%w: no checksum recorded", tiers.ErrCorrupt)
	}
	// Put checks the bytes against Size and Sum: nothing unverified is kept.
	_, err = t.Put(ctx, k, io.NewSectionReader(r, 0, in.Size),
		tiers.Meta{Size: in.Size, Sum: in.Sum, Created: in.Created, Pending: true})
	return err
}
