package tiers_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/sftp"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// countingTier counts the requests a stack makes of a remote tier, and
// can slow down or block its listings.
type countingTier struct {
	tiers.Tier
	opens, stats, lists, listsDone atomic.Int64

	mu        sync.Mutex
	listStart time.Time // of the last List
	listErr   error     // of the last List
	// listHook, if set, runs at the start of List; its error ends the List.
	listHook func(ctx context.Context) error
}

func (c *countingTier) Open(ctx context.Context, k digest.Key) (tiers.Reader, error) {
	c.opens.Add(1)
	return c.Tier.Open(ctx, k)
}

func (c *countingTier) Stat(ctx context.Context, k digest.Key) (tiers.Info, error) {
	c.stats.Add(1)
	return c.Tier.Stat(ctx, k)
}

func (c *countingTier) List(ctx context.Context, fn func(tiers.Info) error) error {
	c.lists.Add(1)
	c.mu.Lock()
	c.listStart = time.Now()
	c.mu.Unlock()
	err := func() error {
		if c.listHook != nil {
			if err := c.listHook(ctx); err != nil {
				return err
			}
		}
		return c.Tier.List(ctx, fn)
	}()
	c.mu.Lock()
	c.listErr = err
	c.mu.Unlock()
	c.listsDone.Add(1)
	return err
}

// requests is the number of per-key lookups the stack made of the tier.
func (c *countingTier) requests() int64 { return c.opens.Load() + c.stats.Load() }

func (c *countingTier) lastList() (time.Time, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.listStart, c.listErr
}

var absentDirs atomic.Int64

// sftpDir returns the options of a fresh remote directory of srv.
func sftpDir(srv *sshdtest.Server) sftp.Options {
	return sftp.Options{
		URL:           fmt.Sprintf("%s/absent%d", srv.URL(), absentDirs.Add(1)),
		IdentityFiles: []string{srv.IdentityFile},
		KnownHosts:    srv.KnownHosts,
		Timeout:       5 * time.Second,
		Logger:        slog.New(slog.DiscardHandler),
	}
}

