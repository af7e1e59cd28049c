package sftp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// putMarked puts v under k through tr and waits for the put's last-use
// mark, so that ageEntry, not the mark, says when k was used.
func putMarked(t *testing.T, tr *Tier, k digest.Key, v []byte) {
	t.Helper()
	tiertest.Put(t, tr, k, v)
	tiertest.Eventually(t, "the put's last-use mark", func() bool {
		_, err := os.Stat(localPath(tr, ".flechefs", "used", k.String()))
		return err == nil
	})
}

// ageEntry sets the last use of k's entry on the server to ago: its record's
// mtime (a symlink's own) and, if it exists, its marker's.
func ageEntry(t *testing.T, tr *Tier, k digest.Key, ago time.Duration) {
	t.Helper()
	at := time.Now().Add(-ago)
	tv := []unix.Timeval{unix.NsecToTimeval(at.UnixNano()), unix.NsecToTimeval(at.UnixNano())}
	if err := unix.Lutimes(localPath(tr, ".flechefs", "sums", k.String()), tv); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(localPath(tr, ".flechefs", "used", k.String()), at, at); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
}

// boundTier is a tier of s with retention b; its marks are made by the
// test (ageEntry), not by its reads.
func boundTier(t *testing.T, s *sshdtest.Server, b Bound) *Tier {
	opt := options(s)
	opt.Retention = b
	return open(t, opt)
}

// sameRemote is another tier (another mount's) of tr's remote directory,
// with retention b.
func sameRemote(t *testing.T, tr *Tier, b Bound) *Tier {
	opt := tr.opt
	opt.Retention = b
	return open(t, opt)
}

