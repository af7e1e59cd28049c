package bolt

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"syscall"

	bolt "go.etcd.io/bbolt"

	"github.com/flechefs/flechefs/tiers"
)

// Damage. bbolt reads the database through a memory map and trusts every
// page it finds there: a damaged page (a branch, leaf or freelist page with
// flipped bytes) makes it follow a page id outside the map (a fault), index
// past a slice, or panic itself ("invalid page type", "unreachable"); a file
// truncated under the map makes the next access to the lost pages raise
// SIGBUS. Go crashes the process on such faults unless the goroutine has
// runtime/debug.SetPanicOnFault set, which turns them into panics.
//
// So every transaction runs through view, update or begin, which set it for
// the goroutine while bbolt runs and recover any panic. A panic marks the
// tier failed: from then on every operation fails at once with an error
// wrapping tiers.ErrFailed, without touching the map again (a damaged map may
// fault anywhere, and a panicking write transaction may have left bbolt's
// locks or freelist in any state). The stack goes on with the other tiers.
//
// A database file deleted or replaced while in use is found by the flusher
// (watch, every flushInterval): writes would go to a file nobody will open
// again, so the tier fails for writes; reads of the open file still work
// (the inode lives while the process holds it), so that entries waiting for
// upload can still be uploaded from it.

// errDamaged is the error of a structural inconsistency the tier's own
// code finds in bbolt's tree (keys out of order, a key that stays after its
// delete): a damaged file, on which a loop over the keys might never end.
// view and update fail the tier on it, as on a fault.
var errDamaged = errors.New("damaged database")

// failure is why the tier failed.
type failure struct {
	err    error // path: reason
	reason error
	gone   bool // the file was deleted or replaced; reads still work
}

// Failed returns why the tier failed, or nil while it works
// (tiers.FailureReporter).
func (t *Tier) Failed() error {
	if f := t.failure.Load(); f != nil {
		return f.err
	}
	return nil
}

// fail marks the tier failed (the first cause is kept and logged, once) and
// returns the error operations get from now on.
func (t *Tier) fail(gone bool, reason error) error {
	f := &failure{err: fmt.Errorf("%s: %v", t.path, reason), reason: reason, gone: gone}
	if t.failure.CompareAndSwap(nil, f) {
		t.log.Error("local database failed: the mount goes on with the other tiers; nothing stored in it is durable any more",
			"path", t.path, "reason", reason)
	}
	return t.failedErr(false)
}

// failedErr is the error of an operation on a failed tier, or nil; read
// says the operation only reads, which a gone file still allows.
func (t *Tier) failedErr(read bool) error {
	f := t.failure.Load()
	if f == nil || read && f.gone {
		return nil
	}
	return fmt.Errorf("%w: %v", tiers.ErrFailed, f.err)
}

// recoverFault is deferred by the functions that run bbolt: it restores the
// goroutine's panic-on-fault setting and turns a panic into the tier's
// failure.
func (t *Tier) recoverFault(err *error, old bool) {
	debug.SetPanicOnFault(old)
	if p := recover(); p != nil {
		*err = t.fail(false, fmt.Errorf("damaged database (bbolt: %v)", p))
	}
}

// view runs fn in a read transaction.
func (t *Tier) view(fn func(*bolt.Tx) error) (err error) {
	if err := t.failedErr(true); err != nil {
		return err
	}
	defer t.recoverFault(&err, debug.SetPanicOnFault(true))
	return t.damage(t.db.View(fn))
}

// update runs fn in a write transaction.
func (t *Tier) update(fn func(*bolt.Tx) error) (err error) {
	if err := t.failedErr(false); err != nil {
		return err
	}
	defer t.recoverFault(&err, debug.SetPanicOnFault(true))
	return t.damage(t.db.Update(fn))
}

// damage fails the tier when err is errDamaged, and returns the error.
func (t *Tier) damage(err error) error {
	if errors.Is(err, errDamaged) {
		return t.fail(false, err)
	}
	return err
}

// watch fails the tier when its file was deleted, replaced or truncated:
// fstat of the open file against stat of the path. The file never shrinks,
// so a size below the last one seen is a truncation (whose pages would
// raise SIGBUS at the next access).
func (t *Tier) watch() {
	if t.file == nil || t.failure.Load() != nil {
		return
	}
	var open, named syscall.Stat_t
	if err := syscall.Fstat(int(t.file.Fd()), &open); err != nil {
		t.fail(false, fmt.Errorf("fstat of the open database: %v", err))
		return
	}
	switch err := syscall.Stat(t.path, &named); {
	case open.Nlink == 0 || errors.Is(err, syscall.ENOENT):
		t.fail(true, errors.New("the database file was deleted while in use"))
		return
	case err == nil && (named.Ino != open.Ino || named.Dev != open.Dev):
		t.fail(true, errors.New("the database file was replaced while in use"))
		return
	}
	if open.Size < t.fileSize {
		t.fail(false, fmt.Errorf("the database file was truncated while in use (%d bytes, was %d)", open.Size, t.fileSize))
		return
	}
	t.fileSize = open.Size
}

// openDB is bolt.Open with faults and panics turned into a damagedError,
// followed, if check is set, by preflight (preflight.go). It also returns the open file, for watch. After a panic bbolt has not
// closed the file: it is unlocked and closed here. The map bbolt made is
// left (address space only), and it holds the open file, so closing the
// descriptor alone would keep the file's flock: the next Open of the path
// in this process, or the salvage of the file once moved aside, would wait
// for it until its timeout.
func openDB(path string, bopt *bolt.Options, check bool) (db *bolt.DB, file *os.File, err error) {
	bopt.OpenFile = func(name string, flag int, perm os.FileMode) (*os.File, error) {
		f, err := os.OpenFile(name, flag, perm)
		file = f
		return f, err
	}
	defer func(old bool) {
		debug.SetPanicOnFault(old)
		if p := recover(); p != nil {
			if file != nil {
				syscall.Flock(int(file.Fd()), syscall.LOCK_UN)
				file.Close()
			}
			db, file, err = nil, nil, damaged(path, fmt.Errorf("bbolt: %v", p))
		}
	}(debug.SetPanicOnFault(true))
	db, err = bolt.Open(path, 0o600, bopt)
	if err == nil && check {
		if perr := preflight(file); perr != nil {
			db.Close()
			return nil, nil, damaged(path, perr)
		}
	}
	return db, file, err
}