func openSFTP(t *testing.T, opt sftp.Options) *sftp.Tier {
	t.Helper()
	tr, err := sftp.Open(context.Background(), opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// missing returns n keys nobody holds, distinct for each prefix.
func missing(prefix string, n int) []digest.Key {
	out := make([]digest.Key, n)
	for i := range out {
		out[i] = tiertest.Key(fmt.Sprintf("%s-%d", prefix, i))
	}
	return out
}

func statMisses(t *testing.T, s *tiers.Stack, keys []digest.Key) {
	t.Helper()
	for _, k := range keys {
		if _, err := s.Stat(context.Background(), k); !errors.Is(err, tiers.ErrNotFound) {
			t.Fatalf("stat of missing %s: %v", k, err)
		}
	}
}

func remoteStats(s *tiers.Stack, name string) tiers.TierStats {
	for _, ts := range s.Stats().Tiers {
		if ts.Name == name {
			return ts
		}
	}
	return tiers.TierStats{}
}

// primeSnapshot stats a burst of missing names and waits until a listing
// answers misses. It returns when the listing started.
// burstAnyTime counts every miss of a test toward a burst, however slowly
// the machine makes them.
var burstAnyTime = tiers.Policy{AbsentBurstWindow: time.Hour}

func primeSnapshot(t *testing.T, s *tiers.Stack, remote *countingTier, prefix string) time.Time {
	t.Helper()
	statMisses(t, s, missing(prefix, 40))
	tiertest.Eventually(t, "a listing", func() bool { return remote.listsDone.Load() >= 1 })
	start, err := remote.lastList()
	if err != nil {
		t.Fatalf("listing: %v", err)
	}
	before := remote.requests()
	statMisses(t, s, missing(prefix+"-after", 1))
	if remote.requests() != before {
		t.Fatal("a miss after the listing asked the remote")
	}
	return start
}

func TestAbsentBurstListsOnce(t *testing.T) {
	srv := sshdtest.Start(t)
	opt := sftpDir(srv)
	// Entries already on the remote must still be found.
	other := openSFTP(t, opt)
	var present []digest.Key
	for i := range 5 {
		k, v := tiertest.Key(fmt.Sprintf("present-%d", i)), tiertest.Data(uint64(i), 100)
		if _, err := other.Put(context.Background(), k, bytes.NewReader(v), tiers.Meta{Size: 100, Sum: digest.Of(v)}); err != nil {
			t.Fatal(err)
		}
		present = append(present, k)
	}
	remote := &countingTier{Tier: openSFTP(t, opt)}
	s := newStack(t, tiers.StackOptions{ListingTTL: time.Minute, Policy: burstAnyTime},
		tiers.Layer{Tier: mem(t, "ram", 64<<20)}, tiers.Layer{Tier: remote, Remote: true})

	// Fewer misses than a burst ask the remote per name and list nothing.
	statMisses(t, s, missing("few", 10))
	if n := remote.requests(); n != 10 {
		t.Fatalf("10 misses made %d remote lookups", n)
	}
	if remote.lists.Load() != 0 {
		t.Fatal("10 misses started a listing")
	}

	primeSnapshot(t, s, remote, "burst")
	before := remote.requests()
	statMisses(t, s, missing("more", 300))
	if n := remote.requests() - before; n != 0 {
		t.Fatalf("300 misses after the listing made %d remote lookups", n)
	}
	if n := remote.lists.Load(); n != 1 {
		t.Fatalf("%d listings, want exactly 1", n)
	}
	if ts := remoteStats(s, remote.Name()); ts.Listings != 1 || ts.ListedMisses < 300 {
		t.Fatalf("stats: listings %d, listed misses %d", ts.Listings, ts.ListedMisses)
	}
	// Names in the listing are asked of the remote and found.
	before = remote.requests()
	for _, k := range present {
		if _, err := s.Stat(context.Background(), k); err != nil {
			t.Fatalf("stat of a listed entry: %v", err)
		}
	}
	if remote.requests() == before {
		t.Fatal("listed entries were not asked of the remote")
	}
}

// TestAbsentSeesOtherStackWithinTTL: an entry another stack publishes after
// a listing started is answered absent by that listing until its TTL ends,
// and found by the first lookup that starts after it. The test asserts the
// order of each lookup against T0 + TTL, not how soon it ran.
func TestAbsentSeesOtherStackWithinTTL(t *testing.T) {
	const ttl = 5 * time.Second
	srv := sshdtest.Start(t)
	opt := sftpDir(srv)
	remote := &countingTier{Tier: openSFTP(t, opt)}
	// The 40 misses of primeSnapshot start the listing; the test's 20 or
	// fewer polls after it do not start a second one, which would see
	// the entry before the first one's TTL ends.
	a := newStack(t, tiers.StackOptions{ListingTTL: ttl, Policy: tiers.Policy{AbsentBurst: 40, AbsentBurstWindow: time.Hour}},
		tiers.Layer{Tier: mem(t, "ram", 64<<20)}, tiers.Layer{Tier: remote, Remote: true})
	b := newStack(t, tiers.StackOptions{WriteThrough: true},
		tiers.Layer{Tier: mem(t, "ram", 64<<20)}, tiers.Layer{Tier: openSFTP(t, opt), Remote: true})

	t0 := primeSnapshot(t, a, remote, "burst")
	k, v := tiertest.Key("published-elsewhere"), tiertest.Data(9, 1000)
	if _, err := b.Publish(context.Background(), k, newBlob(v), digest.Of(v)); err != nil {
		t.Fatal(err)
	}
	// Published after T0: a lookup that ends before T0 + ttl is answered
	// by the snapshot (absent), and says until when.
	_, err := a.Stat(context.Background(), k)
	if time.Now().Before(t0.Add(ttl)) {
		until, ok := tiers.MissValidUntil(err)
		if !errors.Is(err, tiers.ErrNotFound) || !ok {
			t.Fatalf("first stat after the publish elsewhere: %v (answered by the listing: %v)", err, ok)
		}
		if until.After(t0.Add(ttl)) {
			t.Fatalf("the miss holds until %v after the listing started, more than %v", until.Sub(t0), ttl)
		}
	} else {
		t.Logf("the test took longer than the TTL (%v) to publish: only the lookup after it is checked", ttl)
	}
	// A lookup that starts after T0 + ttl must find it.
	for {
		start := time.Now()
		info, err := a.Stat(context.Background(), k)
		end := time.Now()
		if err == nil {
			if info.Sum != digest.Of(v) {
				t.Fatalf("found another value: %s", info.Sum)
			}
			if end.Before(t0.Add(ttl)) {
				t.Fatalf("found %v after the listing started: the listing did not answer until its end (%v)", end.Sub(t0), ttl)
			}
			break
		}
		if !errors.Is(err, tiers.ErrNotFound) {
			t.Fatal(err)
		}
		if !start.Before(t0.Add(ttl)) {
			t.Fatalf("a lookup that started %v after the listing, past its TTL %v, still missed", start.Sub(t0), ttl)
		}
		time.Sleep(ttl / 20)
	}
	if n := remote.lists.Load(); n != 1 {
		t.Fatalf("%d listings, want 1", n)
	}
}

func TestAbsentOwnUploadFoundAtOnce(t *testing.T) {
	srv := sshdtest.Start(t)
	remote := &countingTier{Tier: openSFTP(t, sftpDir(srv))}
	ram := mem(t, "ram", 64<<20)
	// The snapshot lasts a minute, so that it still answers when the test
	// looks, however slow the machine.
	s := newStack(t, tiers.StackOptions{ListingTTL: time.Minute, Policy: burstAnyTime},
		tiers.Layer{Tier: ram}, tiers.Layer{Tier: remote, Remote: true})

	t0 := primeSnapshot(t, s, remote, "burst")
	k, v := tiertest.Key("uploaded-here"), tiertest.Data(3, 1000)
	if _, err := s.Publish(context.Background(), k, newBlob(v), digest.Of(v)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Sync(ctx, nil); err != nil {
		t.Fatal(err)
	}
	// Only the remote holds it now, and the snapshot predates it.
	if err := ram.Delete(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	if time.Since(t0) > 30*time.Second {
		t.Fatalf("test too slow: the snapshot is %v old", time.Since(t0))
	}
	info, err := s.Stat(context.Background(), k)
	if err != nil {
		t.Fatalf("stat of a key this stack uploaded after the listing: %v", err)
	}
	if info.Sum != digest.Of(v) {
		t.Fatalf("sum %s", info.Sum)
	}
}

// memRemote is a fake remote (RAM) holding n entries.
func memRemote(t *testing.T, n int) *countingTier {
	t.Helper()
	m := mem(t, "remote", 64<<20)
	for i := range n {
		k, v := tiertest.Key(fmt.Sprintf("r%d", i)), tiertest.Data(uint64(i), 10)
		if _, err := m.Put(context.Background(), k, bytes.NewReader(v), tiers.Meta{Size: 10, Sum: digest.Of(v)}); err != nil {
			t.Fatal(err)
		}
	}
	return &countingTier{Tier: m}
}

// checkGivenUp checks that after a listing given up, misses ask the remote
// per name and no listing starts again.
func checkGivenUp(t *testing.T, s *tiers.Stack, remote *countingTier) {
	t.Helper()
	tiertest.Eventually(t, "the listing to end", func() bool { return remote.listsDone.Load() == 1 })
	before := remote.requests()
	statMisses(t, s, missing("after", 100))
	if n := remote.requests() - before; n != 100 {
		t.Fatalf("100 misses after a listing given up made %d remote lookups", n)
	}
	time.Sleep(50 * time.Millisecond)
	if n := remote.lists.Load(); n != 1 {
		t.Fatalf("%d listings, want 1 (backed off)", n)
	}
	if ts := remoteStats(s, "remote"); ts.ListedMisses != 0 {
		t.Fatalf("%d misses answered by a listing given up", ts.ListedMisses)
	}
}

func TestAbsentListingCap(t *testing.T) {
	remote := memRemote(t, 10)
	s := newStack(t, tiers.StackOptions{ListingTTL: time.Minute, ListingMaxNames: 5, Policy: burstAnyTime},
		tiers.Layer{Tier: mem(t, "ram", 64<<20)}, tiers.Layer{Tier: remote, Remote: true})
	statMisses(t, s, missing("burst", 40))
	checkGivenUp(t, s, remote)

	// Under the cap, the same remote is listed and used.
	remote = memRemote(t, 10)
	s = newStack(t, tiers.StackOptions{ListingTTL: time.Minute, ListingMaxNames: 10, Policy: burstAnyTime},
		tiers.Layer{Tier: mem(t, "ram", 64<<20)}, tiers.Layer{Tier: remote, Remote: true})
	primeSnapshot(t, s, remote, "burst")
}

func TestAbsentSlowListing(t *testing.T) {
	const ttl = 400 * time.Millisecond
	remote := memRemote(t, 10)
	remote.listHook = func(ctx context.Context) error {
		select {
		case <-time.After(ttl): // longer than ttl/2
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s := newStack(t, tiers.StackOptions{ListingTTL: ttl, Policy: burstAnyTime},
		tiers.Layer{Tier: mem(t, "ram", 64<<20)}, tiers.Layer{Tier: remote, Remote: true})
	statMisses(t, s, missing("burst", 40))
	checkGivenUp(t, s, remote)
	if _, err := remote.lastList(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow listing ended with %v, want it cut at ttl/2", err)
	}
}

func TestAbsentCloseCancelsListing(t *testing.T) {
	remote := memRemote(t, 10)
	started := make(chan struct{})
	remote.listHook = func(ctx context.Context) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	}
	s, err := tiers.NewStack([]tiers.Layer{{Tier: mem(t, "ram", 64<<20)}, {Tier: remote, Remote: true}},
		tiers.StackOptions{ListingTTL: time.Minute, RemoteTimeout: time.Minute, SpoolDir: t.TempDir(), Policy: burstAnyTime})
	if err != nil {
		t.Fatal(err)
	}
	statMisses(t, s, missing("burst", 40))
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("no listing started")
	}
	t0 := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > 30*time.Second {
		t.Fatalf("Close took %v with a listing running: it waited for the listing's timeout (a minute)", d)
	}
	if remote.listsDone.Load() != 1 {
		t.Fatal("Close returned before the listing ended")
	}
	if _, err := remote.lastList(); !errors.Is(err, context.Canceled) {
		t.Fatalf("listing ended with %v, want cancelled", err)
	}
}

func TestAbsentDisabled(t *testing.T) {
	remote := memRemote(t, 10)
	s := newStack(t, tiers.StackOptions{},
		tiers.Layer{Tier: mem(t, "ram", 64<<20)}, tiers.Layer{Tier: remote, Remote: true})
	statMisses(t, s, missing("burst", 100))
	time.Sleep(50 * time.Millisecond)
	if remote.lists.Load() != 0 || remote.requests() != 100 {
		t.Fatalf("ListingTTL 0: %d listings, %d lookups for 100 misses", remote.lists.Load(), remote.requests())
	}
}

func TestAbsentRemoteDown(t *testing.T) {
	remote := memRemote(t, 10)
	ft := &faultTier{Tier: remote, name: "remote"}
	ft.down.Store(true)
	s := newStack(t, tiers.StackOptions{ListingTTL: 2 * time.Second, RemoteTimeout: time.Second},
		tiers.Layer{Tier: mem(t, "ram", 64<<20)}, tiers.Layer{Tier: ft, Remote: true})
	// Unavailable is not a miss: no listing, every lookup tries the remote.
	for _, k := range missing("down", 100) {
		if _, err := s.Stat(context.Background(), k); !errors.Is(err, tiers.ErrNotFound) {
			t.Fatalf("stat with the remote down: %v", err)
		}
	}
	time.Sleep(50 * time.Millisecond)
	if n := remote.lists.Load(); n != 0 {
		t.Fatalf("%d listings of a remote that is down", n)
	}
	if n := ft.opens.Load(); n != 100 {
		t.Fatalf("%d remote lookups for 100 misses with the remote down", n)
	}
}
