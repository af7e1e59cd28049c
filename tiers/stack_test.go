package tiers_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/memory"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// faultTier wraps a tier with injectable faults (restic's mock backend style).
type faultTier struct {
	tiers.Tier
	name   string
	down   atomic.Bool  // every call fails with ErrUnavailable
	noDel  atomic.Bool  // Delete fails with ErrUnavailable
	flip   atomic.Bool  // readers return flipped bytes
	opens  atomic.Int64 // Open calls
	closes atomic.Int64 // Close calls of its readers
	dead   atomic.Bool  // its readers say they are not Live (a dropped connection)
	putErr func() error
	onPut  func(ctx context.Context, k digest.Key, m tiers.Meta) error // called first by Put; its error fails it
	info   func(tiers.Info) tiers.Info                                 // rewrites its readers' Info, if set
	gate   chan struct{}                                               // if set, its readers' reads wait until it is closed
	// adopt, if set, makes its readers tiers.Adopters calling it.
	adopt func(k digest.Key, sum digest.Sum) error
	// quarantined holds what Quarantine moved aside (key → bytes); qFull
	// makes Quarantine fail with ErrQuarantineFull.
	quarantined sync.Map
	qFull       atomic.Bool
	// gen is the generation of the tier's copies, their CopyID: a test
	// raises it to stand for another mount's copy put in their place.
	gen atomic.Int64
}

// Quarantine moves k aside, as a remote tier does (tiers.Quarantiner).
func (f *faultTier) Quarantine(ctx context.Context, k digest.Key, copyID string) error {
	if f.qFull.Load() {
		return tiers.Wrap(f.name, "quarantine", k, tiers.ErrQuarantineFull)
	}
	if copyID != "" && copyID != f.copyID() {
		return tiers.Wrap(f.name, "quarantine", k, tiers.ErrNotFound)
	}
	r, err := f.Tier.Open(ctx, k)
	if err != nil {
		return err
	}
	b, err := tiers.ReadAll(r)
	r.Close()
	if err != nil {
		return err
	}
	f.quarantined.Store(k, b)
	return f.Tier.Delete(ctx, k)
}

func (f *faultTier) Name() string { return f.name }

func (f *faultTier) check(op string, k digest.Key) error {
	if f.down.Load() {
		return tiers.Wrap(f.name, op, k, tiers.ErrUnavailable)
	}
	return nil
}

func (f *faultTier) Stat(ctx context.Context, k digest.Key) (tiers.Info, error) {
	if err := f.check("stat", k); err != nil {
		return tiers.Info{}, err
	}
	return f.Tier.Stat(ctx, k)
}

func (f *faultTier) Open(ctx context.Context, k digest.Key) (tiers.Reader, error) {
	f.opens.Add(1)
	if err := f.check("open", k); err != nil {
		return nil, err
	}
	r, err := f.Tier.Open(ctx, k)
	if err != nil {
		return nil, err
	}
	if f.adopt != nil {
		return &adoptReader{faultReader{Reader: r, f: f, copy: f.copyID()}}, nil
	}
	return &faultReader{Reader: r, f: f, copy: f.copyID()}, nil
}

// adoptReader is a faultReader that is a tiers.Adopter.
type adoptReader struct{ faultReader }

func (r *adoptReader) Adopt(ctx context.Context, sum digest.Sum) error {
	return r.f.adopt(r.Info().Key, sum)
}

func (f *faultTier) Put(ctx context.Context, k digest.Key, r io.Reader, m tiers.Meta) (tiers.Info, error) {
	if f.onPut != nil {
		if err := f.onPut(ctx, k, m); err != nil {
			return tiers.Info{}, err
		}
	}
	if err := f.check("put", k); err != nil {
		return tiers.Info{}, err
	}
	if f.putErr != nil {
		if err := f.putErr(); err != nil {
			return tiers.Info{}, err
		}
	}
	return f.Tier.Put(ctx, k, r, m)
}

func (f *faultTier) Delete(ctx context.Context, k digest.Key) error {
	if err := f.check("delete", k); err != nil {
		return err
	}
	if f.noDel.Load() {
		return tiers.Wrap(f.name, "delete", k, tiers.ErrUnavailable)
	}
	return f.Tier.Delete(ctx, k)
}

func (f *faultTier) List(ctx context.Context, fn func(tiers.Info) error) error {
	if err := f.check("list", digest.Key{}); err != nil {
		return err
	}
	return f.Tier.List(ctx, fn)
}

