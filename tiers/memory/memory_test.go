package memory

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

func TestConformance(t *testing.T) {
	tiertest.Run(t, func(t *testing.T) tiers.Tier {
		tr, err := New(Options{Limit: 512 << 20, MaxEntry: 256 << 20})
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}, tiertest.Options{
		NewBounded: func(t *testing.T, limit int64) tiers.Tier {
			tr, err := New(Options{Limit: limit})
			if err != nil {
				t.Fatal(err)
			}
			return tr
		},
	})
}

func TestBoundAndLRU(t *testing.T) {
	const limit = 1 << 20
	tr, err := New(Options{Limit: limit})
	if err != nil {
		t.Fatal(err)
	}
	hot := tiertest.Key("hot")
	hotData := tiertest.Data(1, 100<<10)
	tiertest.Put(t, tr, hot, hotData)
	var written int64
	for i := 0; written < 10*limit; i++ {
		b := tiertest.Data(uint64(i), int64(1000+(i*7919)%(200<<10)))
		tiertest.Put(t, tr, tiertest.Key(fmt.Sprint("churn", i)), b)
		written += int64(len(b))
		if u := tr.Usage(); u.Bytes > limit {
			t.Fatalf("bytes %d over limit %d", u.Bytes, limit)
		}
		if !bytes.Equal(tiertest.Get(t, tr, hot), hotData) { // keeps it recent
			t.Fatal("hot entry changed")
		}
	}
	if u := tr.Usage(); u.Evictions == 0 {
		t.Fatal("no evictions counted after churning 10x the limit")
	}
}

func TestAdmission(t *testing.T) {
	tr, _ := New(Options{Limit: 1 << 20})
	small := tiertest.Key("small")
	tiertest.Put(t, tr, small, tiertest.Data(1, 1000))
	big := tiertest.Data(2, 300<<10) // over Limit/4
	_, err := tr.Put(context.Background(), tiertest.Key("big"), bytes.NewReader(big), tiers.UnknownMeta)
	if !errors.Is(err, tiers.ErrNoSpace) {
		t.Fatalf("big put: %v, want ErrNoSpace", err)
	}
	if _, err := tr.Stat(context.Background(), small); err != nil {
		t.Fatal("refused admission evicted another entry")
	}
}

func BenchmarkReadAt(b *testing.B) {
	tr, _ := New(Options{Limit: 256 << 20, MaxEntry: 128 << 20})
	k := tiertest.Key("bench")
	tiertest.Put(b, tr, k, tiertest.Data(1, 64<<20))
	r, _ := tr.Open(context.Background(), k)
	buf := make([]byte, 1<<20)
	b.SetBytes(1 << 20)
	for i := 0; b.Loop(); i++ {
		r.ReadAt(buf, int64(i%64)<<20)
	}
}

func BenchmarkPut(b *testing.B) {
	data := tiertest.Data(1, 4<<20)
	tr, _ := New(Options{Limit: 64 << 20})
	b.SetBytes(int64(len(data)))
	for i := 0; b.Loop(); i++ {
		tiertest.Put(b, tr, tiertest.Key(fmt.Sprint(i)), data)
	}
}

// TestPutBytes: PutBytes keeps the caller's slice itself, with Put's checks.
func TestPutBytes(t *testing.T) {
	tr, _ := New(Options{Limit: 1 << 20})
	ctx := context.Background()
	b := tiertest.Data(1, 5000)
	k := tiertest.Key("adopted")
	info, err := tr.PutBytes(ctx, k, b, tiers.Meta{Size: int64(len(b)), Sum: digest.Of(b), Verified: true})
	if err != nil || info.Size != int64(len(b)) || info.Sum != digest.Of(b) {
		t.Fatalf("PutBytes = %+v, %v", info, err)
	}
	if !bytes.Equal(tiertest.Get(t, tr, k), b) {
		t.Fatal("read back other bytes")
	}
	el := tr.entries[k]
	if d := el.Value.(*entry).data; &d[0] != &b[0] {
		t.Error("PutBytes stored a copy")
	}
	if u := tr.Usage(); u.Bytes != int64(len(b)) {
		t.Errorf("usage %d bytes, want %d", u.Bytes, len(b))
	}
	for _, c := range []struct {
		name string
		k    digest.Key
		b    []byte
		m    tiers.Meta
		want error
	}{
		{"existing", k, b, tiers.Meta{Size: int64(len(b))}, tiers.ErrExist},
		{"wrong sum", tiertest.Key("sum"), b, tiers.Meta{Size: int64(len(b)), Sum: digest.Of(nil)}, tiers.ErrCorrupt},
		{"wrong size", tiertest.Key("size"), b, tiers.Meta{Size: 10}, tiers.ErrCorrupt},
		{"too large", tiertest.Key("big"), tiertest.Data(2, 300<<10), tiers.UnknownMeta, tiers.ErrNoSpace},
	} {
		if _, err := tr.PutBytes(ctx, c.k, c.b, c.m); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	if u := tr.Usage(); u.Entries != 1 {
		t.Errorf("%d entries after refused puts, want 1", u.Entries)
	}
}

// TestClosed: every call on a closed tier says it is closed, not that the
// key is missing: a caller must not take a closed tier for an empty one.
func TestClosed(t *testing.T) {
	tr, err := New(Options{Name: "ram", Limit: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	k := tiertest.Key("closed")
	tiertest.Put(t, tr, k, []byte("v"))
	tr.Close()
	ctx := context.Background()
	if _, err := tr.Stat(ctx, k); !errors.Is(err, tiers.ErrClosed) {
		t.Errorf("stat: %v", err)
	}
	if _, err := tr.Open(ctx, k); !errors.Is(err, tiers.ErrClosed) {
		t.Errorf("open: %v", err)
	}
	if err := tr.Delete(ctx, k); !errors.Is(err, tiers.ErrClosed) {
		t.Errorf("delete: %v", err)
	}
	if err := tr.List(ctx, func(tiers.Info) error { return nil }); !errors.Is(err, tiers.ErrClosed) {
		t.Errorf("list: %v", err)
	}
}
