package tiers_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/bolt"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// The durable upload queue across a restart, on a real bbolt file.

// openBolt opens a bbolt tier at path that logs nothing, without a size
// limit.
func openBolt(t testing.TB, path string) *bolt.Tier {
	t.Helper()
	b, err := bolt.Open(path, bolt.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func pending(t *testing.T, path string) []digest.Key {
	t.Helper()
	b := openBolt(t, path)
	defer b.Close()
	keys, err := b.Pending(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// TestCloseRightAfterSyncEmptiesQueue: entries whose uploads Sync waited
// for are out of the durable queue once Close returns, even when Close
// comes at once (the queue records are removed in the background). A left
// record is not a loss, but the next start reads the local copy again to
// check the remote, and CI once saw that read meet a corrupted copy that
// the test expected to find only later.
func TestCloseRightAfterSyncEmptiesQueue(t *testing.T) {
	for round := range 20 {
		db := filepath.Join(t.TempDir(), "cache.db")
		remote := mem(t, "remote", 64<<20)
		s, err := tiers.NewStack([]tiers.Layer{{Tier: mem(t, "ram", 64<<20)}, {Tier: openBolt(t, db)}, {Tier: remote, Remote: true}},
			tiers.StackOptions{SpoolDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 40 {
			v := tiertest.Data(uint64(round*100+i), int64(1000+i))
			if _, err := s.Publish(context.Background(), tiertest.Key(string(rune('a'+i))+"q"), newBlob(v), digest.Of(v)); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err = s.Sync(ctx, nil)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if keys := pending(t, db); len(keys) != 0 {
			t.Fatalf("round %d: %d uploaded entries still in the durable queue after Close", round, len(keys))
		}
	}
}

// corruptBolt is a bbolt tier (its durable queue included) whose readers
// report a bad CRC.
type corruptBolt struct{ *bolt.Tier }

func (c corruptBolt) Open(ctx context.Context, k digest.Key) (tiers.Reader, error) {
	r, err := c.Tier.Open(ctx, k)
	if err != nil {
		return nil, err
	}
	return badReader{r}, nil
}

// TestQueuedUploadOfCorruptCopy: an upload resumed at start reads the local
// copy; a bad one is counted and removed like one found by a reader, and
// nothing reaches the remote.
func TestQueuedUploadOfCorruptCopy(t *testing.T) {
	db := filepath.Join(t.TempDir(), "cache.db")
	remote := mem(t, "remote", 64<<20)
	remote.down.Store(true)
	s, err := tiers.NewStack([]tiers.Layer{{Tier: mem(t, "ram", 64<<20)}, {Tier: openBolt(t, db)}, {Tier: remote, Remote: true}},
		tiers.StackOptions{SpoolDir: t.TempDir(), RemoteTimeout: time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	k, v := tiertest.Key("rotten"), tiertest.Data(9, 5000)
	if _, err := s.Publish(context.Background(), k, newBlob(v), digest.Of(v)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitDurable(ctx, k); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if keys := pending(t, db); len(keys) != 1 {
		t.Fatalf("queue before the restart: %v", keys)
	}

	remote.down.Store(false)
	b := openBolt(t, db)
	s = newStack(t, tiers.StackOptions{RemoteTimeout: time.Second, Logger: slog.New(slog.DiscardHandler)},
		tiers.Layer{Tier: mem(t, "ram", 64<<20)}, tiers.Layer{Tier: corruptBolt{b}}, tiers.Layer{Tier: remote, Remote: true})
	tiertest.Eventually(t, "the corruption counted on the bbolt layer", func() bool { return s.Stats().Tiers[1].Corruptions == 1 })
	tiertest.Eventually(t, "the bad copy removed", func() bool { return !has(b, k) })
	tiertest.Eventually(t, "the queue emptied", func() bool { return !b.IsPending(k) })
	if has(remote, k) {
		t.Fatal("a value read from a corrupt copy reached the remote")
	}
}

// TestPersistentTierFirst: a stack with no RAM tier, the bbolt tier at
// index 0 (alone, or over a remote), persists what is published: the value
// is there after a restart, and queued for upload when there is a remote.
func TestPersistentTierFirst(t *testing.T) {
	for _, withRemote := range []bool{false, true} {
		db := filepath.Join(t.TempDir(), "cache.db")
		layers := []tiers.Layer{{Tier: openBolt(t, db)}}
		remote := mem(t, "remote", 64<<20)
		remote.down.Store(true)
		if withRemote {
			layers = append(layers, tiers.Layer{Tier: remote, Remote: true})
		}
		s, err := tiers.NewStack(layers, tiers.StackOptions{SpoolDir: t.TempDir(), RemoteTimeout: time.Second,
			Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		k, v := tiertest.Key("first"), tiertest.Data(10, 3000)
		if _, err := s.Publish(context.Background(), k, newBlob(v), digest.Of(v)); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		b := openBolt(t, db)
		got := tiertest.Get(t, b, k)
		queued := b.IsPending(k)
		b.Close()
		if !bytes.Equal(got, v) {
			t.Fatalf("remote %v: the bbolt tier at index 0 holds %d bytes after Close, want the %d published", withRemote, len(got), len(v))
		}
		if queued != withRemote {
			t.Fatalf("remote %v: queued for upload = %v", withRemote, queued)
		}
	}
}

// TestLargePersistsAfterUpload: a large published value is uploaded from its
// blob first, as verified (the writer hashed it, so the remote tier need
// not), and persisted into bbolt once that upload has ended: on 2 cores the
// two copies of the whole value slowed each other. Meanwhile it is served
// from the blob, and an fsync (WaitDurable) does not wait for the upload.
func TestLargePersistsAfterUpload(t *testing.T) {
	db := filepath.Join(t.TempDir(), "cache.db")
	b := openBolt(t, db)
	remote := mem(t, "remote", 64<<20)
	var mu sync.Mutex
	release := make(chan struct{})
	started := make(chan tiers.Meta, 4)
	remote.onPut = func(ctx context.Context, k digest.Key, m tiers.Meta) error {
		if m.Size > 1<<20 {
			started <- m
			mu.Lock()
			r := release
			mu.Unlock()
			select {
			case <-r:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}
	released := false
	unblock := func() {
		mu.Lock()
		defer mu.Unlock()
		if !released {
			close(release)
			released = true
		}
	}
	// The persistence waits for an upload for up to an hour: an fsync or a
	// Close that waited for the hung upload would fail on its bound.
	s := newStack(t, tiers.StackOptions{Logger: slog.New(slog.DiscardHandler), Policy: tiers.Policy{PersistDefer: time.Hour}},
		tiers.Layer{Tier: mem(t, "ram", 64<<20)}, tiers.Layer{Tier: b}, tiers.Layer{Tier: remote, Remote: true})
	t.Cleanup(unblock) // before the stack's Close, which waits for the upload
	publishOne := func(name string, seed uint64) (digest.Key, []byte) {
		k, v := tiertest.Key(name), tiertest.Data(seed, 4<<20)
		if _, err := s.Publish(context.Background(), k, newBlob(v), digest.Of(v)); err != nil {
			t.Fatal(err)
		}
		return k, v
	}

	k, v := publishOne("large-after-upload", 1)
	var m tiers.Meta
	select {
	case m = <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the upload did not start")
	}
	if !m.Verified || m.Sum != digest.Of(v) || m.Size != int64(len(v)) {
		t.Fatalf("upload from the published blob: meta %+v, want verified with the writer's sum", m)
	}
	time.Sleep(200 * time.Millisecond)
	if has(b, k) {
		t.Fatal("persisted into bbolt while its upload was still running")
	}
	if got, err := read(t, s, k); err != nil || !bytes.Equal(got, v) {
		t.Fatalf("read while uploading: %v", err)
	}
	unblock()
	tiertest.Eventually(t, "the value in bbolt after its upload", func() bool { return has(b, k) })
	if !has(remote, k) {
		t.Fatal("in bbolt but not on the remote")
	}

	// An fsync does not wait for a hung upload.
	mu.Lock()
	release, released = make(chan struct{}), false
	mu.Unlock()
	k2, _ := publishOne("large-fsync", 2)
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.WaitDurable(ctx, k2); err != nil {
		t.Fatalf("WaitDurable while the upload hung: %v", err)
	}
	if !has(b, k2) {
		t.Fatal("not in bbolt after WaitDurable while the upload hung")
	}

	// Nor does Close: the value waiting for its hung upload is persisted
	// at once, and stays queued for the next start.
	k3, _ := publishOne("large-close", 3)
	<-started
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Minute {
		t.Fatalf("Close took %v while an upload hung: it waited for the upload", d)
	}
	if keys := pending(t, db); len(keys) != 2 || !slices.Contains(keys, k2) || !slices.Contains(keys, k3) {
		t.Fatalf("durable queue after Close: %v, want the two values whose uploads hung", keys)
	}
}

// blockingBolt is a bolt tier whose Open, once block is set, waits for its
// context to end, as a read of a local tier does when the stack closes
// under it.
type blockingBolt struct {
	*bolt.Tier
	block   atomic.Bool
	entered chan struct{}
}

func (b *blockingBolt) Open(ctx context.Context, k digest.Key) (tiers.Reader, error) {
	if b.block.Load() {
		select {
		case b.entered <- struct{}{}:
		default:
		}
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return b.Tier.Open(ctx, k)
}

// TestCloseKeepsQueuedUpload: an upload whose read of the local copy is
// cut by Close leaves the value in the durable queue for the next start.
// Taking the failed open for "no local copy" dropped the record, and the
// value never reached the remote.
func TestCloseKeepsQueuedUpload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cache.db")
	b := &blockingBolt{Tier: openBolt(t, path), entered: make(chan struct{}, 1)}
	remote := mem(t, "remote", 64<<20)
	remote.down.Store(true)
	s, err := tiers.NewStack([]tiers.Layer{{Tier: b}, {Tier: remote, Remote: true}},
		tiers.StackOptions{SpoolDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	k, v := tiertest.Key("cut by close"), tiertest.Data(5, 20<<10)
	if _, err := s.Publish(context.Background(), k, newBlob(v), digest.Of(v)); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitDurable(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	// Persisted and queued; the upload from the blob failed (remote down).
	// The retry reads the local copy, and Close cuts that read.
	b.block.Store(true)
	remote.down.Store(false)
	select {
	case <-b.entered:
	case <-time.After(time.Minute):
		t.Fatal("no upload read the local copy")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if keys := pending(t, path); !slices.Contains(keys, k) {
		t.Fatalf("durable queue after Close: %v; the upload cut by Close was dropped", keys)
	}
	if has(remote, k) {
		t.Fatal("on the remote, though its upload was cut")
	}
}

// TestWriteThrough: Publish returns once the remote holds the value; when
// the remote cannot take it, Publish fails, the entry is served from the
// local tiers and stays in the upload queue, and reaches the remote when it
// returns.
func TestWriteThrough(t *testing.T) {
	ctx := context.Background()
	remote := mem(t, "remote", 1<<30)
	st := newStack(t, tiers.StackOptions{WriteThrough: true},
		tiers.Layer{Tier: mem(t, "ram", 1<<20)}, tiers.Layer{Tier: openBolt(t, filepath.Join(t.TempDir(), "cache.db"))},
		tiers.Layer{Tier: remote, Remote: true})
	k1, v1 := tiertest.Key("through 1"), tiertest.Data(1, 3000)
	if _, err := st.Publish(ctx, k1, newBlob(v1), digest.Of(v1)); err != nil {
		t.Fatal(err)
	}
	if info, err := remote.Tier.Stat(ctx, k1); err != nil || info.Sum != digest.Of(v1) {
		t.Fatalf("remote right after a write-through publish: %+v, %v", info, err)
	}
	if up := st.UploadState(k1); up != tiers.UploadDone {
		t.Fatalf("upload state %q", up)
	}

	remote.down.Store(true)
	k2, v2 := tiertest.Key("through 2"), tiertest.Data(2, 3000)
	if _, err := st.Publish(ctx, k2, newBlob(v2), digest.Of(v2)); !errors.Is(err, tiers.ErrNotUploaded) || !errors.Is(err, tiers.ErrUnavailable) {
		t.Fatalf("write-through publish with the remote down: %v, want ErrNotUploaded and ErrUnavailable", err)
	}
	if got, err := read(t, st, k2); err != nil || !bytes.Equal(got, v2) {
		t.Fatalf("read of the entry whose upload failed: %v", err)
	}
	if up := st.UploadState(k2); up != tiers.UploadPending {
		t.Fatalf("upload state %q after the failed upload, want pending", up)
	}
	remote.down.Store(false)
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := st.Sync(sctx, nil); err != nil {
		t.Fatal(err)
	}
	if info, err := remote.Tier.Stat(ctx, k2); err != nil || info.Sum != digest.Of(v2) {
		t.Fatalf("remote after the remote returned: %+v, %v", info, err)
	}
}

// TestUploadsResumeWhenRemoteReturns: uploads that failed while the remote
// was down wait for retry times far away (RetryMin of an hour here), yet go
// within seconds of the remote's return: the workers ask a remote that is
// down every few seconds, and its first answer sends every waiting upload.
func TestUploadsResumeWhenRemoteReturns(t *testing.T) {
	remote := mem(t, "remote", 64<<20)
	remote.down.Store(true)
	s := newStack(t, tiers.StackOptions{RemoteTimeout: time.Second, Policy: tiers.Policy{RetryMin: time.Hour, RetryMax: time.Hour}},
		tiers.Layer{Tier: mem(t, "ram", 64<<20)}, tiers.Layer{Tier: remote, Remote: true})
	var keys []digest.Key
	for i := range 20 {
		k, v := tiertest.Key(fmt.Sprint("returns ", i)), tiertest.Data(uint64(i), 3000)
		if _, err := s.Publish(context.Background(), k, newBlob(v), digest.Of(v)); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	tiertest.Eventually(t, "every upload tried and failed", func() bool {
		st := s.Stats()
		return st.UploadErrors >= 20 && !st.Tiers[1].Available
	})
	remote.down.Store(false)
	tiertest.Eventually(t, "the uploads after the remote's return", func() bool { return s.Stats().Queue == 0 })
	for _, k := range keys {
		if !has(remote, k) {
			t.Fatalf("%s not on the remote", k)
		}
	}
}
