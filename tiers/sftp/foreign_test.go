package sftp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// listed returns the keys List reports.
func listed(t *testing.T, tr *Tier) map[digest.Key]bool {
	t.Helper()
	got := map[digest.Key]bool{}
	if err := tr.List(context.Background(), func(in tiers.Info) error { got[in.Key] = true; return nil }); err != nil {
		t.Fatal(err)
	}
	return got
}

// served reports whether Stat, Open and List all serve k (true) or all
// refuse it with ErrNotFound (false); anything else fails the test.
func served(t *testing.T, tr *Tier, k digest.Key) bool {
	t.Helper()
	ctx := context.Background()
	_, serr := tr.Stat(ctx, k)
	r, oerr := tr.Open(ctx, k)
	if oerr == nil {
		r.Close()
	}
	inList := listed(t, tr)[k]
	for _, err := range []error{serr, oerr} {
		if err != nil && !errors.Is(err, tiers.ErrNotFound) {
			t.Fatalf("%s: %v", k, err)
		}
	}
	if (serr == nil) != (oerr == nil) || (serr == nil) != inList {
		t.Fatalf("%s: stat %v, open %v, listed %v: lookups and the listing disagree", k, serr, oerr, inList)
	}
	return serr == nil
}

// TestForeignSettleAndLock: a file without a record is absent while it
// looks like a write in progress (modified within the settle time, or a
// fleche <key>.lock beside it) and served once it does not; the lock
// itself is never an entry. Stat, Open and List agree at every step, and
// nothing is removed.
func TestForeignSettleAndLock(t *testing.T) {
	s := sshdtest.Start(t)
	tr := open(t, options(s))
	k := tiertest.Key("pickle")
	p := localPath(tr, k.String())
	if err := os.WriteFile(p+".lock", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}
	if served(t, tr, k) {
		t.Fatal("a file just written is served")
	}
	age(t, p, time.Minute)
	age(t, p+".lock", time.Minute)
	if served(t, tr, k) {
		t.Fatal("a file beside its .lock is served")
	}
	lock := digest.MustParse(k.String() + ".lock")
	if served(t, tr, lock) {
		t.Fatal("a fleche lock file is served as an entry")
	}
	if err := os.Remove(p + ".lock"); err != nil {
		t.Fatal(err)
	}
	if !served(t, tr, k) {
		t.Fatal("an old file without a record and without a lock is not served")
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	// Written again (in place, as a writer without a lock would): absent
	// for the settle time.
	if err := os.WriteFile(p, []byte("whole value"), 0o644); err != nil {
		t.Fatal(err)
	}
	if served(t, tr, k) {
		t.Fatal("a file modified just now is served")
	}
}

// TestForeignAdopt: a reader of a file without a record adopts it after a
// complete read: the record holds its sum and size; a record that appeared
// meanwhile is kept when it agrees and fails the adoption when it does
// not; a file that changed since the open is not adopted. Nothing is
// removed.
func TestForeignAdopt(t *testing.T) {
	s := sshdtest.Start(t)
	tr := open(t, options(s))
	ctx := context.Background()
	put := func(name string, b []byte) digest.Key {
		k := tiertest.Key(name)
		if err := os.WriteFile(localPath(tr, k.String()), b, 0o644); err != nil {
			t.Fatal(err)
		}
		age(t, localPath(tr, k.String()), time.Minute)
		return k
	}
	adopt := func(k digest.Key, before func()) error {
		r, err := tr.Open(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if !r.Info().Sum.IsZero() {
			t.Fatalf("%s: a file without a record has sum %s", k, r.Info().Sum)
		}
		b, err := tiers.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if before != nil {
			before()
		}
		return r.(tiers.Adopter).Adopt(ctx, digest.Of(b))
	}

	b := tiertest.Data(1, 300<<10)
	k := put("adopted", b)
	if err := adopt(k, nil); err != nil {
		t.Fatal(err)
	}
	rec, err := LocalSum(localPath(tr), k.String())
	if err != nil || rec.Sum != digest.Of(b) || rec.Size != int64(len(b)) {
		t.Fatalf("record after adoption: %+v, %v", rec, err)
	}
	if info, err := tr.Stat(ctx, k); err != nil || info.Sum != digest.Of(b) {
		t.Fatalf("stat after adoption: %+v, %v", info, err)
	}

	// Another reader's record, the same: kept.
	k2 := put("adopted twice", b)
	if err := adopt(k2, func() {
		WriteLocalSum(localPath(tr), k2.String(), SumRecord{Sum: digest.Of(b), Size: int64(len(b)), Created: time.Unix(1, 0)})
	}); err != nil {
		t.Fatalf("adoption beside an agreeing record: %v", err)
	}
	if rec, _ := LocalSum(localPath(tr), k2.String()); !rec.Created.Equal(time.Unix(1, 0)) {
		t.Fatalf("the other reader's record was replaced: %+v", rec)
	}

	// A record that says otherwise: kept, and the adoption fails.
	k3 := put("contradicted", b)
	other := SumRecord{Sum: digest.Of([]byte("x")), Size: int64(len(b)), Created: time.Unix(2, 0)}
	if err := adopt(k3, func() { WriteLocalSum(localPath(tr), k3.String(), other) }); err == nil {
		t.Fatal("adoption beside a contradicting record succeeded")
	}
	if rec, _ := LocalSum(localPath(tr), k3.String()); rec != other {
		t.Fatalf("the contradicting record was changed: %+v", rec)
	}

	// Changed since the open: not adopted.
	k4 := put("changed", b)
	if err := adopt(k4, func() {
		f, _ := os.OpenFile(localPath(tr, k4.String()), os.O_APPEND|os.O_WRONLY, 0)
		f.Write([]byte("more"))
		f.Close()
	}); err == nil {
		t.Fatal("adoption of a file that changed while it was read succeeded")
	}
	if _, err := LocalSum(localPath(tr), k4.String()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a record was written for a file that changed: %v", err)
	}
	for _, k := range []digest.Key{k, k2, k3, k4} {
		if _, err := os.Stat(localPath(tr, k.String())); err != nil {
			t.Fatalf("%s removed: %v", k, err)
		}
	}
	// A put of an adopted key loses to it (first writer wins).
	if _, err := tr.Put(ctx, k, strings.NewReader("x"), tiers.UnknownMeta); !errors.Is(err, tiers.ErrExist) {
		t.Fatalf("put over an adopted file: %v", err)
	}
}

// TestForeignVerifyAndIgnore: under foreign = "verify" a file without a
// record is served only when its name is 64 hex digits, with that name as
// its sum (the stack's hash check is the verification); under "ignore"
// never. Recorded entries are served under both; nothing is removed.
func TestForeignVerifyAndIgnore(t *testing.T) {
	s := sshdtest.Start(t)
	b := []byte("content-addressed value")
	self := digest.MustParse(digest.Of(b).String())
	callNamed := tiertest.Key("named by its call")
	short := digest.MustParse("0123456789abcdef")
	for _, mode := range []Foreign{ForeignVerify, ForeignIgnore} {
		t.Run(string(mode), func(t *testing.T) {
			opt := options(s)
			opt.Foreign = mode
			tr := open(t, opt)
			recorded := tiertest.Key("recorded")
			tiertest.Put(t, tr, recorded, []byte("mine"))
			for _, k := range []digest.Key{self, callNamed, short} {
				if err := os.WriteFile(localPath(tr, k.String()), b, 0o644); err != nil {
					t.Fatal(err)
				}
				age(t, localPath(tr, k.String()), time.Minute)
			}
			if !served(t, tr, recorded) {
				t.Fatal("a recorded entry is not served")
			}
			want := map[digest.Key]bool{self: mode == ForeignVerify, callNamed: mode == ForeignVerify, short: false}
			for k, w := range want {
				if got := served(t, tr, k); got != w {
					t.Errorf("%s served %v, want %v", k, got, w)
				}
			}
			if mode == ForeignVerify {
				r, err := tr.Open(context.Background(), callNamed)
				if err != nil {
					t.Fatal(err)
				}
				if r.Info().Sum.String() != callNamed.String() {
					t.Fatalf("verify: open %+v: want the name as the sum", r.Info())
				}
				r.Close()
				if info, err := tr.Stat(context.Background(), callNamed); err != nil || !info.Sum.IsZero() {
					t.Fatalf("verify: stat %+v, %v: want found, with no recorded sum", info, err)
				}
			} else if _, err := tr.Stat(context.Background(), self); !errors.Is(err, tiers.ErrForeign) {
				t.Fatalf("ignore: stat %v, want ErrForeign", err)
			}
			for k := range want {
				if _, err := os.Stat(localPath(tr, k.String())); err != nil {
					t.Fatalf("%s removed: %v", k, err)
				}
			}
		})
	}
}

// TestQuarantine: Quarantine moves the data file, then its record, into
// .flechefs/quarantine, out of lookups and listings; a data file other than
// the one judged damaged, and any when the quarantine is full, stays where
// it is.
func TestQuarantine(t *testing.T) {
	s := sshdtest.Start(t)
	tr := open(t, options(s))
	ctx := context.Background()
	k, b := tiertest.Key("damaged"), tiertest.Data(3, 5000)
	tiertest.Put(t, tr, k, b)
	judged := func() string {
		t.Helper()
		r, err := tr.Open(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if _, err := r.ReadAt(make([]byte, 1), 0); err != nil {
			t.Fatal(err)
		}
		id := r.(tiers.CopyIdentifier).CopyID()
		if id == "" {
			t.Fatal("a reader that has read names no copy")
		}
		return id
	}
	first := judged()
	// Another file under the name since (its mtime differs): left alone.
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(localPath(tr, k.String()), later, later); err != nil {
		t.Fatal(err)
	}
	if err := tr.Quarantine(ctx, k, first); !errors.Is(err, tiers.ErrNotFound) {
		t.Fatalf("quarantine of a file since replaced: %v, want ErrNotFound", err)
	}
	if _, err := tr.Stat(ctx, k); err != nil {
		t.Fatalf("the file put in place of the judged one: %v", err)
	}
	if err := tr.Quarantine(ctx, k, judged()); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Stat(ctx, k); !errors.Is(err, tiers.ErrNotFound) || listed(t, tr)[k] {
		t.Fatalf("stat after quarantine: %v; listed %v", err, listed(t, tr)[k])
	}
	q, err := os.ReadDir(localPath(tr, ".flechefs", "quarantine"))
	if err != nil || len(q) != 2 {
		t.Fatalf("quarantine holds %v (%v), want the data file and its record", q, err)
	}
	for _, e := range q {
		if !strings.HasPrefix(e.Name(), k.String()+".") {
			t.Fatalf("quarantined as %s", e.Name())
		}
		if !strings.HasSuffix(e.Name(), ".sum") {
			got, _ := os.ReadFile(filepath.Join(localPath(tr, ".flechefs", "quarantine"), e.Name()))
			if digest.Of(got) != digest.Of(b) {
				t.Fatal("quarantined data differs")
			}
		}
	}
	if err := tr.Quarantine(ctx, k, ""); !errors.Is(err, tiers.ErrNotFound) {
		t.Fatalf("quarantine of a key not there: %v", err)
	}

	// Full: nothing moves.
	for i := range maxQuarantine {
		os.WriteFile(localPath(tr, ".flechefs", "quarantine", fmt.Sprintf("filler%04d", i)), nil, 0o644)
	}
	k2 := tiertest.Key("damaged, no room")
	tiertest.Put(t, tr, k2, b)
	if err := tr.Quarantine(ctx, k2, ""); !errors.Is(err, tiers.ErrQuarantineFull) {
		t.Fatalf("quarantine when full: %v", err)
	}
	if _, err := tr.Stat(ctx, k2); err != nil {
		t.Fatalf("left in place: %v", err)
	}
}
