package tiers_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/bolt"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// Deletes while the remote is unreachable: queued as tombstones in the
// bbolt queue, kept across a restart, carried out when the remote returns,
// before a newer value of the key is uploaded.

func tombStack(t *testing.T, db string, remote *faultTier) *tiers.Stack {
	t.Helper()
	s, err := tiers.NewStack([]tiers.Layer{{Tier: mem(t, "ram", 64<<20)}, {Tier: openBolt(t, db)}, {Tier: keepOpen{remote}, Remote: true}},
		tiers.StackOptions{SpoolDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler), RemoteTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func syncStack(t *testing.T, s *tiers.Stack) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Sync(ctx, nil); err != nil {
		t.Fatal(err)
	}
}

func TestDeleteWhileRemoteDown(t *testing.T) {
	for _, rewrite := range []bool{false, true} {
		name := "deleted"
		if rewrite {
			name = "rewritten"
		}
		t.Run(name, func(t *testing.T) {
			db := filepath.Join(t.TempDir(), "cache.db")
			remote := mem(t, "remote", 64<<20)
			s := tombStack(t, db, remote)
			ctx := context.Background()
			k, old := tiertest.Key("tombstoned"), tiertest.Data(1, 5000)
			if _, err := s.Publish(ctx, k, newBlob(old), digest.Of(old)); err != nil {
				t.Fatal(err)
			}
			syncStack(t, s)
			// The remote answers lookups but refuses deletes: the
			// lookups below must consult the tombstone.
			remote.noDel.Store(true)
			if err := s.Delete(ctx, k); err != nil {
				t.Fatalf("delete with the remote down: %v", err)
			}
			if !has(remote.Tier, k) {
				t.Fatal("the remote copy went although the remote refused the delete")
			}
			if _, err := s.Stat(ctx, k); !errors.Is(err, tiers.ErrNotFound) {
				t.Fatalf("stat after the delete: %v, want ErrNotFound (the remote copy must not come back)", err)
			}
			if _, err := read(t, s, k); !errors.Is(err, tiers.ErrNotFound) {
				t.Fatalf("open after the delete: %v, want ErrNotFound", err)
			}
			if err := s.List(ctx, func(in tiers.Info) error {
				if in.Key == k {
					t.Error("the deleted key is listed")
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			remote.noDel.Store(false)
			remote.down.Store(true)
			if n := s.Stats().Deletes; n != 1 {
				t.Fatalf("stats say %d queued deletes, want 1", n)
			}
			nv := tiertest.Data(2, 6000)
			if rewrite {
				if _, err := s.Publish(ctx, k, newBlob(nv), digest.Of(nv)); err != nil {
					t.Fatal(err)
				}
				if err := s.WaitDurable(ctx, k); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			b := openBolt(t, db)
			ts, err := b.Tombstones(ctx)
			b.Close()
			if err != nil || len(ts) != 1 || ts[0].Key != k || ts[0].Sum != digest.Of(old) {
				t.Fatalf("durable tombstones after Close: %+v, %v", ts, err)
			}
			if !has(remote.Tier, k) {
				t.Fatal("the remote copy went while the remote was down")
			}

			// Restart with the remote still down: the delete is still queued.
			s = tombStack(t, db, remote)
			t.Cleanup(func() { s.Close() })
			if n := s.Stats().Deletes; n != 1 {
				t.Fatalf("after restart: %d queued deletes, want 1", n)
			}
			r, err := s.Open(ctx, k)
			switch {
			case rewrite && err != nil:
				t.Fatalf("open of the new value after restart: %v", err)
			case rewrite:
				got, _ := tiers.ReadAll(r)
				r.Close()
				if !bytes.Equal(got, nv) {
					t.Fatal("after restart the key reads other bytes than the new value")
				}
			case err == nil:
				r.Close()
				t.Fatal("after restart the deleted key opens")
			}
			remote.down.Store(false)
			syncStack(t, s)
			if n := s.Stats().Deletes; n != 0 {
				t.Fatalf("after sync: %d queued deletes", n)
			}
			info, err := remote.Tier.Stat(ctx, k)
			switch {
			case rewrite && (err != nil || info.Sum != digest.Of(nv)):
				t.Fatalf("the remote holds %v (%v), want the new value", info.Sum, err)
			case !rewrite && !errors.Is(err, tiers.ErrNotFound):
				t.Fatalf("the remote still holds the deleted value: %v", err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			b = openBolt(t, db)
			ts, err = b.Tombstones(ctx)
			if cerr := b.Check(); cerr != nil {
				t.Error(cerr)
			}
			b.Close()
			if err != nil || len(ts) != 0 {
				t.Fatalf("durable tombstones after sync: %+v, %v", ts, err)
			}
		})
	}
}

// TestDeleteLeavesAnotherWritersValue: a queued delete removes the value it
// names; a value another writer put on the remote since is left.
func TestDeleteLeavesAnotherWritersValue(t *testing.T) {
	db := filepath.Join(t.TempDir(), "cache.db")
	remote := mem(t, "remote", 64<<20)
	s := tombStack(t, db, remote)
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	k, old := tiertest.Key("other writer"), tiertest.Data(3, 5000)
	if _, err := s.Publish(ctx, k, newBlob(old), digest.Of(old)); err != nil {
		t.Fatal(err)
	}
	syncStack(t, s)
	remote.down.Store(true)
	if err := s.Delete(ctx, k); err != nil {
		t.Fatal(err)
	}
	// Another machine deletes it and writes another value meanwhile.
	if err := remote.Tier.Delete(ctx, k); err != nil {
		t.Fatal(err)
	}
	other := tiertest.Data(4, 7000)
	tiertest.Put(t, remote.Tier, k, other)
	remote.down.Store(false)
	syncStack(t, s)
	if info, err := remote.Tier.Stat(ctx, k); err != nil || info.Sum != digest.Of(other) {
		t.Fatalf("the other writer's value: %v, %v", info.Sum, err)
	}
	if got, err := read(t, s, k); err != nil || !bytes.Equal(got, other) {
		t.Fatalf("after the queued delete, the key reads %v", err)
	}
}

var _ tiers.TombstoneQueue = (*bolt.Tier)(nil)

// keepOpen is a remote that outlives the stack's Close, as a server does.
type keepOpen struct{ *faultTier }

func (keepOpen) Close() error { return nil }
