package s3

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/s3test"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// TestFirstWriterWinsLarge: a value past minio-go's multipart threshold
// (16 MiB) keeps its first writer too: it goes up in one PUT, whose
// If-None-Match the store honours (a multipart completion's, SeaweedFS
// does not).
func TestFirstWriterWinsLarge(t *testing.T) {
	s := s3test.Start(t)
	tr, err := Open(options(s))
	if err != nil {
		t.Fatal(err)
	}
	k := tiertest.Key("large first writer")
	a, b := tiertest.Data(1, 48<<20+5), tiertest.Data(2, 48<<20+5)
	if _, err := tr.Put(context.Background(), k, bytes.NewReader(a), tiers.Meta{Size: int64(len(a)), Sum: digest.Of(a)}); err != nil {
		t.Fatal(err)
	}
	_, err = tr.Put(context.Background(), k, bytes.NewReader(b), tiers.Meta{Size: int64(len(b)), Sum: digest.Of(b)})
	if !errors.Is(err, tiers.ErrExist) {
		t.Fatalf("second large put: %v; want ErrExist", err)
	}
	if info, err := tr.Stat(context.Background(), k); err != nil || info.Sum != digest.Of(a) {
		t.Fatalf("the object after two puts: %+v, %v; want the first value", info, err)
	}
}

// TestMultipart: a value over the one-PUT limit (lowered here from 5 GiB)
// goes up in parts and reads back whole with its checksum; a second writer
// of the key is refused before it uploads; a value whose bytes differ from
// the announced SHA-256 is aborted, leaving no object and no upload behind.
func TestMultipart(t *testing.T) {
	s := s3test.Start(t)
	tr, err := Open(options(s))
	if err != nil {
		t.Fatal(err)
	}
	tr.putLimit = 1 << 20
	ctx := context.Background()
	k := tiertest.Key("multipart")
	a := tiertest.Data(3, 3*partSize+12345) // four parts, the last short
	if _, err := tr.Put(ctx, k, bytes.NewReader(a), tiers.Meta{Size: int64(len(a)), Sum: digest.Of(a)}); err != nil {
		t.Fatal(err)
	}
	if got := tiertest.Get(t, tr, k); !bytes.Equal(got, a) {
		t.Fatalf("read back %d bytes, not the value's %d", len(got), len(a))
	}
	b := tiertest.Data(4, 2*partSize)
	if _, err := tr.Put(ctx, k, bytes.NewReader(b), tiers.Meta{Size: int64(len(b)), Sum: digest.Of(b)}); !errors.Is(err, tiers.ErrExist) {
		t.Fatalf("second writer: %v; want ErrExist", err)
	}
	if info, err := tr.Stat(ctx, k); err != nil || info.Sum != digest.Of(a) {
		t.Fatalf("after the second writer: %+v, %v; want the first value", info, err)
	}

	bad := tiertest.Key("multipart damaged")
	c := tiertest.Data(5, 2*partSize+7)
	announced := digest.Of(c)
	c[len(c)-1] ^= 1 // the last part's bytes differ from the sum
	if _, err := tr.Put(ctx, bad, bytes.NewReader(c), tiers.Meta{Size: int64(len(c)), Sum: announced}); !errors.Is(err, tiers.ErrCorrupt) {
		t.Fatalf("put of bytes that differ from their sum: %v; want ErrCorrupt", err)
	}
	if _, err := tr.c.StatObject(ctx, tr.opt.Bucket, tr.object(bad), minio.StatObjectOptions{}); minio.ToErrorResponse(err).Code != "NoSuchKey" {
		t.Fatalf("a damaged multipart upload left an object: %v", err)
	}
	for u := range tr.c.ListIncompleteUploads(ctx, tr.opt.Bucket, tr.opt.Prefix, true) {
		if u.Err != nil {
			t.Fatal(u.Err)
		}
		t.Errorf("an upload is left behind: %s %s", u.Key, u.UploadID)
	}
}
