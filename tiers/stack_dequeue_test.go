package tiers_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/bolt"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// TestDequeueWaitsForUploads: uploads that end while others are queued
// leave the durable queue together, once the queue is empty, not in a
// commit every 100 ms beside the uploads.
func TestDequeueWaitsForUploads(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "local.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	remote := mem(t, "remote", 64<<20)
	remote.onPut = func(ctx context.Context, k digest.Key, m tiers.Meta) error {
		time.Sleep(40 * time.Millisecond)
		return nil
	}
	s := newStack(t, tiers.StackOptions{UploadWorkers: 1},
		tiers.Layer{Tier: mem(t, "ram", 64<<20)}, tiers.Layer{Tier: db}, tiers.Layer{Tier: remote, Remote: true})
	const n = 12
	var keys []digest.Key
	for i := range n {
		k, v := tiertest.Key(fmt.Sprint("dequeue ", i)), tiertest.Data(uint64(i), 4<<10)
		if _, err := s.Publish(context.Background(), k, newBlob(v), digest.Of(v)); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	pending := func() int {
		p, err := db.Pending(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return len(p)
	}
	// Uploads take 40 ms each, one at a time: 480 ms in all. When 3/4 of
	// them are done (360 ms after the first, beyond the 100 ms linger),
	// every record is still there.
	eventually(t, "9 uploads", func() bool {
		c := 0
		for _, k := range keys {
			if has(remote, k) {
				c++
			}
		}
		return c >= 9
	})
	if p := pending(); p != n {
		t.Fatalf("%d of %d durable queue records left while uploads were queued", p, n)
	}
	eventually(t, "an empty durable queue", func() bool { return pending() == 0 })
}
