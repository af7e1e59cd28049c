package sftp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
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
// most once per markEvery per key and process, so a day's reads of an entry
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
// taken over only once it is leaseStale old (its holder died).

// Bound is a remote tier's retention.
type Bound struct {
	MaxBytes int64         // bytes of values; 0: no bound
	MaxAge   time.Duration // since last use; 0: no bound
	Grace    time.Duration // never remove an entry used more recently; default 1h
}

// On reports whether b bounds anything.
func (b Bound) On() bool { return b.MaxBytes > 0 || b.MaxAge > 0 }

const (
	defaultGrace = time.Hour
	markEvery    = 24 * time.Hour
	// marksKept bounds the marks remembered per process; past it the
	// memory is cleared, which costs one more mark per key.
	marksKept  = 1 << 16
	leaseStale = 10 * time.Minute
	// leaseRefresh: a pass touches its lease this often.
	leaseRefresh = time.Minute
)

// ErrLeaseHeld is Prune's error when another mount holds the lease.
var ErrLeaseHeld = errors.New("another mount is pruning this remote")

// PruneReport says what a pass found and did.
type PruneReport struct {
	Entries      int           // entries (values with a record)
	Bytes        int64         // bytes of every value file in the root, before
	Removed      []digest.Key  // least recently used first
	RemovedBytes int64         // bytes of Removed
	Kept         int           // entries the pass could have removed but the grace kept
	Adopted      int           // entries it would have removed but flechefs did not write them
	Took         time.Duration // the whole pass
	DryRun       bool
}

// retention is the tier's last-use marking.
type retention struct {
	t      *Tier
	usedIn string // <root>/.flechefs/used
	marks  chan digest.Key
	mu     sync.Mutex
	marked map[digest.Key]time.Time
}

func newRetention(t *Tier) *retention {
	r := &retention{t: t, usedIn: path.Join(t.rem.root, ".flechefs", "used"),
		marks: make(chan digest.Key, 1024), marked: map[digest.Key]time.Time{}}
	go r.marker()
	return r
}

func (r *retention) usedPath(k digest.Key) string { return path.Join(r.usedIn, k.String()) }

// used notes a read or an upload of k: its marker is touched in the
// background unless this process did so less than markEvery ago. A full
// queue drops the mark (the next use marks it).
func (r *retention) used(k digest.Key) {
	now := time.Now()
	r.mu.Lock()
	if at, ok := r.marked[k]; ok && now.Sub(at) < markEvery {
		r.mu.Unlock()
		return
	}
	if len(r.marked) >= marksKept {
		clear(r.marked)
	}
	r.marked[k] = now
	r.mu.Unlock()
	select {
	case r.marks <- k:
	default:
		r.mu.Lock()
		delete(r.marked, k)
		r.mu.Unlock()
	}
}

