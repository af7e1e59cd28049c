package tiers_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/bolt"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// countingBolt counts the puts of a bolt tier (and keeps its Queue).
type countingBolt struct {
	*bolt.Tier
	puts atomic.Int64
	keys sync.Map // digest.Key -> int: the order of its put, from 0
}

func (c *countingBolt) Put(ctx context.Context, k digest.Key, r io.Reader, m tiers.Meta) (tiers.Info, error) {
	c.keys.Store(k, int(c.puts.Add(1)-1))
	return c.Tier.Put(ctx, k, r, m)
}

func holdStack(t *testing.T) (*tiers.Stack, *countingBolt) {
	t.Helper()
	b := &countingBolt{Tier: openBolt(t, filepath.Join(t.TempDir(), "db"))}
	s := newStack(t, tiers.StackOptions{},
		tiers.Layer{Tier: mem(t, "ram", 1<<30)}, tiers.Layer{Tier: b})
	return s, b
}

// publishBurst publishes n small entries, one every interval.
func publishBurst(t *testing.T, s *tiers.Stack, n int, interval time.Duration) []digest.Key {
	t.Helper()
	keys := make([]digest.Key, n)
	for i := range keys {
		keys[i] = tiertest.Key(fmt.Sprintf("%s-%d", t.Name(), i))
		data := tiertest.Data(uint64(i), 4096)
		if _, err := s.Publish(context.Background(), keys[i], newBlob(data), digest.Of(data)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(interval)
	}
	return keys
}

// TestPersistHeldDuringBurst: entries published in a burst are persisted
// once the publishes pause, not one commit at a time while they come.
func TestPersistHeldDuringBurst(t *testing.T) {
	s, b := holdStack(t)
	keys := publishBurst(t, s, 50, time.Millisecond)
	// The first of the burst may have been persisted on its own.
	if n := b.puts.Load(); n > 1 {
		t.Errorf("%d entries persisted during the burst, want at most 1", n)
	}
	for _, k := range keys {
		if _, err := s.Stat(context.Background(), k); err != nil {
			t.Fatalf("held entry not visible: %v", err)
		}
	}
	eventually(t, "persisted after the burst", func() bool { return s.Stats().Unpersisted == 0 })
	for _, k := range keys {
		if !has(b, k) {
			t.Fatalf("%v not in the bolt tier after the burst", k)
		}
	}
}

// TestWaitDurableEndsHold: WaitPersisted leaves a held entry alone, while
// WaitDurable (fsync) and Delete end the hold at once, in a burst that goes
// on; an entry deleted while held is never written.
func TestWaitDurableEndsHold(t *testing.T) {
	s, b := holdStack(t)
	startBurst(t, s)
	time.Sleep(20 * time.Millisecond)

	gone := publishBurst(t, s, 1, 0)[0]
	start := time.Now()
	if err := s.Delete(context.Background(), gone); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Delete of a held entry took %v during a burst", d)
	}
	if _, put := b.keys.Load(gone); put || has(b, gone) {
		t.Errorf("entry deleted while held was written to the bolt tier")
	}

	// The burst holds k. A stall of the publishing goroutine for 20 ms
	// (a loaded machine, -race) ends a burst, so a k persisted at once is
	// tried again before the test fails.
	var k digest.Key
	for try := 0; ; try++ {
		k = tiertest.Key(fmt.Sprintf("%s-held-%d", t.Name(), try))
		data := tiertest.Data(uint64(try), 4096)
		if _, err := s.Publish(context.Background(), k, newBlob(data), digest.Of(data)); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		err := s.WaitPersisted(ctx, k)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			break
		}
		if try == 4 {
			t.Fatalf("WaitPersisted during a burst: %v, want it to wait for the burst (5 tries)", err)
		}
	}
	start = time.Now()
	if err := s.WaitDurable(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("WaitDurable took %v during a burst", d)
	}
	if !has(b, k) {
		t.Errorf("not in the bolt tier after WaitDurable")
	}
}

// startBurst publishes entries until the test ends, never pausing for
// uploadQuiet (20 ms), which would end the hold.
func startBurst(t *testing.T, s *tiers.Stack) {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			data := tiertest.Data(uint64(i), 4096)
			s.Publish(context.Background(), tiertest.Key(fmt.Sprintf("bg-%d", i)), newBlob(data), digest.Of(data))
			time.Sleep(100 * time.Microsecond)
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
}

// TestWaitDurableFirst: the entry an fsync waits for is persisted before
// the others held with it, not after all of them.
func TestWaitDurableFirst(t *testing.T) {
	s, b := holdStack(t)
	startBurst(t, s)
	time.Sleep(20 * time.Millisecond)
	keys := publishBurst(t, s, 300, 0)
	if err := s.WaitDurable(context.Background(), keys[len(keys)-1]); err != nil {
		t.Fatal(err)
	}
	// Without the order, it would come after the 300 (and more) held.
	if i, _ := b.keys.Load(keys[len(keys)-1]); i.(int) >= 150 {
		t.Errorf("the entry waited for was persisted after %d others, want fewer than 150", i)
	}
}
