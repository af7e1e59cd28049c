package tiers_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/bolt"
	"github.com/flechefs/flechefs/tiers/memory"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// keptRemote is a remote that outlives the stacks over it: a restart of
// the stack closes its tiers, and the remote must still hold what was
// uploaded.
type keptRemote struct{ *faultTier }

func (keptRemote) Close() error { return nil }

// TestStackInvariants drives a RAM → bbolt → remote stack with a random
// sequence of publishes (after a lookup, as the mount does), deletes,
// reads, remote outages, syncs and restarts, against a model of what each
// key holds, and checks after every step the stack's invariants:
//   - what is read is the one value published first under the key, whole;
//     a second writer of a key that exists gets ErrExist;
//   - a deleted value never comes back (not after a restart, not from the
//     remote when it returns);
//   - with the remote down, every entry is still read from the local tiers;
//   - after a sync with the remote up, the remote holds exactly the model's
//     keys with their values, whatever outages and restarts came between:
//     every published value reaches the remote, queued uploads and deletes
//     survive a restart;
//   - a value read from the remote is the one published, and a damaged
//     remote copy is never served (the read fails; the copy is moved to
//     the remote's quarantine);
//   - the RAM tier stays within its bound;
//   - the parts' bookkeeping agrees with itself (Stack.CheckState).
//
// Background work (persistence, uploads, deferred copies, tombstones) runs
// as it does in the daemon, so the interleavings differ from run to run;
// the seed of each run is logged.
func TestStackInvariants(t *testing.T) {
	steps := 400
	if testing.Short() {
		steps = 100
	}
	for seed := range uint64(3) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			runInvariants(t, seed, steps)
		})
	}
}

