package sftp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

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

	// Stat and Open see the size differ from the sum file.
	if _, err := tr.Stat(ctx, k); !errors.Is(err, tiers.ErrCorrupt) {
		t.Fatalf("stat of truncated file: %v", err)
	}
	if _, err := tr.Open(ctx, k); !errors.Is(err, tiers.ErrCorrupt) {
		t.Fatalf("open of truncated file: %v", err)
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

	// A file someone put under a key's name by hand: no sum file.
	foreign := tiertest.Key("foreign")
	if err := os.WriteFile(localPath(tr, foreign.String()), []byte("by hand"), 0o644); err != nil {
		t.Fatal(err)
	}
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
	os.WriteFile(localPath(tr, ".flechefs", "sums", garbled.String()), []byte("nonsense\n"), 0o644)
	if _, err := tr.Stat(ctx, garbled); !errors.Is(err, tiers.ErrCorrupt) {
		t.Fatalf("stat with garbled sum file: %v", err)
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
	if _, err := tr.Stat(ctx, dirKey); !errors.Is(err, tiers.ErrCorrupt) {
		t.Fatalf("stat of a directory under a key's name: %v", err)
	}
}

// TestEmptySumFileIsNotYetWritten: Put writes the sum file in place after
// the data's rename, so a reader may see it created and empty. That is an
// upload between its two steps (no sum yet, Sum zero), not a corruption,
// which the stack would delete.
func TestEmptySumFileIsNotYetWritten(t *testing.T) {
	s := sshdtest.Start(t)
	tr := open(t, options(s))
	ctx := context.Background()
	k := tiertest.Key("empty sum")
	b := tiertest.Data(3, 5000)
	tiertest.Put(t, tr, k, b)
	if err := os.Truncate(localPath(tr, ".flechefs/sums/"+k.String()), 0); err != nil {
		t.Fatal(err)
	}
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
	if err := os.WriteFile(localPath(tr, ".flechefs/sums/"+k.String()), []byte("s"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Stat(ctx, k); !errors.Is(err, tiers.ErrCorrupt) {
		t.Fatalf("one-byte sum file: %v, want ErrCorrupt", err)
	}
}
