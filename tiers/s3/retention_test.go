package s3

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/s3test"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// TestPrune: a bounded prefix loses its least recently used entries, by
// upload time or by the last read's mark, and never an object flechefs did
// not write or a key whose fleche lock exists; a dry run removes nothing;
// a fresh lease held by another mount stops a pass.
func TestPrune(t *testing.T) { eachStore(t, testPrune) }

func testPrune(t *testing.T, s *s3test.Server) {
	opt := options(s)
	// S3 times are whole seconds: a second between the uploads orders them.
	opt.Retention = tiers.Bound{MaxBytes: 3500, Grace: time.Nanosecond}
	tr := mustOpen(t, opt)
	ctx := context.Background()
	raw := func(name string, data []byte) {
		t.Helper()
		if _, err := tr.c.PutObject(ctx, opt.Bucket, opt.Prefix+name, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	foreign, locked := tiertest.Key("foreign"), tiertest.Key("locked")
	raw(foreign.String(), tiertest.Data(1, 1000)) // no flechefs metadata
	tiertest.Put(t, tr, locked, tiertest.Data(2, 1000))
	raw(locked.String()+".lock", nil)
	var keys []digest.Key
	for i, name := range []string{"a", "b", "c"} {
		time.Sleep(1100 * time.Millisecond)
		k := tiertest.Key(name)
		tiertest.Put(t, tr, k, tiertest.Data(uint64(3+i), 1000))
		keys = append(keys, k)
	}
	a, b, c := keys[0], keys[1], keys[2]
	time.Sleep(1100 * time.Millisecond)
	tr.marks.ForgetAll()   // the puts marked each key: forget, as a new process would
	tiertest.Get(t, tr, a) // a is now the most recently used
	tiertest.Eventually(t, "the read's mark in the bucket", func() bool {
		o, err := tr.c.StatObject(ctx, opt.Bucket, tr.usedName(a), minio.StatObjectOptions{})
		return err == nil && time.Since(o.LastModified) < time.Minute && o.LastModified.After(mtime(t, tr, c))
	})

	dry, err := tr.Prune(ctx, opt.Retention, true)
	if err != nil || !slices.Equal(dry.Removed, []digest.Key{b, c}) {
		t.Fatalf("dry run: would remove %v, %v; want b and c (the foreign one and the locked one are not flechefs's to remove, a was read last)", dry.Removed, err)
	}
	for _, k := range keys {
		if _, err := tr.Stat(ctx, k); err != nil {
			t.Fatalf("a dry run removed %s: %v", k, err)
		}
	}

	// Another mount's fresh lease stops the pass.
	if err := tr.putLease(ctx, "another mount\n", true); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Prune(ctx, opt.Retention, false); !errors.Is(err, tiers.ErrLeaseHeld) {
		t.Fatalf("prune beside a fresh lease: %v; want ErrLeaseHeld", err)
	}
	if err := tr.c.RemoveObject(ctx, opt.Bucket, tr.leaseName(), minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}

	rep, err := tr.Prune(ctx, opt.Retention, false)
	if err != nil || !slices.Equal(rep.Removed, []digest.Key{b, c}) || rep.RemovedBytes != 2000 {
		t.Fatalf("removed %v (%d bytes), %v; want b and c", rep.Removed, rep.RemovedBytes, err)
	}
	if rep.Entries != 5 || rep.Bytes != 5000 || rep.Adopted != 1 {
		t.Fatalf("report %+v: want 5 entries, 5000 bytes, 1 not flechefs's", rep)
	}
	for _, k := range []digest.Key{b, c} {
		if _, err := tr.Stat(ctx, k); !errors.Is(err, tiers.ErrNotFound) {
			t.Fatalf("pruned %s still there: %v", k, err)
		}
	}
	for _, k := range []digest.Key{a, locked} {
		if _, err := tr.Stat(ctx, k); err != nil {
			t.Fatalf("kept %s gone: %v", k, err)
		}
	}
	for _, name := range []string{foreign.String(), locked.String() + ".lock"} {
		if _, err := tr.c.StatObject(ctx, opt.Bucket, opt.Prefix+name, minio.StatObjectOptions{}); err != nil {
			t.Fatalf("%s, not flechefs's, removed: %v", name, err)
		}
	}
	if _, err := tr.c.StatObject(ctx, opt.Bucket, tr.usedName(b), minio.StatObjectOptions{}); minio.ToErrorResponse(err).Code != "NoSuchKey" {
		t.Fatalf("the removed entry's marker stays: %v", err)
	}
	if _, err := tr.c.StatObject(ctx, opt.Bucket, tr.leaseName(), minio.StatObjectOptions{}); minio.ToErrorResponse(err).Code != "NoSuchKey" {
		t.Fatalf("the lease outlives the pass: %v", err)
	}
	// Under the bound now: a second pass removes nothing.
	if rep, err := tr.Prune(ctx, opt.Retention, false); err != nil || len(rep.Removed) != 0 {
		t.Fatalf("second pass removed %v, %v", rep.Removed, err)
	}
}

func mtime(t *testing.T, tr *Tier, k digest.Key) time.Time {
	o, err := tr.c.StatObject(context.Background(), tr.opt.Bucket, tr.object(k), minio.StatObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return o.LastModified
}