func runInvariants(t *testing.T, seed uint64, steps int) {
	rnd := rand.New(rand.NewPCG(seed, 16))
	ctx := context.Background()
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "cache.db")
	remote := keptRemote{mem(t, "remote", 1<<30)}
	const ramLimit = 512 << 10
	var ram *memory.Tier
	var db *bolt.Tier
	var logBuf tiertest.SyncBuffer
	logger := slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	open := func() *tiers.Stack {
		var err error
		ram, err = memory.New(memory.Options{Name: "ram", Limit: ramLimit, MaxEntry: ramLimit})
		if err != nil {
			t.Fatal(err)
		}
		db, err = bolt.Open(dbPath, bolt.Options{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		s, err := tiers.NewStack([]tiers.Layer{{Tier: ram}, {Tier: db}, {Tier: remote, Remote: true}},
			tiers.StackOptions{SpoolDir: t.TempDir(), RemoteTimeout: 2 * time.Second, Logger: logger})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	defer func() { s.Close() }()

	keys := make([]digest.Key, 24)
	for i := range keys {
		keys[i] = tiertest.Key(fmt.Sprint("invariant ", i))
	}
	model := map[digest.Key][]byte{}
	deleted := map[digest.Key]bool{} // deleted, not written since
	gen := 0
	ops := map[string]int{}
	// history is the stack's log lines about k and the test's steps that
	// touch every key (outages, syncs, restarts), for a failure message.
	history := func(k digest.Key) string {
		var out []string
		for _, l := range strings.Split(logBuf.String(), "\n") {
			every := strings.Contains(l, "op=outage") || strings.Contains(l, "op=sync") || strings.Contains(l, "op=restart")
			if strings.Contains(l, k.String()[:8]) || every {
				out = append(out, l)
			}
		}
		return strings.Join(out[max(0, len(out)-80):], "\n")
	}

	check := func(step int, op string, k digest.Key) {
		t.Helper()
		got, err := read(t, s, k)
		want, ok := model[k]
		switch {
		case ok && err != nil:
			t.Fatalf("step %d (%s): %s published, read: %v;\n%s", step, op, k, err, history(k))
		case ok && !bytes.Equal(got, want):
			t.Fatalf("step %d (%s): %s read %d bytes, not the %d published first;\n%s", step, op, k, len(got), len(want), history(k))
		case !ok && remote.down.Load() && errors.Is(err, tiers.ErrUnavailable):
			// An open that cannot ask the remote says so (EIO at the
			// mount); a lookup says absent:
			if _, err := s.Stat(ctx, k); !errors.Is(err, tiers.ErrNotFound) {
				t.Fatalf("step %d (%s): %s absent, stat with the remote down: %v", step, op, k, err)
			}
		case !ok && !errors.Is(err, tiers.ErrNotFound):
			what := "never published"
			if deleted[k] {
				what = "deleted"
			}
			t.Fatalf("step %d (%s): %s %s, read: %d bytes, %v;\n%s", step, op, k, what, len(got), err, history(k))
		}
		if u := ram.Usage(); u.Bytes > ramLimit {
			t.Fatalf("step %d (%s): RAM tier holds %d bytes, limit %d", step, op, u.Bytes, ramLimit)
		}
		if err := s.CheckState(); err != nil {
			t.Fatalf("step %d (%s): the stack's parts disagree: %v", step, op, err)
		}
	}
	syncAll := func(step int) {
		t.Helper()
		remote.down.Store(false)
		sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		if err := s.Sync(sctx, nil); err != nil {
			t.Fatalf("step %d: sync: %v", step, err)
		}
		for _, k := range keys {
			got, err := func() ([]byte, error) {
				r, err := remote.Tier.Open(ctx, k)
				if err != nil {
					return nil, err
				}
				defer r.Close()
				return tiers.ReadAll(r)
			}()
			want, ok := model[k]
			switch {
			case ok && (err != nil || !bytes.Equal(got, want)):
				lb, lerr := read(t, s, k)
				t.Fatalf("step %d: after sync the remote's %s: %d bytes, %v; want the %d published (the stack reads %d bytes, %v);\n%s", step, k, len(got), err, len(want), len(lb), lerr, history(k))
			case !ok && !errors.Is(err, tiers.ErrNotFound):
				t.Fatalf("step %d: after sync the remote holds %s, which is not published (deleted: %v);\n%s", step, k, deleted[k], history(k))
			}
		}
	}

	for step := range steps {
		k := keys[rnd.IntN(len(keys))]
		n := rnd.IntN(100)
		logger.Info("test step", "step", step, "op", opName(n), "k", k.String()[:8], "down", remote.down.Load())
		switch {
		case n < 40: // write, as the mount does: look up, then publish
			if _, err := s.Stat(ctx, k); err == nil {
				// A second writer of the key loses: its value is
				// dropped, the first stays.
				gen++
				v := tiertest.Data(uint64(gen), int64(rnd.IntN(96<<10)))
				if _, err := s.Publish(ctx, k, newBlob(v), digest.Of(v)); !errors.Is(err, tiers.ErrExist) {
					t.Fatalf("step %d: publish of a key that exists: %v, want ErrExist", step, err)
				}
				ops["second writer"]++
				check(step, "exists", k)
				continue
			} else if !errors.Is(err, tiers.ErrNotFound) {
				t.Fatalf("step %d: stat before a write: %v", step, err)
			}
			gen++
			v := tiertest.Data(uint64(gen), int64(rnd.IntN(96<<10)))
			_, err := s.Publish(ctx, k, newBlob(v), digest.Of(v))
			switch {
			case err == nil:
				model[k] = v
				delete(deleted, k)
				ops["publish"]++
			case errors.Is(err, tiers.ErrExist):
				// Published since the lookup: not by this test.
				t.Fatalf("step %d: publish after a miss: %v", step, err)
			default:
				t.Fatalf("step %d: publish: %v", step, err)
			}
			check(step, "publish", k)
		case n < 55:
			err := s.Delete(ctx, k)
			_, ok := model[k]
			switch {
			case ok && err != nil:
				t.Fatalf("step %d: delete of a published key: %v", step, err)
			case !ok && err != nil && !errors.Is(err, tiers.ErrNotFound):
				t.Fatalf("step %d: delete of an absent key: %v", step, err)
			}
			if ok {
				delete(model, k)
				deleted[k] = true
				ops["delete"]++
			}
			check(step, "delete", k)
		case n < 80:
			check(step, "read", k)
		case n < 85: // a read on a machine that has only the remote's copy
			if _, ok := model[k]; !ok {
				check(step, "read", k)
				continue
			}
			syncAll(step) // the value is on the remote
			// A copy of k in flight (a deferred one from an earlier
			// read) would put back what is dropped here.
			s.SettleCopies(k)
			for _, l := range []tiers.Tier{ram, db} {
				if err := l.Delete(ctx, k); err != nil && !errors.Is(err, tiers.ErrNotFound) {
					t.Fatalf("step %d: dropping the local copy: %v", step, err)
				}
			}
			if rnd.IntN(3) > 0 {
				check(step, "remote read", k)
				ops["remote read"]++
				// The local copy back in bbolt: the copies the read
				// makes go into RAM at once and into bbolt only when
				// reads pause (deferred), and a key held by the remote
				// alone, looked up while the remote is down, is absent
				// to this stack, which is another test.
				v := model[k]
				if _, err := db.Put(ctx, k, bytes.NewReader(v), tiers.Meta{Size: int64(len(v)), Sum: digest.Of(v)}); err != nil && !errors.Is(err, tiers.ErrExist) {
					t.Fatalf("step %d: restoring the local copy: %v", step, err)
				}
				continue
			}
			// The remote's copy is damaged: the read fails, never
			// serves those bytes, and the key is lost everywhere (the
			// copy goes to the remote's quarantine).
			remote.flip.Store(true)
			got, err := read(t, s, k)
			remote.flip.Store(false)
			if !errors.Is(err, tiers.ErrCorrupt) {
				t.Fatalf("step %d: read of a damaged remote copy: %d bytes, %v; want ErrCorrupt;\n%s", step, len(got), err, history(k))
			}
			delete(model, k)
			deleted[k] = true
			ops["damaged remote read"]++
			check(step, "damaged remote read", k)
		case n < 91:
			remote.down.Store(!remote.down.Load())
			ops["outage toggle"]++
		case n < 96:
			syncAll(step)
			ops["sync"]++
		default: // restart, sometimes with the remote down
			if err := s.Close(); err != nil {
				t.Fatalf("step %d: close: %v", step, err)
			}
			s = open()
			ops["restart"]++
			for _, k := range keys {
				check(step, "after restart", k)
			}
		}
	}
	syncAll(steps)
	for _, k := range keys {
		check(steps, "end", k)
	}
	t.Logf("seed %d: %d steps %v; %d keys published at the end, %d deleted", seed, steps, ops, len(model), len(deleted))
}

// opName names the operation runInvariants draws as n.
func opName(n int) string {
	switch {
	case n < 40:
		return "write"
	case n < 55:
		return "delete"
	case n < 80:
		return "read"
	case n < 85:
		return "remote read"
	case n < 91:
		return "outage"
	case n < 96:
		return "sync"
	}
	return "restart"
}
