package tiers

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/flechefs/flechefs/digest"
)

// Retention of a shared remote, the parts every remote kind shares: the
// bound, the report of a pass, the last-use marks made off the request
// path, the least-recently-used choice and the removals. Each remote tier
// supplies what its store keeps: where a mark lives, how an entry's last
// use is listed, how it tells its own entries from files it did not write,
// and the lease that lets one mount at a time prune.

// Bound is a remote tier's retention.
type Bound struct {
	MaxBytes int64         // bytes of values; 0: no bound
	MaxAge   time.Duration // since last use; 0: no bound
	Grace    time.Duration // never remove an entry used more recently; default 1h
}

// On reports whether b bounds anything.
func (b Bound) On() bool { return b.MaxBytes > 0 || b.MaxAge > 0 }

// DefaultPruneGrace is Bound.Grace when it is zero.
const DefaultPruneGrace = time.Hour

// Retention timings shared by the remote kinds.
const (
	// MarkEvery: a process marks one entry used at most this often.
	MarkEvery = 24 * time.Hour
	// LeaseStale: a prune lease untouched this long is taken over (its
	// holder died).
	LeaseStale = 10 * time.Minute
	// LeaseRefresh: a pass touches its lease this often.
	LeaseRefresh = time.Minute
	// PruneWorkers: removals (and checks) a pass runs at once.
	PruneWorkers = 8
	// pruneBatch: entries a pass checks at once before deciding.
	pruneBatch = 64
	// marksKept bounds the marks remembered per process; past it the
	// memory is cleared, which costs one more mark per key.
	marksKept = 1 << 16
)

// ErrLeaseHeld is Prune's error when another mount holds the lease.
var ErrLeaseHeld = errors.New("another mount is pruning this remote")

// Pruner is a remote tier that can bound itself (Bound).
type Pruner interface {
	// Prune removes least recently used entries until the remote is under
	// b, under the remote's lease (ErrLeaseHeld when another mount holds
	// it). With dryRun it removes nothing and reports what it would.
	Prune(ctx context.Context, b Bound, dryRun bool) (PruneReport, error)
}

// PruneReport says what a pass found and did.
type PruneReport struct {
	Entries      int           // entries (values flechefs wrote)
	Bytes        int64         // bytes of every value under the remote's root, before
	Removed      []digest.Key  // least recently used first
	RemovedBytes int64         // bytes of Removed
	Kept         int           // entries the pass could have removed but the grace kept
	Adopted      int           // entries it would have removed but flechefs did not write them
	Took         time.Duration // the whole pass
	DryRun       bool
}

// UseMarks records entries' last use in the background: Used queues a
// mark unless this process made one for the key less than MarkEvery ago,
// so a day's reads of an entry cost one request. A full queue drops the
// mark (the next use marks it); a failed mark is forgotten, so the next use
// tries again.
type UseMarks struct {
	touch  func(digest.Key) error
	failed func(digest.Key, error)
	marks  chan digest.Key
	mu     sync.Mutex
	marked map[digest.Key]time.Time
}

// NewUseMarks starts the marker, which calls touch for each queued key
// (failed, when not nil, hears its errors) until ctx ends.
func NewUseMarks(ctx context.Context, touch func(digest.Key) error, failed func(digest.Key, error)) *UseMarks {
	m := &UseMarks{touch: touch, failed: failed, marks: make(chan digest.Key, 1024), marked: map[digest.Key]time.Time{}}
	go m.run(ctx)
	return m
}

// Used notes a read or an upload of k.
func (m *UseMarks) Used(k digest.Key) {
	now := time.Now()
	m.mu.Lock()
	if at, ok := m.marked[k]; ok && now.Sub(at) < MarkEvery {
		m.mu.Unlock()
		return
	}
	if len(m.marked) >= marksKept {
		clear(m.marked)
	}
	m.marked[k] = now
	m.mu.Unlock()
	select {
	case m.marks <- k:
	default:
		m.forget(k)
	}
}

// ForgetAll forgets every mark this process made, as a new process would
// start: the next use of each key marks it again.
func (m *UseMarks) ForgetAll() {
	m.mu.Lock()
	clear(m.marked)
	m.mu.Unlock()
}

func (m *UseMarks) forget(k digest.Key) {
	m.mu.Lock()
	delete(m.marked, k)
	m.mu.Unlock()
}

func (m *UseMarks) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case k := <-m.marks:
			if err := m.touch(k); err != nil {
				m.forget(k)
				if m.failed != nil {
					m.failed(k, err)
				}
			}
		}
	}
}

