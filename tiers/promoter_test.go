package tiers_test

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/bolt"
	"github.com/flechefs/flechefs/tiers/memory"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// threeTiers is RAM (limit ramLimit) over a local tier over a remote one,
// with policy pol.
func threeTiers(t *testing.T, ramLimit int64, pol tiers.Policy) (ram *memory.Tier, local, remote *faultTier, s *tiers.Stack) {
	t.Helper()
	ram, err := memory.New(memory.Options{Name: "ram", Limit: ramLimit, MaxEntry: ramLimit})
	if err != nil {
		t.Fatal(err)
	}
	local, remote = mem(t, "local", 256<<20), mem(t, "remote", 256<<20)
	s = newStack(t, tiers.StackOptions{Policy: pol}, tiers.Layer{Tier: ram}, tiers.Layer{Tier: local}, tiers.Layer{Tier: remote, Remote: true})
	return ram, local, remote, s
}

// readFromRemote puts n values of size bytes into remote, under keys named
// after prefix, and reads each through s.
func readFromRemote(t *testing.T, s *tiers.Stack, remote *faultTier, prefix string, n int, size int64) []digest.Key {
	t.Helper()
	var keys []digest.Key
	for i := range n {
		k := tiertest.Key(fmt.Sprint(prefix, " ", i))
		tiertest.Put(t, remote, k, tiertest.Data(uint64(i), size))
		keys = append(keys, k)
	}
	for _, k := range keys {
		if _, err := read(t, s, k); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

// TestDeferredCopyWaitsForPause: a value read from the remote that is
// small beside the RAM tier (a 16 KiB one fetched into memory, a 2 MiB one
// through a spool file) is in RAM at once, and reaches the local tier only
// once the stack has not been used for a moment. One too large to wait in
// RAM (over a sixteenth of its limit) is copied at once.
//
// The test does not depend on the machine's speed: the first stack's pause
// is an hour, so a copy made before it is one that did not wait, and the
// second stack's is the default, with no bound on when its copy comes.
func TestDeferredCopyWaitsForPause(t *testing.T) {
	for _, c := range []struct {
		size     int64
		deferred bool
	}{{16 << 10, true}, {2 << 20, true}, {6 << 20, false}} {
		t.Run(fmt.Sprint(c.size), func(t *testing.T) {
			ram, local, remote, s := threeTiers(t, 64<<20, neverIdle)
			k, v := tiertest.Key("value"), tiertest.Data(1, c.size)
			tiertest.Put(t, remote, k, v)
			if got, err := read(t, s, k); err != nil || !bytes.Equal(got, v) {
				t.Fatalf("read: %v", err)
			}
			if !c.deferred {
				tiertest.Eventually(t, "the copy into the local tier, with no pause", func() bool { return has(local, k) })
				if n := s.Stats().Deferred; n != 0 {
					t.Fatalf("stats say %d deferred copies, want 0", n)
				}
				return
			}
			tiertest.Eventually(t, "the copy into RAM", func() bool { return has(ram, k) })
			// Queued once the copy into RAM has ended, after the value is there.
			tiertest.Eventually(t, "one deferred copy", func() bool { return s.Stats().Deferred == 1 })
			time.Sleep(50 * time.Millisecond) // a copy made at once would have run
			if has(local, k) {
				t.Fatal("copied into the local tier with no pause")
			}

			_, local, remote, s = threeTiers(t, 64<<20, tiers.Policy{})
			tiertest.Put(t, remote, k, v)
			if got, err := read(t, s, k); err != nil || !bytes.Equal(got, v) {
				t.Fatalf("read: %v", err)
			}
			tiertest.Eventually(t, "the copy into the local tier after the pause", func() bool { return has(local, k) })
			tiertest.Eventually(t, "no deferred copy", func() bool { return s.Stats().Deferred == 0 })
			if got := tiertest.Get(t, local, k); !bytes.Equal(got, v) {
				t.Fatal("the local copy differs")
			}
		})
	}
}

// TestDeferredCopyBounded: the queue is drained without a pause once its
// values add up to a quarter of tier 0's limit, before tier 0 evicts them.
// The stacks of this test and the next never pause on their own (neverIdle).
func TestDeferredCopyBounded(t *testing.T) {
	const size, ramLimit = 64 << 10, 4 << 20 // a quarter is 16 values
	_, local, remote, s := threeTiers(t, ramLimit, neverIdle)
	keys := readFromRemote(t, s, remote, "bounded", 20, size)
	// The 16 queued first (fetches end in any order) are drained.
	waitCopied(t, local, keys, 16)
}

// TestDeferredCopyCounted: tiny values, whose bytes never reach the
// bound, are drained once 4096 of them wait.
func TestDeferredCopyCounted(t *testing.T) {
	_, local, remote, s := threeTiers(t, 64<<20, neverIdle)
	const n = 4100
	var keys []digest.Key
	for i := range n {
		k := tiertest.Key(fmt.Sprint("tiny ", i))
		tiertest.Put(t, remote, k, tiertest.Data(uint64(i), 8))
		keys = append(keys, k)
	}
	for _, k := range keys {
		if _, err := read(t, s, k); err != nil {
			t.Fatal(err)
		}
	}
	waitCopied(t, local, keys, 4096)
}

// TestDeferredCopyAtClose: Close makes the copies that still wait.
func TestDeferredCopyAtClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "local.db")
	db, err := bolt.Open(path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ram, remote := mem(t, "ram", 64<<20), mem(t, "remote", 64<<20)
	s, err := tiers.NewStack([]tiers.Layer{{Tier: ram}, {Tier: db}, {Tier: remote, Remote: true}}, tiers.StackOptions{SpoolDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	k, v := tiertest.Key("closing"), tiertest.Data(2, 16<<10)
	tiertest.Put(t, remote, k, v)
	if _, err := read(t, s, k); err != nil {
		t.Fatal(err)
	}
	tiertest.Eventually(t, "the deferred copy", func() bool { return s.Stats().Deferred == 1 })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = bolt.Open(path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if got := tiertest.Get(t, db, k); !bytes.Equal(got, v) {
		t.Fatal("the local copy differs")
	}
}

// TestDeferredCopyAfterDelete: a key deleted while its copy waits is not
// put back into the local tier.
func TestDeferredCopyAfterDelete(t *testing.T) {
	ram, local, remote, s := threeTiers(t, 64<<20, tiers.Policy{})
	k := tiertest.Key("deleted")
	tiertest.Put(t, remote, k, tiertest.Data(3, 16<<10))
	if _, err := read(t, s, k); err != nil {
		t.Fatal(err)
	}
	tiertest.Eventually(t, "the copy into RAM", func() bool { return has(ram, k) })
	if err := s.Delete(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	tiertest.Eventually(t, "no deferred copy", func() bool { return s.Stats().Deferred == 0 })
	time.Sleep(100 * time.Millisecond)
	if has(local, k) || has(ram, k) || has(remote, k) {
		t.Fatalf("after the delete: local %v, ram %v, remote %v", has(local, k), has(ram, k), has(remote, k))
	}
}

// neverIdle is a policy under which the deferred copies wait for no pause:
// only their bounds and Close drain them.
var neverIdle = tiers.Policy{DeferIdle: time.Hour, DeferMaxAge: time.Hour}

// waitCopied waits until want of keys are in tr.
func waitCopied(t *testing.T, tr tiers.Tier, keys []digest.Key, want int) {
	t.Helper()
	const within = time.Minute
	for deadline := time.Now().Add(within); ; time.Sleep(10 * time.Millisecond) {
		n := 0
		for _, k := range keys {
			if has(tr, k) {
				n++
			}
		}
		if n >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d values copied into %s in %v, want %d", n, len(keys), tr.Name(), within, want)
		}
	}
}

// TestDeferredCopyInflightBounded: a drain copies values that add up to at
// most 4 MiB at once (a larger one alone), since each copy holds its value
// in the target's buffers until their commit.
func TestDeferredCopyInflightBounded(t *testing.T) {
	const size, n = 3 << 20, 6
	_, local, remote, s := threeTiers(t, 256<<20, tiers.Policy{}) // values up to 16 MiB are deferred
	var mu sync.Mutex
	var inflight, peak int64
	local.onPut = func(ctx context.Context, k digest.Key, m tiers.Meta) error {
		mu.Lock()
		inflight += m.Size
		peak = max(peak, inflight)
		mu.Unlock()
		time.Sleep(50 * time.Millisecond) // long enough for any other copy to start
		mu.Lock()
		inflight -= m.Size
		mu.Unlock()
		return nil
	}
	keys := readFromRemote(t, s, remote, "inflight", n, size)
	tiertest.Eventually(t, "the deferred copies", func() bool {
		for _, k := range keys {
			if !has(local, k) {
				return false
			}
		}
		return true
	})
	mu.Lock()
	defer mu.Unlock()
	if peak != size {
		t.Fatalf("%d bytes were being copied at once, want one value's %d", peak, size)
	}
}

// TestLocalHitCopyWaitsForPause: a hit in the local tier small beside the
// RAM tier reaches RAM once the stack has not been used for a moment, read
// again from the local tier and checked; a large one at once. A Close
// drops a copy into RAM still waiting (RAM goes with the stack), and a
// second hit of a key waiting is not queued twice.
func TestLocalHitCopyWaitsForPause(t *testing.T) {
	for _, c := range []struct {
		size     int64
		deferred bool
	}{{16 << 10, true}, {4 << 20, true}, {6 << 20, false}} {
		t.Run(fmt.Sprint(c.size), func(t *testing.T) {
			ram, local, _, s := threeTiers(t, 64<<20, neverIdle)
			k, v := tiertest.Key("value"), tiertest.Data(1, c.size)
			tiertest.Put(t, local, k, v)
			for range 2 {
				if got, err := read(t, s, k); err != nil || !bytes.Equal(got, v) {
					t.Fatalf("read: %v", err)
				}
			}
			if !c.deferred {
				tiertest.Eventually(t, "the copy into RAM, with no pause", func() bool { return has(ram, k) })
				return
			}
			if n := s.Stats().Deferred; n != 1 {
				t.Fatalf("stats say %d deferred copies, want 1", n)
			}
			time.Sleep(50 * time.Millisecond) // a copy made at once would have run
			if has(ram, k) {
				t.Fatal("copied into RAM with no pause")
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if has(ram, k) {
				t.Fatal("Close copied into RAM")
			}

			ram, local, _, s = threeTiers(t, 64<<20, tiers.Policy{})
			tiertest.Put(t, local, k, v)
			if got, err := read(t, s, k); err != nil || !bytes.Equal(got, v) {
				t.Fatalf("read: %v", err)
			}
			tiertest.Eventually(t, "the copy into RAM after the pause", func() bool { return has(ram, k) })
			if got := tiertest.Get(t, ram, k); !bytes.Equal(got, v) {
				t.Fatal("the RAM copy differs")
			}
			if p := s.Stats().Tiers[0].Promotions; p != 1 {
				t.Fatalf("promotions into RAM = %d, want 1", p)
			}
		})
	}
}

// TestFetchedCopyBesideDeadLocalHitCopy: a local hit queues its copy into
// RAM; the local copy then goes (as a damaged copy is dropped) and the next
// read fetches the value from the remote. The fetched value's copy into the
// local tier is queued beside the first copy, which can no longer be made,
// and is made: the local tier holds the value again.
func TestFetchedCopyBesideDeadLocalHitCopy(t *testing.T) {
	ram, local, remote, s := threeTiers(t, 64<<20, neverIdle)
	k, v := tiertest.Key("value"), tiertest.Data(1, 700)
	tiertest.Put(t, local, k, v)
	tiertest.Put(t, remote, k, v)
	var copied sync.WaitGroup // the local tier's Put of k, made once
	copied.Add(1)
	local.onPut = func(_ context.Context, pk digest.Key, _ tiers.Meta) error {
		if pk == k {
			copied.Done()
		}
		return nil
	}
	if got, err := read(t, s, k); err != nil || !bytes.Equal(got, v) {
		t.Fatalf("read of the local hit: %v", err)
	}
	if has(ram, k) {
		t.Fatal("the local hit was copied into RAM with no pause")
	}
	if err := local.Delete(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	if got, err := read(t, s, k); err != nil || !bytes.Equal(got, v) {
		t.Fatalf("read from the remote: %v", err)
	}
	// The fetched value's copy into the local tier is queued once its copy
	// into RAM ends, after the read returned.
	tiertest.Eventually(t, "two deferred copies (the dead one and the fetched one's)", func() bool {
		return s.Stats().Deferred == 2
	})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Close makes the copies out of tier 0: a second Put of k would panic
	// the WaitGroup, none leaves it waiting.
	done := make(chan struct{})
	go func() { copied.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("Close returned and the fetched value was not copied into the local tier")
	}
}
