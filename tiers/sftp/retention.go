package sftp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
)

// Retention bounds a shared remote that would otherwise only grow. With a
// Bound set, the tier records when each entry was last used, and Prune
// removes the least recently used entries until the remote is under the
// bound:
//
//	<root>/.flechefs/used/<key>     empty; its mtime is the entry's last use
//	<root>/.flechefs/prune.lease    held by the one mount pruning
//
// A read or an upload marks the entry used, off the request's path and at
// most once per tiers.MarkEvery per key and process, so a day's reads of an entry
// cost one request. An entry never marked was last used when its record was
// written. Every mount of a bounded remote should carry the bound, so that
// its reads count.
//
// What Prune never removes: a file flechefs did not write, adopted or not
// (without a checksum record, or with the record adoption writes), a key
// whose fleche <key>.lock exists,
// anything in .flechefs/tmp (an upload in progress), an entry used less
// than Grace ago. It removes an entry as Delete does (the record first,
// then the data), then its marker. One mount at a time prunes a remote: the
// lease is a file made with O_EXCL, refreshed while the pass runs, and
// taken over only once it is tiers.LeaseStale old (its holder died).

// The bound, the report, the marks and the choice of victims are the
// tiers package's (tiers/retention.go), shared with the other remote kinds.
type (
	Bound       = tiers.Bound
	PruneReport = tiers.PruneReport
)

// ErrLeaseHeld is Prune's error when another mount holds the lease.
var ErrLeaseHeld = tiers.ErrLeaseHeld

// retention is the tier's last-use marking.
type retention struct {
	t      *Tier
	usedIn string // <root>/.flechefs/used
	*tiers.UseMarks
}

func newRetention(t *Tier) *retention {
	r := &retention{t: t, usedIn: path.Join(t.rem.root, ".flechefs", "used")}
	r.UseMarks = tiers.NewUseMarks(t.ctx, r.touch, func(k digest.Key, err error) {
		t.log.Debug("last-use mark failed", "tier", t.opt.Name, "key", k.String(), "err", err)
	})
	return r
}

func (r *retention) usedPath(k digest.Key) string { return path.Join(r.usedIn, k.String()) }

// touch sets k's marker's mtime to now, making it (and its directory) if
// needed.
func (r *retention) touch(k digest.Key) error {
	ctx, cancel := context.WithTimeout(r.t.ctx, r.t.opt.Timeout)
	defer cancel()
	c, w, err := r.t.begin(ctx, k)
	if err != nil {
		return err
	}
	defer w.stop()
	now := time.Now()
	p := r.usedPath(k)
	err = c.sftp.Chtimes(p, now, now)
	if errors.Is(err, os.ErrNotExist) {
		if err = c.sftp.MkdirAll(r.usedIn); err == nil {
			var f interface{ Close() error }
			f, err = c.sftp.OpenFile(p, os.O_WRONLY|os.O_CREATE)
			if err == nil {
				err = f.Close()
			}
		}
	}
	return err
}

// Prune removes least recently used entries until the remote is under b,
// under the remote's lease (ErrLeaseHeld when another mount holds it).
// With dryRun it removes nothing and reports what it would remove.
func (t *Tier) Prune(ctx context.Context, b Bound, dryRun bool) (PruneReport, error) {
	start := time.Now()
	rep := PruneReport{DryRun: dryRun}
	if !b.On() {
		return rep, errors.New("no retention bound: set max_size or max_age on the remote tier")
	}
	if t.opt.ReadOnly && !dryRun {
		return rep, t.wrap("prune", digest.Key{}, tiers.ErrReadOnly)
	}
	c, err := t.conn(ctx)
	if err != nil {
		return rep, t.wrap("prune", digest.Key{}, unavailable(t.rem.addr, err))
	}
	lease := path.Join(t.rem.root, ".flechefs", "prune.lease")
	if !dryRun {
		token, err := t.takeLease(c, lease)
		if err != nil {
			return rep, t.wrap("prune", digest.Key{}, err)
		}
		defer t.dropLease(c, lease, token)
	}
	ents, err := t.pruneCandidates(ctx, c, &rep)
	if err != nil {
		return rep, err
	}
	// Decide first, then remove. The record tells an adopted file from an
	// upload; records are read a batch at a time, only while the remote
	// is over the bound.
	victims, err := tiers.PlanPrune(ents, b, time.Now(), &rep, func(batch []tiers.PruneEntry) ([]tiers.PruneVerdict, error) {
		recs := make([]sumResult, len(batch))
		tiers.Batch(len(batch), func(i int) { recs[i] = t.readSum(c, batch[i].Key) })
		out := make([]tiers.PruneVerdict, len(batch))
		for i, r := range recs {
			switch {
			case r.err != nil:
				return nil, t.wrap("prune", batch[i].Key, t.failure(c, r.err))
			case !r.found:
				out[i] = tiers.PruneGone
			case adoptedRecord(r.s, batch[i].Mtime):
				out[i] = tiers.PruneAdopted
			}
		}
		return out, nil
	})
	if err != nil {
		rep.Took = time.Since(start)
		return rep, err
	}
	refresh := func() { now := time.Now(); c.sftp.Chtimes(lease, now, now) }
	err = tiers.ApplyPrune(victims, &rep, refresh, func(e tiers.PruneEntry) error {
		err := t.Delete(ctx, e.Key)
		if err == nil || errors.Is(err, tiers.ErrNotFound) {
			c.sftp.Remove(path.Join(t.rem.root, ".flechefs", "used", e.Key.String()))
		}
		return err
	})
	rep.Took = time.Since(start)
	if err != nil {
		return rep, err
	}
	if !dryRun && len(rep.Removed) > 0 {
		t.log.Info("pruned the remote", "tier", t.opt.Name, "removed", len(rep.Removed), "bytes", rep.RemovedBytes,
			"left", rep.Bytes-rep.RemovedBytes, "took", rep.Took.Round(time.Millisecond))
	}
	return rep, nil
}

