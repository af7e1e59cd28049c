package tiers

import (
	"errors"
	"fmt"

	"github.com/flechefs/flechefs/digest"
)

// CheckState checks that the parts' bookkeeping agrees with itself: the key
// table holds no idle key and its counts are right, every published entry
// is its key's and referenced, no delete fence is below zero, the upload
// queue's order and set agree, and an item in flight or sent has its
// upload running. The invariant suite calls it after every step.
func (s *Stack) CheckState() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	var n kindCounts
	s.keys.each(func(k digest.Key, ks *keyState) bool {
		if ks.idle() {
			errs = append(errs, fmt.Errorf("%s: an idle state stays in the key table", k))
		}
		c := ks.kinds()
		n.fetches += c.fetches
		n.parked += c.parked
		n.tombs += c.tombs
		n.lost += c.lost
		if p := ks.pub; p != nil && (p.info.Key != k || p.refs < 1) {
			errs = append(errs, fmt.Errorf("%s: published entry of %s with %d references", k, p.info.Key, p.refs))
		}
		if ks.deleting < 0 {
			errs = append(errs, fmt.Errorf("%s: delete fence %d", k, ks.deleting))
		}
		return true
	})
	if n != s.keys.n {
		errs = append(errs, fmt.Errorf("key table counts %+v, its keys hold %+v", s.keys.n, n))
	}
	q := &s.rep.q
	if q.order.Len() != len(q.set) {
		errs = append(errs, fmt.Errorf("upload queue: %d keys in order, %d in the set", q.order.Len(), len(q.set)))
	}
	for e := q.order.Front(); e != nil; e = e.Next() {
		k := e.Value.(digest.Key)
		it := q.set[k]
		switch {
		case it == nil:
			errs = append(errs, fmt.Errorf("%s: in the upload queue's order, not in its set", k))
		case it.elem != e:
			errs = append(errs, fmt.Errorf("%s: in the upload queue's order twice", k))
		case it.state != upQueued && s.keys.get(k).upload == nil:
			errs = append(errs, fmt.Errorf("%s: upload item in state %d with no upload running", k, it.state))
		}
	}
	return errors.Join(errs...)
}

// SettleCopies makes the queued deferred copies and waits until no copy of
// k into faster tiers runs, so that a test dropping k's local copies under
// the stack (another machine's view) is not undone by a copy in flight.
func (s *Stack) SettleCopies(k digest.Key) {
	s.promoter.drainDeferred(false)
	for {
		s.mu.Lock()
		busy := s.keys.get(k).promoting
		s.mu.Unlock()
		if busy == nil {
			return
		}
		<-busy
	}
}

// FetchMemHeld is the bytes fetches hold in memory beyond memFetch
// (fetcher.holdMem).
func (s *Stack) FetchMemHeld() int64 { return s.fetcher.memHeld.Load() }
