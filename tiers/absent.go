package tiers

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flechefs/flechefs/digest"
)

// Absence snapshots: a remote listing used as a negative cache.
//
// A lookup of a name no local tier holds costs a remote round trip. When
// such misses come in bursts (Policy.AbsentBurst within AbsentBurstWindow on one
// remote layer) the stack lists that remote once, in the background, and
// keeps the listed names as a set of 64-bit hashes. A name whose hash is
// not in the set is absent from the remote as of T0, the time the listing
// started: the stack answers ErrNotFound for that remote without asking it
// until T0 + ListingTTL. A name in the set (present, or a hash collision)
// is asked of the remote as usual: a snapshot only ever answers "absent".
//
// Since a directory listing returns every entry that existed for the whole
// scan, an entry published on another machine before T0 is in the set, and
// one published after it is seen at most ListingTTL after T0. Keys this
// stack uploads are added to the current snapshot and to a listing in
// progress, so they are never reported missing because of an older listing.

const (
	// DefaultListingMaxNames is the default StackOptions.ListingMaxNames:
	// 8 MiB of hashes.
	DefaultListingMaxNames = 1_000_000
)

// absentSet holds the absence snapshots of the remote layers.
type absentSet struct {
	ttl      time.Duration // 0: disabled
	pol      Policy
	maxNames int
	seed     maphash.Seed
	layers   map[*layer]*absentLayer // built by init, read-only after
}

// absentLayer is the state of one remote layer.
type absentLayer struct {
	mu         sync.Mutex
	snap       *snapshot   // the newest snapshot, nil when none or expired
	run        *listingRun // the listing in progress, or nil
	burstStart time.Time
	burstN     int
	notBefore  time.Time // no listing starts before (back-off)

	listings, listedMisses atomic.Int64
}

// snapshot is the hashes of the names a listing returned, sorted, plus the
// keys this stack uploaded since the listing started.
type snapshot struct {
	t0, until time.Time
	hashes    []uint64
	extra     map[uint64]struct{}
}

// listingRun collects the keys uploaded while a listing runs.
type listingRun struct {
	added []uint64
}

func (a *absentSet) init(remotes []*layer, opt StackOptions) {
	a.ttl = opt.ListingTTL
	a.pol = opt.Policy
	a.maxNames = opt.ListingMaxNames
	if a.maxNames <= 0 {
		a.maxNames = DefaultListingMaxNames
	}
	a.seed = maphash.MakeSeed()
	a.layers = map[*layer]*absentLayer{}
	for _, l := range remotes {
		a.layers[l] = &absentLayer{}
	}
}

func (a *absentSet) hash(k digest.Key) uint64 { return maphash.String(a.seed, k.String()) }

// known reports whether the snapshot of l says k is absent from it, and
// until when that answer holds.
func (a *absentSet) known(l *layer, k digest.Key) (time.Time, bool) {
	al := a.layers[l]
	if a.ttl <= 0 || al == nil {
		return time.Time{}, false
	}
	h := a.hash(k)
	now := time.Now()
	al.mu.Lock()
	defer al.mu.Unlock()
	sn := al.snap
	if sn == nil {
		return time.Time{}, false
	}
	if !now.Before(sn.until) {
		al.snap = nil
		return time.Time{}, false
	}
	if _, ok := slices.BinarySearch(sn.hashes, h); ok {
		return time.Time{}, false
	}
	if _, ok := sn.extra[h]; ok {
		return time.Time{}, false
	}
	al.listedMisses.Add(1)
	return sn.until, true
}

// added records that this stack put k on remote layer l: no snapshot taken
// before may answer that k is absent.
func (a *absentSet) added(l *layer, k digest.Key) {
	al := a.layers[l]
	if a.ttl <= 0 || al == nil {
		return
	}
	h := a.hash(k)
	al.mu.Lock()
	defer al.mu.Unlock()
	if al.snap != nil {
		if al.snap.extra == nil {
			al.snap.extra = map[uint64]struct{}{}
		}
		al.snap.extra[h] = struct{}{}
	}
	if al.run != nil {
		al.run.added = append(al.run.added, h)
	}
}

// counts returns l's listings and the misses its snapshots answered.
func (a *absentSet) counts(l *layer) (listings, listedMisses int64) {
	if al := a.layers[l]; al != nil {
		return al.listings.Load(), al.listedMisses.Load()
	}
	return 0, 0
}

