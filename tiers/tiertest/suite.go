// Package tiertest is the conformance suite every tier passes. A tier's test
// file calls Run with a constructor; see tiers/memory for the shortest one.
// Run checks the tiers.Tier contract, then that of each optional interface
// of tiers/tier.go the tier implements (optional.go); Options says what the
// suite cannot find out by type assertion (durability, a byte limit). The
// helpers (Key, Data, Put, Get, Eventually) serve the tiers' own tests too.
package tiertest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
)

// Factory makes a new, empty tier that admits values of at least 128 MiB.
// The suite closes it.
type Factory func(t *testing.T) tiers.Tier

// Options lets a tier skip what it cannot do and tells the suite what it
// needs to know of the tier that the interfaces do not say.
type Options struct {
	// MaxSize caps the largest value the suite puts (default 100 MiB + 1).
	MaxSize int64
	// Reopen, for a tier that keeps its entries across Close, closes tr
	// and opens the same store again, as the next process would. The
	// suite closes the tier it returns. Nil: the tier keeps nothing, and
	// the suite does not check durability.
	Reopen func(t *testing.T, tr tiers.Tier) tiers.Tier
	// NewBounded, for a tier that evicts to stay under a byte limit, makes
	// a new, empty tier that holds values whose sizes add up to at most
	// limit, and exactly limit too; the suite closes it. The suite passes
	// 1 MiB and puts values of 64 KiB. Nil: the tier has no limit, and the
	// suite does not check eviction and pinning.
	NewBounded func(t *testing.T, limit int64) tiers.Tier
}

// Key returns a deterministic valid key for tests.
func Key(s string) digest.Key {
	sum := sha256.Sum256([]byte(s))
	return digest.MustParse(fmt.Sprintf("%x", sum))
}

