package sftp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

func TestTruncatedRemoteFile(t *testing.T) {
	s := sshdtest.Start(t)
	tr := open(t, options(s))
	ctx := context.Background()
	k := tiertest.Key("truncated")
	b := tiertest.Data(1, 4<<20)
	tiertest.Put(t, tr, k, b)

	// Truncated while a reader is open: reads past the new end fail.
	r, err := tr.Open(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// Open checks the size in the background: wait for that before the cut.
	if _, err := r.ReadAt(make([]byte, 1), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(localPath(tr, k.String()), 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadAt(make([]byte, 2<<20), 0); !errors.Is(err, tiers.ErrCorrupt) {
		t.Fatalf("ReadAt of truncated file: %v", err)
	}
	if _, err := r.ReadAt(make([]byte, 10), 3<<20); !errors.Is(err, tiers.ErrCorrupt) {
		t.Fatalf("ReadAt past the new end: %v", err)
	}
	if n, err := r.(io.WriterTo).WriteTo(io.Discard); !errors.Is(err, tiers.ErrCorrupt) || n != 1<<20 {
		t.Fatalf("WriteTo of truncated file = %d, %v", n, err)
	}
	// What is still there reads fine.
	got := make([]byte, 1000)
	if _, err := r.ReadAt(got, 5); err != nil || !bytes.Equal(got, b[5:1005]) {
		t.Fatalf("ReadAt before the cut: %v", err)
	}

	// Stat sees the size differ from the sum file, and so does a new
	// reader, at Open or at its first read.
	_, err = tr.Stat(ctx, k)
	if !errors.Is(err, tiers.ErrCorrupt) {
		t.Fatalf("stat of truncated file: %v", err)
	}
	// ... judged on the file as it is now, for the quarantine.
	if fi, serr := os.Stat(localPath(tr, k.String())); serr != nil || tiers.JudgedCopy(err) != copyID(fi.Size(), fi.ModTime()) {
		t.Fatalf("stat of truncated file judged %q, the file is %v (%v)", tiers.JudgedCopy(err), fi, serr)
	}
	if err := openAndRead(tr, k); !errors.Is(err, tiers.ErrCorrupt) {
		t.Fatalf("open and read of truncated file: %v", err)
	}
	// The stack repairs by Delete and Put.
	if err := tr.Delete(ctx, k); err != nil {
		t.Fatal(err)
	}
	tiertest.Put(t, tr, k, b)
	if !bytes.Equal(tiertest.Get(t, tr, k), b) {
		t.Fatal("re-put differs")
	}

	// A file that grew is no better.
	f, _ := os.OpenFile(localPath(tr, k.String()), os.O_APPEND|os.O_WRONLY, 0)
	f.Write([]byte("more"))
	f.Close()
	if _, err := tr.Stat(ctx, k); !errors.Is(err, tiers.ErrCorrupt) {
		t.Fatalf("stat of grown file: %v", err)
	}
}

func TestFlippedBytesKeepRecordedSum(t *testing.T) {
	s := sshdtest.Start(t)
	tr := open(t, options(s))
	k := tiertest.Key("flipped")
	b := tiertest.Data(2, 100000)
	tiertest.Put(t, tr, k, b)
	p := localPath(tr, k.String())
	bad := bytes.Clone(b)
	bad[5000] ^= 0xff
	if err := os.WriteFile(p, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := tr.Open(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// The tier serves what it has; the stack's hash check against the
	// recorded sum finds the damage.
	if r.Info().Sum != digest.Of(b) {
		t.Fatalf("reader sum %s, want the recorded %s", r.Info().Sum, digest.Of(b))
	}
	got, err := tiers.ReadAll(r)
	if err != nil || digest.Of(got) == r.Info().Sum {
		t.Fatalf("read %v; the damage must show in the hash", err)
	}
}

func TestForeignFiles(t *testing.T) {
	s := sshdtest.Start(t)
	tr := open(t, options(s))
	ctx := context.Background()
	good := tiertest.Key("good")
	tiertest.Put(t, tr, good, []byte("good value"))

	// A file someone put under a key's name by hand: no sum file. Once
	// it is older than the settle time it is served (foreign = adopt).
	foreign := tiertest.Key("foreign")
	if err := os.WriteFile(localPath(tr, foreign.String()), []byte("by hand"), 0o644); err != nil {
		t.Fatal(err)
	}
	age(t, localPath(tr, foreign.String()), time.Minute)
	info, err := tr.Stat(ctx, foreign)
	if err != nil || !info.Sum.IsZero() || info.Size != 7 || info.Created.IsZero() {
		t.Fatalf("stat of foreign file = %+v, %v; want zero sum, size 7", info, err)
	}
	if got := tiertest.Get(t, tr, foreign); string(got) != "by hand" {
		t.Fatalf("read %q", got)
	}
	// A put of that key loses to it.
	if _, err := tr.Put(ctx, foreign, strings.NewReader("x"), tiers.UnknownMeta); !errors.Is(err, tiers.ErrExist) {
		t.Fatalf("put over foreign file: %v", err)
	}

	// A garbled sum file makes the entry corrupt, not silently unverified.
	garbled := tiertest.Key("garbled")
	tiertest.Put(t, tr, garbled, []byte("v"))
	// (Written over the symlink, the file would go to its target.)
	os.Remove(localPath(tr, ".flechefs", "sums", garbled.String()))
	os.WriteFile(localPath(tr, ".flechefs", "sums", garbled.String()), []byte("nonsense\n"), 0o644)
	if _, err := tr.Stat(ctx, garbled); !errors.Is(err, tiers.ErrCorrupt) {
		t.Fatalf("stat with garbled sum file: %v", err)
	}
	// So does a garbled record.
	os.Remove(localPath(tr, ".flechefs", "sums", garbled.String()))
	os.Symlink("nonsense", localPath(tr, ".flechefs", "sums", garbled.String()))
	_, err = tr.Stat(ctx, garbled)
	if !errors.Is(err, tiers.ErrCorrupt) {
		t.Fatalf("stat with garbled sum record: %v", err)
	}
	// Judged on the data file it was found with, so that a quarantine
	// leaves a repair put in its place since.
	if fi, serr := os.Stat(localPath(tr, garbled.String())); serr != nil || tiers.JudgedCopy(err) != copyID(fi.Size(), fi.ModTime()) {
		t.Fatalf("stat with a garbled record judged %q, the file is %v (%v)", tiers.JudgedCopy(err), fi, serr)
	}

	// Junk in the root is never listed.
	for _, name := range []string{"..x", ".x", "notakey", "ABCDEF0123456789abcdef", "0123456789abcdef.", "0123456789abcdef.a.b",
		good.String() + ".part~", "0123", "0123456789abcdef~"} {
		if err := os.WriteFile(localPath(tr, name), []byte("junk"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dirKey := tiertest.Key("a directory")
	os.Mkdir(localPath(tr, dirKey.String()), 0o755)
	linkKey := tiertest.Key("a symlink")
	os.Symlink("/etc/passwd", localPath(tr, linkKey.String()))

	got := map[digest.Key]int64{}
	if err := tr.List(ctx, func(in tiers.Info) error { got[in.Key] = in.Size; return nil }); err != nil {
		t.Fatal(err)
	}
	want := map[digest.Key]int64{good: 10, foreign: 7, garbled: 1}
	if len(got) != len(want) {
		t.Fatalf("list = %v, want %v", got, want)
	}
	for k, n := range want {
		if got[k] != n {
			t.Fatalf("list = %v, want %v", got, want)
		}
	}
	// Without a record, a directory under a key's name is nobody's
	// entry: absent, not damage (which would move it).
	if _, err := tr.Stat(ctx, dirKey); !errors.Is(err, tiers.ErrNotFound) {
		t.Fatalf("stat of a directory under a key's name: %v", err)
	}
	if _, err := tr.Open(ctx, dirKey); !errors.Is(err, tiers.ErrNotFound) {
		t.Fatalf("open of a directory under a key's name: %v", err)
	}
	// Nor is a symlink (out of the root, here): Open and Stat would
	// follow it.
	if _, err := tr.Stat(ctx, linkKey); !errors.Is(err, tiers.ErrNotFound) {
		t.Fatalf("stat of a symlink under a key's name: %v", err)
	}
	if _, err := tr.Open(ctx, linkKey); !errors.Is(err, tiers.ErrNotFound) {
		t.Fatalf("open of a symlink under a key's name: %v", err)
	}
}

// age sets p's mtime d in the past, as a file written that long ago.
func age(t *testing.T, p string, d time.Duration) {
	t.Helper()
	at := time.Now().Add(-d)
	if err := os.Chtimes(p, at, at); err != nil {
		t.Fatal(err)
	}
}

// TestEmptySumFileIsNotYetWritten: the earlier versions wrote the sum file
// in place after the data's rename, so a reader may see one of theirs
// created and empty. That is an upload between its two steps (no sum yet:
// absent while young, then served with Sum zero like any file without a
// record), not a corruption.
func TestEmptySumFileIsNotYetWritten(t *testing.T) {
	s := sshdtest.Start(t)
	tr := open(t, options(s))
	ctx := context.Background()
	k := tiertest.Key("empty sum")
	b := tiertest.Data(3, 5000)
	tiertest.Put(t, tr, k, b)
	p := localPath(tr, ".flechefs/sums/"+k.String())
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// Just written: a write in progress, absent.
	if _, err := tr.Stat(ctx, k); !errors.Is(err, tiers.ErrNotFound) {
		t.Fatalf("young, with an empty sum file: %v, want ErrNotFound", err)
	}
	age(t, localPath(tr, k.String()), time.Minute)
	for _, op := range []func() (tiers.Info, error){
		func() (tiers.Info, error) { return tr.Stat(ctx, k) },
		func() (tiers.Info, error) {
			r, err := tr.Open(ctx, k)
			if err != nil {
				return tiers.Info{}, err
			}
			defer r.Close()
			return r.Info(), nil
		},
	} {
		info, err := op()
		if err != nil || !info.Sum.IsZero() || info.Size != int64(len(b)) {
			t.Fatalf("with an empty sum file: %+v, %v; want size %d, zero sum", info, err, len(b))
		}
	}
	// A sum file with one byte is garbled, not pending.
	if err := os.WriteFile(p, []byte("s"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Stat(ctx, k); !errors.Is(err, tiers.ErrCorrupt) {
		t.Fatalf("one-byte sum file: %v, want ErrCorrupt", err)
	}
}

// TestSumFileOfEarlierFormat: a remote written by an earlier version has
// regular sum files. They are read (Stat, Open, the stack's checks), and a
// Put over a stale one replaces it with a record of the current format.
func TestSumFileOfEarlierFormat(t *testing.T) {
	s := sshdtest.Start(t)
	tr := open(t, options(s))
	ctx := context.Background()
	k, b := tiertest.Key("old format"), tiertest.Data(4, 70000)
	created := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	if err := os.WriteFile(localPath(tr, k.String()), b, 0o644); err != nil {
		t.Fatal(err)
	}
	old := sumFile{sum: digest.Of(b), size: int64(len(b)), created: created}
	if err := os.WriteFile(localPath(tr, ".flechefs/sums/"+k.String()), old.marshal(), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := tr.Stat(ctx, k)
	if err != nil || st.Sum != digest.Of(b) || st.Size != int64(len(b)) || !st.Created.Equal(created) {
		t.Fatalf("stat with an old sum file: %+v, %v", st, err)
	}
	r, err := tr.Open(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := tiers.ReadAll(r); err != nil || !bytes.Equal(got, b) || r.Info() != st {
		t.Fatalf("open with an old sum file: %+v, %v", r.Info(), err)
	}
	r.Close()

	// Its data file removed by hand, the old sum file is stale: a Put of
	// the key replaces it.
	os.Remove(localPath(tr, k.String()))
	b2 := tiertest.Data(5, 300)
	tiertest.Put(t, tr, k, b2)
	rec, err := LocalSum(localPath(tr), k.String())
	if err != nil || rec.Sum != digest.Of(b2) || rec.Size != 300 {
		t.Fatalf("record after the put: %+v, %v", rec, err)
	}
	if _, err := os.Readlink(localPath(tr, ".flechefs/sums/"+k.String())); err != nil {
		t.Fatalf("the record is not a symlink after the put: %v", err)
	}
}

// openAndRead opens k and reads its first byte; it returns the first error.
// Open checks a value's size against its record in the background when
// the record is there, so a bad size shows at Open or at the first read.
func openAndRead(tr *Tier, k digest.Key) error {
	r, err := tr.Open(context.Background(), k)
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = r.ReadAt(make([]byte, 1), 0)
	return err
}
