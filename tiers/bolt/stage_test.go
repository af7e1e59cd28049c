package bolt

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// TestStagingByAnnouncedSize: a value announced at most twice the staging
// size is written whole in one transaction; a larger one, or one of unknown
// size, is staged a stage at a time, so that a put of a large value holds
// about one stage in memory.
func TestStagingByAnnouncedSize(t *testing.T) {
	tr := newTier(t, Options{Limit: 64 << 20, ChunkSize: 64 << 10})
	tr.stage = 1 << 20
	var staged atomic.Int32
	testHookStaged = func(uint64, uint32) { staged.Add(1) }
	t.Cleanup(func() { testHookStaged = nil })
	for i, c := range []struct {
		size     int64
		announce bool
		want     int32 // staging transactions
	}{
		{2 << 20, true, 0},
		{2<<20 + 1, true, 2},
		{3<<20 + 5, true, 3},
		{2 << 20, false, 2},
		{512 << 10, false, 0},
	} {
		t.Run(fmt.Sprint(c.size, c.announce), func(t *testing.T) {
			staged.Store(0)
			k, v := tiertest.Key(fmt.Sprint("stage ", i)), tiertest.Data(uint64(i), c.size)
			m := tiers.UnknownMeta
			if c.announce {
				m = tiers.Meta{Size: c.size, Sum: digest.Of(v)}
			}
			if _, err := tr.Put(context.Background(), k, bytes.NewReader(v), m); err != nil {
				t.Fatal(err)
			}
			if n := staged.Load(); n != c.want {
				t.Errorf("%d staging transactions, want %d", n, c.want)
			}
			if got := tiertest.Get(t, tr, k); !bytes.Equal(got, v) {
				t.Error("read back differs")
			}
		})
	}
}