type faultReader struct {
	tiers.Reader
	f    *faultTier
	copy string // the tier's copyID when it was opened
}

func (f *faultTier) copyID() string { return fmt.Sprint("gen-", f.gen.Load()) }

func (r *faultReader) CopyID() string { return r.copy }

func (r *faultReader) Live() bool { return !r.f.dead.Load() }

func (r *faultReader) Info() tiers.Info {
	if r.f.info != nil {
		return r.f.info(r.Reader.Info())
	}
	return r.Reader.Info()
}

func (r *faultReader) Close() error {
	r.f.closes.Add(1)
	return r.Reader.Close()
}

func (r *faultReader) ReadAt(p []byte, off int64) (int, error) {
	if r.f.gate != nil {
		<-r.f.gate
	}
	if err := r.f.check("read", r.Info().Key); err != nil {
		return 0, err
	}
	n, err := r.Reader.ReadAt(p, off)
	if r.f.flip.Load() && n > 0 {
		p[n/2] ^= 0xff
	}
	return n, err
}

func mem(t testing.TB, name string, limit int64) *faultTier {
	m, err := memory.New(memory.Options{Name: name, Limit: limit, MaxEntry: limit})
	if err != nil {
		t.Fatal(err)
	}
	return &faultTier{Tier: m, name: name}
}

type blob struct {
	*bytes.Reader
	released atomic.Int32
}

func (b *blob) Release() { b.released.Add(1) }

func newBlob(b []byte) *blob { return &blob{Reader: bytes.NewReader(b)} }

func read(t *testing.T, s *tiers.Stack, k digest.Key) ([]byte, error) {
	t.Helper()
	r, err := s.Open(context.Background(), k)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return tiers.ReadAll(r)
}

func has(tr tiers.Tier, k digest.Key) bool {
	_, err := tr.Stat(context.Background(), k)
	return err == nil
}

func newStack(t *testing.T, opt tiers.StackOptions, layers ...tiers.Layer) *tiers.Stack {
	t.Helper()
	opt.SpoolDir = t.TempDir()
	s, err := tiers.NewStack(layers, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// ramOverRemote is a stack over a RAM tier and a remote one, 64 MiB each.
func ramOverRemote(t *testing.T) (ram, remote *faultTier, s *tiers.Stack) {
	t.Helper()
	ram, remote = mem(t, "ram", 64<<20), mem(t, "remote", 64<<20)
	return ram, remote, newStack(t, tiers.StackOptions{}, tiers.Layer{Tier: ram}, tiers.Layer{Tier: remote, Remote: true})
}

func TestPromoteFromLocal(t *testing.T) {
	for _, mode := range []tiers.Promote{tiers.PromoteAll, tiers.PromoteBase} {
		t.Run(string(mode), func(t *testing.T) {
			a, b, c := mem(t, "a", 64<<20), mem(t, "b", 64<<20), mem(t, "c", 64<<20)
			s := newStack(t, tiers.StackOptions{Promote: mode}, tiers.Layer{Tier: a}, tiers.Layer{Tier: b}, tiers.Layer{Tier: c})
			k, v := tiertest.Key("x"), tiertest.Data(1, 3<<20)
			tiertest.Put(t, c, k, v)
			got, err := read(t, s, k)
			if err != nil || !bytes.Equal(got, v) {
				t.Fatalf("read: %v", err)
			}
			tiertest.Eventually(t, "promotion to tier 0", func() bool { return has(a, k) })
			if mode == tiers.PromoteAll {
				tiertest.Eventually(t, "promotion to tier 1", func() bool { return has(b, k) })
			} else {
				time.Sleep(50 * time.Millisecond)
				if has(b, k) {
					t.Fatal("promote=base copied into tier 1")
				}
			}
			st := s.Stats()
			if st.Tiers[2].Hits != 1 || st.Tiers[0].Promotions != 1 {
				t.Fatalf("stats %+v", st.Tiers)
			}
		})
	}
}

func TestRemoteFetchStreamsAndPromotes(t *testing.T) {
	ram, local, remote := mem(t, "ram", 256<<20), mem(t, "local", 256<<20), mem(t, "remote", 256<<20)
	s := newStack(t, tiers.StackOptions{}, tiers.Layer{Tier: ram}, tiers.Layer{Tier: local}, tiers.Layer{Tier: remote, Remote: true})
	k, v := tiertest.Key("remote"), tiertest.Data(2, 40<<20+3)
	tiertest.Put(t, remote, k, v)

	// Many concurrent readers share one fetch.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := read(t, s, k)
			if err != nil || !bytes.Equal(got, v) {
				t.Errorf("reader %d: %v, equal=%v", i, err, bytes.Equal(got, v))
			}
		}()
	}
	wg.Wait()
	if n := remote.opens.Load(); n != 1 {
		t.Errorf("remote opened %d times for 8 concurrent readers, want 1", n)
	}
	tiertest.Eventually(t, "promotion into ram and local", func() bool { return has(ram, k) && has(local, k) })
	if n := s.Stats().Fetching; n != 0 {
		t.Fatalf("%d fetches still registered", n)
	}
	// Now served from RAM: no new remote open.
	if _, err := read(t, s, k); err != nil {
		t.Fatal(err)
	}
	if n := remote.opens.Load(); n != 1 {
		t.Fatalf("remote opened again after promotion")
	}
}

