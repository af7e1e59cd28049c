package tiers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

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

// remoteValue returns the value remote r holds for k: its Info, with the
// hash from its record, or, when it has none after Policy.RecordWait, from its
// bytes (a copy whose writer died between its rename and its record, or
// one copied in by hand; hashing it is how it is adopted). ErrNotFound
// when it is gone.
func (s *Stack) remoteValue(ctx context.Context, r *layer, k digest.Key, size int64) (Info, error) {
	deadline := time.Now().Add(s.pol.RecordWait)
	wait := 50 * time.Millisecond
	for {
		sctx, cancel := context.WithTimeout(ctx, s.opt.RemoteTimeout)
		rinfo, err := r.Tier.Stat(sctx, k)
		cancel()
		// Not found right after the Put was refused: a copy without a
		// record that the tier hides while it may still be written (a
		// young one, tiers/sftp's foreign rules), or one removed since.
		// Both are asked again until the deadline.
		hidden := errors.Is(err, ErrNotFound) && !errors.Is(err, ErrForeign)
		if err != nil && !hidden || err == nil && (!rinfo.Sum.IsZero() || rinfo.Size != size) {
			// A record, an error, or a size that already tells another
			// value (its hash is not needed to call it a conflict).
			return rinfo, err
		}
		if time.Now().After(deadline) {
			if hidden {
				return Info{}, err
			}
			return s.hashRemote(ctx, r, k)
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return Info{}, ctx.Err()
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// hashRemote reads k's copy in r whole and hashes it; when its Reader is
// an Adopter, it records the hash, so that readers verify the copy from
// now on. A copy that changed while it was hashed, or whose record came
// meanwhile and disagrees, is an error: the caller asks again.
func (s *Stack) hashRemote(ctx context.Context, r *layer, k digest.Key) (Info, error) {
	rd, err := r.Tier.Open(ctx, k)
	if err != nil {
		return Info{}, err
	}
	defer rd.Close()
	info := rd.Info()
	h := digest.NewHasher()
	var n int64
	if wt, ok := rd.(io.WriterTo); ok {
		n, err = wt.WriteTo(h)
	} else {
		n, err = io.Copy(h, io.NewSectionReader(rd, 0, info.Size))
	}
	if err != nil {
		return Info{}, err
	}
	if n != info.Size {
		return Info{}, fmt.Errorf("%w: remote copy ended at %d bytes of %d", ErrCorrupt, n, info.Size)
	}
	if !info.Sum.IsZero() {
		if h.Sum() != info.Sum {
			return Info{}, fmt.Errorf("%w: remote copy does not match its sum record", ErrCorrupt)
		}
		return info, nil // a record appeared meanwhile
	}
	info.Sum = h.Sum()
	s.log.Info("remote copy has no checksum record; hashed it to learn its value", "tier", r.name, "key", k.String(),
		"sha256", info.Sum.String(), "size", info.Size)
	if a, ok := rd.(Adopter); ok && r.writable() {
		if err := a.Adopt(ctx, info.Sum); err != nil {
			// A record that disagrees, or a copy replaced while it was
			// hashed: what was hashed is not the remote's value.
			return Info{}, err
		}
	}
	return info, nil
}

// conflict handles an upload of info to r that found another value
// there: counted, logged once, and this mount's copies of the losing value
// dropped from its local tiers (in the background: the upload that found
// it still holds them; Sync waits for it).
func (s *Stack) conflict(r *layer, info Info, remote Info) {
	s.conflicts.Add(1)
	s.log.Warn("remote holds another value for this key; this mount drops its own and will read the remote's (first writer wins)",
		"key", info.Key.String(), "tier", r.name, "local_sha256", info.Sum.String(), "remote_sha256", remote.Sum.String(),
		"local_size", info.Size, "remote_size", remote.Size)
	s.mu.Lock()
	if s.keys.n.lost >= maxLost {
		s.keys.each(func(k digest.Key, ks *keyState) bool {
			if !ks.lost {
				return true
			}
			s.keys.edit(k, func(ks *keyState) { ks.lost, ks.lostSum = false, digest.Sum{} })
			return false
		})
	}
	s.keys.edit(info.Key, func(ks *keyState) { ks.lost, ks.lostSum = true, info.Sum })
	s.settling++
	s.wg.Add(1)
	s.mu.Unlock()
	go s.dropLost(info.Key, info.Sum)
}

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
		s.hurryLocked(p)
		s.keys.edit(k, func(ks *keyState) { ks.pub = nil })
		s.unrefLocked(p)
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