// marker touches the markers queued by used, until the tier closes.
func (r *retention) marker() {
	for {
		select {
		case <-r.t.ctx.Done():
			return
		case k := <-r.marks:
			if err := r.touch(k); err != nil {
				r.mu.Lock()
				delete(r.marked, k) // the next use tries again
				r.mu.Unlock()
				r.t.log.Debug("last-use mark failed", "tier", r.t.opt.Name, "key", k.String(), "err", err)
			}
		}
	}
}

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
	if b.Grace <= 0 {
		b.Grace = defaultGrace
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
	// Decide first, least recently used first, then remove. Entries are
	// looked at in batches whose records are read at once (the record
	// tells an adopted file from an upload), until nothing more is over
	// the bound: the rest are more recently used.
	now := time.Now()
	total := rep.Bytes
	var victims []pruneEntry
	over := func(e pruneEntry) bool {
		return (b.MaxBytes > 0 && total > b.MaxBytes) || (b.MaxAge > 0 && now.Sub(e.used) > b.MaxAge)
	}
decide:
	for i := 0; i < len(ents); i += recordBatch {
		batch := ents[i:min(i+recordBatch, len(ents))]
		if !over(batch[0]) {
			break
		}
		recs := t.readRecords(c, batch)
		for j, e := range batch {
			if !over(e) {
				break decide
			}
			if now.Sub(e.used) < b.Grace {
				rep.Kept++
				continue
			}
			switch r := recs[j]; {
			case r.err != nil:
				rep.Took = time.Since(start)
				return rep, t.wrap("prune", e.key, t.failure(c, r.err))
			case !r.found:
				continue // removed meanwhile
			case adoptedRecord(r.s, e.mtime):
				rep.Adopted++
				continue
			}
			victims = append(victims, e)
			total -= e.size
		}
	}
	if !dryRun {
		victims, err = t.removeAll(ctx, c, lease, victims)
	}
	for _, e := range victims {
		rep.Removed = append(rep.Removed, e.key)
		rep.RemovedBytes += e.size
	}
	total = rep.Bytes - rep.RemovedBytes
	if err != nil {
		rep.Took = time.Since(start)
		return rep, err
	}
	rep.Took = time.Since(start)
	if !dryRun && len(rep.Removed) > 0 {
		t.log.Info("pruned the remote", "tier", t.opt.Name, "removed", len(rep.Removed), "bytes", rep.RemovedBytes,
			"left", total, "took", rep.Took.Round(time.Millisecond))
	}
	return rep, nil
}

// pruneWorkers removes this many entries at once: each removal is three
// round trips (record, data, marker).
const pruneWorkers = 8

// removeAll removes the entries of victims, pruneWorkers at a time,
// refreshing the lease meanwhile. It returns those removed, in victims'
// order, and the first error (after which no more are started).
func (t *Tier) removeAll(ctx context.Context, c *conn, lease string, victims []pruneEntry) ([]pruneEntry, error) {
	done := make([]bool, len(victims))
	var (
		mu       sync.Mutex
		firstErr error
		next     int
	)
	refreshed := time.Now()
	var wg sync.WaitGroup
	for range pruneWorkers {
		wg.Go(func() {
			for {
				mu.Lock()
				if firstErr != nil || next == len(victims) {
					mu.Unlock()
					return
				}
				i := next
				next++
				if time.Since(refreshed) > leaseRefresh {
					refreshed = time.Now()
					c.sftp.Chtimes(lease, refreshed, refreshed)
				}
				mu.Unlock()
				e := victims[i]
				err := t.Delete(ctx, e.key)
				if err == nil || errors.Is(err, tiers.ErrNotFound) {
					c.sftp.Remove(path.Join(t.rem.root, ".flechefs", "used", e.key.String()))
				}
				mu.Lock()
				switch {
				case err == nil:
					done[i] = true
				case errors.Is(err, tiers.ErrNotFound):
					// Gone already (another remover): not counted.
				case firstErr == nil:
					firstErr = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	var out []pruneEntry
	for i, e := range victims {
		if done[i] {
			out = append(out, e)
		}
	}
	return out, firstErr
}

type pruneEntry struct {
	key   digest.Key
	size  int64
	used  time.Time
	mtime time.Time // the data file's
}

// recordBatch is how many records a pass reads at once.
const recordBatch = 64

// readRecords reads the records of es, pruneWorkers at a time.
func (t *Tier) readRecords(c *conn, es []pruneEntry) []sumResult {
	out := make([]sumResult, len(es))
	sem := make(chan struct{}, pruneWorkers)
	var wg sync.WaitGroup
	for i, e := range es {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			out[i] = t.readSum(c, e.key)
		})
	}
	wg.Wait()
	return out
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
func (t *Tier) pruneCandidates(ctx context.Context, c *conn, rep *PruneReport) ([]pruneEntry, error) {
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
	var out []pruneEntry
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
		out = append(out, pruneEntry{key: k, size: fi.Size(), used: last, mtime: fi.ModTime()})
	}
	slices.SortFunc(out, func(a, b pruneEntry) int {
		if c := a.used.Compare(b.used); c != 0 {
			return c
		}
		return strings.Compare(a.key.String(), b.key.String())
	})
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
		if time.Since(fi.ModTime()) < leaseStale {
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
