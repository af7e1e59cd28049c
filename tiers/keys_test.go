package tiers

import (
	"context"
	"crypto/sha256"
	"fmt"
	"testing"

	"github.com/flechefs/flechefs/digest"
)

func TestKeyTableDropsIdleKeys(t *testing.T) {
	kt := newKeyTable()
	k := testKey("a")
	f := &fetch{}
	kt.edit(k, func(ks *keyState) { ks.fetch = f })
	if got := kt.get(k).fetch; got != f {
		t.Fatalf("fetch = %p, want %p", got, f)
	}
	if kt.n.fetches != 1 || len(kt.m) != 1 {
		t.Fatalf("counts %+v, %d keys; want 1 fetch, 1 key", kt.n, len(kt.m))
	}
	kt.edit(k, func(ks *keyState) { ks.fetch = nil })
	if kt.n.fetches != 0 || len(kt.m) != 0 {
		t.Fatalf("after the fetch ended: counts %+v, %d keys; want none", kt.n, len(kt.m))
	}
	if (kt.get(k) != keyState{}) {
		t.Fatal("an absent key's state is not zero")
	}
}

func TestKeyTableCounts(t *testing.T) {
	kt := newKeyTable()
	keys := []digest.Key{testKey("a"), testKey("b"), testKey("c")}
	for i, k := range keys {
		kt.edit(k, func(ks *keyState) {
			ks.tomb = &tomb{}
			ks.parked = &parked{}
			ks.lost = i%2 == 0
		})
	}
	if want := (kindCounts{tombs: 3, parked: 3, lost: 2}); kt.n != want {
		t.Fatalf("counts %+v, want %+v", kt.n, want)
	}
	// Replacing a state's field by another of the same kind changes no count.
	kt.edit(keys[0], func(ks *keyState) { ks.tomb = &tomb{} })
	kt.edit(keys[1], func(ks *keyState) { ks.tomb, ks.parked = nil, nil })
	if want := (kindCounts{tombs: 2, parked: 2, lost: 2}); kt.n != want {
		t.Fatalf("counts %+v, want %+v", kt.n, want)
	}
	if _, ok := kt.m[keys[1]]; ok {
		t.Fatal("a key with nothing in progress stayed in the table")
	}
}

// The fence is what a Delete takes: it counts, marks a running fetch as
// deleted (it will not promote), and returns what the Delete waits for.
func TestKeyTableFence(t *testing.T) {
	kt := newKeyTable()
	k := testKey("a")
	f := &fetch{}
	promoting := make(chan struct{})
	_, cancel := context.WithCancel(context.Background())
	up := &inflight{cancel: cancel, done: make(chan struct{})}
	kt.edit(k, func(ks *keyState) { ks.fetch, ks.promoting, ks.upload = f, promoting, up })
	ks := kt.fence(k)
	if !f.deleted {
		t.Fatal("the fence did not mark the running fetch deleted")
	}
	if ks.promoting != promoting || ks.upload != up || ks.deleting != 1 {
		t.Fatalf("fence returned %+v", ks)
	}
	kt.fence(k)
	if !kt.fenced(k) || kt.get(k).deleting != 2 {
		t.Fatalf("two fences: deleting = %d", kt.get(k).deleting)
	}
	kt.unfence(k)
	kt.unfence(k)
	if kt.fenced(k) {
		t.Fatal("fenced after both Deletes ended")
	}
	kt.edit(k, func(ks *keyState) { ks.fetch, ks.promoting, ks.upload = nil, nil, nil })
	if len(kt.m) != 0 {
		t.Fatal("the key stayed in the table")
	}
}

func testKey(s string) digest.Key {
	return digest.MustParse(fmt.Sprintf("%x", sha256.Sum256([]byte(s))))
}