func TestRemoteCorruptionNeverServed(t *testing.T) {
	ram, remote, s := ramOverRemote(t)
	k, v := tiertest.Key("bad"), tiertest.Data(3, 5<<20)
	tiertest.Put(t, remote, k, v)
	remote.flip.Store(true)
	r, err := s.Open(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(io.NewSectionReader(r, 0, int64(len(v))))
	r.Close()
	if !errors.Is(err, tiers.ErrCorrupt) {
		t.Fatalf("read of a corrupt remote value: %v (got %d bytes), want ErrCorrupt", err, len(got))
	}
	if len(got) == len(v) {
		t.Fatal("reader reached the end of a corrupt value")
	}
	time.Sleep(50 * time.Millisecond)
	if has(ram, k) {
		t.Fatal("corrupt value was promoted")
	}
	if c := s.Stats().Tiers[1].Corruptions; c != 1 {
		t.Fatalf("corruptions = %d, want 1", c)
	}
	if has(remote, k) {
		t.Fatal("bad remote copy was left under its name")
	}
	if _, ok := remote.quarantined.Load(k); !ok {
		t.Fatal("bad remote copy was not moved to the quarantine")
	}
	if q := s.Stats().Tiers[1].Quarantined; q != 1 {
		t.Fatalf("quarantined = %d, want 1", q)
	}
}

// TestRemoteCorruptionQuarantinesTheJudgedCopy: a copy put under the key
// while the damaged one was read (another mount's repair) is not the one
// moved to the quarantine: it stays, and nothing counts as quarantined.
func TestRemoteCorruptionQuarantinesTheJudgedCopy(t *testing.T) {
	_, remote, s := ramOverRemote(t)
	k, v := tiertest.Key("bad, then repaired"), tiertest.Data(4, 5<<20)
	tiertest.Put(t, remote, k, v)
	remote.flip.Store(true)
	r, err := s.Open(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	remote.gen.Add(1) // the copy under k is another one from now on
	_, err = io.ReadAll(io.NewSectionReader(r, 0, int64(len(v))))
	r.Close()
	if !errors.Is(err, tiers.ErrCorrupt) {
		t.Fatalf("read of a corrupt remote value: %v, want ErrCorrupt", err)
	}
	if !has(remote, k) {
		t.Fatal("the copy put in place of the damaged one was moved away")
	}
	if _, ok := remote.quarantined.Load(k); ok {
		t.Fatal("the copy put in place of the damaged one is in the quarantine")
	}
	st := s.Stats().Tiers[1]
	if st.Corruptions != 1 || st.Quarantined != 0 || st.Unquarantined != 0 {
		t.Fatalf("stats %+v: want corruptions 1, quarantined 0, unquarantined 0", st)
	}
}

// TestRemoteCorruptionQuarantineFull: with the quarantine full, a damaged
// remote copy stays where it is, is never served and never deleted, and
// the stats say so.
func TestRemoteCorruptionQuarantineFull(t *testing.T) {
	_, remote, s := ramOverRemote(t)
	k, v := tiertest.Key("bad, no room"), tiertest.Data(5, 40<<10)
	tiertest.Put(t, remote, k, v)
	remote.flip.Store(true)
	remote.qFull.Store(true)
	for i := range 2 {
		if got, err := read(t, s, k); !errors.Is(err, tiers.ErrCorrupt) {
			t.Fatalf("read %d: %d bytes, %v; want ErrCorrupt", i, len(got), err)
		}
	}
	if !has(remote, k) {
		t.Fatal("damaged remote copy removed although the quarantine was full")
	}
	st := s.Stats().Tiers[1]
	if st.Quarantined != 0 || st.Unquarantined < 1 || st.Corruptions < 1 {
		t.Fatalf("stats %+v: want quarantined 0, unquarantined and corruptions >= 1", st)
	}
}

func TestLocalCorruptionFailsOver(t *testing.T) {
	a, b := mem(t, "a", 64<<20), mem(t, "b", 64<<20)
	s := newStack(t, tiers.StackOptions{}, tiers.Layer{Tier: a}, tiers.Layer{Tier: b})
	k, v := tiertest.Key("fo"), tiertest.Data(4, 100000)
	tiertest.Put(t, b, k, v)
	inner := a.Tier
	tiertest.Put(t, inner, k, v)
	a.Tier = corruptOnRead{inner}
	got, err := read(t, s, k)
	if err != nil || !bytes.Equal(got, v) {
		t.Fatalf("failover read: %v", err)
	}
	if s.Stats().Tiers[0].Corruptions != 1 {
		t.Fatal("corruption not counted")
	}
	// The bad copy was removed and repaired from tier b by promotion.
	tiertest.Eventually(t, "repair of tier a", func() bool { return s.Stats().Tiers[0].Promotions == 1 })
	if !bytes.Equal(tiertest.Get(t, inner, k), v) {
		t.Fatal("repaired copy differs")
	}
}

type corruptOnRead struct{ tiers.Tier }

func (c corruptOnRead) Open(ctx context.Context, k digest.Key) (tiers.Reader, error) {
	r, err := c.Tier.Open(ctx, k)
	if err != nil {
		return nil, err
	}
	return badReader{r}, nil
}

type badReader struct{ tiers.Reader }

func (badReader) ReadAt([]byte, int64) (int, error) {
	return 0, fmt.Errorf("chunk 0: %w", tiers.ErrCorrupt)
}

func TestPublishUploadDelete(t *testing.T) {
	ram, local, remote := mem(t, "ram", 64<<20), mem(t, "local", 64<<20), mem(t, "remote", 64<<20)
	s := newStack(t, tiers.StackOptions{}, tiers.Layer{Tier: ram}, tiers.Layer{Tier: local}, tiers.Layer{Tier: remote, Remote: true})
	k, v := tiertest.Key("pub"), tiertest.Data(5, 2<<20)
	b := newBlob(v)
	if _, err := s.Publish(context.Background(), k, b, digest.Of(v)); err != nil {
		t.Fatal(err)
	}
	if got, err := read(t, s, k); err != nil || !bytes.Equal(got, v) {
		t.Fatalf("read after publish: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Sync(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if !has(local, k) || !has(remote, k) {
		t.Fatal("not persisted and uploaded after Sync")
	}
	tiertest.Eventually(t, "blob release", func() bool { return b.released.Load() == 1 })
	if st := s.UploadState(k); st != tiers.UploadDone {
		t.Fatalf("upload state %s", st)
	}
	// Second publish of the same key: first writer wins.
	b2 := newBlob(tiertest.Data(6, 10))
	if _, err := s.Publish(context.Background(), k, b2, digest.Of(tiertest.Data(6, 10))); !errors.Is(err, tiers.ErrExist) {
		t.Fatalf("second publish: %v", err)
	}
	if b2.released.Load() != 1 || s.Stats().DroppedPublishes != 1 {
		t.Fatal("dropped publish not released or not counted")
	}
	if err := s.Delete(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	for _, tr := range []tiers.Tier{ram, local, remote} {
		if has(tr, k) {
			t.Fatalf("%s still holds the deleted key", tr.Name())
		}
	}
	if _, err := s.Stat(context.Background(), k); !errors.Is(err, tiers.ErrNotFound) {
		t.Fatalf("stat after delete: %v", err)
	}
	if err := s.Delete(context.Background(), k); !errors.Is(err, tiers.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

func TestRemoteDown(t *testing.T) {
	ram, local, remote := mem(t, "ram", 64<<20), mem(t, "local", 64<<20), mem(t, "remote", 64<<20)
	s := newStack(t, tiers.StackOptions{RemoteTimeout: time.Second}, tiers.Layer{Tier: ram}, tiers.Layer{Tier: local}, tiers.Layer{Tier: remote, Remote: true})
	kl, vl := tiertest.Key("local"), tiertest.Data(7, 1000)
	tiertest.Put(t, local, kl, vl)
	kr := tiertest.Key("remote-only")
	tiertest.Put(t, remote, kr, tiertest.Data(8, 1000))
	remote.down.Store(true)

	if got, err := read(t, s, kl); err != nil || !bytes.Equal(got, vl) {
		t.Fatalf("local hit with the remote down: %v", err)
	}
	if _, err := read(t, s, kr); !errors.Is(err, tiers.ErrUnavailable) {
		t.Fatalf("remote-only read with the remote down: %v, want ErrUnavailable", err)
	}
	kp, vp := tiertest.Key("new"), tiertest.Data(9, 5000)
	if _, err := s.Publish(context.Background(), kp, newBlob(vp), digest.Of(vp)); err != nil {
		t.Fatalf("publish with the remote down: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	err := s.Sync(ctx, nil)
	cancel()
	if err == nil {
		t.Fatal("sync succeeded with the remote down")
	}
	if st := s.Stats(); st.Tiers[2].Available || st.Queue != 1 {
		t.Fatalf("stats with remote down: available=%v queue=%d", st.Tiers[2].Available, st.Queue)
	}
	remote.down.Store(false)
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.Sync(ctx, nil); err != nil {
		t.Fatalf("sync after the remote came back: %v", err)
	}
	if !has(remote, kp) {
		t.Fatal("queued upload did not reach the remote")
	}
}

func TestListUnion(t *testing.T) {
	ram, local, remote := mem(t, "ram", 64<<20), mem(t, "local", 64<<20), mem(t, "remote", 64<<20)
	s := newStack(t, tiers.StackOptions{}, tiers.Layer{Tier: ram}, tiers.Layer{Tier: local}, tiers.Layer{Tier: remote, Remote: true})
	want := map[digest.Key]bool{}
	for i, tr := range []*faultTier{ram, local, remote, remote} {
		k := tiertest.Key(fmt.Sprint("l", i))
		tiertest.Put(t, tr, k, []byte{byte(i)})
		want[k] = true
	}
	tiertest.Put(t, local, tiertest.Key("l0"), []byte{0}) // a duplicate
	got := map[digest.Key]int{}
	if err := s.List(context.Background(), func(in tiers.Info) error { got[in.Key]++; return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("listed %d keys, want %d", len(got), len(want))
	}
	for k, n := range got {
		if !want[k] || n != 1 {
			t.Fatalf("key %s listed %d times", k, n)
		}
	}
	// With the remote down, List still answers from the cache.
	remote.down.Store(true)
	n := 0
	err := s.List(context.Background(), func(tiers.Info) error { n++; return nil })
	if err != nil || n != len(want) {
		t.Fatalf("list with remote down: %d entries, %v; want %d from the cache", n, err, len(want))
	}
}

// TestStatFetchesSmallRemote: a Stat that finds a small value only in the
// remote tier fetches it, and the Open that follows joins that fetch (one
// remote open); a large value is not fetched by a Stat.
func TestStatFetchesSmallRemote(t *testing.T) {
	ram, remote := mem(t, "ram", 256<<20), mem(t, "remote", 256<<20)
	s := newStack(t, tiers.StackOptions{}, tiers.Layer{Tier: ram}, tiers.Layer{Tier: remote, Remote: true})
	small, vs := tiertest.Key("small"), tiertest.Data(7, 16<<10)
	large, vl := tiertest.Key("large"), tiertest.Data(8, 3<<20)
	tiertest.Put(t, remote, small, vs)
	tiertest.Put(t, remote, large, vl)

	info, err := s.Stat(context.Background(), small)
	if err != nil || info.Size != int64(len(vs)) || info.Sum != digest.Of(vs) {
		t.Fatalf("stat: %+v, %v", info, err)
	}
	got, err := read(t, s, small)
	if err != nil || !bytes.Equal(got, vs) {
		t.Fatalf("read after stat: %v", err)
	}
	if n := remote.opens.Load(); n != 1 {
		t.Errorf("stat then read opened the remote %d times, want 1", n)
	}
	tiertest.Eventually(t, "promotion of the small value", func() bool { return has(ram, small) })
	// The fetch ends after its copy into RAM: counted until then.
	tiertest.Eventually(t, "the end of the small value's fetch", func() bool { return s.Stats().Fetching == 0 })

	if _, err := s.Stat(context.Background(), large); err != nil {
		t.Fatal(err)
	}
	if n := s.Stats().Fetching; n != 0 {
		t.Errorf("a stat of a 3 MiB value started %d fetches", n)
	}
	time.Sleep(50 * time.Millisecond)
	if has(ram, large) {
		t.Error("a stat of a 3 MiB value promoted it")
	}
	got, err = read(t, s, large)
	if err != nil || !bytes.Equal(got, vl) {
		t.Fatalf("read of the large value: %v", err)
	}
}

// TestUnrecordedRemoteServed: a remote copy without a checksum record
// that the tier serves (a file flechefs did not write, or an upload cut
// between its rename and its record: the tier answers ErrNotFound for one
// that looks like a write in progress) is found by a lookup and an open
// alike, of any age, read whole, hashed, adopted (Adopt gets its SHA-256)
// and promoted with that sum; it is never removed from the remote.
func TestUnrecordedRemoteServed(t *testing.T) {
	for _, tc := range []struct {
		name string
		age  time.Duration
		size int64
	}{{"young small", time.Second, 16 << 10}, {"old small", 2 * time.Hour, 16 << 10}, {"old large", 2 * time.Hour, 3 << 20}} {
		t.Run(tc.name, func(t *testing.T) {
			ram, remote, s := ramOverRemote(t)
			remote.info = func(i tiers.Info) tiers.Info {
				i.Sum, i.Created = digest.Sum{}, time.Now().Add(-tc.age)
				return i
			}
			var adopted sync.Map
			remote.adopt = func(k digest.Key, sum digest.Sum) error { adopted.Store(k, sum); return nil }
			k, v := tiertest.Key("unrecorded "+tc.name), tiertest.Data(3, tc.size)
			tiertest.Put(t, remote, k, v)
			if info, err := s.Stat(context.Background(), k); err != nil || info.Size != int64(len(v)) {
				t.Fatalf("stat: %+v, %v; want found, %d bytes", info, err, len(v))
			}
			got, err := read(t, s, k)
			if err != nil || !bytes.Equal(got, v) {
				t.Fatalf("read: %d bytes, %v", len(got), err)
			}
			if sum, ok := adopted.Load(k); !ok || sum.(digest.Sum) != digest.Of(v) {
				t.Fatalf("adopted with %v (%v), want %s", sum, ok, digest.Of(v))
			}
			if !has(remote, k) {
				t.Fatal("removed from the remote")
			}
			tiertest.Eventually(t, "promotion with its sum", func() bool {
				info, err := ram.Stat(context.Background(), k)
				return err == nil && info.Sum == digest.Of(v)
			})
			if info, err := s.Stat(context.Background(), k); err != nil || info.Sum != digest.Of(v) {
				t.Fatalf("stat after the read: %+v, %v; want sum %s", info, err, digest.Of(v))
			}
		})
	}
}

// TestUnrecordedRemoteChanged: when Adopt says the copy changed while it
// was read (or a record that appeared says otherwise), the read fails, the
// value is not promoted, nothing is counted as damage or moved.
func TestUnrecordedRemoteChanged(t *testing.T) {
	ram, remote, s := ramOverRemote(t)
	remote.info = func(i tiers.Info) tiers.Info { i.Sum = digest.Sum{}; return i }
	remote.adopt = func(digest.Key, digest.Sum) error { return errors.New("changed while it was read") }
	k, v := tiertest.Key("changing"), tiertest.Data(4, 20<<10)
	tiertest.Put(t, remote, k, v)
	if got, err := read(t, s, k); err == nil || len(got) == len(v) {
		t.Fatalf("read: %d bytes, %v; want an error before the end", len(got), err)
	}
	time.Sleep(50 * time.Millisecond)
	if has(ram, k) {
		t.Fatal("promoted")
	}
	if !has(remote, k) {
		t.Fatal("removed from the remote")
	}
	if _, ok := remote.quarantined.Load(k); ok {
		t.Fatal("moved to the quarantine")
	}
	if st := s.Stats().Tiers[1]; st.Corruptions != 0 {
		t.Fatalf("counted as damage: %+v", st)
	}
}

// TestStatDuringFetch: a lookup made while a remote value is being fetched
// answers from the fetch instead of opening the remote copy again (the
// kernel looks a name up again after an open answered ESTALE).
func TestStatDuringFetch(t *testing.T) {
	_, remote, s := ramOverRemote(t)
	k, v := tiertest.Key("fetching"), tiertest.Data(9, 3<<20)
	tiertest.Put(t, remote, k, v)
	remote.gate = make(chan struct{})
	r, err := s.Open(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	opens := remote.opens.Load()
	info, err := s.Stat(context.Background(), k)
	if err != nil || info.Size != int64(len(v)) || info.Sum != digest.Of(v) {
		t.Fatalf("stat during the fetch: %+v, %v", info, err)
	}
	if n := remote.opens.Load() - opens; n != 0 {
		t.Errorf("stat during the fetch opened the remote copy %d more times", n)
	}
	close(remote.gate)
	got, err := tiers.ReadAll(r)
	if err != nil || !bytes.Equal(got, v) {
		t.Fatalf("read: %v", err)
	}
}

// TestMissesCounted: a lookup of a key no tier holds is a miss of every
// tier; an open is a hit where it is served and a miss in each faster tier.
func TestMissesCounted(t *testing.T) {
	a, b := mem(t, "a", 64<<20), mem(t, "b", 64<<20)
	s := newStack(t, tiers.StackOptions{}, tiers.Layer{Tier: a}, tiers.Layer{Tier: b})
	for range 3 {
		if _, err := s.Stat(context.Background(), tiertest.Key("absent")); !errors.Is(err, tiers.ErrNotFound) {
			t.Fatalf("stat of an absent key: %v", err)
		}
	}
	k, v := tiertest.Key("in b"), tiertest.Data(1, 1000)
	tiertest.Put(t, b, k, v)
	if _, err := s.Stat(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	if got, err := read(t, s, k); err != nil || !bytes.Equal(got, v) {
		t.Fatalf("read: %v", err)
	}
	st := s.Stats().Tiers
	if st[0].Misses != 4 || st[0].Hits != 0 || st[1].Misses != 3 || st[1].Hits != 1 {
		t.Fatalf("a: %d hits, %d misses; b: %d hits, %d misses; want 0/4 and 1/3", st[0].Hits, st[0].Misses, st[1].Hits, st[1].Misses)
	}
}

// TestDamagedFoundByLookupReadsDamaged: a lookup of a small remote value
// fetches it at once; when that fetch finds the copy damaged and
// quarantines it before the Open that follows, that Open answers the
// damage (ErrCorrupt: EIO at the mount), not absence; the next one finds
// the key absent, as a lookup does. So does an Open later than
// Policy.DamagedTTL.
func TestDamagedFoundByLookupReadsDamaged(t *testing.T) {
	ram, remote := mem(t, "ram", 64<<20), mem(t, "remote", 64<<20)
	const ttl = 2 * time.Second
	s := newStack(t, tiers.StackOptions{Policy: tiers.Policy{DamagedTTL: ttl}},
		tiers.Layer{Tier: ram}, tiers.Layer{Tier: remote, Remote: true})
	remote.flip.Store(true)
	lookup := func(name string) (digest.Key, time.Time) {
		t.Helper()
		k := tiertest.Key(name)
		tiertest.Put(t, remote, k, tiertest.Data(6, 14))
		if _, err := s.Stat(context.Background(), k); err != nil {
			t.Fatalf("lookup: %v", err)
		}
		tiertest.Eventually(t, "the lookup's fetch quarantining the copy", func() bool {
			_, ok := remote.quarantined.Load(k)
			return ok
		})
		return k, time.Now()
	}
	k, found := lookup("damaged, found by the lookup")
	_, err := s.Open(context.Background(), k)
	if time.Since(found) < ttl && !errors.Is(err, tiers.ErrCorrupt) {
		t.Fatalf("open after the lookup's fetch found the copy damaged: %v; want ErrCorrupt", err)
	}
	if _, err := s.Open(context.Background(), k); !errors.Is(err, tiers.ErrNotFound) {
		t.Fatalf("second open: %v; want ErrNotFound", err)
	}
	k, _ = lookup("damaged, opened late")
	time.Sleep(ttl)
	if _, err := s.Open(context.Background(), k); !errors.Is(err, tiers.ErrNotFound) {
		t.Fatalf("open after DamagedTTL: %v; want ErrNotFound", err)
	}
}