// adoptedRecord reports whether s is the record of a file flechefs did not
// write, adopted by a read: adoption records the file's own modification
// time, which the server gives in whole seconds, as its creation time. An
// upload records when its value was published, to the millisecond, before
// the file's later modification time. An upload that happens to match is
// taken for adopted and kept: the error that never removes what flechefs
// did not write.
func adoptedRecord(s sumFile, dataMtime time.Time) bool {
	return s.created.Unix() == dataMtime.Unix() && s.created.Nanosecond() == 0
}

// pruneCandidates lists the entries Prune may remove, least recently used
// first, and counts every value file's bytes into rep.
func (t *Tier) pruneCandidates(ctx context.Context, c *conn, rep *PruneReport) ([]tiers.PruneEntry, error) {
	w := c.watch()
	defer w.stop()
	read := func(dir string) (map[string]os.FileInfo, error) {
		ents, err := c.sftp.ReadDirContext(ctx, dir)
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		m := make(map[string]os.FileInfo, len(ents))
		for _, e := range ents {
			m[e.Name()] = e
		}
		return m, err
	}
	root, err := read(t.rem.root)
	if err != nil {
		return nil, t.wrap("prune", digest.Key{}, t.failure(c, err))
	}
	sums, err := read(t.sumDir)
	if err != nil {
		return nil, t.wrap("prune", digest.Key{}, t.failure(c, err))
	}
	used, err := read(path.Join(t.rem.root, ".flechefs", "used"))
	if err != nil {
		return nil, t.wrap("prune", digest.Key{}, t.failure(c, err))
	}
	var out []tiers.PruneEntry
	for name, fi := range root {
		if !fi.Mode().IsRegular() {
			continue
		}
		k, err := digest.Parse(name)
		if err != nil {
			continue
		}
		rep.Bytes += fi.Size()
		rec, ok := sums[name]
		if !ok {
			continue // no record: nobody's entry, never removed
		}
		rep.Entries++
		if _, locked := root[name+".lock"]; locked {
			continue // a fleche writer is at work on this key
		}
		last := rec.ModTime()
		if u, ok := used[name]; ok && u.ModTime().After(last) {
			last = u.ModTime()
		}
		out = append(out, tiers.PruneEntry{Key: k, Size: fi.Size(), Used: last, Mtime: fi.ModTime()})
	}
	tiers.SortLRU(out)
	return out, nil
}

// takeLease makes the lease file with O_EXCL and returns what it holds, or
// takes over a lease leaseStale old by renaming it away first (only one
// mount's rename of it succeeds).
func (t *Tier) takeLease(c *conn, lease string) (string, error) {
	host, _ := os.Hostname()
	token := fmt.Sprintf("%s %d %d\n", host, os.Getpid(), time.Now().UnixNano())
	for attempt := 0; attempt < 2; attempt++ {
		f, err := c.sftp.OpenFile(lease, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
		if err == nil {
			_, werr := f.Write([]byte(token))
			if cerr := f.Close(); werr == nil {
				werr = cerr
			}
			if werr != nil {
				c.sftp.Remove(lease)
				return "", t.failure(c, werr)
			}
			return token, nil
		}
		fi, serr := c.sftp.Lstat(lease)
		if serr != nil {
			if errors.Is(serr, os.ErrNotExist) {
				continue // released meanwhile
			}
			return "", t.failure(c, serr)
		}
		if time.Since(fi.ModTime()) < tiers.LeaseStale {
			return "", fmt.Errorf("%w (lease %s, %v old)", ErrLeaseHeld, lease, time.Since(fi.ModTime()).Round(time.Second))
		}
		stale := fmt.Sprintf("%s.stale-%d", lease, time.Now().UnixNano())
		if err := c.sftp.Rename(lease, stale); err == nil {
			c.sftp.Remove(stale)
			t.log.Warn("took over a stale prune lease", "tier", t.opt.Name, "age", time.Since(fi.ModTime()).Round(time.Second))
		}
	}
	return "", fmt.Errorf("%w (lease %s)", ErrLeaseHeld, lease)
}

// dropLease removes the lease if it still holds token.
func (t *Tier) dropLease(c *conn, lease, token string) {
	f, err := c.sftp.Open(lease)
	if err != nil {
		return
	}
	b := make([]byte, len(token)+1)
	n, _ := f.Read(b)
	f.Close()
	if string(b[:n]) == token {
		c.sftp.Remove(lease)
	}
}
