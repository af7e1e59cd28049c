package s3

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/delayproxy"
	"github.com/flechefs/flechefs/internal/s3test"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// Benchmarks against a real SeaweedFS on loopback:
//
//	go test -run '^$' -bench Fetch -benchtime 5x -count 5 ./tiers/s3/

const benchFetchSize = 64 << 20

// fetchWhole reads r whole the way the stack's fetch does: with WriteTo
// when the reader has it, else with 1 MiB ReadAts in order.
func fetchWhole(r io.ReaderAt, size int64, dst io.Writer) (int64, error) {
	if wt, ok := r.(io.WriterTo); ok {
		return wt.WriteTo(dst)
	}
	return io.CopyBuffer(dst, io.NewSectionReader(r, 0, size), make([]byte, 1<<20))
}

// BenchmarkFetch fetches a 64 MiB value whole, as a cold read does, with
// the default window of ranged GETs and with one GET at a time.
func BenchmarkFetch(b *testing.B) {
	s := s3test.Start(b)
	benchFetchRanges(b, s, s.Endpoint)
}

// BenchmarkFetchSlowLink is BenchmarkFetch through a link of 20 ms each
// way (internal/delayproxy), where one GET at a time waits a round trip
// per range and its TCP stream's window bounds it.
func BenchmarkFetchSlowLink(b *testing.B) {
	s := s3test.Start(b)
	px, err := delayproxy.Start(strings.TrimPrefix(s.Endpoint, "http://"), 20*time.Millisecond)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(px.Close)
	benchFetchRanges(b, s, "http://"+px.Addr())
}

// benchFetchRanges fetches the bench value through endpoint, with the
// default window and with one range at a time; the value is put directly.
func benchFetchRanges(b *testing.B, s *s3test.Server, endpoint string) {
	k := tiertest.Key("bench fetch")
	for _, ranges := range []int{defaultRanges, 1} {
		b.Run(fmt.Sprintf("ranges=%d", ranges), func(b *testing.B) {
			opt := options(s)
			opt.Prefix = "bench/"
			opt.Ranges = ranges
			direct := mustOpen(b, opt)
			if _, err := direct.Stat(context.Background(), k); err != nil {
				tiertest.Put(b, direct, k, tiertest.Data(7, benchFetchSize))
			}
			opt.Endpoint = endpoint
			tr := mustOpen(b, opt)
			benchFetch(b, tr, k)
		})
	}
}

func benchFetch(b *testing.B, tr *Tier, k digest.Key) {
	b.SetBytes(benchFetchSize)
	for b.Loop() {
		r, err := tr.Open(context.Background(), k)
		if err != nil {
			b.Fatal(err)
		}
		n, err := fetchWhole(r, benchFetchSize, io.Discard)
		r.Close()
		if err != nil || n != benchFetchSize {
			b.Fatalf("fetched %d bytes, %v", n, err)
		}
	}
}

// BenchmarkPutSmall puts 16 KiB values, 8 or 32 at once (upload_workers
// uploads 8 at once by default): the rate the store takes small uploads
// at.
func BenchmarkPutSmall(b *testing.B) {
	s := s3test.Start(b)
	v := tiertest.Data(8, 16<<10)
	for _, inflight := range []int{8, 32} {
		b.Run(fmt.Sprintf("inflight=%d", inflight), func(b *testing.B) {
			tr := mustOpen(b, options(s))
			var n atomic.Int64
			b.SetParallelism(max(1, inflight/runtime.GOMAXPROCS(0)))
			b.SetBytes(int64(len(v)))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					k := tiertest.Key(fmt.Sprintf("put small %d", n.Add(1)))
					if _, err := tr.Put(context.Background(), k, bytes.NewReader(v), tiers.Meta{Size: int64(len(v)), Sum: digest.Of(v)}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "values/s")
		})
	}
}