// PruneEntry is an entry a pass may remove.
type PruneEntry struct {
	Key   digest.Key
	Size  int64
	Used  time.Time // last use: the latest of its upload and its marks
	Mtime time.Time // the stored value's modification time
}

// SortLRU orders es least recently used first (then by key, so that a pass
// is repeatable).
func SortLRU(es []PruneEntry) {
	slices.SortFunc(es, func(a, b PruneEntry) int {
		if c := a.Used.Compare(b.Used); c != 0 {
			return c
		}
		return strings.Compare(a.Key.String(), b.Key.String())
	})
}

// PruneVerdict is what a tier's check says of a candidate.
type PruneVerdict uint8

const (
	PruneRemove  PruneVerdict = iota // flechefs's entry: may go
	PruneGone                        // removed meanwhile
	PruneAdopted                     // a file flechefs did not write: never removed
)

// PlanPrune chooses the victims among es (SortLRU order), whose values
// hold rep.Bytes in all: least recently used first, while the remote is
// over b at now, skipping what the grace keeps and what check says is not
// flechefs's to remove. check looks at a batch at once (it reads per-entry
// records) and is called only for entries over the bound.
func PlanPrune(es []PruneEntry, b Bound, now time.Time, rep *PruneReport,
	check func([]PruneEntry) ([]PruneVerdict, error)) ([]PruneEntry, error) {
	if b.Grace <= 0 {
		b.Grace = DefaultPruneGrace
	}
	total := rep.Bytes
	over := func(e PruneEntry) bool {
		return (b.MaxBytes > 0 && total > b.MaxBytes) || (b.MaxAge > 0 && now.Sub(e.Used) > b.MaxAge)
	}
	var victims []PruneEntry
	for i := 0; i < len(es); i += pruneBatch {
		batch := es[i:min(i+pruneBatch, len(es))]
		if !over(batch[0]) {
			break
		}
		verdicts, err := check(batch)
		if err != nil {
			return nil, err
		}
		for j, e := range batch {
			if !over(e) {
				return victims, nil
			}
			if now.Sub(e.Used) < b.Grace {
				rep.Kept++
				continue
			}
			switch verdicts[j] {
			case PruneGone:
				continue
			case PruneAdopted:
				rep.Adopted++
				continue
			}
			victims = append(victims, e)
			total -= e.Size
		}
	}
	return victims, nil
}

// RemoveVictims removes victims PruneWorkers at a time with remove, calling
// refresh (under a lock) every LeaseRefresh meanwhile, and adds those it
// removed to rep in victims' order. A remove answering ErrNotFound (gone
// already: another remover) is not counted; the first other error stops
// the pass (no more are started) and is returned.
func RemoveVictims(victims []PruneEntry, rep *PruneReport, refresh func(), remove func(PruneEntry) error) error {
	done := make([]bool, len(victims))
	var (
		mu       sync.Mutex
		firstErr error
		next     int
	)
	refreshed := time.Now()
	var wg sync.WaitGroup
	for range PruneWorkers {
		wg.Go(func() {
			for {
				mu.Lock()
				if firstErr != nil || next == len(victims) {
					mu.Unlock()
					return
				}
				i := next
				next++
				if time.Since(refreshed) > LeaseRefresh {
					refreshed = time.Now()
					refresh()
				}
				mu.Unlock()
				err := remove(victims[i])
				mu.Lock()
				switch {
				case err == nil:
					done[i] = true
				case errors.Is(err, ErrNotFound):
				case firstErr == nil:
					firstErr = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	ReportRemoved(rep, victims, done)
	return firstErr
}

// ApplyPrune removes victims (RemoveVictims), or, in a dry run
// (rep.DryRun), only reports them.
func ApplyPrune(victims []PruneEntry, rep *PruneReport, refresh func(), remove func(PruneEntry) error) error {
	if rep.DryRun {
		ReportRemoved(rep, victims, nil)
		return nil
	}
	return RemoveVictims(victims, rep, refresh, remove)
}

// ReportRemoved adds the victims marked done (all, when done is nil) to rep.
func ReportRemoved(rep *PruneReport, victims []PruneEntry, done []bool) {
	for i, e := range victims {
		if done == nil || done[i] {
			rep.Removed = append(rep.Removed, e.Key)
			rep.RemovedBytes += e.Size
		}
	}
}

// Batch runs fn for every index of n, PruneWorkers at a time.
func Batch(n int, fn func(i int)) {
	sem := make(chan struct{}, PruneWorkers)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			fn(i)
		})
	}
	wg.Wait()
}
