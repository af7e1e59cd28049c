package tiers_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/flechefs/flechefs/tiers/memory"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// lookedUp is a stack over a RAM tier and a remote holding one value of
// size bytes, which a Stat has just found (parking its remote reader).
// Its parked readers wait for parkTTL.
func lookedUp(t *testing.T, name string, seed uint64, size int64, parkTTL time.Duration) (*tiers.Stack, *faultTier, digest.Key, []byte) {
	t.Helper()
	remote := mem(t, "remote", 64<<20)
	s := newStack(t, tiers.StackOptions{Policy: tiers.Policy{ParkTTL: parkTTL}},
		tiers.Layer{Tier: mem(t, "ram", 64<<20)}, tiers.Layer{Tier: remote, Remote: true})
	k, v := tiertest.Key(name), tiertest.Data(seed, size)
	tiertest.Put(t, remote, k, v)
	if _, err := s.Stat(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	return s, remote, k, v
}

// A lookup of a remote value too large to prefetch keeps the remote reader
// it opened for the Open that follows: one remote open per cold read.
func TestLookupReaderServesOpen(t *testing.T) {
	s, remote, k, v := lookedUp(t, "parked", 7, 4<<20, time.Hour)
	if n := remote.opens.Load(); n != 1 {
		t.Fatalf("lookup opened the remote copy %d times, want 1", n)
	}
	got, err := read(t, s, k)
	if err != nil || !bytes.Equal(got, v) {
		t.Fatalf("read after lookup: %v (equal %v)", err, bytes.Equal(got, v))
	}
	if n := remote.opens.Load(); n != 1 {
		t.Fatalf("lookup then read opened the remote copy %d times, want 1", n)
	}
	tiertest.Eventually(t, "the fetch's reader closed", func() bool { return remote.closes.Load() == 1 })
}

// A parked reader nobody takes is closed after ParkTTL (a second); the Open that
// comes later opens the remote copy itself.
func TestParkedReaderExpires(t *testing.T) {
	s, remote, k, v := lookedUp(t, "expires", 8, 2<<20, 0)
	tiertest.Eventually(t, "the parked reader closed", func() bool { return remote.closes.Load() == 1 })
	got, err := read(t, s, k)
	if err != nil || !bytes.Equal(got, v) {
		t.Fatalf("read: %v", err)
	}
	if n := remote.opens.Load(); n != 2 {
		t.Fatalf("remote opens = %d, want 2 (lookup, then the read after expiry)", n)
	}
}

// A Delete between the lookup and the Open closes the parked reader: the
// Open does not serve, from a handle still open, the value just deleted.
func TestDeleteDropsParkedReader(t *testing.T) {
	s, remote, k, _ := lookedUp(t, "deleted", 9, 2<<20, time.Hour)
	if err := s.Delete(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	if n := remote.closes.Load(); n != 1 {
		t.Fatalf("Delete left the parked reader open (closes = %d)", n)
	}
	if _, err := read(t, s, k); !errors.Is(err, tiers.ErrNotFound) {
		t.Fatalf("read after Delete: %v, want ErrNotFound", err)
	}
}

// Close closes parked readers before the tiers.
func TestCloseDropsParkedReader(t *testing.T) {
	s, remote, _, _ := lookedUp(t, "closed", 10, 2<<20, time.Hour)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The reader is parked for an hour: only Close can have closed it.
	if n := remote.closes.Load(); n != 1 {
		t.Fatalf("after Close: closes = %d, want 1", n)
	}
}

// A parked reader whose connection dropped is not used: the fetch opens
// the remote copy again and the read succeeds.
func TestParkedReaderNotLive(t *testing.T) {
	s, remote, k, v := lookedUp(t, "dropped", 11, 2<<20, time.Hour)
	remote.dead.Store(true)
	got, err := read(t, s, k)
	if err != nil || !bytes.Equal(got, v) {
		t.Fatalf("read: %v", err)
	}
	if n := remote.opens.Load(); n != 2 {
		t.Fatalf("remote opens = %d, want 2 (the lookup's reader was dead)", n)
	}
	tiertest.Eventually(t, "the dead reader closed", func() bool { return remote.closes.Load() >= 1 })
}

// A fetched value that tier 0 takes as soon as it is fetched (a RAM tier,
// a value small beside it) is fetched into memory, and the RAM tier keeps
// that buffer. Such fetches hold at most the deferred copies' bound (a
// quarter of the RAM tier) at once; over it, a value goes to a spool file.
// A damaged one is served to no one, kept by no tier, and what it held is
// given back.
func TestFetchIntoMemory(t *testing.T) {
	const size, n = 4 << 20, 6
	ram, err := memory.New(memory.Options{Name: "ram", Limit: 64 << 20, MaxEntry: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	remote := mem(t, "remote", 256<<20)
	s := newStack(t, tiers.StackOptions{}, tiers.Layer{Tier: ram}, tiers.Layer{Tier: remote, Remote: true})
	var keys []digest.Key
	var vals [][]byte
	for i := range n {
		k, v := tiertest.Key(fmt.Sprint("in memory ", i)), tiertest.Data(uint64(100+i), size)
		tiertest.Put(t, remote, k, v)
		keys, vals = append(keys, k), append(vals, v)
	}
	remote.gate = make(chan struct{}) // every fetch waits in its first read
	var readers []tiers.Reader
	for _, k := range keys {
		r, err := s.Open(context.Background(), k)
		if err != nil {
			t.Fatal(err)
		}
		readers = append(readers, r)
	}
	if got, want := s.FetchMemHeld(), int64(16<<20); got != want {
		t.Fatalf("%d fetches of %d bytes hold %d bytes in memory, want %d (a quarter of the RAM tier; the rest in spool files)", n, size, got, want)
	}
	close(remote.gate)
	for i, r := range readers {
		got, err := tiers.ReadAll(r)
		if err != nil || !bytes.Equal(got, vals[i]) {
			t.Fatalf("read %d: %v (equal %v)", i, err, bytes.Equal(got, vals[i]))
		}
		r.Close()
	}
	tiertest.Eventually(t, "the fetches ended", func() bool { return s.FetchMemHeld() == 0 })
	for i, k := range keys {
		tiertest.Eventually(t, "the RAM tier holds the fetched value", func() bool { return has(ram, k) })
		r, err := ram.Open(context.Background(), k)
		if err != nil {
			t.Fatal(err)
		}
		got, err := tiers.ReadAll(r)
		r.Close()
		if err != nil || !bytes.Equal(got, vals[i]) {
			t.Fatalf("RAM copy %d: %v (equal %v)", i, err, bytes.Equal(got, vals[i]))
		}
	}

	// Damaged on the remote: fetched into memory, failed, kept nowhere.
	bad := tiertest.Key("damaged in memory")
	tiertest.Put(t, remote, bad, tiertest.Data(200, size))
	remote.flip.Store(true)
	if _, err := read(t, s, bad); !errors.Is(err, tiers.ErrCorrupt) {
		t.Fatalf("read of a damaged value: %v, want ErrCorrupt", err)
	}
	tiertest.Eventually(t, "the failed fetch gave its memory back", func() bool { return s.FetchMemHeld() == 0 })
	if has(ram, bad) {
		t.Fatal("the RAM tier holds a damaged value")
	}
}
