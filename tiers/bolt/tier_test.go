package bolt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

var ctx = context.Background()

func put(t testing.TB, tr *Tier, k digest.Key, b []byte, pending bool) error {
	t.Helper()
	_, err := tr.Put(ctx, k, bytes.NewReader(b), tiers.Meta{Size: int64(len(b)), Sum: digest.Of(b), Pending: pending})
	return err
}

func mustPut(t testing.TB, tr *Tier, k digest.Key, b []byte, pending bool) {
	t.Helper()
	if err := put(t, tr, k, b, pending); err != nil {
		t.Fatalf("put %s (%d bytes): %v", k, len(b), err)
	}
}

func has(t testing.TB, tr *Tier, k digest.Key) bool {
	t.Helper()
	_, err := tr.Stat(ctx, k)
	if err != nil && !errors.Is(err, tiers.ErrNotFound) {
		t.Fatalf("stat %s: %v", k, err)
	}
	return err == nil
}

// scan sums the entries List shows.
func scan(t testing.TB, tr *Tier) (n, size int64) {
	t.Helper()
	if err := tr.List(ctx, func(in tiers.Info) error { n++; size += in.Size; return nil }); err != nil {
		t.Fatal(err)
	}
	return n, size
}

func checkUsage(t testing.TB, tr *Tier) {
	t.Helper()
	u := tr.Usage()
	n, size := scan(t, tr)
	if u.Entries != n || u.Bytes != size {
		t.Fatalf("usage %+v, scan finds %d entries of %d bytes", u, n, size)
	}
	if u.Limit > 0 && u.Bytes > u.Limit {
		t.Fatalf("usage %+v is over the limit", u)
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(filepath.Dir(tr.path), &fs); err != nil {
		t.Fatal(err)
	}
	// What df says of the disk, give or take what it gained or lost since.
	if disk := int64(fs.Bavail) * fs.Bsize; u.DiskFree <= 0 || u.DiskFree > disk+64<<20 || u.DiskFree < disk-64<<20 {
		t.Fatalf("usage says %d bytes free on the disk, statfs %d", u.DiskFree, disk)
	}
}

func TestEviction(t *testing.T) {
	const limit = 1 << 20
	tr := newTier(t, Options{Limit: limit, ChunkSize: 16 << 10})
	rnd := rand.New(rand.NewPCG(1, 2))
	hot := tiertest.Key("hot")
	hotData := tiertest.Data(0, 100_000)
	mustPut(t, tr, hot, hotData, false)
	var total int64
	var keys []digest.Key
	for i := 0; total < 10*limit; i++ {
		k := tiertest.Key(fmt.Sprint("evict", i))
		b := tiertest.Data(uint64(i), 1+rnd.Int64N(300_000))
		mustPut(t, tr, k, b, false)
		total += int64(len(b))
		keys = append(keys, k)
		if u := tr.Usage(); u.Bytes > limit {
			t.Fatalf("after put %d: %d bytes held, limit %d", i, u.Bytes, limit)
		}
		if !has(t, tr, k) {
			t.Fatalf("put %d was evicted at once", i)
		}
		// Read the hot entry after every put: it must never be the least recently used.
		r, err := tr.Open(ctx, hot)
		if err != nil {
			t.Fatalf("hot entry gone after put %d: %v", i, err)
		}
		buf := make([]byte, 10)
		if _, err := r.ReadAt(buf, 5000); err != nil || !bytes.Equal(buf, hotData[5000:5010]) {
			t.Fatalf("hot read: %v", err)
		}
		r.Close()
	}
	present := 0
	for _, k := range keys {
		if has(t, tr, k) {
			present++
		}
	}
	u := tr.Usage()
	if want := int64(len(keys) - present); u.Evictions != want || want == 0 {
		t.Fatalf("evictions %d, %d of %d puts are gone", u.Evictions, want, len(keys))
	}
	// The most recent puts survive: eviction is in LRU order.
	if !has(t, tr, keys[len(keys)-1]) || !has(t, tr, keys[len(keys)-2]) {
		t.Fatal("the last puts were evicted")
	}
	checkUsage(t, tr)
	t.Logf("%d puts of %d bytes in all, %d left, %+v", len(keys), total, present, u)

	// Evictions are persisted; access times too (Close flushes them).
	path := tr.Path()
	tr.Close()
	tr2, err := Open(path, Options{Limit: limit})
	if err != nil {
		t.Fatal(err)
	}
	defer tr2.Close()
	if u2 := tr2.Usage(); u2.Evictions != u.Evictions || u2.Bytes != u.Bytes || u2.Entries != u.Entries {
		t.Fatalf("after reopen %+v, before %+v", u2, u)
	}
	// The hot entry was read last: after the next put that needs room, it survives.
	mustPut(t, tr2, tiertest.Key("after reopen"), tiertest.Data(7, 500_000), false)
	if !has(t, tr2, hot) {
		t.Fatal("hot entry evicted after reopen: access times were not persisted")
	}
}

func TestEvictionSmallerLimitAtOpen(t *testing.T) {
	tr := newTier(t, Options{})
	for i := range 10 {
		mustPut(t, tr, tiertest.Key(fmt.Sprint("shrink", i)), tiertest.Data(uint64(i), 100_000), false)
	}
	path := tr.Path()
	tr.Close()
	tr2, err := Open(path, Options{Limit: 350_000})
	if err != nil {
		t.Fatal(err)
	}
	defer tr2.Close()
	if u := tr2.Usage(); u.Bytes != 300_000 || u.Evictions != 7 {
		t.Fatalf("usage after opening with a smaller limit: %+v", u)
	}
	for i := 7; i < 10; i++ {
		if !has(t, tr2, tiertest.Key(fmt.Sprint("shrink", i))) {
			t.Fatalf("entry %d (among the newest) was evicted", i)
		}
	}
}

func TestPinned(t *testing.T) {
	const limit = 1 << 20
	tr := newTier(t, Options{Limit: limit})
	var pinned []digest.Key
	for i := range 4 {
		k := tiertest.Key(fmt.Sprint("pinned", i))
		mustPut(t, tr, k, tiertest.Data(uint64(i), limit/4), true)
		pinned = append(pinned, k)
	}
	one := []byte{1}
	for _, c := range []struct {
		name string
		m    tiers.Meta
	}{
		{"known size", tiers.Meta{Size: 1}},
		{"unknown size", tiers.UnknownMeta},
		{"pending", tiers.Meta{Size: 1, Pending: true}},
	} {
		_, err := tr.Put(ctx, tiertest.Key("one"), bytes.NewReader(one), c.m)
		if !errors.Is(err, tiers.ErrNoSpace) {
			t.Fatalf("%s: put into a tier full of pinned entries: %v, want ErrNoSpace", c.name, err)
		}
	}
	if has(t, tr, tiertest.Key("one")) {
		t.Fatal("failed put left an entry")
	}
	// Larger than the limit, whatever is held.
	big := tiertest.Data(9, limit+1)
	for _, m := range []tiers.Meta{{Size: limit + 1}, tiers.UnknownMeta} {
		if _, err := tr.Put(ctx, tiertest.Key("big"), bytes.NewReader(big), m); !errors.Is(err, tiers.ErrNoSpace) {
			t.Fatalf("put larger than the limit: %v", err)
		}
	}
	for _, k := range pinned {
		if !has(t, tr, k) {
			t.Fatal("pinned entry evicted")
		}
	}
	if u := tr.Usage(); u.Evictions != 0 || u.Bytes != limit {
		t.Fatalf("usage %+v", u)
	}
	// Uploaded unpins: the next put evicts it, and only it.
	if err := tr.Uploaded(ctx, pinned[2]); err != nil {
		t.Fatal(err)
	}
	mustPut(t, tr, tiertest.Key("after upload"), tiertest.Data(10, 100_000), false)
	if has(t, tr, pinned[2]) {
		t.Fatal("uploaded entry not evicted")
	}
	for _, i := range []int{0, 1, 3} {
		if !has(t, tr, pinned[i]) {
			t.Fatalf("pinned entry %d evicted", i)
		}
	}
	if u := tr.Usage(); u.Evictions != 1 {
		t.Fatalf("usage %+v, want 1 eviction", u)
	}
	checkUsage(t, tr)
}

func TestQueue(t *testing.T) {
	tr := newTier(t, Options{})
	k := func(i int) digest.Key { return tiertest.Key(fmt.Sprint("queue", i)) }
	for i := range 6 {
		mustPut(t, tr, k(i), tiertest.Data(uint64(i), int64(i*1000)), i != 2)
	}
	want := func(tr *Tier, is ...int) {
		t.Helper()
		got, err := tr.Pending(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var w []digest.Key
		for _, i := range is {
			w = append(w, k(i))
		}
		if fmt.Sprint(got) != fmt.Sprint(w) {
			t.Fatalf("pending %v, want %v", got, w)
		}
		for i := range 6 {
			if p, q := tr.IsPending(k(i)), strings.Contains(fmt.Sprint(w), k(i).String()); p != q {
				t.Fatalf("IsPending(%d) = %v", i, p)
			}
		}
	}
	want(tr, 0, 1, 3, 4, 5)
	if err := tr.Uploaded(ctx, k(1)); err != nil {
		t.Fatal(err)
	}
	want(tr, 0, 3, 4, 5)
	if !has(t, tr, k(1)) {
		t.Fatal("Uploaded removed the entry")
	}
	for _, nk := range []digest.Key{k(1), k(2), tiertest.Key("never stored")} {
		if err := tr.Uploaded(ctx, nk); err != nil {
			t.Fatalf("Uploaded of a key not queued: %v", err)
		}
	}
	if err := tr.Delete(ctx, k(4)); err != nil {
		t.Fatal(err)
	}
	want(tr, 0, 3, 5)
	// A key deleted and put again queues at the end.
	mustPut(t, tr, k(4), []byte("again"), true)
	want(tr, 0, 3, 5, 4)

	path := tr.Path()
	tr.Close()
	tr2, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tr2.Close()
	want(tr2, 0, 3, 5, 4)
	if err := tr2.Uploaded(ctx, k(0)); err != nil {
		t.Fatal(err)
	}
	want(tr2, 3, 5, 4)
	if err := tr2.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestSecondOpen(t *testing.T) {
	tr := newTier(t, Options{})
	start := time.Now()
	tr2, err := Open(tr.Path(), Options{LockTimeout: 300 * time.Millisecond})
	took := time.Since(start)
	if err == nil {
		tr2.Close()
		t.Fatal("second open of a database in use succeeded")
	}
	if !errors.Is(err, tiers.ErrUnavailable) || !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "in use by another flechefs (locked)") {
		t.Fatalf("second open: %v", err)
	}
	if took > 2*time.Second {
		t.Fatalf("second open took %v", took)
	}
	t.Logf("second open failed after %v: %v", took.Round(time.Millisecond), err)
	// Read-only opens wait for the writer too (bbolt takes a shared lock).
	if _, err := Open(tr.Path(), Options{ReadOnly: true, LockTimeout: 100 * time.Millisecond}); !errors.Is(err, tiers.ErrUnavailable) {
		t.Fatalf("read-only open of a database in use: %v", err)
	}
	tr.Close()
	tr3, err := Open(tr.Path(), Options{LockTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	tr3.Close()
}

// corruptChunk rewrites chunk idx of the entry with the given id in the
// closed database at path.
func corruptChunk(t *testing.T, path string, id uint64, idx uint32, fn func([]byte) []byte) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketChunks)
		v := b.Get(chunkKey(id, idx))
		if v == nil {
			return fmt.Errorf("no chunk %d of %d", idx, id)
		}
		return b.Put(chunkKey(id, idx), fn(bytes.Clone(v)))
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestCorruptChunk(t *testing.T) {
	const cs = 16 << 10
	for _, c := range []struct {
		name string
		fn   func([]byte) []byte
	}{
		{"flipped byte", func(b []byte) []byte { b[100] ^= 0x40; return b }},
		{"flipped crc", func(b []byte) []byte { b[0] ^= 1; return b }},
		{"truncated", func(b []byte) []byte { return b[:len(b)-1] }},
	} {
		// A read of part of a chunk checks it in the map, one of whole
		// chunks in what pread read (preadChunk): both find the damage.
		for _, whole := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/whole=%v", c.name, whole), func(t *testing.T) {
				tr := newTier(t, Options{ChunkSize: cs})
				k := tiertest.Key("corrupt")
				b := tiertest.Data(1, 3*cs+100)
				mustPut(t, tr, k, b, false)
				rec, err := tr.lookup(ctx, k)
				if err != nil {
					t.Fatal(err)
				}
				path := tr.Path()
				tr.Close()
				corruptChunk(t, path, rec.id, 1, c.fn)

				tr, err = Open(path, Options{ChunkSize: cs})
				if err != nil {
					t.Fatal(err)
				}
				defer tr.Close()
				r, err := tr.Open(ctx, k)
				if err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 100)
				if _, err := r.ReadAt(buf, 10); err != nil || !bytes.Equal(buf, b[10:110]) {
					t.Fatalf("read of a good chunk: %v", err)
				}
				bad, at := buf, int64(cs+cs/2)
				if whole {
					bad, at = make([]byte, 2*cs), 0
				}
				if _, err := r.ReadAt(bad, at); !errors.Is(err, tiers.ErrCorrupt) {
					t.Fatalf("read of a corrupt chunk: %v, want ErrCorrupt", err)
				}
				// A range that spans into the bad chunk fails too.
				if _, err := tiers.ReadAll(r); !errors.Is(err, tiers.ErrCorrupt) && !errors.Is(err, tiers.ErrNotFound) {
					t.Fatalf("ReadAll: %v", err)
				}
				// The bad copy is not served again.
				if _, err := tr.Stat(ctx, k); !errors.Is(err, tiers.ErrNotFound) {
					t.Fatalf("stat after corruption: %v", err)
				}
				if err := tr.Check(); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

func TestReadOnly(t *testing.T) {
	tr := newTier(t, Options{})
	k := tiertest.Key("ro")
	b := tiertest.Data(1, 300_000)
	mustPut(t, tr, k, b, true)
	path := tr.Path()
	tr.Close()
	ro, err := Open(path, Options{ReadOnly: true, Name: "ro"})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if got := tiertest.Get(t, ro, k); !bytes.Equal(got, b) {
		t.Fatal("read-only read differs")
	}
	if !ro.IsPending(k) {
		t.Fatal("IsPending in read-only tier")
	}
	if err := put(t, ro, tiertest.Key("new"), []byte("x"), false); !errors.Is(err, tiers.ErrReadOnly) {
		t.Fatalf("put: %v", err)
	}
	if err := ro.Delete(ctx, k); !errors.Is(err, tiers.ErrReadOnly) {
		t.Fatalf("delete: %v", err)
	}
	if err := ro.Uploaded(ctx, k); !errors.Is(err, tiers.ErrReadOnly) {
		t.Fatalf("uploaded: %v", err)
	}
	if err := ro.Check(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "missing.db"), Options{ReadOnly: true}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("read-only open of a missing file: %v", err)
	}
}

func TestWriteTo(t *testing.T) {
	tr := newTier(t, Options{ChunkSize: 64 << 10})
	for i, n := range []int64{0, 1, 64 << 10, 9<<20 + 17} {
		k := tiertest.Key(fmt.Sprint("writeto", i))
		b := tiertest.Data(uint64(i), n)
		mustPut(t, tr, k, b, false)
		r, err := tr.Open(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		m, err := r.(io.WriterTo).WriteTo(&out)
		if err != nil || m != n || !bytes.Equal(out.Bytes(), b) {
			t.Fatalf("WriteTo of %d bytes: %d, %v, equal %v", n, m, err, bytes.Equal(out.Bytes(), b))
		}
		r.Close()
	}
}

func TestClosed(t *testing.T) {
	tr := newTier(t, Options{})
	k := tiertest.Key("closed")
	mustPut(t, tr, k, []byte("hello"), false)
	r, err := tr.Open(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadAt(make([]byte, 2), 0); !errors.Is(err, tiers.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	if _, err := tr.Stat(ctx, k); !errors.Is(err, tiers.ErrClosed) {
		t.Fatalf("stat after close: %v", err)
	}
	if err := put(t, tr, tiertest.Key("x"), []byte("x"), false); !errors.Is(err, tiers.ErrClosed) {
		t.Fatalf("put after close: %v", err)
	}
}

// bulkLoad publishes n entries of size bytes, many per transaction,
// through the same publish as Put.
func bulkLoad(t testing.TB, tr *Tier, prefix string, n, size int) {
	t.Helper()
	// Keys are random: inserted into one transaction they pile up in one
	// B+tree node until commit, at a cost quadratic in their number.
	const perTx = 2000
	for start := 0; start < n; start += perTx {
		end := min(n, start+perTx)
		err := tr.commit(0, func(w *wtx) error {
			for i := start; i < end; i++ {
				b := make([]byte, crcLen+size)
				copy(b[crcLen:], fmt.Sprint(i))
				sealChunk(b)
				e := &newEntry{
					key: tiertest.Key(fmt.Sprint(prefix, i)), size: int64(size), sum: digest.Of(b[crcLen:]),
					created: nowNano(), chunk: uint32(tr.chunk),
				}
				if size > 0 {
					e.chunks = [][]byte{b}
				}
				if err := w.publish(e); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// timeOpen returns the fastest of three opens of path.
func timeOpen(t testing.TB, path string) time.Duration {
	t.Helper()
	best := time.Hour
	for range 3 {
		start := time.Now()
		tr, err := Open(path, Options{})
		d := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		tr.Close()
		best = min(best, d)
	}
	return best
}

func TestOpenDoesNotScan(t *testing.T) {
	tr := newTier(t, Options{})
	const n = 2000
	bulkLoad(t, tr, "open", n, 16)
	// A stats record that disagrees with the entries: an open that counted
	// them would show n, one that trusts the record (no scan) shows n+7.
	// The record is set right again at the end, for the check newTier's
	// cleanup makes.
	setEntries := func(from, to int64) {
		err := tr.db.Update(func(tx *bolt.Tx) error {
			m := tx.Bucket(bucketMeta)
			st, err := decodeStats(m.Get(metaStats))
			if err != nil {
				return err
			}
			if st.entries != from {
				return fmt.Errorf("stats record says %d entries, want %d", st.entries, from)
			}
			st.entries = to
			return m.Put(metaStats, st.encode())
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	setEntries(n, n+7)
	path := tr.Path()
	tr.Close()
	tr, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if u := tr.Usage(); u.Entries != n+7 {
		t.Fatalf("usage after reopen: %d entries, want the record's %d: the open counted them", u.Entries, n+7)
	}
	setEntries(n+7, n)
}

// TestOpen1M needs FLECHEFS_LONG=1: it loads a million entries (a minute
// under the race detector, seconds without) and checks Open stays fast.
func TestOpen1M(t *testing.T) {
	if os.Getenv("FLECHEFS_LONG") == "" {
		t.Skip("set FLECHEFS_LONG=1")
	}
	path := filepath.Join(t.TempDir(), "1m.db")
	tr, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	const n = 1_000_000
	start := time.Now()
	bulkLoad(t, tr, "1m", n, 16)
	t.Logf("loaded %d entries in %v: %+v", n, time.Since(start), tr.Usage())
	tr.Close()
	d := timeOpen(t, path)
	t.Logf("open of %d entries: %v", n, d)
	if d > time.Second {
		t.Fatalf("open of %d entries took %v", n, d)
	}
	tr, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if u := tr.Usage(); u.Entries != n {
		t.Fatalf("usage %+v", u)
	}
}

func TestClassifyNoSpace(t *testing.T) {
	tr := newTier(t, Options{})
	for _, err := range []error{
		&os.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC},
		fmt.Errorf("file resize error: %s", syscall.ENOSPC), // bbolt drops the errno
		syscall.EDQUOT,
	} {
		if got := tr.classify(err); !errors.Is(got, tiers.ErrNoSpace) {
			t.Errorf("classify(%v) = %v, want ErrNoSpace", err, got)
		}
	}
	if got := tr.classify(bolt.ErrDatabaseNotOpen); !errors.Is(got, tiers.ErrClosed) {
		t.Errorf("classify(%v) = %v", bolt.ErrDatabaseNotOpen, got)
	}
}

// streamReader produces n bytes without holding them.
type streamReader struct {
	block []byte
	n     int64
}

func (r *streamReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, io.EOF
	}
	m := copy(p[:min(int64(len(p)), r.n)], r.block[r.n%int64(len(r.block)):])
	r.n -= int64(m)
	return m, nil
}

// TestLargePutMemory puts a 128 MiB value from a stream and checks the heap
// stays far below its size: the value is staged 8 MiB per transaction.
func TestLargePutMemory(t *testing.T) {
	tr := newTier(t, Options{})
	const size = 128 << 20
	block := tiertest.Data(1, 1<<20+13)
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	k := tiertest.Key("large")
	info, err := tr.Put(ctx, k, &streamReader{block: block, n: size}, tiers.UnknownMeta)
	close(stop)
	<-sampled
	if err != nil {
		t.Fatal(err)
	}
	grew := int64(peak.Load()) - int64(base.HeapInuse)
	t.Logf("put of %d MiB: heap in use grew by at most %.1f MiB", size>>20, mib(grew))
	if grew > 64<<20 {
		t.Fatalf("heap grew by %d MiB for a %d MiB put", grew>>20, size>>20)
	}
	h := digest.NewHasher()
	r, err := tr.Open(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.(io.WriterTo).WriteTo(h); err != nil || h.Sum() != info.Sum || h.Size() != size {
		t.Fatalf("read back: %v, %d bytes", err, h.Size())
	}
}

// TestGroupCommit queues puts behind a slow transaction so that they share
// the next one, with one call among them that fails after changing the
// database: it alone fails, and its change is rolled back.
func TestGroupCommit(t *testing.T) {
	tr := newTier(t, Options{})
	started := make(chan struct{})
	go tr.commit(0, func(*wtx) error {
		close(started)
		time.Sleep(200 * time.Millisecond)
		return nil
	})
	<-started
	boom := errors.New("boom")
	errs := make(chan error, 10)
	for i := range 10 {
		go func() {
			if i == 5 {
				errs <- tr.commit(0, func(w *wtx) error {
					if err := w.meta.Put([]byte("junk"), []byte("x")); err != nil {
						return err
					}
					return boom
				})
				return
			}
			errs <- put(t, tr, tiertest.Key(fmt.Sprint("group", i)), tiertest.Data(uint64(i), 1000), i%2 == 0)
		}()
	}
	for range 10 {
		if err := <-errs; err != nil && err != boom {
			t.Fatal(err)
		}
	}
	for i := range 10 {
		if has(t, tr, tiertest.Key(fmt.Sprint("group", i))) != (i != 5) {
			t.Fatalf("entry %d", i)
		}
	}
	tr.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketMeta).Get([]byte("junk")) != nil {
			t.Fatal("the failed call's change was committed")
		}
		return nil
	})
	if err := tr.Check(); err != nil {
		t.Fatal(err)
	}
	checkUsage(t, tr)
}

// TestConcurrentLargeSameKey races staged puts of one key: one wins, the
// others get ErrExist and leave no staged chunks.
func TestConcurrentLargeSameKey(t *testing.T) {
	tr := newTier(t, Options{})
	k := tiertest.Key("large same key")
	b := tiertest.Data(1, 10<<20)
	errs := make(chan error, 4)
	for range 4 {
		go func() { errs <- put(t, tr, k, b, false) }()
	}
	wins := 0
	for range 4 {
		switch err := <-errs; {
		case err == nil:
			wins++
		case !errors.Is(err, tiers.ErrExist):
			t.Fatal(err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d puts won", wins)
	}
	if n := stagingRecords(tr.db); n != 0 {
		t.Fatalf("%d staged puts left", n)
	}
	if err := tr.Check(); err != nil {
		t.Fatal(err)
	}
	if got := tiertest.Get(t, tr, k); !bytes.Equal(got, b) {
		t.Fatal("content differs")
	}
}

// TestChunkSizeChange reads entries written with another chunk size: each
// entry records its own.
func TestChunkSizeChange(t *testing.T) {
	tr := newTier(t, Options{ChunkSize: 16 << 10})
	k := tiertest.Key("chunk size")
	b := tiertest.Data(1, 100_000)
	mustPut(t, tr, k, b, false)
	path := tr.Path()
	tr.Close()
	tr, err := Open(path, Options{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if !bytes.Equal(tiertest.Get(t, tr, k), b) {
		t.Fatal("content differs")
	}
	k2 := tiertest.Key("chunk size 2")
	mustPut(t, tr, k2, b, false)
	if !bytes.Equal(tiertest.Get(t, tr, k2), b) {
		t.Fatal("content differs")
	}
	if err := tr.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestNotADatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "junk.db")
	if err := os.WriteFile(path, bytes.Repeat([]byte("junk"), 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, Options{}); !errors.Is(err, tiers.ErrCorrupt) {
		t.Fatalf("open of a file that is not a database: %v", err)
	}
	// A bbolt database of another program.
	other := filepath.Join(t.TempDir(), "other.db")
	db, err := bolt.Open(other, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("x")); return err })
	db.Close()
	if _, err := Open(other, Options{}); !errors.Is(err, tiers.ErrCorrupt) || !strings.Contains(err.Error(), "not a flechefs") {
		t.Fatalf("open of another program's database: %v", err)
	}
}
