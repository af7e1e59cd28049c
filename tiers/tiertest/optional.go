package tiertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"testing"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
)

// The limit the suite passes to Options.NewBounded, and the size of the
// values it churns through such a tier: sixteen fill it.
const (
	boundLimit = 1 << 20
	boundValue = 64 << 10
)

// runOptional checks the optional interfaces of tiers/tier.go. Each
// subtest skips when the tier under test does not implement its
// interface, or when it needs an Options field the caller left nil.
func runOptional(t *testing.T, newTier Factory, opt Options) {
	ctx := context.Background()

	t.Run("UsageReporter", func(t *testing.T) {
		tr := newTier(t)
		defer tr.Close()
		ur := as[tiers.UsageReporter](t, tr)
		if u := ur.Usage(); u.Entries != 0 || u.Bytes != 0 || u.Evictions != 0 {
			t.Fatalf("new tier: usage %+v, want no entries, bytes or evictions", u)
		}
		sizes := []int64{0, 1, 1000, 300 << 10}
		var entries, total int64
		for i, n := range sizes {
			Put(t, tr, Key(fmt.Sprint("usage", i)), Data(uint64(200+i), n))
			entries, total = entries+1, total+n
			checkUsage(t, tr, ur, entries, total)
		}
		// Refused puts change nothing.
		b := Data(210, 5000)
		if _, err := tr.Put(ctx, Key("usage-bad"), bytes.NewReader(b), tiers.Meta{Size: 5000, Sum: digest.Of(b[1:])}); !errors.Is(err, tiers.ErrCorrupt) {
			t.Fatalf("put with a wrong sum: %v, want ErrCorrupt", err)
		}
		if _, err := tr.Put(ctx, Key("usage1"), bytes.NewReader(b), tiers.Meta{Size: 5000}); !errors.Is(err, tiers.ErrExist) {
			t.Fatalf("put of a held key: %v, want ErrExist", err)
		}
		checkUsage(t, tr, ur, entries, total)
		// A delete gives back its entry and its bytes.
		for i := len(sizes) - 1; i >= 2; i-- {
			if err := tr.Delete(ctx, Key(fmt.Sprint("usage", i))); err != nil {
				t.Fatal(err)
			}
			entries, total = entries-1, total-sizes[i]
			checkUsage(t, tr, ur, entries, total)
		}
		if u := ur.Usage(); u.Evictions != 0 {
			t.Fatalf("usage %+v: evictions in a tier that never filled", u)
		}
	})

	t.Run("UsageBound", func(t *testing.T) {
		tr := bounded(t, opt)
		defer tr.Close()
		ur := as[tiers.UsageReporter](t, tr)
		if u := ur.Usage(); u.Limit != boundLimit {
			t.Fatalf("usage %+v, want the limit %d it was made with", u, boundLimit)
		}
		// Four times the limit, and no deletes: every put that is not
		// held any more was evicted, and counted.
		var puts int64
		var last digest.Key
		for i := range 4 * boundLimit / boundValue {
			last = Key(fmt.Sprint("bound", i))
			Put(t, tr, last, Data(uint64(220+i), boundValue))
			puts++
			u := ur.Usage()
			if u.Bytes > u.Limit {
				t.Fatalf("after %d puts: usage %+v is over the limit", puts, u)
			}
			if u.Entries+u.Evictions != puts {
				t.Fatalf("after %d puts and no deletes: usage %+v, want entries + evictions = puts", puts, u)
			}
		}
		u := ur.Usage()
		checkUsage(t, tr, ur, u.Entries, u.Bytes)
		if u.Evictions == 0 {
			t.Fatalf("usage %+v: no evictions after putting four times the limit", u)
		}
		if _, err := tr.Stat(ctx, last); err != nil {
			t.Fatalf("the value put last was evicted: %v", err)
		}
	})

	t.Run("Queue", func(t *testing.T) {
		tr := newTier(t)
		defer func() { tr.Close() }()
		q := as[tiers.Queue](t, tr)
		wantPending(t, q)
		// The keys are hashes: their order is not the order of the puts.
		a, b, c, d := Key("queue-a"), Key("queue-b"), Key("queue-c"), Key("queue-d")
		vals := map[digest.Key][]byte{}
		for i, k := range []digest.Key{a, b, c, d} {
			vals[k] = Data(uint64(300+i), int64(1000*(i+1)))
			putQueued(t, tr, k, vals[k], k != d)
		}
		wantPending(t, q, a, b, c)
		for k, want := range map[digest.Key]bool{a: true, b: true, c: true, d: false, Key("queue-missing"): false} {
			if q.IsPending(k) != want {
				t.Fatalf("IsPending(%s) = %v, want %v", k, !want, want)
			}
		}
		// A put that fails, or finds the key held, queues nothing.
		e := Data(310, 2000)
		if _, err := tr.Put(ctx, Key("queue-e"), bytes.NewReader(e), tiers.Meta{Size: 2000, Sum: digest.Of(e[1:]), Pending: true}); !errors.Is(err, tiers.ErrCorrupt) {
			t.Fatalf("queued put with a wrong sum: %v, want ErrCorrupt", err)
		}
		if _, err := tr.Put(ctx, a, bytes.NewReader(e), tiers.Meta{Size: 2000, Pending: true}); !errors.Is(err, tiers.ErrExist) {
			t.Fatalf("queued put of a queued key: %v, want ErrExist", err)
		}
		if q.IsPending(Key("queue-e")) {
			t.Fatal("a failed put is queued")
		}
		wantPending(t, q, a, b, c)
		// Uploaded takes a key off the queue and leaves its entry.
		if err := q.Uploaded(ctx, b); err != nil {
			t.Fatal(err)
		}
		wantPending(t, q, a, c)
		if q.IsPending(b) {
			t.Fatal("IsPending after Uploaded")
		}
		if !bytes.Equal(Get(t, tr, b), vals[b]) {
			t.Fatal("Uploaded changed the entry")
		}
		// Uploaded of a key that is not queued is no error.
		for _, k := range []digest.Key{b, d, Key("queue-missing")} {
			if err := q.Uploaded(ctx, k); err != nil {
				t.Fatalf("Uploaded of a key not queued: %v", err)
			}
		}
		wantPending(t, q, a, c)
		// Delete takes an entry off the queue; put again, it is the newest.
		if err := tr.Delete(ctx, a); err != nil {
			t.Fatal(err)
		}
		wantPending(t, q, c)
		if q.IsPending(a) {
			t.Fatal("IsPending after Delete")
		}
		putQueued(t, tr, a, vals[a], true)
		wantPending(t, q, c, a)

		if opt.Reopen == nil {
			return
		}
		tr = opt.Reopen(t, tr)
		q = tr.(tiers.Queue)
		wantPending(t, q, c, a)
		for k, want := range map[digest.Key]bool{a: true, b: false, c: true, d: false} {
			if q.IsPending(k) != want {
				t.Fatalf("after reopen: IsPending(%s) = %v, want %v", k, !want, want)
			}
		}
		for k, v := range vals {
			if !bytes.Equal(Get(t, tr, k), v) {
				t.Fatalf("after reopen: %s reads back other bytes", k)
			}
		}
	})

	t.Run("QueuePins", func(t *testing.T) {
		tr := bounded(t, opt)
		defer tr.Close()
		q := as[tiers.Queue](t, tr)
		const slots = boundLimit / boundValue
		var pinned []digest.Key
		pin := func(i int) {
			k := Key(fmt.Sprint("pin", i))
			putQueued(t, tr, k, Data(uint64(320+i), boundValue), true)
			pinned = append(pinned, k)
		}
		held := func() {
			t.Helper()
			for _, k := range pinned {
				if _, err := tr.Stat(ctx, k); err != nil {
					t.Fatalf("queued entry %s: %v", k, err)
				}
			}
			wantPending(t, q, pinned...)
		}
		for i := range slots / 4 {
			pin(i)
		}
		// Values not queued, twice the limit of them, evict each other and
		// never a queued one.
		for i := range 2 * slots {
			Put(t, tr, Key(fmt.Sprint("pin-churn", i)), Data(uint64(340+i), boundValue))
		}
		held()
		// Queued values up to the limit leave nothing to evict: a put,
		// queued or not, does not fit.
		for i := slots / 4; i < slots; i++ {
			pin(i)
		}
		v := Data(390, boundValue)
		for _, pending := range []bool{false, true} {
			_, err := tr.Put(ctx, Key("pin-over"), bytes.NewReader(v), tiers.Meta{Size: boundValue, Sum: digest.Of(v), Pending: pending})
			if !errors.Is(err, tiers.ErrNoSpace) {
				t.Fatalf("put (queued: %v) into a tier full of queued entries: %v, want ErrNoSpace", pending, err)
			}
		}
		held()
		// Uploaded makes an entry evictable: the put fits now.
		if err := q.Uploaded(ctx, pinned[0]); err != nil {
			t.Fatal(err)
		}
		pinned = pinned[1:]
		Put(t, tr, Key("pin-over"), v)
		held()
	})

	t.Run("TombstoneQueue", func(t *testing.T) {
		tr := newTier(t)
		defer func() { tr.Close() }()
		tq := as[tiers.TombstoneQueue](t, tr)
		wantTombstones(t, tq)
		held, queued, never := Key("tomb-held"), Key("tomb-queued"), Key("tomb-never")
		hv, qv := Data(400, 2000), Data(401, 3000)
		Put(t, tr, held, hv)
		q, isQueue := tr.(tiers.Queue)
		putQueued(t, tr, queued, qv, isQueue)
		var want []tiers.Tombstone
		for _, c := range []struct {
			k   digest.Key
			sum digest.Sum
		}{{held, digest.Of(hv)}, {queued, digest.Of(qv)}, {never, digest.Sum{}}} {
			id, err := tq.DeleteQueued(ctx, c.k, c.sum)
			if err != nil {
				t.Fatalf("DeleteQueued: %v", err)
			}
			for _, w := range want {
				if w.ID == id {
					t.Fatalf("DeleteQueued gave ID %d twice", id)
				}
			}
			want = append(want, tiers.Tombstone{Key: c.k, Sum: c.sum, ID: id})
			if _, err := tr.Stat(ctx, c.k); !errors.Is(err, tiers.ErrNotFound) {
				t.Fatalf("stat after DeleteQueued: %v, want ErrNotFound", err)
			}
		}
		wantTombstones(t, tq, want...)
		if isQueue {
			// The upload went with its entry, and a tombstone is not an upload.
			wantPending(t, q)
		}
		// Done removes one; done again, or of an ID never given, is no error.
		done := want[1].ID
		if err := tq.TombstoneDone(ctx, done); err != nil {
			t.Fatal(err)
		}
		want = slices.Delete(want, 1, 2)
		wantTombstones(t, tq, want...)
		for _, id := range []uint64{done, want[1].ID + 1<<20} {
			if err := tq.TombstoneDone(ctx, id); err != nil {
				t.Fatalf("TombstoneDone(%d) of no tombstone: %v", id, err)
			}
		}
		wantTombstones(t, tq, want...)
		// The key can be written again; its tombstone stays until done.
		Put(t, tr, held, hv)
		wantTombstones(t, tq, want...)

		if opt.Reopen == nil {
			return
		}
		tr = opt.Reopen(t, tr)
		wantTombstones(t, tr.(tiers.TombstoneQueue), want...)
		if !bytes.Equal(Get(t, tr, held), hv) {
			t.Fatal("after reopen: the key put again reads back other bytes")
		}
	})

	t.Run("FailureReporter", func(t *testing.T) {
		tr := newTier(t)
		defer tr.Close()
		fr := as[tiers.FailureReporter](t, tr)
		if err := fr.Failed(); err != nil {
			t.Fatalf("a new tier reports a failure: %v", err)
		}
		k, b := Key("healthy"), Data(410, 5000)
		Put(t, tr, k, b)
		Get(t, tr, k)
		if err := tr.List(ctx, func(tiers.Info) error { return nil }); err != nil {
			t.Fatal(err)
		}
		if err := tr.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
		if err := fr.Failed(); err != nil {
			t.Fatalf("a tier whose every operation worked reports a failure: %v", err)
		}
	})

	t.Run("Syncer", func(t *testing.T) {
		tr := newTier(t)
		defer func() { tr.Close() }()
		sy := as[tiers.Syncer](t, tr)
		if err := sy.Sync(); err != nil {
			t.Fatalf("Sync of a new tier: %v", err)
		}
		vals := map[digest.Key][]byte{}
		for i := range 5 {
			k := Key(fmt.Sprint("sync", i))
			vals[k] = Data(uint64(420+i), int64(i*70000))
			Put(t, tr, k, vals[k])
		}
		for range 2 {
			if err := sy.Sync(); err != nil {
				t.Fatalf("Sync of a healthy tier: %v", err)
			}
		}
		if opt.Reopen == nil {
			return
		}
		tr = opt.Reopen(t, tr)
		for k, v := range vals {
			if !bytes.Equal(Get(t, tr, k), v) {
				t.Fatalf("after Sync and reopen: %s reads back other bytes", k)
			}
		}
	})

	t.Run("BytesPutter", func(t *testing.T) {
		tr := newTier(t)
		defer tr.Close()
		bp := as[tiers.BytesPutter](t, tr)
		b := Data(430, 70000)
		n, sum := int64(len(b)), digest.Of(b)
		for i, m := range []tiers.Meta{
			{Size: n, Sum: sum},
			{Size: n, Sum: sum, Verified: true},
			{Size: n},
			tiers.UnknownMeta,
		} {
			k := Key(fmt.Sprint("bytes", i))
			info, err := bp.PutBytes(ctx, k, b, m)
			if err != nil {
				t.Fatalf("PutBytes with %+v: %v", m, err)
			}
			if info.Key != k || info.Size != n || info.Sum != sum {
				t.Fatalf("PutBytes with %+v: info %+v", m, info)
			}
			if st, err := tr.Stat(ctx, k); err != nil || st.Size != n || st.Sum != sum {
				t.Fatalf("stat after PutBytes: %+v, %v", st, err)
			}
			if !bytes.Equal(Get(t, tr, k), b) {
				t.Fatalf("PutBytes with %+v reads back other bytes", m)
			}
		}
		k := Key("bytes-empty")
		if info, err := bp.PutBytes(ctx, k, []byte{}, tiers.Meta{Size: 0, Sum: digest.Of(nil)}); err != nil || info.Size != 0 {
			t.Fatalf("PutBytes of no bytes: %+v, %v", info, err)
		}
		if got := Get(t, tr, k); len(got) != 0 {
			t.Fatalf("empty value reads back %d bytes", len(got))
		}
		// Put's checks.
		other := Data(431, n)
		if _, err := bp.PutBytes(ctx, Key("bytes0"), other, tiers.Meta{Size: n}); !errors.Is(err, tiers.ErrExist) {
			t.Fatalf("PutBytes of a held key: %v, want ErrExist", err)
		}
		if !bytes.Equal(Get(t, tr, Key("bytes0")), b) {
			t.Fatal("PutBytes of a held key changed it")
		}
		for i, m := range []tiers.Meta{
			{Size: n, Sum: digest.Of(other)},
			{Size: n - 1},
			{Size: n + 1},
			{Size: n + 1, Sum: sum, Verified: true},
		} {
			k := Key(fmt.Sprint("bytes-bad", i))
			if _, err := bp.PutBytes(ctx, k, b, m); !errors.Is(err, tiers.ErrCorrupt) {
				t.Fatalf("PutBytes of %d bytes with %+v: %v, want ErrCorrupt", n, m, err)
			}
			if _, err := tr.Stat(ctx, k); !errors.Is(err, tiers.ErrNotFound) {
				t.Fatalf("refused PutBytes left an entry: %v", err)
			}
		}
	})

	t.Run("StreamPutter", func(t *testing.T) {
		tr := newTier(t)
		defer tr.Close()
		sp := as[tiers.StreamPutter](t, tr)
		t.Run("Complete", func(t *testing.T) {
			k := Key("stream")
			b := Data(440, 3<<20+17)
			pieces := []int{0, 600 << 10, 1 << 20, 2<<20 + 5, len(b)}
			g := newGrowing()
			res := startGrowing(ctx, sp, k, g)
			// Each piece is read before the next is written; until the
			// value is final, nothing is published.
			for i := 1; i < len(pieces); i++ {
				g.write(b[pieces[i-1]:pieces[i]])
				g.waitBlocked(t, int64(pieces[i]))
				notPublished(t, tr, k, "streamed value not yet final")
			}
			g.finish(tiers.Meta{Size: int64(len(b)), Sum: digest.Of(b)})
			info, err := res.wait(t)
			if err != nil {
				t.Fatalf("PutGrowing: %v", err)
			}
			if info.Key != k || info.Size != int64(len(b)) || info.Sum != digest.Of(b) {
				t.Fatalf("PutGrowing info %+v", info)
			}
			g.checkReads(t)
			if !bytes.Equal(Get(t, tr, k), b) {
				t.Fatal("streamed value reads back other bytes")
			}
			checkReadAt(t, tr, k, b)
		})
		t.Run("Empty", func(t *testing.T) {
			k := Key("stream-empty")
			g := newGrowing()
			g.finish(tiers.Meta{Size: 0, Sum: digest.Of(nil)})
			info, err := startGrowing(ctx, sp, k, g).wait(t)
			if err != nil || info.Size != 0 || info.Sum != digest.Of(nil) {
				t.Fatalf("PutGrowing of no bytes: %+v, %v", info, err)
			}
			if got := Get(t, tr, k); len(got) != 0 {
				t.Fatalf("empty streamed value reads back %d bytes", len(got))
			}
		})
		t.Run("WrongSum", func(t *testing.T) {
			k := Key("stream-sum")
			b := Data(441, 2<<20)
			g := newGrowing()
			g.write(b)
			g.finish(tiers.Meta{Size: int64(len(b)), Sum: digest.Of(b[1:])})
			if _, err := startGrowing(ctx, sp, k, g).wait(t); !errors.Is(err, tiers.ErrCorrupt) {
				t.Fatalf("PutGrowing with a wrong sum: %v, want ErrCorrupt", err)
			}
			g.checkReads(t)
			notPublished(t, tr, k, "streamed value with a wrong sum")
			Put(t, tr, k, b)
		})
		t.Run("Aborted", func(t *testing.T) {
			k := Key("stream-abort")
			b := Data(442, 2<<20)
			g := newGrowing()
			res := startGrowing(ctx, sp, k, g)
			g.write(b[:1<<20])
			g.waitBlocked(t, 1<<20)
			g.abort(errBoom)
			if _, err := res.wait(t); !errors.Is(err, errBoom) {
				t.Fatalf("PutGrowing of a value abandoned by its writer: %v, want its error", err)
			}
			notPublished(t, tr, k, "abandoned streamed value")
			Put(t, tr, k, b)
		})
		t.Run("Canceled", func(t *testing.T) {
			k := Key("stream-cancel")
			b := Data(443, 2<<20)
			g := newGrowing()
			cctx, cancel := context.WithCancel(ctx)
			defer cancel()
			res := startGrowing(cctx, sp, k, g)
			g.write(b[:1<<20])
			g.waitBlocked(t, 1<<20)
			cancel()
			if _, err := res.wait(t); !errors.Is(err, context.Canceled) {
				t.Fatalf("PutGrowing whose context ended: %v, want context.Canceled", err)
			}
			notPublished(t, tr, k, "streamed value whose context ended")
			Put(t, tr, k, b)
		})
		t.Run("Exists", func(t *testing.T) {
			k := Key("stream-exists")
			a, b := Data(444, 2<<20), Data(445, 2<<20)
			Put(t, tr, k, a)
			g := newGrowing()
			g.write(b)
			g.finish(tiers.Meta{Size: int64(len(b)), Sum: digest.Of(b)})
			if _, err := startGrowing(ctx, sp, k, g).wait(t); !errors.Is(err, tiers.ErrExist) {
				t.Fatalf("PutGrowing of a held key: %v, want ErrExist", err)
			}
			if !bytes.Equal(Get(t, tr, k), a) {
				t.Fatal("PutGrowing of a held key changed it")
			}
		})
	})

	t.Run("LiveReader", func(t *testing.T) {
		tr := newTier(t)
		defer tr.Close()
		k, b := Key("live"), Data(450, 300<<10)
		Put(t, tr, k, b)
		r, err := tr.Open(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		lr, ok := r.(tiers.LiveReader)
		if !ok {
			r.Close()
			t.Skip("readers are not tiers.LiveReader")
		}
		if !lr.Live() {
			t.Fatal("a reader just opened on a healthy tier is not live")
		}
		if got, err := tiers.ReadAll(r); err != nil || !bytes.Equal(got, b) {
			t.Fatalf("read: %v, equal=%v", err, bytes.Equal(got, b))
		}
		if !lr.Live() {
			t.Fatal("a reader is not live after a read")
		}
		r.Close()
		if lr.Live() {
			t.Fatal("a closed reader is live")
		}
		// Closing the tier drops the readers' connection.
		r, err = tr.Open(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		lr = r.(tiers.LiveReader)
		tr.Close()
		Eventually(t, "the reader to stop being live once its tier is closed", func() bool { return !lr.Live() })
		buf := make([]byte, 1000)
		if n, err := r.ReadAt(buf, 0); err == nil || err == io.EOF {
			t.Fatalf("a reader that is not live read %d bytes, err %v", n, err)
		}
		if lr.Live() {
			t.Fatal("a reader is live again after it dropped")
		}
	})
}

// checkUsage checks the tier's Usage against entries and total, and against
// what List shows.
func checkUsage(t *testing.T, tr tiers.Tier, ur tiers.UsageReporter, entries, total int64) {
	t.Helper()
	u := ur.Usage()
	if u.Entries != entries || u.Bytes != total {
		t.Fatalf("usage %+v, want %d entries of %d bytes", u, entries, total)
	}
	if u.Limit > 0 && u.Bytes > u.Limit {
		t.Fatalf("usage %+v is over its limit", u)
	}
	var n, size int64
	if err := tr.List(context.Background(), func(in tiers.Info) error { n++; size += in.Size; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != u.Entries || size != u.Bytes {
		t.Fatalf("usage %+v, list shows %d entries of %d bytes", u, n, size)
	}
}

// putQueued puts b under k with its full meta, queued for upload if
// pending, and fails the test on error.
func putQueued(t *testing.T, tr tiers.Tier, k digest.Key, b []byte, pending bool) {
	t.Helper()
	m := tiers.Meta{Size: int64(len(b)), Sum: digest.Of(b), Pending: pending}
	if _, err := tr.Put(context.Background(), k, bytes.NewReader(b), m); err != nil {
		t.Fatalf("put %s (%d bytes, pending %v): %v", k, len(b), pending, err)
	}
}

// wantPending checks that q's queue is exactly want, in that order.
func wantPending(t *testing.T, q tiers.Queue, want ...digest.Key) {
	t.Helper()
	wantSeq(t, "Pending", q.Pending, want)
}

// wantTombstones checks that tq's tombstones are exactly want, in that order.
func wantTombstones(t *testing.T, tq tiers.TombstoneQueue, want ...tiers.Tombstone) {
	t.Helper()
	wantSeq(t, "Tombstones", tq.Tombstones, want)
}

// wantSeq checks that list, called what, returns exactly want, in order.
func wantSeq[T comparable](t *testing.T, what string, list func(context.Context) ([]T, error), want []T) {
	t.Helper()
	got, err := list(context.Background())
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("%s = %+v, want %+v", what, got, want)
	}
}

// notPublished checks that Stat, Open and List all miss k.
func notPublished(t *testing.T, tr tiers.Tier, k digest.Key, what string) {
	t.Helper()
	ctx := context.Background()
	if _, err := tr.Stat(ctx, k); !errors.Is(err, tiers.ErrNotFound) {
		t.Fatalf("%s: stat %v, want ErrNotFound", what, err)
	}
	if r, err := tr.Open(ctx, k); !errors.Is(err, tiers.ErrNotFound) {
		if err == nil {
			r.Close()
		}
		t.Fatalf("%s: open %v, want ErrNotFound", what, err)
	}
	err := tr.List(ctx, func(in tiers.Info) error {
		if in.Key == k {
			return fmt.Errorf("%s: listed", what)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// as returns tr as an I, and skips the subtest when the tier does not
// implement I: the optional interfaces are checked where they exist.
func as[I any](t *testing.T, tr tiers.Tier) I {
	t.Helper()
	i, ok := any(tr).(I)
	if !ok {
		t.Skipf("not a %v", reflect.TypeFor[I]())
	}
	return i
}

// bounded returns a tier made with the suite's small limit, and skips the
// subtest when the tier has none (Options.NewBounded is nil).
func bounded(t *testing.T, opt Options) tiers.Tier {
	t.Helper()
	if opt.NewBounded == nil {
		t.Skip("the tier has no limit (Options.NewBounded is nil)")
	}
	return opt.NewBounded(t, boundLimit)
}
