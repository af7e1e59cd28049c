package sftp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
)

// foreignSettle is how long a data file without a sum record must have
// been left alone (by its mtime) before it is served: a younger one may be
// a write in progress. Every write moves the mtime, so a writer that
// streams its bytes (cp, pickle.dump, a flechefs upload between its rename
// and its record, which is one round trip) is never taken for complete
// while it writes; 5 s is also more than the 2 s mtime granularity of the
// coarsest filesystems a server may use (FAT), and short enough that a file
// seeded by hand appears about when its copy ends. A writer that pauses
// longer than this inside one file without a lock beside it is taken for
// complete: fleche's PickleFile holds <key>.lock around its write, which
// makes the file absent for as long.
const foreignSettle = 5 * time.Second

// maxQuarantine is how many damaged data files .flechefs/quarantine keeps.
const maxQuarantine = tiers.QuarantineMax

func (t *Tier) lockPath(k digest.Key) string { return t.dataPath(k) + ".lock" }
func (t *Tier) quarantineDir() string        { return path.Join(t.rem.root, ".flechefs", "quarantine") }
func isLockName(k digest.Key) bool           { return k.Ext() == "lock" }
func selfSum(k digest.Key) (digest.Sum, bool) {
	s, err := digest.ParseSum(k.Hex())
	return s, err == nil
}

// errInProgress is the answer for a data file without a record that looks
// like a write in progress: absent until its writer is done.
var errInProgress = fmt.Errorf("%w: a file without a sum record, changed in the last %v or beside its .lock: a write in progress", tiers.ErrNotFound, foreignSettle)

// errChanged fails the read of a file without a record that changed while
// it was read: its bytes are not served (and not damage: nothing is moved).
var errChanged = errors.New("a file without a sum record changed while it was read; not served")

// young reports whether a data file modified at mtime may still be
// written: modified less than foreignSettle ago by this machine's clock
// (or in the future).
func young(mtime, now time.Time) bool { return now.Sub(mtime) < foreignSettle }

// foreign decides whether k's data file, which has no sum record, is
// served, under Options.Foreign, and returns its Info (Sum zero, or the
// name's under ForeignVerify). lock reports whether <key>.lock exists
// (only asked when it matters: see needLock). The rules are the same as
// List's (listFilter): a listing never names an entry a lookup refuses.
func (t *Tier) foreign(k digest.Key, size int64, mtime time.Time, lock bool, now time.Time) (tiers.Info, error) {
	info := tiers.Info{Key: k, Size: size, Created: mtime}
	switch {
	case t.opt.Foreign == ForeignIgnore:
		return tiers.Info{}, tiers.ErrForeign
	case isLockName(k):
		// fleche's lock, not a value (a <key>.lock written through a
		// mount has a record and is an entry like any other).
		return tiers.Info{}, errInProgress
	case lock || young(mtime, now):
		return tiers.Info{}, errInProgress
	case t.opt.Foreign == ForeignVerify:
		sum, ok := selfSum(k)
		if !ok {
			return tiers.Info{}, tiers.ErrForeign
		}
		info.Sum = sum
	}
	return info, nil
}

// needLock reports whether deciding on a record-less k needs to know
// whether <key>.lock exists.
func (t *Tier) needLock(k digest.Key) bool {
	return t.opt.Foreign != ForeignIgnore && !isLockName(k)
}

// probe is what deciding on a record-less file needs besides the file's
// own attributes: whether <key>.lock exists, and whether the name itself
// is a regular file (Open and Stat follow symbolic links; a symlink under
// a key's name, which may point out of the root, is nobody's entry).
type probe struct {
	lockErr error // the lock's Lstat; nil when not asked (ignore, or a lock's name)
	asked   bool
	fi      os.FileInfo // the name's Lstat
	err     error
}

// probeAsync asks for the probe of k beside the caller's requests: one
// round trip, two requests in flight.
func (t *Tier) probeAsync(c *conn, k digest.Key) <-chan probe {
	ch := make(chan probe, 1)
	go func() {
		var p probe
		var lockc chan error
		if t.needLock(k) {
			p.asked = true
			lockc = make(chan error, 1)
			go func() {
				_, err := c.sftp.Lstat(t.lockPath(k))
				lockc <- err
			}()
		}
		p.fi, p.err = c.sftp.Lstat(t.dataPath(k))
		if lockc != nil {
			p.lockErr = <-lockc
		}
		ch <- p
	}()
	return ch
}

// result tells whether <key>.lock exists, or why the name is not a
// regular file (ErrNotFound), or the failure.
func (p probe) result(t *Tier, c *conn, k digest.Key) (lock bool, err error) {
	switch {
	case errors.Is(p.err, os.ErrNotExist):
		return false, tiers.ErrNotFound
	case p.err != nil:
		return false, t.failure(c, p.err)
	case !p.fi.Mode().IsRegular():
		return false, fmt.Errorf("%w: %s has no sum record and is not a regular file (%v)", tiers.ErrNotFound, t.dataPath(k), p.fi.Mode().Type())
	case !p.asked || errors.Is(p.lockErr, os.ErrNotExist):
		return false, nil
	case p.lockErr == nil:
		return true, nil
	}
	return false, t.failure(c, p.lockErr)
}