// Data returns n deterministic pseudo-random bytes for seed.
func Data(seed uint64, n int64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// Put stores b under k with its full meta and fails the test on error.
func Put(t testing.TB, tr tiers.Tier, k digest.Key, b []byte) tiers.Info {
	t.Helper()
	info, err := tr.Put(context.Background(), k, bytes.NewReader(b), tiers.Meta{Size: int64(len(b)), Sum: digest.Of(b)})
	if err != nil {
		t.Fatalf("put %s (%d bytes): %v", k, len(b), err)
	}
	return info
}

// Get reads all of k and fails the test on error.
func Get(t testing.TB, tr tiers.Tier, k digest.Key) []byte {
	t.Helper()
	r, err := tr.Open(context.Background(), k)
	if err != nil {
		t.Fatalf("open %s: %v", k, err)
	}
	defer r.Close()
	b, err := tiers.ReadAll(r)
	if err != nil {
		t.Fatalf("read %s: %v", k, err)
	}
	return b
}

// Eventually polls cond until it holds and fails the test if it does not
// within a minute. The bound only ends a test that would otherwise hang: it
// is not a figure the test checks, so a loaded machine does not fail it.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Run runs the conformance suite.
func Run(t *testing.T, newTier Factory, opt Options) {
	if opt.MaxSize == 0 {
		opt.MaxSize = 100<<20 + 1
	}
	ctx := context.Background()

	t.Run("VerifiedPut", func(t *testing.T) {
		tr := newTier(t)
		defer tr.Close()
		for i, size := range []int{0, 1, 300 << 10} {
			b := Data(uint64(40+i), int64(size))
			k := Key(fmt.Sprint("verified", i))
			m := tiers.Meta{Size: int64(size), Sum: digest.Of(b), Verified: true}
			info, err := tr.Put(ctx, k, bytes.NewReader(b), m)
			if err != nil {
				t.Fatalf("verified put of %d bytes: %v", size, err)
			}
			if info.Size != int64(size) || info.Sum != m.Sum {
				t.Fatalf("verified put of %d bytes: info %+v", size, info)
			}
			if got := Get(t, tr, k); !bytes.Equal(got, b) {
				t.Fatalf("verified put of %d bytes reads back %d different bytes", size, len(got))
			}
		}
		// The size is checked all the same: a verified put of more or
		// fewer bytes than announced stores nothing.
		for i, size := range []int64{1 << 10, 2<<20 + 3} {
			b := Data(uint64(50+i), size)
			for _, announced := range []int64{size - 1, size + 1} {
				k := Key(fmt.Sprint("verified-size", i, announced))
				m := tiers.Meta{Size: announced, Sum: digest.Of(b), Verified: true}
				if _, err := tr.Put(ctx, k, bytes.NewReader(b), m); !errors.Is(err, tiers.ErrCorrupt) {
					t.Fatalf("verified put of %d bytes announced as %d: err %v, want ErrCorrupt", size, announced, err)
				}
				if _, err := tr.Stat(ctx, k); !errors.Is(err, tiers.ErrNotFound) {
					t.Fatalf("verified put of %d bytes announced as %d left an entry: %v", size, announced, err)
				}
			}
		}
	})

	t.Run("RoundTrip", func(t *testing.T) {
		tr := newTier(t)
		defer tr.Close()
		for i, n := range []int64{0, 1, 1<<20 + 1, opt.MaxSize} {
			k := Key(fmt.Sprint("roundtrip", i))
			b := Data(uint64(i), n)
			before := time.Now().Add(-time.Second)
			info := Put(t, tr, k, b)
			if info.Size != n || info.Sum != digest.Of(b) || info.Key != k {
				t.Fatalf("put info = %+v, want size %d", info, n)
			}
			st, err := tr.Stat(ctx, k)
			if err != nil {
				t.Fatalf("stat: %v", err)
			}
			if st.Size != n || st.Key != k || (!st.Sum.IsZero() && st.Sum != digest.Of(b)) {
				t.Fatalf("stat = %+v", st)
			}
			if st.Created.Before(before) {
				t.Fatalf("created %v is before the put", st.Created)
			}
			if got := Get(t, tr, k); !bytes.Equal(got, b) {
				t.Fatalf("size %d: read differs", n)
			}
			checkReadAt(t, tr, k, b)
		}
	})

	t.Run("NotFound", func(t *testing.T) {
		tr := newTier(t)
		defer tr.Close()
		k := Key("missing")
		if _, err := tr.Stat(ctx, k); !errors.Is(err, tiers.ErrNotFound) {
			t.Fatalf("stat missing: %v", err)
		}
		if _, err := tr.Open(ctx, k); !errors.Is(err, tiers.ErrNotFound) {
			t.Fatalf("open missing: %v", err)
		}
		if err := tr.Delete(ctx, k); !errors.Is(err, tiers.ErrNotFound) {
			t.Fatalf("delete missing: %v", err)
		}
		var te *tiers.Error
		_, err := tr.Stat(ctx, k)
		if !errors.As(err, &te) || te.Tier != tr.Name() || te.Key != k {
			t.Fatalf("error %v does not name tier %q and key", err, tr.Name())
		}
	})

	t.Run("FirstWriterWins", func(t *testing.T) {
		tr := newTier(t)
		defer tr.Close()
		k := Key("fww")
		a, b := Data(1, 1000), Data(2, 1000)
		Put(t, tr, k, a)
		_, err := tr.Put(ctx, k, bytes.NewReader(b), tiers.Meta{Size: 1000, Sum: digest.Of(b)})
		if !errors.Is(err, tiers.ErrExist) {
			t.Fatalf("second put: %v, want ErrExist", err)
		}
		if !bytes.Equal(Get(t, tr, k), a) {
			t.Fatal("second put changed the entry")
		}
	})

	t.Run("DeleteThenMissing", func(t *testing.T) {
		tr := newTier(t)
		defer tr.Close()
		k := Key("del")
		b := Data(3, 70000)
		Put(t, tr, k, b)
		r, err := tr.Open(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if err := tr.Delete(ctx, k); err != nil {
			t.Fatalf("delete: %v", err)
		}
		if _, err := tr.Stat(ctx, k); !errors.Is(err, tiers.ErrNotFound) {
			t.Fatalf("stat after delete: %v", err)
		}
		if _, err := tr.Open(ctx, k); !errors.Is(err, tiers.ErrNotFound) {
			t.Fatalf("open after delete: %v", err)
		}
		// A reader opened before the delete reads the old value or fails; it never returns other bytes.
		got := make([]byte, len(b))
		if n, err := r.ReadAt(got, 0); err == nil || err == io.EOF {
			if !bytes.Equal(got[:n], b[:n]) {
				t.Fatal("reader opened before delete returned other bytes")
			}
		}
		// The key can be written again.
		b2 := Data(4, 10)
		Put(t, tr, k, b2)
		if !bytes.Equal(Get(t, tr, k), b2) {
			t.Fatal("re-put after delete")
		}
	})

	t.Run("List", func(t *testing.T) {
		tr := newTier(t)
		defer tr.Close()
		want := map[digest.Key]int64{}
		for i := range 50 {
			k := Key(fmt.Sprint("list", i))
			want[k] = int64(i * 10)
			Put(t, tr, k, Data(uint64(i), int64(i*10)))
		}
		got := map[digest.Key]int64{}
		if err := tr.List(ctx, func(in tiers.Info) error { got[in.Key] = in.Size; return nil }); err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("list has %d entries, want %d", len(got), len(want))
		}
		for k, n := range want {
			if got[k] != n {
				t.Fatalf("list size of %s = %d, want %d", k, got[k], n)
			}
		}
		stop := errors.New("stop")
		calls := 0
		if err := tr.List(ctx, func(tiers.Info) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
			t.Fatalf("list did not stop at the callback's error: %v after %d calls", err, calls)
		}
	})

	t.Run("FailedPutLeavesNothing", func(t *testing.T) {
		tr := newTier(t)
		defer tr.Close()
		b := Data(5, 3<<20)
		cases := []struct {
			name string
			r    io.Reader
			m    tiers.Meta
			want error
		}{
			{"reader error", io.MultiReader(bytes.NewReader(b[:2<<20]), errReader{}), tiers.UnknownMeta, errBoom},
			{"short", bytes.NewReader(b[:1<<20]), tiers.Meta{Size: int64(len(b))}, tiers.ErrCorrupt},
			{"long", bytes.NewReader(b), tiers.Meta{Size: 1 << 20}, tiers.ErrCorrupt},
			{"bad sum", bytes.NewReader(b), tiers.Meta{Size: int64(len(b)), Sum: digest.Of(b[1:])}, tiers.ErrCorrupt},
			// Verified vouches for the sum, not for the size.
			{"verified short", bytes.NewReader(b[:1<<20]), tiers.Meta{Size: int64(len(b)), Sum: digest.Of(b), Verified: true}, tiers.ErrCorrupt},
			{"verified long", bytes.NewReader(b), tiers.Meta{Size: 1 << 20, Sum: digest.Of(b[:1<<20]), Verified: true}, tiers.ErrCorrupt},
		}
		for i, c := range cases {
			k := Key(fmt.Sprint("failed", i))
			_, err := tr.Put(ctx, k, c.r, c.m)
			if !errors.Is(err, c.want) {
				t.Fatalf("%s: put error %v, want %v", c.name, err, c.want)
			}
			if _, err := tr.Stat(ctx, k); !errors.Is(err, tiers.ErrNotFound) {
				t.Fatalf("%s: entry visible after failed put: %v", c.name, err)
			}
			if _, err := tr.Open(ctx, k); !errors.Is(err, tiers.ErrNotFound) {
				t.Fatalf("%s: open after failed put: %v", c.name, err)
			}
			// A later good put of the same key works.
			Put(t, tr, k, b[:100])
		}
		n := 0
		tr.List(ctx, func(tiers.Info) error { n++; return nil })
		if n != len(cases) {
			t.Fatalf("list shows %d entries after failed puts, want %d", n, len(cases))
		}
	})

	t.Run("Reopen", func(t *testing.T) {
		if opt.Reopen == nil {
			t.Skip("the tier keeps nothing across Close (Options.Reopen is nil)")
		}
		tr := newTier(t)
		defer func() { tr.Close() }()
		vals := map[digest.Key][]byte{}
		infos := map[digest.Key]tiers.Info{}
		for i, n := range []int64{0, 1, 300 << 10, 3<<20 + 5} {
			k := Key(fmt.Sprint("reopen", i))
			vals[k] = Data(uint64(60+i), n)
			infos[k] = Put(t, tr, k, vals[k])
		}
		gone := Key("reopen-deleted")
		Put(t, tr, gone, Data(70, 1000))
		if err := tr.Delete(ctx, gone); err != nil {
			t.Fatal(err)
		}
		tr = opt.Reopen(t, tr)
		for k, b := range vals {
			st, err := tr.Stat(ctx, k)
			if err != nil {
				t.Fatalf("stat after reopen: %v", err)
			}
			if want := infos[k]; st.Key != k || st.Size != want.Size || (!st.Sum.IsZero() && st.Sum != want.Sum) || !st.Created.Equal(want.Created) {
				t.Fatalf("stat after reopen = %+v, the put returned %+v", st, want)
			}
			if got := Get(t, tr, k); !bytes.Equal(got, b) {
				t.Fatalf("%d bytes read back after reopen differ", len(b))
			}
		}
		if _, err := tr.Stat(ctx, gone); !errors.Is(err, tiers.ErrNotFound) {
			t.Fatalf("entry deleted before reopen: stat %v, want ErrNotFound", err)
		}
		n := 0
		if err := tr.List(ctx, func(tiers.Info) error { n++; return nil }); err != nil || n != len(vals) {
			t.Fatalf("list after reopen: %d entries, %v; want %d", n, err, len(vals))
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		tr := newTier(t)
		defer tr.Close()
		const workers, keys = 8, 6
		vals := make([][]byte, keys)
		for i := range vals {
			vals[i] = Data(uint64(100+i), int64(1000+i*50000))
		}
		var wg sync.WaitGroup
		errs := make(chan error, workers*keys*2)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range keys {
					i := (w + j) % keys
					k := Key(fmt.Sprint("conc", i))
					_, err := tr.Put(ctx, k, bytes.NewReader(vals[i]), tiers.Meta{Size: int64(len(vals[i])), Sum: digest.Of(vals[i])})
					if err != nil && !errors.Is(err, tiers.ErrExist) {
						errs <- fmt.Errorf("put: %w", err)
						continue
					}
					r, err := tr.Open(ctx, k)
					if err != nil {
						errs <- fmt.Errorf("open after put: %w", err)
						continue
					}
					got, err := tiers.ReadAll(r)
					r.Close()
					if err != nil || !bytes.Equal(got, vals[i]) {
						errs <- fmt.Errorf("read %d: %v, equal=%v", i, err, bytes.Equal(got, vals[i]))
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	runOptional(t, newTier, opt)
}

// checkReadAt reads b's entry at assorted offsets and lengths.
func checkReadAt(t *testing.T, tr tiers.Tier, k digest.Key, b []byte) {
	t.Helper()
	r, err := tr.Open(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	n := int64(len(b))
	if r.Info().Size != n {
		t.Fatalf("reader size %d, want %d", r.Info().Size, n)
	}
	rnd := rand.New(rand.NewPCG(uint64(n), 7))
	for range 20 {
		var off, l int64
		if n > 0 {
			off = rnd.Int64N(n)
			l = rnd.Int64N(min(n-off, 3<<20) + 1)
		}
		buf := make([]byte, l)
		m, err := r.ReadAt(buf, off)
		if int64(m) != l || (err != nil && !(err == io.EOF && off+l == n)) {
			t.Fatalf("ReadAt(%d bytes at %d) of %d = %d, %v", l, off, n, m, err)
		}
		if !bytes.Equal(buf, b[off:off+l]) {
			t.Fatalf("ReadAt(%d at %d): wrong bytes", l, off)
		}
	}
	// Past the end.
	buf := make([]byte, 10)
	if m, err := r.ReadAt(buf, n); m != 0 || err != io.EOF {
		t.Fatalf("ReadAt at end = %d, %v; want 0, EOF", m, err)
	}
	// Spanning the end.
	if n >= 5 {
		m, err := r.ReadAt(buf, n-5)
		if m != 5 || err != io.EOF || !bytes.Equal(buf[:5], b[n-5:]) {
			t.Fatalf("ReadAt spanning end = %d, %v", m, err)
		}
	}
}

var errBoom = errors.New("boom: reader failed midway")

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errBoom }
