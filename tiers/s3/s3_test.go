package s3

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/flechefs/flechefs/internal/s3test"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

var prefixes atomic.Int64

// options are Options of a fresh prefix in s's bucket.
func options(s *s3test.Server) Options {
	return Options{
		Endpoint: s.Endpoint, Bucket: s.Bucket, PathStyle: true, Region: "us-east-1",
		Prefix:    fmt.Sprintf("t%d/", prefixes.Add(1)),
		AccessKey: s3test.AccessKey, SecretKey: s3test.SecretKey,
		Logger: slog.New(slog.DiscardHandler),
	}
}

// TestConformance runs the tier suite against a real SeaweedFS and a
// real Versity S3 Gateway over a directory: two implementations of S3,
// with their own answers to conditional writes, ranges and metadata.
func TestConformance(t *testing.T) { eachStore(t, testConformance) }

func testConformance(t *testing.T, s *s3test.Server) {
	tiertest.Run(t, func(t *testing.T) tiers.Tier {
		return mustOpen(t, options(s))
	}, tiertest.Options{
		MaxSize: 40 << 20,
		Reopen: func(t *testing.T, tr tiers.Tier) tiers.Tier {
			return mustOpen(t, tr.(*Tier).opt)
		},
	})
}

// TestChecksumHeader: a value goes with S3's own SHA-256 checksum, which
// both stores verify and keep: the store reports the value's sum.
func TestChecksumHeader(t *testing.T) { eachStore(t, testChecksumHeader) }

func testChecksumHeader(t *testing.T, s *s3test.Server) {
	tr := mustOpen(t, options(s))
	k, data := tiertest.Key("checksum"), tiertest.Data(1, 300<<10)
	tiertest.Put(t, tr, k, data)
	o, err := tr.c.StatObject(context.Background(), tr.opt.Bucket, tr.object(k), minio.StatObjectOptions{Checksum: true})
	sum := sha256.Sum256(data)
	if want := base64.StdEncoding.EncodeToString(sum[:]); err != nil || o.ChecksumSHA256 != want {
		t.Errorf("the store's checksum %q, %v; want %q", o.ChecksumSHA256, err, want)
	}
}

// eachStore runs f against each S3 implementation the tests start:
// SeaweedFS and the Versity S3 Gateway.
func eachStore(t *testing.T, f func(t *testing.T, s *s3test.Server)) {
	t.Run("seaweedfs", func(t *testing.T) { f(t, s3test.Start(t)) })
	t.Run("versitygw", func(t *testing.T) { f(t, s3test.StartWith(t, s3test.Options{Gateway: "versitygw"})) })
}

// mustOpen opens a tier of opt, closed at the end of the test.
func mustOpen(tb testing.TB, opt Options) *Tier {
	tb.Helper()
	tr, err := Open(opt)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { tr.Close() })
	return tr
}