// noteMiss counts a miss of remote layer l, whether asked of the remote or
// answered by a snapshot, and starts a listing of l when misses come in a
// burst, no listing runs, l is not backed off and its snapshot (if any) is
// past half its life (so that a steady stream of misses keeps a snapshot).
func (s *Stack) noteMiss(l *layer) {
	a := &s.absent
	al := a.layers[l]
	if a.ttl <= 0 || al == nil {
		return
	}
	now := time.Now()
	al.mu.Lock()
	if now.Sub(al.burstStart) > a.pol.AbsentBurstWindow {
		al.burstStart, al.burstN = now, 0
	}
	al.burstN++
	start := al.burstN >= a.pol.AbsentBurst && al.run == nil && !now.Before(al.notBefore) &&
		(al.snap == nil || now.Sub(al.snap.t0) >= a.ttl/2)
	if !start {
		al.mu.Unlock()
		return
	}
	al.burstN = 0
	run := &listingRun{}
	al.run = run
	al.mu.Unlock()

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		al.mu.Lock()
		al.run = nil
		al.mu.Unlock()
		return
	}
	s.wg.Add(1) // under s.mu: Close waits for it, or it does not start
	s.mu.Unlock()
	go s.listAbsent(l, al, run)
}

// errTooManyNames stops a listing past ListingMaxNames.
var errTooManyNames = errors.New("too many names")

// listAbsent lists remote layer l and installs the snapshot. A listing too
// large, or too slow to be of use (longer than half the snapshot's life),
// is given up and l is not listed again for Policy.AbsentBackoff.
func (s *Stack) listAbsent(l *layer, al *absentLayer, run *listingRun) {
	defer s.wg.Done()
	a := &s.absent
	al.listings.Add(1)
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(s.ctx, min(s.opt.RemoteTimeout, a.ttl/2))
	var hashes []uint64
	err := l.Tier.List(ctx, func(in Info) error {
		if len(hashes) >= a.maxNames {
			return errTooManyNames
		}
		hashes = append(hashes, a.hash(in.Key))
		return nil
	})
	cancel()
	took := time.Since(t0)

	var why string
	retry := a.pol.AbsentRetry
	switch {
	case s.ctx.Err() != nil:
		why = "closed"
	case errors.Is(err, errTooManyNames):
		why = fmt.Sprintf("more than %d names (ListingMaxNames)", a.maxNames)
		retry = a.pol.AbsentBackoff
	case took >= a.ttl/2:
		why = fmt.Sprintf("listing took %v, more than half of the %v it would be used for", took.Round(time.Millisecond), a.ttl)
		retry = a.pol.AbsentBackoff
	case err != nil:
		why = err.Error()
	}
	if why == "" {
		slices.Sort(hashes)
	}

	al.mu.Lock()
	defer al.mu.Unlock()
	al.run = nil
	if why != "" {
		al.notBefore = time.Now().Add(retry)
		switch {
		case s.ctx.Err() != nil:
		case retry == a.pol.AbsentBackoff:
			s.log.Info("remote listing given up; looking names up one by one", "tier", l.name, "reason", why, "retry_in", retry)
		default:
			s.log.Debug("remote listing failed; looking names up one by one", "tier", l.name, "err", err, "retry_in", retry)
		}
		return
	}
	sn := &snapshot{t0: t0, until: t0.Add(a.ttl), hashes: hashes}
	if len(run.added) > 0 {
		sn.extra = make(map[uint64]struct{}, len(run.added))
		for _, h := range run.added {
			sn.extra[h] = struct{}{}
		}
	}
	if al.snap == nil || al.snap.t0.Before(t0) {
		al.snap = sn
	}
	s.log.Debug("remote listed for absent names", "tier", l.name, "names", len(hashes), "took", took.Round(time.Microsecond))
}

// listedMiss is the ErrNotFound of a Stack.Stat that a remote listing
// answered: the miss holds until until.
type listedMiss struct{ until time.Time }

func (e *listedMiss) Error() string {
	return "not found (absent from the remote listing)"
}

func (e *listedMiss) Unwrap() error { return ErrNotFound }

// MissValidUntil reports, for an ErrNotFound of Stack.Stat that an absence
// snapshot answered instead of the remote, the time until which that answer
// holds. A caller that caches the miss must not keep it longer, or an entry
// published elsewhere could stay invisible longer than ListingTTL.
func MissValidUntil(err error) (time.Time, bool) {
	var lm *listedMiss
	if errors.As(err, &lm) {
		return lm.until, true
	}
	return time.Time{}, false
}