// TestPruneLeastRecentlyUsed: ten entries of 100 KiB, used 1 to 10 hours
// ago, beside a file without a record (older than all, 1 MiB) and an old
// entry a fleche lock guards. A bound of 1.5 MiB of values removes the
// least recently used entries, and only entries, until under it; a dry
// run first says the same and removes nothing.
func TestPruneLeastRecentlyUsed(t *testing.T) {
	s := sshdtest.Start(t)
	tr := boundTier(t, s, Bound{MaxBytes: 1536 << 10, Grace: time.Minute})
	var keys []digest.Key
	for i := range 10 {
		k := tiertest.Key("prune " + string(rune('a'+i)))
		putMarked(t, tr, k, tiertest.Data(uint64(i), 100<<10))
		keys = append(keys, k)
	}
	for i, k := range keys {
		ageEntry(t, tr, k, time.Duration(10-i)*time.Hour) // keys[0] is the least recently used
	}
	locked := tiertest.Key("prune locked")
	putMarked(t, tr, locked, tiertest.Data(20, 100<<10))
	ageEntry(t, tr, locked, 48*time.Hour)
	if err := os.WriteFile(localPath(tr, locked.String()+".lock"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	foreign := tiertest.Key("prune foreign")
	if err := os.WriteFile(localPath(tr, foreign.String()), tiertest.Data(21, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-100 * time.Hour)
	os.Chtimes(localPath(tr, foreign.String()), old, old)

	// Values: 11 × 100 KiB + 1 MiB = 2124 KiB; the bound is 1536 KiB, so
	// 6 entries of 100 KiB go, the least recently used first.
	want := keys[:6]
	dry, err := tr.Prune(context.Background(), tr.opt.Retention, true)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(dry.Removed, want) || dry.Entries != 11 || dry.Bytes != 11*100<<10+1<<20 {
		t.Fatalf("dry run: removes %d (%v), %d entries, %d bytes; want the 6 oldest, 11 entries, %d bytes",
			len(dry.Removed), dry.Removed, dry.Entries, dry.Bytes, 11*100<<10+1<<20)
	}
	for _, k := range keys {
		if _, err := tr.Stat(context.Background(), k); err != nil {
			t.Fatalf("a dry run removed %s: %v", k, err)
		}
	}
	rep, err := tr.Prune(context.Background(), tr.opt.Retention, false)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Removed, want) || rep.RemovedBytes != 6*100<<10 {
		t.Fatalf("removed %v (%d bytes), want the 6 least recently used", rep.Removed, rep.RemovedBytes)
	}
	for i, k := range keys {
		_, err := tr.Stat(context.Background(), k)
		if gone := i < 6; gone != errors.Is(err, tiers.ErrNotFound) {
			t.Errorf("entry %d (used %dh ago): stat %v after the prune", i, 10-i, err)
		}
		if _, err := os.Lstat(localPath(tr, ".flechefs", "sums", k.String())); (i < 6) != os.IsNotExist(err) {
			t.Errorf("entry %d: record %v", i, err)
		}
	}
	if b, err := os.ReadFile(localPath(tr, foreign.String())); err != nil || len(b) != 1<<20 {
		t.Fatalf("the file without a record was touched: %d bytes, %v", len(b), err)
	}
	if _, err := tr.Stat(context.Background(), locked); err != nil {
		t.Fatalf("the entry under a fleche lock was removed: %v", err)
	}
	if _, err := os.Stat(localPath(tr, ".flechefs", "prune.lease")); !os.IsNotExist(err) {
		t.Fatalf("the lease is still there after the pass: %v", err)
	}
}

// TestPruneAgeAndGrace: max_age removes what was not used for that long;
// an entry used within the grace period is never removed, even over the
// size bound.
func TestPruneAgeAndGrace(t *testing.T) {
	s := sshdtest.Start(t)
	tr := boundTier(t, s, Bound{MaxAge: 24 * time.Hour, MaxBytes: 1, Grace: time.Hour})
	old, recent, fresh := tiertest.Key("age old"), tiertest.Key("age recent"), tiertest.Key("age fresh")
	for i, k := range []digest.Key{old, recent, fresh} {
		putMarked(t, tr, k, tiertest.Data(uint64(i), 1000))
	}
	ageEntry(t, tr, old, 48*time.Hour)
	ageEntry(t, tr, recent, 2*time.Hour)
	rep, err := tr.Prune(context.Background(), tr.opt.Retention, false)
	if err != nil {
		t.Fatal(err)
	}
	// The size bound (1 byte) asks for everything: the old and the recent
	// entry go, the fresh one (used now) stays for the grace period.
	if !slices.Equal(rep.Removed, []digest.Key{old, recent}) || rep.Kept != 1 {
		t.Fatalf("removed %v, kept %d; want old and recent removed, fresh kept", rep.Removed, rep.Kept)
	}
	if _, err := tr.Stat(context.Background(), fresh); err != nil {
		t.Fatalf("fresh entry: %v", err)
	}

	tr2 := sameRemote(t, tr, Bound{MaxAge: 24 * time.Hour, Grace: time.Minute})
	stale, kept := tiertest.Key("age only stale"), tiertest.Key("age only kept")
	putMarked(t, tr2, stale, tiertest.Data(7, 10))
	putMarked(t, tr2, kept, tiertest.Data(8, 10))
	ageEntry(t, tr2, stale, 25*time.Hour)
	ageEntry(t, tr2, kept, 23*time.Hour)
	rep, err = tr2.Prune(context.Background(), tr2.opt.Retention, false)
	if err != nil || !slices.Equal(rep.Removed, []digest.Key{stale}) {
		t.Fatalf("max_age alone: removed %v, %v; want only the entry unused for 25h", rep.Removed, err)
	}
}

// TestPruneMarksUse: with a bound, a read marks the entry used on the
// server, and a marked entry outlives one that is older by its record.
func TestPruneMarksUse(t *testing.T) {
	s := sshdtest.Start(t)
	tr := boundTier(t, s, Bound{MaxBytes: 1500, Grace: time.Minute})
	a, b := tiertest.Key("marked a"), tiertest.Key("marked b")
	putMarked(t, tr, a, tiertest.Data(1, 1000))
	putMarked(t, tr, b, tiertest.Data(2, 1000))
	ageEntry(t, tr, a, 5*time.Hour)
	ageEntry(t, tr, b, 4*time.Hour)
	tr.ret.ForgetAll()     // the puts marked both: forget, as a new process would
	tiertest.Get(t, tr, a) // a is now the most recently used
	tiertest.Eventually(t, "the read's mark on the server", func() bool {
		fi, err := os.Stat(localPath(tr, ".flechefs", "used", a.String()))
		return err == nil && time.Since(fi.ModTime()) < time.Minute
	})
	rep, err := tr.Prune(context.Background(), tr.opt.Retention, false)
	if err != nil || !slices.Equal(rep.Removed, []digest.Key{b}) {
		t.Fatalf("removed %v, %v; want b, the one not read", rep.Removed, err)
	}
	if _, err := os.Stat(localPath(tr, ".flechefs", "used", b.String())); !os.IsNotExist(err) {
		t.Fatalf("the removed entry's marker stays: %v", err)
	}
}

// TestPruneLease: one mount prunes at a time. A fresh lease held by
// another mount makes Prune fail with ErrLeaseHeld and remove nothing; a
// stale one (its holder died) is taken over. Two mounts pruning at once:
// the remote ends under the bound, and reads of the entries that stay
// never fail meanwhile.
func TestPruneLease(t *testing.T) {
	s := sshdtest.Start(t)
	b := Bound{MaxBytes: 20 * 1000, Grace: time.Minute}
	tr := boundTier(t, s, b)
	var keys []digest.Key
	for i := range 60 {
		k := tiertest.Key("lease " + string(rune('A'+i)))
		putMarked(t, tr, k, tiertest.Data(uint64(i), 1000))
		keys = append(keys, k)
	}
	for i, k := range keys {
		ageEntry(t, tr, k, time.Duration(100-i)*time.Minute)
	}
	lease := localPath(tr, ".flechefs", "prune.lease")
	if err := os.WriteFile(lease, []byte("other 1 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Prune(context.Background(), b, false); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("prune beside a fresh lease: %v; want ErrLeaseHeld", err)
	}
	if _, err := tr.Stat(context.Background(), keys[0]); err != nil {
		t.Fatalf("a refused prune removed something: %v", err)
	}
	stale := time.Now().Add(-time.Hour)
	os.Chtimes(lease, stale, stale)

	other := sameRemote(t, tr, b) // another mount of the same remote
	newest := keys[len(keys)-10:]
	var wg sync.WaitGroup
	errs := make([]error, 2)
	reports := make([]PruneReport, 2)
	stop := make(chan struct{})
	var readErr error
	wg.Go(func() { reports[0], errs[0] = tr.Prune(context.Background(), b, false) })
	wg.Go(func() { reports[1], errs[1] = other.Prune(context.Background(), b, false) })
	readsDone := make(chan struct{})
	go func() {
		defer close(readsDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, k := range newest {
				if _, err := tr.Stat(context.Background(), k); err != nil && readErr == nil {
					readErr = err
				}
			}
		}
	}()
	wg.Wait()
	close(stop)
	<-readsDone
	if readErr != nil {
		t.Fatalf("a read of an entry that stays failed during the prunes: %v", readErr)
	}
	for i, err := range errs {
		if err != nil && !errors.Is(err, ErrLeaseHeld) {
			t.Fatalf("prune %d: %v", i, err)
		}
	}
	if errs[0] != nil && errs[1] != nil {
		t.Fatal("both prunes refused: the stale lease was not taken over")
	}
	var left int
	for _, k := range keys {
		if _, err := tr.Stat(context.Background(), k); err == nil {
			left++
		}
	}
	if left != 20 {
		t.Fatalf("%d entries left, want 20 (the bound); reports %+v %+v", left, reports[0].Removed, reports[1].Removed)
	}
	if _, err := os.Stat(lease); !os.IsNotExist(err) {
		t.Fatalf("a lease is left: %v", err)
	}
}

// TestPruneLargeRemote: a remote of many small entries (PRUNE_ENTRIES,
// default 20,000; the README's figure is of 100,000), seeded on the
// server's disk, pruned to half while another tier of the remote reads
// the entries that stay. It logs the time of the pass.
//
//	PRUNE_ENTRIES=100000 go test -run TestPruneLargeRemote -v ./tiers/sftp/
func TestPruneLargeRemote(t *testing.T) {
	n := 20000
	if v := os.Getenv("PRUNE_ENTRIES"); v != "" {
		fmt.Sscan(v, &n)
	}
	s := sshdtest.Start(t)
	tr := boundTier(t, s, Bound{MaxBytes: int64(n/2) * 100, Grace: time.Minute})
	root := localPath(tr)
	start := time.Now()
	keys := make([]digest.Key, n)
	for i := range n {
		k := tiertest.Key(fmt.Sprint("large remote ", i))
		keys[i] = k
		v := tiertest.Data(uint64(i), 100)
		if err := os.WriteFile(filepath.Join(root, k.String()), v, 0o640); err != nil {
			t.Fatal(err)
		}
		// Entry i was used n-i minutes ago: keys[0] is the least recently used.
		// Created with milliseconds, as an upload records it (a whole
		// second equal to the file's mtime is an adopted file's).
		created := time.Now().Truncate(time.Second).Add(123 * time.Millisecond)
		if err := WriteLocalSum(root, k.String(), SumRecord{Sum: digest.Of(v), Size: 100, Created: created}); err != nil {
			t.Fatal(err)
		}
		at := time.Now().Add(-time.Duration(n-i+60) * time.Minute)
		tv := []unix.Timeval{unix.NsecToTimeval(at.UnixNano()), unix.NsecToTimeval(at.UnixNano())}
		if err := unix.Lutimes(localPath(tr, ".flechefs", "sums", k.String()), tv); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("seeded %d entries in %v", n, time.Since(start).Round(time.Millisecond))
	reader := sameRemote(t, tr, Bound{})
	stay := keys[n-100:]
	stop, readsDone := make(chan struct{}), make(chan error, 1)
	go func() {
		var reads int
		for {
			select {
			case <-stop:
				t.Logf("%d reads of entries that stay during the pass, none failed", reads)
				readsDone <- nil
				return
			default:
			}
			k := stay[reads%len(stay)]
			r, err := reader.Open(context.Background(), k)
			if err == nil {
				_, err = tiers.ReadAll(r)
				r.Close()
			}
			if err != nil {
				readsDone <- fmt.Errorf("read of %s during the pass: %w", k, err)
				return
			}
			reads++
		}
	}()
	rep, err := tr.Prune(context.Background(), tr.opt.Retention, false)
	close(stop)
	if rerr := <-readsDone; rerr != nil {
		t.Fatal(rerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pruned %d of %d entries (%d bytes of %d) in %v", len(rep.Removed), rep.Entries, rep.RemovedBytes, rep.Bytes, rep.Took.Round(time.Millisecond))
	if len(rep.Removed) != n/2 || !slices.Equal(rep.Removed, keys[:n/2]) {
		t.Fatalf("removed %d entries, want the %d least recently used", len(rep.Removed), n/2)
	}
	left, _ := os.ReadDir(filepath.Join(root, ".flechefs", "sums"))
	if len(left) != n-n/2 {
		t.Fatalf("%d records left, want %d", len(left), n-n/2)
	}
}

// TestPruneKeepsAdopted: a file flechefs did not write, adopted by a read
// (it has a record now), is never removed by a pass, however old; the
// entries flechefs uploaded beside it are.
func TestPruneKeepsAdopted(t *testing.T) {
	s := sshdtest.Start(t)
	tr := boundTier(t, s, Bound{MaxBytes: 1, Grace: time.Minute})
	foreign := tiertest.Key("adopted foreign")
	data := tiertest.Data(30, 5000)
	p := localPath(tr, foreign.String())
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-48 * time.Hour).Truncate(time.Second)
	os.Chtimes(p, old, old)
	// Read whole and adopted, as the stack does after such a read.
	r, err := tr.Open(context.Background(), foreign)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := tiers.ReadAll(r); err != nil || len(got) != len(data) {
		t.Fatalf("read of the foreign file: %d bytes, %v", len(got), err)
	}
	if err := r.(tiers.Adopter).Adopt(context.Background(), digest.Of(data)); err != nil {
		t.Fatalf("adopt: %v", err)
	}
	r.Close()
	if _, err := LocalSum(localPath(tr), foreign.String()); err != nil {
		t.Fatalf("the read did not adopt the file: %v", err)
	}
	ours := tiertest.Key("uploaded beside it")
	putMarked(t, tr, ours, tiertest.Data(31, 5000))
	ageEntry(t, tr, ours, 24*time.Hour)
	ageEntry(t, tr, foreign, 72*time.Hour)
	rep, err := tr.Prune(context.Background(), tr.opt.Retention, false)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Removed, []digest.Key{ours}) || rep.Adopted != 1 {
		t.Fatalf("removed %v, adopted %d; want only the uploaded entry removed, the adopted one kept", rep.Removed, rep.Adopted)
	}
	if b, err := os.ReadFile(p); err != nil || len(b) != len(data) {
		t.Fatalf("the adopted file: %d bytes, %v", len(b), err)
	}
}
