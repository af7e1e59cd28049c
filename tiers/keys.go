package tiers

import (
	"context"

	"github.com/flechefs/flechefs/digest"
)

// The key table holds what the stack is doing with each key right now:
// every part keeps its per-key state in the key's one keyState, under the
// stack's one lock (Stack.mu). A Delete finds all of it in one place and
// raises the key's fence (keyState.deleting), which every part that would
// put a copy of the key back checks before it starts. A key with nothing in
// progress is not in the table.

// keyState is one key's work in progress, each field owned by one part.
type keyState struct {
	pub       *pub          // published, not yet persisted (publisher)
	fetch     *fetch        // a fetch from a remote tier (fetcher)
	parked    *parked       // a remote reader a lookup opened, for the fetch that follows (fetcher)
	promoting chan struct{} // a copy into faster tiers, closed when it ends (promoter)
	upload    *inflight     // the upload running (replicator)
	tomb      *tomb         // a queued remote delete (deleter)
	// lost: the value here lost a conflict (conflict.go); lostSum is its
	// hash, until the remote's value is in a local tier.
	lost    bool
	lostSum digest.Sum
	// deleting counts the Deletes (and conflict drops) removing copies of
	// the key: while it is above zero no copy of the key starts.
	deleting int
}

// inflight is an upload running: cancel stops it, done is closed when it
// has ended.
type inflight struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// kindCounts are the numbers of keys with each kind of state the stack
// asks about as a whole.
type kindCounts struct{ fetches, parked, tombs, lost int }

func (ks *keyState) kinds() kindCounts {
	b := func(v bool) int {
		if v {
			return 1
		}
		return 0
	}
	return kindCounts{b(ks.fetch != nil), b(ks.parked != nil), b(ks.tomb != nil), b(ks.lost)}
}

func (ks *keyState) idle() bool { return *ks == keyState{} }

// keyTable maps keys to their state. Its methods are called with Stack.mu
// held.
type keyTable struct {
	m map[digest.Key]*keyState
	n kindCounts
}

func newKeyTable() keyTable { return keyTable{m: map[digest.Key]*keyState{}} }

// get returns k's state, the zero state when nothing is in progress. The
// copy is for reading; edit changes it.
func (t *keyTable) get(k digest.Key) keyState {
	if ks := t.m[k]; ks != nil {
		return *ks
	}
	return keyState{}
}

// edit applies f to k's state, keeps the counts and drops a state left idle.
func (t *keyTable) edit(k digest.Key, f func(ks *keyState)) {
	ks := t.m[k]
	if ks == nil {
		ks = &keyState{}
	}
	before := ks.kinds()
	f(ks)
	after := ks.kinds()
	t.n.fetches += after.fetches - before.fetches
	t.n.parked += after.parked - before.parked
	t.n.tombs += after.tombs - before.tombs
	t.n.lost += after.lost - before.lost
	if ks.idle() {
		delete(t.m, k)
	} else {
		t.m[k] = ks
	}
}

// each calls f for every key in the table with its state (to read), until
// f returns false.
func (t *keyTable) each(f func(k digest.Key, ks *keyState) bool) {
	for k, ks := range t.m {
		if !f(k, ks) {
			return
		}
	}
}

// fence raises k's delete fence and returns its state: what the Delete
// waits for. A fetch of k running will not promote what it fetched.
func (t *keyTable) fence(k digest.Key) keyState {
	var out keyState
	t.edit(k, func(ks *keyState) {
		ks.deleting++
		if ks.fetch != nil {
			ks.fetch.deleted = true
		}
		out = *ks
	})
	return out
}

// unfence lowers the fence fence raised.
func (t *keyTable) unfence(k digest.Key) {
	t.edit(k, func(ks *keyState) { ks.deleting-- })
}

// fenced reports whether a Delete of k is removing its copies.
func (t *keyTable) fenced(k digest.Key) bool { return t.get(k).deleting > 0 }
