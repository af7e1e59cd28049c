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

// BenchmarkUploadQueueNextBackedOff: next over a queue of 100,000 keys
// that all failed (the remote is down) and wait for their retry, the state
// of a large backlog during an outage: every publish wakes a worker, which
// asks next under the stack's lock. Its cost must not grow with the queue.
func BenchmarkUploadQueueNextBackedOff(b *testing.B) {
	q, _ := newTestQueue()
	now := time.Now()
	for i := range 100000 {
		k := testKey(fmt.Sprint(i))
		q.add(k)
		it := q.set[k]
		it.next = now.Add(30*time.Second + time.Duration(i)*time.Millisecond)
		q.wait(it) // as endUploadLocked after a failure
	}
	none := func(digest.Key) bool { return false }
	for b.Loop() {
		if _, wait, ok := q.next(now, none); ok || wait != 30*time.Second {
			b.Fatalf("next: %v, %v; want nothing due for 30s", ok, wait)
		}
	}
}

// A key whose upload failed waits for its retry time while later keys go;
// once due it goes before keys queued after it.
func TestUploadQueueRetryFirst(t *testing.T) {
	q, _ := newTestQueue()
	a, b, c := testKey("a"), testKey("b"), testKey("c")
	q.add(a)
	q.add(b)
	none := func(digest.Key) bool { return false }
	now := time.Now()
	if k, _, ok := q.next(now, none); !ok || k != a {
		t.Fatalf("next: %v %v, want a", k, ok)
	}
	q.unready(q.set[a]) // a's upload starts, and fails:
	q.set[a].next = now.Add(time.Hour)
	q.wait(q.set[a])
	if k, _, ok := q.next(now, none); !ok || k != b {
		t.Fatalf("next with a waiting: %v %v, want b", k, ok)
	}
	q.unready(q.set[b]) // b's upload starts
	if k, wait, ok := q.next(now, none); ok || wait != time.Minute {
		t.Fatalf("next with a waiting an hour and b in flight: %v %v %v, want nothing due (wait capped at 1m)", k, wait, ok)
	}
	q.add(c)
	if k, _, ok := q.next(now.Add(2*time.Hour), none); !ok || k != a {
		t.Fatalf("next once a's retry time came: %v %v, want a before c", k, ok)
	}
	q.remove(a)
	if k, _, ok := q.next(now, none); !ok || k != c {
		t.Fatalf("next after a left: %v %v, want c", k, ok)
	}
	if q.len() != 2 || q.ready.Len() != 1 || len(q.waiting) != 0 {
		t.Fatalf("queue %d keys, ready %d, waiting %d; want 2, 1 (c), 0", q.len(), q.ready.Len(), len(q.waiting))
	}
}
