package s3

import (
	"bytes"
	"context"
	"errors"
	"testing"

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
