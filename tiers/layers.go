package tiers

import (
	"iter"
	"sync/atomic"
)

// layer is a Layer with its counters.
type layer struct {
	Layer
	idx  int
	name string

	hits, misses, bytesIn, bytesOut atomic.Int64
	promotions, corruptions, errs   atomic.Int64
	// quarantined: damaged remote copies moved aside; unquarantined: those
	// left in place (quarantine full, or the move failed), unserved.
	quarantined, unquarantined atomic.Int64
	unavailable                atomic.Bool
	lastErr                    atomic.Pointer[string] // the last unexpected error, for Stats
}

func (l *layer) writable() bool { return !l.ReadOnly }

// layers is the stack's tiers, fastest first, with the queries its loops
// ask of them.
type layers []*layer

// local yields the layers that are not remote, fastest first.
func (ls layers) local() iter.Seq[*layer] {
	return func(yield func(*layer) bool) {
		for _, l := range ls {
			if !l.Remote && !yield(l) {
				return
			}
		}
	}
}

// writableLocal yields the local layers a copy may be written to.
func (ls layers) writableLocal() iter.Seq[*layer] {
	return func(yield func(*layer) bool) {
		for l := range ls.local() {
			if l.writable() && !yield(l) {
				return
			}
		}
	}
}

// writableRemote yields the remote layers uploads and deletes go to.
func (ls layers) writableRemote() iter.Seq[*layer] {
	return func(yield func(*layer) bool) {
		for _, l := range ls {
			if l.Remote && l.writable() && !yield(l) {
				return
			}
		}
	}
}
