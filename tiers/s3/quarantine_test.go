package s3

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/flechefs/flechefs/internal/s3test"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// TestQuarantine: a damaged object of flechefs's is moved aside whole,
// with its metadata, and its key becomes free for a good upload; an object
// put in place of the one judged damaged, an object flechefs did not
// write, and any object when the quarantine is full are never moved.
func TestQuarantine(t *testing.T) { eachStore(t, testQuarantine) }

func testQuarantine(t *testing.T, s *s3test.Server) {
	opt := options(s)
	tr := mustOpen(t, opt)
	ctx := context.Background()
	raw := func(name string, data []byte, meta map[string]string) {
		t.Helper()
		if _, err := tr.c.PutObject(ctx, opt.Bucket, opt.Prefix+name, bytes.NewReader(data), int64(len(data)),
			minio.PutObjectOptions{UserMetadata: meta, DisableMultipart: true}); err != nil {
			t.Fatal(err)
		}
	}
	get := func(name string) ([]byte, minio.ObjectInfo, error) {
		o, err := tr.c.GetObject(ctx, opt.Bucket, name, minio.GetObjectOptions{})
		if err != nil {
			return nil, minio.ObjectInfo{}, err
		}
		defer o.Close()
		info, err := o.Stat()
		if err != nil {
			return nil, info, err
		}
		b, err := io.ReadAll(o)
		return b, info, err
	}
	quarantined := func() []string {
		var out []string
		if err := tr.list(ctx, tr.quarantinePrefix(), func(_ minio.ObjectInfo, name string) { out = append(out, name) }); err != nil {
			t.Fatal(err)
		}
		return out
	}

	k, good := tiertest.Key("damaged"), tiertest.Data(1, 100<<10)
	tiertest.Put(t, tr, k, good)
	_, o, err := get(tr.object(k))
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(good)
	bad[7] ^= 1
	raw(k.String(), bad, o.UserMetadata) // the bytes changed under the metadata
	_, ob, err := get(tr.object(k))
	if err != nil || ob.ETag == o.ETag {
		t.Fatalf("the damaged object's ETag %q (the good one's %q), %v", ob.ETag, o.ETag, err)
	}
	// Judged on another object than the one now under the key (as when
	// another mount repaired it meanwhile): nothing moves.
	if err := tr.Quarantine(ctx, k, o.ETag); !errors.Is(err, tiers.ErrNotFound) {
		t.Fatalf("Quarantine of a copy since replaced: %v, want ErrNotFound", err)
	}
	if b, _, err := get(tr.object(k)); err != nil || !bytes.Equal(b, bad) || len(quarantined()) != 0 {
		t.Fatalf("after the quarantine of a replaced copy: %d bytes under the key (%v), quarantine %q", len(b), err, quarantined())
	}
	if err := tr.Quarantine(ctx, k, ob.ETag); err != nil {
		t.Fatalf("Quarantine: %v", err)
	}
	if _, err := tr.Stat(ctx, k); !errors.Is(err, tiers.ErrNotFound) {
		t.Errorf("Stat after the quarantine: %v, want ErrNotFound", err)
	}
	q := quarantined()
	if len(q) != 1 || !strings.HasPrefix(q[0], k.String()+".") {
		t.Fatalf("quarantine holds %q", q)
	}
	b, qo, err := get(tr.quarantinePrefix() + q[0])
	if err != nil || !bytes.Equal(b, bad) || qo.UserMetadata[metaSum] != o.UserMetadata[metaSum] {
		t.Errorf("the quarantined object: %d bytes (equal to the damaged ones: %v), metadata %v, %v", len(b), bytes.Equal(b, bad), qo.UserMetadata, err)
	}
	tiertest.Put(t, tr, k, good) // the key is free: a good copy repairs it
	if got := tiertest.Get(t, tr, k); !bytes.Equal(got, good) {
		t.Error("the repaired key reads other bytes")
	}
	if err := tr.Quarantine(ctx, tiertest.Key("absent"), ""); !errors.Is(err, tiers.ErrNotFound) {
		t.Errorf("Quarantine of an absent key: %v, want ErrNotFound", err)
	}

	foreign := tiertest.Key("foreign")
	raw(foreign.String(), []byte("not ours"), nil)
	if err := tr.Quarantine(ctx, foreign, ""); !errors.Is(err, tiers.ErrForeign) {
		t.Errorf("Quarantine of a foreign object: %v, want ErrForeign", err)
	}
	if b, _, err := get(tr.object(foreign)); err != nil || string(b) != "not ours" {
		t.Errorf("the foreign object after: %q, %v", b, err)
	}

	// Fill the quarantine to its maximum: the next damaged object stays.
	for i := len(quarantined()); i < tiers.QuarantineMax; i++ {
		raw(".flechefs/quarantine/filler"+string(rune('a'+i%26))+strings.Repeat("x", i/26), nil, nil)
	}
	k2 := tiertest.Key("damaged, quarantine full")
	tiertest.Put(t, tr, k2, good)
	_, o2, _ := get(tr.object(k2))
	raw(k2.String(), bad, o2.UserMetadata)
	if err := tr.Quarantine(ctx, k2, ""); !errors.Is(err, tiers.ErrQuarantineFull) {
		t.Errorf("Quarantine with the quarantine full: %v, want ErrQuarantineFull", err)
	}
	if b, _, err := get(tr.object(k2)); err != nil || !bytes.Equal(b, bad) {
		t.Errorf("the damaged object with the quarantine full: %d bytes, %v; want it left in place", len(b), err)
	}
}
