package integration

import (
	"bytes"
	"os"
	"testing"
	"time"

	"github.com/flechefs/flechefs/internal/mounttest"
	"github.com/flechefs/flechefs/internal/remotetest"
	"github.com/flechefs/flechefs/internal/s3test"
)

// TestTwoMountsShareABucket: two machines whose remote is the same S3
// bucket (a real SeaweedFS): a value written on one is uploaded (an object
// named by its key, with its SHA-256 in metadata) and read on the other;
// a second writer of the key keeps the first value.
func TestTwoMountsShareABucket(t *testing.T) {
	s := remotetest.NewS3(t, s3test.Start(t))
	a := s.Node(t, "s3-a", mounttest.Opts{})
	b := s.Node(t, "s3-b", mounttest.Opts{})
	k := mounttest.Key("shared through s3")
	v := bytes.Repeat([]byte("s3 value "), 300000) // 2.7 MB
	if err := os.WriteFile(a.Path(k), v, 0o644); err != nil {
		t.Fatal(err)
	}
	a.Sync(time.Minute)
	if got, sum, err := s.Get(k); err != nil || !bytes.Equal(got, v) || sum != mounttest.Sum(v) {
		t.Fatalf("the object in the bucket: %d bytes, checksum %q, %v", len(got), sum, err)
	}
	got, err := os.ReadFile(b.Path(k))
	if err != nil || !bytes.Equal(got, v) {
		t.Fatalf("read on the second mount: %d bytes, %v\n%s", len(got), err, b.Stderr())
	}
	// Written again on the second mount, whose lookup found the value:
	// the first value stays everywhere.
	k2 := mounttest.Key("s3 first writer")
	if err := os.WriteFile(a.Path(k2), []byte("first"), 0o644); err != nil {
		t.Fatal(err)
	}
	a.Sync(time.Minute)
	if err := os.WriteFile(b.Path(k2), []byte("second"), 0o644); err != nil {
		t.Fatal(err)
	}
	b.Sync(time.Minute)
	for _, n := range []*mounttest.Node{a, b} {
		if got, err := os.ReadFile(n.Path(k2)); err != nil || string(got) != "first" {
			t.Errorf("%s reads %q, %v; want the first value", n.Name, got, err)
		}
	}
}
