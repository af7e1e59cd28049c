package tiers

import (
	"errors"

	"github.com/flechefs/flechefs/digest"
)

// Conflicts: one key, one value, everywhere. The remote decides: its
// first writer wins (the data rename, tiers/sftp). An upload that finds
// the key there already learns the remote's value (its record, or its
// bytes hashed when it has none yet); the same value ends the upload, and
// another value is a conflict: this mount drops its own copies of the key
// from its local tiers, so that the next read fetches the remote's value.
// Readers that have the old value open finish reading it.

// maxLost bounds the keys remembered as lost to a conflict (lost).
const maxLost = 4096

// dropLost removes the value of k whose hash is lost from the local tiers
// (and from the published entries not yet persisted), leaving any other
// value of k alone: the remote's, fetched meanwhile. As Delete does, it
// waits for a persistence and a promotion of k in progress, which could
// put the value back after it.
func (s *Stack) dropLost(k digest.Key, lost digest.Sum) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		s.settling--
		s.broadcastLocked()
		s.mu.Unlock()
	}()
	s.mu.Lock()
	ks := s.keys.fence(k)
	p, pend := ks.pub, ks.pub != nil
	if pend && p.info.Sum == lost {
		p.deleted = true
		s.publisher.hurryLocked(p)
		s.keys.edit(k, func(ks *keyState) { ks.pub = nil })
		p.unrefLocked()
	} else {
		pend = false
	}
	promoting := ks.promoting
	s.mu.Unlock()
	defer s.endDeleting(k)
	if pend {
		<-p.persisted
	}
	if promoting != nil {
		<-promoting
	}
	s.list.forget(k)
	for l := range s.layers.writableLocal() {
		info, err := l.Tier.Stat(s.ctx, k)
		if err != nil || info.Sum != lost {
			continue
		}
		if err := l.Tier.Delete(s.ctx, k); err != nil && !errors.Is(err, ErrNotFound) {
			s.noteErr(l, err)
			s.log.Error("could not drop the copy of a value the remote does not hold", "tier", l.name, "key", k.String(), "err", err)
		}
	}
}

// foundRemote notes that a remote holds sum for k: a key whose value here
// lost a conflict to it is being read from the remote now.
func (s *Stack) foundRemote(k digest.Key, sum digest.Sum) {
	s.mu.Lock()
	if ks := s.keys.get(k); ks.lost && !sum.IsZero() && ks.lostSum != sum {
		s.keys.edit(k, func(ks *keyState) { ks.lost, ks.lostSum = false, digest.Sum{} })
	}
	s.mu.Unlock()
}

// lostState reports whether k's value on this mount lost a conflict and
// the remote's value has not replaced it in a local tier yet.
func (s *Stack) lostState(k digest.Key) bool {
	s.mu.Lock()
	ks := s.keys.get(k)
	sum, ok := ks.lostSum, ks.lost
	s.mu.Unlock()
	if !ok {
		return false
	}
	for l := range s.layers.local() {
		if info, err := l.Tier.Stat(s.ctx, k); err == nil && !info.Sum.IsZero() && info.Sum != sum {
			// The remote's value (or a newer one) is here now.
			s.mu.Lock()
			if ks := s.keys.get(k); ks.lost && ks.lostSum == sum {
				s.keys.edit(k, func(ks *keyState) { ks.lost, ks.lostSum = false, digest.Sum{} })
			}
			s.mu.Unlock()
			return false
		}
	}
	return true
}

// endDeleting lifts one holder of k's delete fence (keys.fence), taken by
// Delete and by dropLost while they remove copies of k: fetches and
// promotions of k meanwhile do not put a copy back.
func (s *Stack) endDeleting(k digest.Key) {
	s.mu.Lock()
	s.keys.unfence(k)
	s.mu.Unlock()
}
