package bolt

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

func benchTier(b *testing.B, opt Options) *Tier {
	b.Helper()
	tr, err := Open(filepath.Join(b.TempDir(), "bench.db"), opt)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tr.Close() })
	return tr
}

func BenchmarkPut(b *testing.B) {
	for _, size := range []int{16 << 10, 4 << 20} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			tr := benchTier(b, Options{Limit: 256 << 20})
			data := tiertest.Data(1, int64(size))
			m := tiers.Meta{Size: int64(size), Sum: digest.Of(data)}
			b.SetBytes(int64(size))
			var i int
			for b.Loop() {
				i++
				if _, err := tr.Put(ctx, tiertest.Key(fmt.Sprint("put", i)), bytes.NewReader(data), m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPutSmallConcurrent shows the group commit: puts from many
// goroutines share fsyncs.
func BenchmarkPutSmallConcurrent(b *testing.B) {
	const size = 16 << 10
	tr := benchTier(b, Options{Limit: 256 << 20})
	data := tiertest.Data(1, size)
	m := tiers.Meta{Size: size, Sum: digest.Of(data)}
	var n atomic.Int64
	b.SetBytes(size)
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			k := tiertest.Key(fmt.Sprint("conc", n.Add(1)))
			if _, err := tr.Put(ctx, k, bytes.NewReader(data), m); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkReadAt(b *testing.B) {
	const size, read = 64 << 20, 1 << 20
	tr := benchTier(b, Options{})
	k := tiertest.Key("readat")
	data := tiertest.Data(1, size)
	mustPut(b, tr, k, data, false)
	r, err := tr.Open(ctx, k)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	buf := make([]byte, read)
	rnd := rand.New(rand.NewPCG(1, 2))
	b.SetBytes(read)
	for b.Loop() {
		off := rnd.Int64N(size - read)
		if _, err := r.ReadAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWriteTo(b *testing.B) {
	const size = 64 << 20
	tr := benchTier(b, Options{})
	k := tiertest.Key("writeto")
	mustPut(b, tr, k, tiertest.Data(1, size), false)
	b.SetBytes(size)
	for b.Loop() {
		r, err := tr.Open(ctx, k)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := r.(io.WriterTo).WriteTo(io.Discard); err != nil {
			b.Fatal(err)
		}
		r.Close()
	}
}

// TestChurn puts ten times the limit through the tier in values of mixed
// sizes and reports the file size against the logical bytes held.
// FLECHEFS_LONG=1 uses a 64 MiB limit, else 32 MiB.
func TestChurn(t *testing.T) {
	limit := int64(32 << 20)
	if os.Getenv("FLECHEFS_LONG") != "" {
		limit = 64 << 20
	}
	tr := newTier(t, Options{Limit: limit})
	slab := tiertest.Data(1, 24<<20)
	rnd := rand.New(rand.NewPCG(3, 4))
	var total int64
	var puts, maxDisk int64
	for i := 0; total < 10*limit; i++ {
		var size int64
		switch p := rnd.IntN(100); {
		case p < 70:
			size = 1 + rnd.Int64N(256<<10)
		case p < 95:
			size = 256<<10 + rnd.Int64N(4<<20)
		default:
			size = 4<<20 + rnd.Int64N(min(16<<20, limit/2-4<<20))
		}
		off := rnd.Int64N(int64(len(slab)) - size)
		mustPut(t, tr, tiertest.Key(fmt.Sprint("churn", i)), slab[off:off+size], false)
		total += size
		puts++
		if i%8 == 0 {
			// Some reads, so that eviction order is not just put order.
			if r, err := tr.Open(ctx, tiertest.Key(fmt.Sprint("churn", rnd.IntN(i+1)))); err == nil {
				r.Close()
			}
		}
		u := tr.Usage()
		if u.Bytes > limit {
			t.Fatalf("over the limit: %+v", u)
		}
		maxDisk = max(maxDisk, u.DiskBytes)
	}
	u := tr.Usage()
	var used int64
	var free int
	tr.db.View(func(tx *bolt.Tx) error { used = tx.Size(); return nil })
	free = tr.db.Stats().FreePageN
	t.Logf("churned %d MiB in %d puts through a %d MiB limit: %d MiB held in %d entries, %d evictions",
		total>>20, puts, limit>>20, u.Bytes>>20, u.Entries, u.Evictions)
	t.Logf("file %.1f MiB (%.2f× the bytes held, %.2f× the limit; largest seen %.1f MiB); bbolt high-water mark %.1f MiB, %d free pages (%.1f MiB)",
		mib(u.DiskBytes), float64(u.DiskBytes)/float64(u.Bytes), float64(u.DiskBytes)/float64(limit), mib(maxDisk),
		mib(used), free, mib(int64(free)*int64(os.Getpagesize())))
	checkUsage(t, tr)
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// BenchmarkRead4MiB reads 8 values of 4 MiB back in 128 KiB reads (the
// size of the kernel's FUSE reads), as the bench's remount read does: a
// tier opened again on the file, with the file in the page cache (warm)
// or dropped from it first (cold).
func BenchmarkRead4MiB(b *testing.B) {
	const n, size, read = 8, 4 << 20, 128 << 10
	path := filepath.Join(b.TempDir(), "bench.db")
	tr, err := Open(path, Options{})
	if err != nil {
		b.Fatal(err)
	}
	keys := make([]digest.Key, n)
	for i := range keys {
		keys[i] = tiertest.Key(fmt.Sprint("4mib", i))
		mustPut(b, tr, keys[i], tiertest.Data(uint64(i), size), false)
	}
	tr.Close()
	for _, cold := range []bool{false, true} {
		name := "warm"
		if cold {
			name = "cold"
		}
		b.Run(name, func(b *testing.B) {
			buf := make([]byte, read)
			b.SetBytes(n * size)
			for b.Loop() {
				b.StopTimer()
				if cold {
					if err := dropPageCache(path); err != nil {
						b.Fatal(err)
					}
				}
				tr, err := Open(path, Options{})
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				for _, k := range keys {
					r, err := tr.Open(ctx, k)
					if err != nil {
						b.Fatal(err)
					}
					for off := int64(0); off < size; off += read {
						if _, err := r.ReadAt(buf, off); err != nil && err != io.EOF {
							b.Fatal(err)
						}
					}
					r.Close()
				}
				b.StopTimer()
				tr.Close()
				b.StartTimer()
			}
		})
	}
}

// dropPageCache drops a file's clean pages from the page cache.
func dropPageCache(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

// BenchmarkReadAtAligned reads 1 MiB at a time at whole-chunk offsets, as
// the kernel's FUSE reads of a file read in order arrive.
func BenchmarkReadAtAligned(b *testing.B) {
	const size, read = 64 << 20, 1 << 20
	tr := benchTier(b, Options{})
	k := tiertest.Key("readat")
	mustPut(b, tr, k, tiertest.Data(1, size), false)
	r, err := tr.Open(ctx, k)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	buf := make([]byte, read)
	b.SetBytes(read)
	var off int64
	for b.Loop() {
		if _, err := r.ReadAt(buf, off); err != nil {
			b.Fatal(err)
		}
		off = (off + read) % size
	}
}
