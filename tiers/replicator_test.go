package tiers

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
)

func newTestQueue() (*uploadQueue, *keyTable) {
	kt := newKeyTable()
	q := &uploadQueue{}
	q.init(&kt)
	return q, &kt
}

func queueKeys(q *uploadQueue) []digest.Key {
	var out []digest.Key
	for e := q.order.Front(); e != nil; e = e.Next() {
		out = append(out, e.Value.(digest.Key))
	}
	return out
}

// The queue keeps keys in the order they were added, once each; remove
// takes one out from anywhere and cancels its upload in flight.
func TestUploadQueueOrder(t *testing.T) {
	q, kt := newTestQueue()
	a, b, c := testKey("a"), testKey("b"), testKey("c")
	for _, k := range []digest.Key{a, b, c, a} {
		q.add(k)
	}
	if got := queueKeys(q); !slices.Equal(got, []digest.Key{a, b, c}) || q.len() != 3 {
		t.Fatalf("queue %v (len %d), want a b c", got, q.len())
	}
	ctx, cancel := context.WithCancel(context.Background())
	kt.edit(b, func(ks *keyState) { ks.upload = &inflight{cancel: cancel, done: make(chan struct{})} })
	q.remove(b)
	if ctx.Err() == nil {
		t.Fatal("remove did not cancel the upload in flight")
	}
	q.remove(b) // twice: nothing
	if got := queueKeys(q); !slices.Equal(got, []digest.Key{a, c}) || q.has(b) {
		t.Fatalf("after removing b: %v, has b %v", got, q.has(b))
	}
	q.add(b) // a new value of b goes to the end
	if got := queueKeys(q); !slices.Equal(got, []digest.Key{a, c, b}) {
		t.Fatalf("after adding b again: %v", got)
	}
}

// next returns the first key due: not one in flight, not one held (a
// queued remote delete comes first), not one before its retry time; and
// otherwise how long until the first retry.
func TestUploadQueueNext(t *testing.T) {
	q, kt := newTestQueue()
	now := time.Unix(1000, 0)
	a, b, c := testKey("a"), testKey("b"), testKey("c")
	for _, k := range []digest.Key{a, b, c} {
		q.add(k)
	}
	held := map[digest.Key]bool{}
	next := func() (digest.Key, time.Duration, bool) {
		return q.next(now, func(k digest.Key) bool { return held[k] })
	}
	if k, _, ok := next(); !ok || k != a {
		t.Fatalf("next: %v %v, want a", k, ok)
	}
	kt.edit(a, func(ks *keyState) { ks.upload = &inflight{cancel: func() {}, done: make(chan struct{})} })
	held[b] = true
	if k, _, ok := next(); !ok || k != c {
		t.Fatalf("next with a in flight and b held: %v %v, want c", k, ok)
	}
	q.set[c].next = now.Add(3 * time.Second)
	if k, wait, ok := next(); ok || wait != 3*time.Second {
		t.Fatalf("next with c waiting 3s: %v %v %v, want nothing due for 3s", k, wait, ok)
	}
	held[b] = false
	if k, _, ok := next(); !ok || k != b {
		t.Fatalf("next once b's delete is done: %v %v, want b", k, ok)
	}
}

// BenchmarkUploadQueueDrain: adding and then removing, front first (the
// order uploads end in), the keys of a queue of b.N keys. The cost per key
// does not grow with the queue: a queue resumed after a restart may hold a
// million keys, and a removal that copied the rest of the queue made
// draining it quadratic.
func BenchmarkUploadQueueDrain(b *testing.B) {
	q, _ := newTestQueue()
	keys := make([]digest.Key, b.N)
	for i := range keys {
		keys[i] = testKey(fmt.Sprint(i))
	}
	b.ResetTimer()
	for _, k := range keys {
		q.add(k)
	}
	for _, k := range keys {
		q.remove(k)
	}
	if q.len() != 0 || q.order.Len() != 0 {
		b.Fatalf("%d keys left (%d in order)", q.len(), q.order.Len())
	}
}
