package tiers_test

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/bolt"
	"github.com/flechefs/flechefs/tiers/memory"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// Microbenchmarks of the stack, without FUSE or a network (a few seconds):
//
//	go test -run '^$' -bench . ./tiers/

var benchSizes = []int64{16 << 10, 4 << 20, 64 << 20}

func sizeName(n int64) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dKiB", n>>10)
}

func benchRAM(b *testing.B) *memory.Tier {
	m, err := memory.New(memory.Options{Limit: 256 << 20, MaxEntry: 128 << 20})
	if err != nil {
		b.Fatal(err)
	}
	return m
}

func benchBolt(b *testing.B) *bolt.Tier {
	t, err := bolt.Open(filepath.Join(b.TempDir(), "bench.db"), bolt.Options{Limit: 4 << 30})
	if err != nil {
		b.Fatal(err)
	}
	return t
}

func benchStack(b *testing.B, layers ...tiers.Layer) *tiers.Stack {
	s, err := tiers.NewStack(layers, tiers.StackOptions{SpoolDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

var readBuf = make([]byte, 1<<20)

// readAll reads k whole through the stack with 1 MiB reads, as the mount does.
func readAll(b *testing.B, s *tiers.Stack, k digest.Key, size int64) {
	r, err := s.Open(context.Background(), k)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	var off int64
	for off < size {
		n, err := r.ReadAt(readBuf, off)
		off += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	if off != size {
		b.Fatalf("read %d of %d bytes", off, size)
	}
}

func waitFor(b *testing.B, what string, cond func() bool) {
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out waiting for %s", what)
		}
		runtime.Gosched()
	}
}

// BenchmarkPromote opens a key held only by the bbolt tier, reads it, and
// waits until the stack has copied it into the RAM tier (hash checked by
// the RAM tier's Put): the cost of a hit in the persistent tier.
func BenchmarkPromote(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(sizeName(size), func(b *testing.B) {
			ram, db := benchRAM(b), benchBolt(b)
			s := benchStack(b, tiers.Layer{Tier: ram}, tiers.Layer{Tier: db})
			// Keys are used in turn: a key read again right after its
			// promotion could find that promotion still registered, and
			// the stack runs one copy per key at a time.
			keys := make([]digest.Key, min(64, max(4, (256<<20)/size)))
			for i := range keys {
				keys[i] = tiertest.Key(fmt.Sprint("promote ", i))
				tiertest.Put(b, db, keys[i], tiertest.Data(uint64(i), size))
			}
			b.SetBytes(size)
			i := 0
			for b.Loop() {
				k := keys[i%len(keys)]
				i++
				readAll(b, s, k, size)
				waitFor(b, "promotion", func() bool { _, err := ram.Stat(context.Background(), k); return err == nil })
				b.StopTimer()
				ram.Delete(context.Background(), k)
				b.StartTimer()
			}
		})
	}
}

// BenchmarkRemoteFetch reads keys held only by a remote tier (a RAM tier
// marked Remote: no network, so this is the stack's own cost: the fetch
// into a spool, the hash, the readers, while the promotions of the values
// read before run in the background), each key once.
func BenchmarkRemoteFetch(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(sizeName(size), func(b *testing.B) {
			s, remote := remoteStack(b)
			v := tiertest.Data(2, size)
			b.SetBytes(size)
			i := 0
			for b.Loop() {
				b.StopTimer()
				i++
				k := tiertest.Key(fmt.Sprint("fetch ", i))
				tiertest.Put(b, remote, k, v)
				b.StartTimer()
				readAll(b, s, k, size)
			}
			b.StopTimer()
			waitFor(b, "promotions", func() bool { return s.Stats().Fetching == 0 })
		})
	}
}

// BenchmarkStatRemoteSmall looks up, then reads, small keys held only by
// the remote tier: the lookup fetches the value and the open joins that
// fetch, as when a program stats then reads a file of the mount.
func BenchmarkStatRemoteSmall(b *testing.B) {
	const size = 16 << 10
	s, remote := remoteStack(b)
	v := tiertest.Data(3, size)
	b.SetBytes(size)
	i := 0
	for b.Loop() {
		b.StopTimer()
		i++
		k := tiertest.Key(fmt.Sprint("stat ", i))
		tiertest.Put(b, remote, k, v)
		b.StartTimer()
		if _, err := s.Stat(context.Background(), k); err != nil {
			b.Fatal(err)
		}
		readAll(b, s, k, size)
	}
	b.StopTimer()
	waitFor(b, "promotions", func() bool { return s.Stats().Fetching == 0 })
}

// remoteStack is RAM, bbolt and a remote tier (RAM marked Remote).
func remoteStack(b *testing.B) (*tiers.Stack, *memory.Tier) {
	ram, db, remote := benchRAM(b), benchBolt(b), benchRAM(b)
	s := benchStack(b, tiers.Layer{Tier: ram}, tiers.Layer{Tier: db}, tiers.Layer{Tier: remote, Remote: true})
	return s, remote
}
