package tiers_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/memory"
	"github.com/flechefs/flechefs/tiers/sftp"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// BenchmarkUploadSmall publishes 400 values of 16 KiB to a stack of RAM,
// bbolt and an SFTP tier on a local sshd, and waits until all are on the
// remote: the stack's part of the bench's "2000 small files on the
// remote". Compare with the tier alone, BenchmarkPutSmall in tiers/sftp.
func BenchmarkUploadSmall(b *testing.B) { benchUpload(b, 16<<10, 400) }

// BenchmarkUploadLarge is BenchmarkUploadSmall with one value of 256 MiB:
// compare with the tier alone, BenchmarkVsOpenSSH's put in tiers/sftp.
func BenchmarkUploadLarge(b *testing.B) {
	b.SetBytes(256 << 20)
	benchUpload(b, 256<<20, 1)
}

func benchUpload(b *testing.B, size int64, batch int) {
	srv := sshdtest.Start(b)
	quiet := slog.New(slog.DiscardHandler)
	remote, err := sftp.Open(context.Background(), sftp.Options{URL: srv.URL() + "/upload-bench", IdentityFiles: []string{srv.IdentityFile},
		KnownHosts: srv.KnownHosts, Timeout: 10 * time.Second, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	db := openBolt(b, filepath.Join(b.TempDir(), "cache.db"))
	ram, err := memory.New(memory.Options{Limit: 64 << 20, MaxEntry: 16 << 20})
	if err != nil {
		b.Fatal(err)
	}
	s, err := tiers.NewStack([]tiers.Layer{{Tier: ram}, {Tier: db}, {Tier: remote, Remote: true}},
		tiers.StackOptions{SpoolDir: b.TempDir(), Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	data := tiertest.Data(11, size)
	sum := digest.Of(data)
	seq, n := 0, 0
	for b.Loop() {
		for range batch {
			seq++
			n++
			if _, err := s.Publish(context.Background(), tiertest.Key(fmt.Sprint("upload small ", seq)), newBlob(data), sum); err != nil {
				b.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := s.Sync(ctx, nil)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "values/s")
}
