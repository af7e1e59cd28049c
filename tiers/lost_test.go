package tiers_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// An upload that finds another value under its key loses: the value is
// dropped from the local tiers, Sync waits for that, the upload state
// says "conflict" until the remote's value is read, and reads serve the
// remote's value.
func TestConflictDropsLocalValue(t *testing.T) {
	ram, local, remote := mem(t, "ram", 64<<20), mem(t, "local", 64<<20), mem(t, "remote", 64<<20)
	s := newStack(t, tiers.StackOptions{}, tiers.Layer{Tier: ram}, tiers.Layer{Tier: local}, tiers.Layer{Tier: remote, Remote: true})
	k := tiertest.Key("conflict")
	theirs, ours := tiertest.Data(1, 5000), tiertest.Data(2, 6000)
	tiertest.Put(t, remote, k, theirs)
	if _, err := s.Publish(context.Background(), k, newBlob(ours), digest.Of(ours)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Sync(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if has(ram, k) || has(local, k) {
		t.Fatal("the losing value is still in a local tier after Sync")
	}
	if st := s.UploadState(k); st != tiers.UploadConflict {
		t.Errorf("upload state %q before the remote's value is read, want conflict", st)
	}
	if got, err := read(t, s, k); err != nil || !bytes.Equal(got, theirs) {
		t.Fatalf("read %d bytes, %v; want the remote's value", len(got), err)
	}
	tiertest.Eventually(t, "upload state done once the remote's value is here", func() bool { return s.UploadState(k) == tiers.UploadDone })
	if c := s.Stats().Conflicts; c != 1 {
		t.Errorf("%d conflicts, want 1", c)
	}
	if got := tiertest.Get(t, remote, k); !bytes.Equal(got, theirs) {
		t.Error("the remote's value changed")
	}
}

// A key named by its value's SHA-256 proves the value: another remote
// copy under it is damage, not a conflict, and the local value stays.
func TestSelfNamedKeyIsNotDropped(t *testing.T) {
	ram, local, remote := mem(t, "ram", 64<<20), mem(t, "local", 64<<20), mem(t, "remote", 64<<20)
	s := newStack(t, tiers.StackOptions{}, tiers.Layer{Tier: ram}, tiers.Layer{Tier: local}, tiers.Layer{Tier: remote, Remote: true})
	ours, other := tiertest.Data(3, 5000), tiertest.Data(4, 5000)
	k := digest.MustParse(digest.Of(ours).String())
	tiertest.Put(t, remote, k, other)
	if _, err := s.Publish(context.Background(), k, newBlob(ours), digest.Of(ours)); err != nil {
		t.Fatal(err)
	}
	tiertest.Eventually(t, "a failed upload attempt", func() bool { return s.Stats().UploadErrors > 0 })
	if c := s.Stats().Conflicts; c != 0 {
		t.Errorf("%d conflicts, want 0", c)
	}
	if got, err := read(t, s, k); err != nil || !bytes.Equal(got, ours) {
		t.Fatalf("read %d bytes, %v; want the local value", len(got), err)
	}
}
