package tiers_test

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/memory"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// bytesTier counts the values a memory tier adopted (PutBytes).
type bytesTier struct {
	*memory.Tier
	adopted atomic.Int64
}

func (b *bytesTier) PutBytes(ctx context.Context, k digest.Key, v []byte, m tiers.Meta) (tiers.Info, error) {
	b.adopted.Add(1)
	return b.Tier.PutBytes(ctx, k, v, m)
}

// memBlob is a blob with its value in memory (a tiers.BytesBlob).
type memBlob struct{ *blob }

func (m memBlob) Bytes() []byte {
	b := make([]byte, m.Size())
	m.ReadAt(b, 0)
	return b
}

// TestPublishAdoptsBytes: a published value the blob holds in memory goes
// into a memory tier without a copy (PutBytes); other blobs are copied.
func TestPublishAdoptsBytes(t *testing.T) {
	m, err := memory.New(memory.Options{Limit: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	bt := &bytesTier{Tier: m}
	s := newStack(t, tiers.StackOptions{}, tiers.Layer{Tier: bt})
	ctx := context.Background()
	for i, b := range []tiers.Blob{memBlob{newBlob(tiertest.Data(1, 3000))}, newBlob(tiertest.Data(2, 3000))} {
		data := tiertest.Data(uint64(i+1), 3000)
		k := tiertest.Key(string(rune('a' + i)))
		if _, err := s.Publish(ctx, k, b, digest.Of(data)); err != nil {
			t.Fatal(err)
		}
		if got, err := read(t, s, k); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("blob %d: read back %d bytes, %v", i, len(got), err)
		}
		if !has(bt, k) {
			t.Fatalf("blob %d: not in the memory tier", i)
		}
	}
	if n := bt.adopted.Load(); n != 1 {
		t.Errorf("%d values adopted, want 1 (the in-memory blob's)", n)
	}
}