// listFilter applies foreign's rules to a listing: it reads the sum records'
// names and keeps the names of record-less files that a lookup would serve.
type listFilter struct {
	t     *Tier
	sums  map[string]bool // names in .flechefs/sums
	names map[string]bool // regular files in the root
	now   time.Time
}

// keep reports whether the listed regular file k (size, mtime) is an entry.
func (f *listFilter) keep(k digest.Key, size int64, mtime time.Time) bool {
	if f.sums[k.String()] {
		return true
	}
	_, err := f.t.foreign(k, size, mtime, f.names[k.String()+".lock"], f.now)
	return err == nil
}

// Adopt checks that the record-less copy r read has not changed since it
// was opened (its size and mtime, by name: a file replaced by a rename is
// seen too) and writes its sum record, so that later readers verify it
// (tiers.Adopter). A record that appeared meanwhile is kept when it agrees
// with sum and size, and fails Adopt when it does not.
func (r *reader) Adopt(ctx context.Context, sum digest.Sum) error {
	if !r.foreign {
		return nil
	}
	t, k := r.t, r.info.Key
	if err := r.usable(); err != nil {
		return r.err(err)
	}
	if err := ctx.Err(); err != nil {
		return r.err(err)
	}
	w := r.c.watch()
	defer w.stop()
	fi, err := r.c.sftp.Lstat(t.dataPath(k))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return r.err(errChanged)
		}
		return r.err(t.failure(r.c, err))
	}
	if !fi.Mode().IsRegular() || fi.Size() != r.info.Size || !fi.ModTime().Equal(r.mtime) {
		t.log.Warn("remote file without a sum record changed while it was read; not served", "tier", t.opt.Name, "key", k,
			"size", r.info.Size, "now", fi.Size())
		return r.err(errChanged)
	}
	if self, ok := selfSum(k); ok && self == sum {
		t.log.Debug("remote file without a sum record verifies itself (its name is its SHA-256)", "tier", t.opt.Name, "key", k)
	}
	if t.opt.ReadOnly {
		return nil
	}
	rec := sumFile{sum: sum, size: r.info.Size, created: recordedCreated(r.mtime)}
	if err := t.adopt(r.c, w, k, rec, r.mtime.Unix()); err != nil {
		if errors.Is(err, tiers.ErrExist) {
			// A record that disagrees, or a file replaced meanwhile: what
			// was read is not the key's value, and is not served.
			err = fmt.Errorf("%v; not served", err)
		}
		return r.err(err)
	}
	t.log.Info("remote file without a sum record adopted: its sum is recorded", "tier", t.opt.Name, "key", k, "size", r.info.Size)
	return nil
}

// Quarantine moves k's data file into .flechefs/quarantine under
// "<key>.<UTC time>", then its record beside it as "<key>.<UTC time>.sum"
// (tiers.Quarantiner): out of every lookup and listing, kept for whoever
// wants to look. Data first: an interrupted Quarantine leaves a record
// without data (a stale record, never served), never damaged data without
// its record (which a lookup would take for a foreign file and serve).
// With judged set (the copyID of the file found damaged), a data file
// that is not that one is left in place: ErrNotFound.
func (t *Tier) Quarantine(ctx context.Context, k digest.Key, judged string) error {
	if t.opt.ReadOnly {
		return t.wrap("quarantine", k, tiers.ErrReadOnly)
	}
	c, w, err := t.begin(ctx, k)
	if err != nil {
		return t.wrap("quarantine", k, err)
	}
	defer w.stop()
	dir := t.quarantineDir()
	ents, err := c.sftp.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		err = c.sftp.MkdirAll(dir)
	}
	if err != nil {
		return t.wrap("quarantine", k, t.failure(c, err))
	}
	n := 0
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".sum") {
			n++
		}
	}
	if n >= maxQuarantine {
		return t.wrap("quarantine", k, fmt.Errorf("%w: %s holds %d files", tiers.ErrQuarantineFull, dir, n))
	}
	if judged != "" {
		// Stat, as lookups and the readers' fstat judge what the name
		// leads to.
		fi, err := c.sftp.Stat(t.dataPath(k))
		if errors.Is(err, os.ErrNotExist) {
			err = tiers.ErrNotFound
		}
		if err != nil {
			return t.wrap("quarantine", k, t.failure(c, err))
		}
		if now := copyID(fi.Size(), fi.ModTime()); now != judged {
			return t.wrap("quarantine", k, fmt.Errorf("%w: the damaged file (%s) was replaced by another (%s), left in place", tiers.ErrNotFound, judged, now))
		}
	}
	dst := path.Join(dir, k.String()+"."+time.Now().UTC().Format("20060102T150405.000000000Z"))
	if err := c.sftp.Rename(t.dataPath(k), dst); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			err = tiers.ErrNotFound
		}
		return t.wrap("quarantine", k, t.failure(c, err))
	}
	if err := c.sftp.Rename(t.sumPath(k), dst+".sum"); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.log.Warn("quarantined data file's sum record not moved", "tier", t.opt.Name, "key", k, "err", err)
	}
	t.log.Warn("damaged remote copy moved to quarantine", "tier", t.opt.Name, "key", k, "to", dst)
	return nil
}

var _ tiers.Quarantiner = (*Tier)(nil)
var _ tiers.Adopter = (*reader)(nil)
