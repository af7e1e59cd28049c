package tiers

import (
	"context"
	"errors"
	"time"

	"github.com/flechefs/flechefs/digest"
)

// The deleter carries out the remote part of Deletes (see doc.go,
// "Deletes"): a delete the remote could not take at once is a tombstone,
// kept in the key table (keyState.tomb) and durably in the persistent tier
// (TombstoneQueue), and retried with a backoff until it is done.
type deleter struct {
	s    *Stack
	kick chan struct{} // wakes run
}

// delete is Stack.Delete.
func (dl *deleter) delete(ctx context.Context, k digest.Key) error {
	s := dl.s
	found := false
	s.mu.Lock()
	// No copy of k into a faster tier starts until the deletes below are
	// done, a fetch in progress will not promote what it fetched, and the
	// copies and the upload already running are waited for: each of them
	// could put back, after the deletes, the value being deleted.
	ks := s.keys.fence(k)
	p, pend := ks.pub, ks.pub != nil
	if pend {
		p.deleted = true
		s.publisher.hurryLocked(p) // waited for below
		s.keys.edit(k, func(ks *keyState) { ks.pub = nil })
		p.unrefLocked()
		found = true
	}
	promoting := ks.promoting
	var uploading chan struct{}
	if ks.upload != nil {
		uploading = ks.upload.done
	}
	s.rep.q.remove(k)
	s.broadcastLocked()
	s.mu.Unlock()
	s.fetcher.dropParked(&k)
	defer s.endDeleting(k)
	if pend {
		// Let its persistence finish, so that the deletes below remove
		// what it wrote. Removing it later, in the background, could
		// remove a value published again meanwhile.
		<-p.persisted
	}
	if promoting != nil {
		<-promoting
	}
	if uploading != nil {
		<-uploading // cancelled by up.remove; it may have put the value already
	}
	s.list.forget(k)
	remote := s.hasWritableRemote() && !s.opt.KeepRemoteOnDelete
	var t *tomb
	newTomb := false
	if remote {
		// The remote's delete is queued (a tombstone) before the local
		// copies go, in the persistent tier's own commit, and lookups
		// stop asking the remote: whether the remote is reachable now or
		// not, the value does not come back, and a crash leaves the
		// delete queued. The tombstone names the value deleted, the one
		// the remote copy must hold to be removed.
		var sum digest.Sum
		if pend {
			sum = p.info.Sum
		}
		for l := range s.layers.local() {
			if info, err := l.Tier.Stat(ctx, k); err == nil {
				found = true
				if sum.IsZero() {
					sum = info.Sum
				}
			}
		}
		s.mu.Lock()
		if t = s.keys.get(k).tomb; t == nil {
			// An older tombstone of k is kept as it is: no value of k
			// reached the remote from here since (uploads of k wait
			// for it).
			t, newTomb = &tomb{sum: sum, busy: true}, true
			s.keys.edit(k, func(ks *keyState) { ks.tomb = t })
		}
		s.mu.Unlock()
	}
	var firstErr error
	for _, l := range s.layers {
		if !l.writable() || l.Remote && (remote || s.opt.KeepRemoteOnDelete) {
			continue
		}
		dctx := ctx
		var cancel context.CancelFunc = func() {}
		if l.Remote {
			dctx, cancel = context.WithTimeout(ctx, s.opt.RemoteTimeout)
		}
		var err error
		if tq, ok := s.deleter.tombQueue(); ok && newTomb && l == s.persist {
			var id uint64
			if id, err = tq.DeleteQueued(dctx, k, t.sum); err == nil {
				s.mu.Lock()
				t.id = id
				s.mu.Unlock()
			}
		} else {
			err = l.Tier.Delete(dctx, k)
		}
		cancel()
		switch {
		case err == nil:
			found = true
		case errors.Is(err, ErrNotFound):
		default:
			s.noteErr(l, err)
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	if remote {
		queued := false
		s.mu.Lock()
		if newTomb {
			t.busy = false
		}
		s.mu.Unlock()
		if s.remotesUp() {
			rf, err := s.deleter.settleTomb(ctx, k)
			found = found || rf
			queued = err != nil
			if queued {
				s.log.Info("remote delete failed; queued, retried when the remote returns", "key", k.String(), "err", err)
			}
		} else {
			// Known down: the deleter retries it, not this caller.
			queued = true
			s.deleter.kickTombs()
		}
		// Deleted here, and the remote's delete queued durably: a
		// success, whether or not a local tier held the value.
		found = found || queued
	}
	if firstErr != nil {
		return firstErr
	}
	if !found {
		return Wrap("stack", "delete", k, ErrNotFound)
	}
	return nil
}

// tomb is a queued remote delete of a key (see doc.go, "Deletes"), under
// s.mu.
type tomb struct {
	sum  digest.Sum // the value deleted; zero: unknown (no local copy)
	id   uint64     // its durable record (TombstoneQueue), 0: none
	busy bool       // being carried out
	retry
}

// loadTombs resumes the tombstones the persistent tier keeps.
func (dl *deleter) loadTombs() error {
	s := dl.s
	tq, ok := dl.tombQueue()
	if !ok {
		return nil
	}
	ts, err := tq.Tombstones(s.ctx)
	if err != nil {
		return err
	}
	for _, t := range ts {
		if old := s.keys.get(t.Key).tomb; old != nil {
			// An older one of the key: its value is the one on the remote.
			if err := tq.TombstoneDone(s.ctx, t.ID); err != nil {
				return err
			}
			continue
		}
		s.keys.edit(t.Key, func(ks *keyState) { ks.tomb = &tomb{sum: t.Sum, id: t.ID} })
	}
	if len(ts) > 0 {
		s.log.Info("resuming queued remote deletes", "entries", s.keys.n.tombs)
	}
	return nil
}

func (dl *deleter) tombQueue() (TombstoneQueue, bool) {
	s := dl.s
	if s.persist == nil {
		return nil, false
	}
	tq, ok := s.persist.Tier.(TombstoneQueue)
	return tq, ok
}

// tombstoned reports whether k has a queued remote delete. Caller holds dl.s.mu.
func (dl *deleter) tombstonedLocked(k digest.Key) bool { return dl.s.keys.get(k).tomb != nil }

func (dl *deleter) tombstoned(k digest.Key) bool {
	s := dl.s
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keys.get(k).tomb != nil
}

// deleteRemote carries out the remote part of a Delete of k: the copy of
// each writable remote is removed if it holds the value sum (or sum is
// zero, or the copy has no checksum to tell); another value is another
// writer's, written since, and is left. found reports whether a copy was
// removed.
func (dl *deleter) deleteRemote(ctx context.Context, k digest.Key, sum digest.Sum) (found bool, err error) {
	s := dl.s
	for l := range s.layers.writableRemote() {
		dctx, cancel := context.WithTimeout(ctx, s.opt.RemoteTimeout)
		info, serr := l.Tier.Stat(dctx, k)
		switch {
		case errors.Is(serr, ErrNotFound):
			s.noteErr(l, nil)
		case serr != nil && !errors.Is(serr, ErrCorrupt):
			s.noteErr(l, serr)
			cancel()
			return found, serr
		case serr == nil && !sum.IsZero() && !info.Sum.IsZero() && info.Sum != sum:
			s.log.Info("queued delete: the remote holds another value of the key, written since; leaving it",
				"key", k.String(), "tier", l.name, "deleted_sha256", sum.String(), "remote_sha256", info.Sum.String())
		default:
			derr := l.Tier.Delete(dctx, k)
			switch {
			case derr == nil:
				found = true
			case errors.Is(derr, ErrNotFound):
			default:
				s.noteErr(l, derr)
				cancel()
				return found, derr
			}
		}
		cancel()
	}
	return found, nil
}

// settleTomb carries out k's queued delete now, if it has one. A failure
// leaves it queued, retried by the deleter after a backoff.
func (dl *deleter) settleTomb(ctx context.Context, k digest.Key) (found bool, err error) {
	s := dl.s
	s.mu.Lock()
	t := s.keys.get(k).tomb
	for t != nil && t.busy {
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return false, ctx.Err()
		}
		s.mu.Lock()
		t = s.keys.get(k).tomb
	}
	if t == nil {
		s.mu.Unlock()
		return false, nil
	}
	t.busy = true
	s.mu.Unlock()
	found, err = dl.deleteRemote(ctx, k, t.sum)
	if err == nil && t.id != 0 {
		if tq, ok := dl.tombQueue(); ok {
			// Durably gone before the key's new upload may start.
			err = tq.TombstoneDone(context.Background(), t.id)
		}
	}
	s.mu.Lock()
	t.busy = false
	if err == nil {
		s.keys.edit(k, func(ks *keyState) { ks.tomb = nil })
	} else {
		t.failed(&s.pol)
	}
	s.broadcastLocked()
	s.mu.Unlock()
	dl.kickTombs()
	select { // a new value of k may wait for upload
	case s.rep.q.kick <- struct{}{}:
	default:
	}
	return found, err
}

// kickTombs wakes run: a tombstone is due.
func (dl *deleter) kickTombs() {
	select {
	case dl.kick <- struct{}{}:
	default:
	}
}

// run carries out the queued remote deletes, each after its backoff.
func (dl *deleter) run() {
	s := dl.s
	defer s.wg.Done()
	for {
		s.mu.Lock()
		var due []digest.Key
		wait := time.Minute
		now := time.Now()
		if s.keys.n.tombs > 0 {
			s.keys.each(func(k digest.Key, ks *keyState) bool {
				switch t := ks.tomb; {
				case t == nil || t.busy:
				case t.next.After(now):
					wait = min(wait, t.next.Sub(now))
				default:
					due = append(due, k)
				}
				return true
			})
		}
		s.mu.Unlock()
		for _, k := range due {
			if s.ctx.Err() != nil {
				return
			}
			if _, err := dl.settleTomb(s.ctx, k); err != nil && s.ctx.Err() == nil {
				s.log.Warn("queued remote delete failed; will retry", "key", k.String(), "err", err)
			}
		}
		if len(due) > 0 {
			continue
		}
		select {
		case <-s.ctx.Done():
			return
		case <-dl.kick:
		case <-time.After(wait):
		}
	}
}
