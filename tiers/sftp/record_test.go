package sftp

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
	"golang.org/x/crypto/ssh"
)

// The interleavings of the record protocol (doc.go, "Records and
// concurrent writers"), each forced against the real sshd: every actor is
// a Tier of its own (its own SSH connection, as another machine), held at
// a chosen step by the tier's hook while the others run. Rows R1–R11 of
// the table in doc.go.

// actor is a Tier whose protocol steps can be held.
type actor struct {
	tr    *Tier
	mu    sync.Mutex
	stops map[string]*stop
}

type stop struct {
	reached, release chan struct{}
}

func newActor(t *testing.T, opt Options) *actor {
	a := &actor{stops: map[string]*stop{}}
	opt.Timeout = 30 * time.Second
	a.tr = open(t, opt)
	a.tr.hook = func(step string, _ digest.Key) {
		a.mu.Lock()
		st := a.stops[step]
		delete(a.stops, step)
		a.mu.Unlock()
		if st != nil {
			close(st.reached)
			<-st.release
		}
	}
	return a
}

// holdAt arms a one-time hold at step.
func (a *actor) holdAt(step string) *stop {
	st := &stop{reached: make(chan struct{}), release: make(chan struct{})}
	a.mu.Lock()
	a.stops[step] = st
	a.mu.Unlock()
	return st
}

// wait waits until the actor is held at st.
func (st *stop) wait(t *testing.T) {
	t.Helper()
	select {
	case <-st.reached:
	case <-time.After(time.Minute):
		t.Fatal("actor never reached its hold")
	}
}

// put starts a Put of v and returns its result's channel.
func (a *actor) put(k digest.Key, v []byte) <-chan error {
	ch := make(chan error, 1)
	go func() {
		_, err := a.tr.Put(context.Background(), k, bytes.NewReader(v), tiers.Meta{Size: int64(len(v))})
		ch <- err
	}()
	return ch
}

// adopt is an adopter: it hashes the record-less data file and records
// it (Adopt).
func (a *actor) adopt(k digest.Key) <-chan error {
	ch := make(chan error, 1)
	go func() {
		c, err := a.tr.conn(context.Background())
		if err != nil {
			ch <- err
			return
		}
		h, err := a.tr.hashData(c, k)
		if err != nil {
			ch <- err
			return
		}
		ch <- a.tr.Adopt(context.Background(), k, tiers.Info{Key: k, Sum: h.sum, Size: h.size, Created: time.Now()}, h.mtime)
	}()
	return ch
}

func result(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(time.Minute):
		t.Fatal("no result")
		return nil
	}
}

// wantRemote checks, on the server's disk, that k's data file holds v and
// its record describes v (v nil: neither exists).
func wantRemote(t *testing.T, tr *Tier, k digest.Key, v []byte, what string) {
	t.Helper()
	data, derr := os.ReadFile(localPath(tr, k.String()))
	rec, rerr := LocalSum(localPath(tr), k.String())
	if v == nil {
		if !errors.Is(derr, os.ErrNotExist) || !errors.Is(rerr, os.ErrNotExist) {
			t.Fatalf("%s: want no data and no record; data err %v, record %+v err %v", what, derr, rec, rerr)
		}
		return
	}
	if derr != nil || !bytes.Equal(data, v) {
		t.Fatalf("%s: data file: %d bytes, err %v; want the %d bytes expected", what, len(data), derr, len(v))
	}
	if rerr != nil || rec.Sum != digest.Of(v) || rec.Size != int64(len(v)) {
		t.Fatalf("%s: record %+v, err %v; want sha256 %s size %d", what, rec, rerr, digest.Of(v), len(v))
	}
	// And a reader through the tier verifies it.
	got := tiertest.Get(t, tr, k)
	if !bytes.Equal(got, v) {
		t.Fatalf("%s: read back other bytes", what)
	}
}

func TestRecordInterleavings(t *testing.T) {
	s := sshdtest.Start(t)
	v0, v1, v2 := tiertest.Data(100, 70000), tiertest.Data(101, 90000), tiertest.Data(102, 110000)
	k := tiertest.Key("interleave")
	ctx := context.Background()
	setup := func(t *testing.T) (Options, func(string) *actor) {
		opt := options(s)
		return opt, func(string) *actor { return newActor(t, opt) }
	}

	t.Run("R1 rename race: loser sees ErrExist, then the winner's record", func(t *testing.T) {
		_, mk := setup(t)
		w1, w2 := mk("w1"), mk("w2")
		h := w1.holdAt("record")
		r1 := w1.put(k, v1)
		h.wait(t)
		if err := result(t, w2.put(k, v2)); !errors.Is(err, tiers.ErrExist) {
			t.Fatalf("second writer: %v, want ErrExist", err)
		}
		// Between the winner's rename and its record: no record yet, and
		// a data file modified just now, which the foreign rules take for
		// a write in progress (absent): a loser waits it out, never
		// removes it.
		if st, err := w2.tr.Stat(ctx, k); !errors.Is(err, tiers.ErrNotFound) {
			t.Fatalf("stat between rename and record: %+v, %v; want not found (a write in progress)", st, err)
		}
		close(h.release)
		if err := result(t, r1); err != nil {
			t.Fatal(err)
		}
		wantRemote(t, w2.tr, k, v1, "R1")
	})

	t.Run("R2 stale record of data removed by hand is replaced by the rename winner", func(t *testing.T) {
		_, mk := setup(t)
		w1 := mk("w1")
		if err := result(t, w1.put(k, v0)); err != nil {
			t.Fatal(err)
		}
		os.Remove(localPath(w1.tr, k.String())) // by hand: the record stays
		if err := result(t, w1.put(k, v1)); err != nil {
			t.Fatal(err)
		}
		wantRemote(t, w1.tr, k, v1, "R2")
	})

	t.Run("R3 delete and another writer between rename and record: the record is left, ErrExist", func(t *testing.T) {
		_, mk := setup(t)
		w1, w2, d := mk("w1"), mk("w2"), mk("d")
		h := w1.holdAt("record")
		r1 := w1.put(k, v1)
		h.wait(t)
		if err := d.tr.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
		if err := result(t, w2.put(k, v2)); err != nil {
			t.Fatal(err)
		}
		close(h.release)
		if err := result(t, r1); !errors.Is(err, tiers.ErrExist) {
			t.Fatalf("first writer: %v, want ErrExist", err)
		}
		wantRemote(t, w1.tr, k, v2, "R3")
	})

	t.Run("R4 a record of the replaced data, written first, is replaced by the data's writer", func(t *testing.T) {
		_, mk := setup(t)
		w1, w2, d := mk("w1"), mk("w2"), mk("d")
		h1 := w1.holdAt("record")
		r1 := w1.put(k, v1)
		h1.wait(t)
		if err := d.tr.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
		h2 := w2.holdAt("record")
		r2 := w2.put(k, v2)
		h2.wait(t)
		close(h1.release)
		// W1 links its record next to W2's data: it cannot tell (see
		// doc.go, residual R4); W2 then finds it, hashes the data and
		// replaces the stale record.
		if err := result(t, r1); err != nil {
			t.Fatal(err)
		}
		close(h2.release)
		if err := result(t, r2); err != nil {
			t.Fatal(err)
		}
		wantRemote(t, w1.tr, k, v2, "R4")
	})

	t.Run("R5 stale record, delete and another writer while the winner decides", func(t *testing.T) {
		_, mk := setup(t)
		w1, w2, d := mk("w1"), mk("w2"), mk("d")
		if err := result(t, w1.put(k, v0)); err != nil {
			t.Fatal(err)
		}
		os.Remove(localPath(w1.tr, k.String()))
		h := w1.holdAt("record-stale") // hashed: the data is ours, the record stale
		r1 := w1.put(k, v1)
		h.wait(t)
		if err := d.tr.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
		if err := result(t, w2.put(k, v2)); err != nil {
			t.Fatal(err)
		}
		close(h.release)
		if err := result(t, r1); !errors.Is(err, tiers.ErrExist) {
			t.Fatalf("first writer: %v, want ErrExist", err)
		}
		wantRemote(t, w1.tr, k, v2, "R5")
	})

	t.Run("R6 stale record replaced, then data replaced before the check", func(t *testing.T) {
		_, mk := setup(t)
		w1, w2, d := mk("w1"), mk("w2"), mk("d")
		if err := result(t, w1.put(k, v0)); err != nil {
			t.Fatal(err)
		}
		os.Remove(localPath(w1.tr, k.String()))
		h := w1.holdAt("record-check") // our record replaced the stale one
		r1 := w1.put(k, v1)
		h.wait(t)
		// D removes W1's record and data; W2 puts: all before W1's check.
		if err := d.tr.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
		if err := result(t, w2.put(k, v2)); err != nil {
			t.Fatal(err)
		}
		close(h.release)
		if err := result(t, r1); !errors.Is(err, tiers.ErrExist) {
			t.Fatalf("first writer: %v, want ErrExist", err)
		}
		wantRemote(t, w1.tr, k, v2, "R6")
	})

	t.Run("R7 adopter of removed data finds the new writer's record and leaves it", func(t *testing.T) {
		_, mk := setup(t)
		w1, a, d := mk("w1"), mk("a"), mk("d")
		os.MkdirAll(localPath(w1.tr), 0o755)
		os.WriteFile(localPath(w1.tr, k.String()), v0, 0o644) // foreign: no record
		h := a.holdAt("adopt")                                // hashed v0
		ra := a.adopt(k)
		h.wait(t)
		if err := d.tr.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
		if err := result(t, w1.put(k, v1)); err != nil {
			t.Fatal(err)
		}
		close(h.release)
		if err := result(t, ra); !errors.Is(err, tiers.ErrExist) {
			t.Fatalf("adopter: %v, want ErrExist", err)
		}
		wantRemote(t, w1.tr, k, v1, "R7")
	})

	t.Run("R8 adopter links a record of removed data before the new writer: its check removes it", func(t *testing.T) {
		_, mk := setup(t)
		w1, a, d := mk("w1"), mk("a"), mk("d")
		os.MkdirAll(localPath(w1.tr), 0o755)
		os.WriteFile(localPath(w1.tr, k.String()), v0, 0o644)
		ha := a.holdAt("adopt")
		ra := a.adopt(k)
		ha.wait(t)
		if err := d.tr.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
		hw := w1.holdAt("record")
		r1 := w1.put(k, v1)
		hw.wait(t)
		close(ha.release) // A links v0's record beside v1, then checks
		if err := result(t, ra); !errors.Is(err, tiers.ErrExist) {
			t.Fatalf("adopter: %v, want ErrExist", err)
		}
		close(hw.release)
		if err := result(t, r1); err != nil {
			t.Fatal(err)
		}
		wantRemote(t, w1.tr, k, v1, "R8")
	})

	t.Run("R9 adopter's wrong record found by the writer before the adopter's check", func(t *testing.T) {
		_, mk := setup(t)
		w1, a, d := mk("w1"), mk("a"), mk("d")
		os.MkdirAll(localPath(w1.tr), 0o755)
		os.WriteFile(localPath(w1.tr, k.String()), v0, 0o644)
		ha := a.holdAt("adopt")
		ra := a.adopt(k)
		ha.wait(t)
		if err := d.tr.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
		hw := w1.holdAt("record")
		r1 := w1.put(k, v1)
		hw.wait(t)
		hc := a.holdAt("adopt-check")
		close(ha.release)
		hc.wait(t) // A's record of v0 is beside v1
		close(hw.release)
		if err := result(t, r1); err != nil { // hashes v1: A's record is stale
			t.Fatal(err)
		}
		close(hc.release)
		if err := result(t, ra); !errors.Is(err, tiers.ErrExist) {
			t.Fatalf("adopter: %v, want ErrExist", err)
		}
		wantRemote(t, w1.tr, k, v1, "R9")
	})

	t.Run("R10 adopter records the writer's own data before the writer: same record, both succeed", func(t *testing.T) {
		_, mk := setup(t)
		w1, a := mk("w1"), mk("a")
		hw := w1.holdAt("record")
		r1 := w1.put(k, v1)
		hw.wait(t)
		if err := result(t, a.adopt(k)); err != nil {
			t.Fatal(err)
		}
		close(hw.release)
		if err := result(t, r1); err != nil {
			t.Fatal(err)
		}
		wantRemote(t, w1.tr, k, v1, "R10")
	})

	t.Run("R11 a writer during a delete is refused until the data is gone, then wins", func(t *testing.T) {
		_, mk := setup(t)
		w1, w2, d := mk("w1"), mk("w2"), mk("d")
		if err := result(t, w1.put(k, v1)); err != nil {
			t.Fatal(err)
		}
		h := d.holdAt("delete-record-removed")
		rd := make(chan error, 1)
		go func() { rd <- d.tr.Delete(ctx, k) }()
		h.wait(t)
		if err := result(t, w2.put(k, v2)); !errors.Is(err, tiers.ErrExist) {
			t.Fatalf("writer during delete: %v, want ErrExist", err)
		}
		close(h.release)
		if err := result(t, rd); err != nil {
			t.Fatal(err)
		}
		if err := result(t, w2.put(k, v2)); err != nil {
			t.Fatal(err)
		}
		wantRemote(t, w1.tr, k, v2, "R11")
	})

	t.Run("R12 writer dies between rename and record: the next writer's hash adopts the data", func(t *testing.T) {
		_, mk := setup(t)
		w1, w2 := mk("w1"), mk("w2")
		h := w1.holdAt("record")
		r1 := w1.put(k, v1)
		h.wait(t)
		w1.tr.Close() // the connection is gone before its record
		close(h.release)
		if err := result(t, r1); err == nil {
			t.Fatal("Put succeeded without its record")
		}
		if err := result(t, w2.put(k, v1)); !errors.Is(err, tiers.ErrExist) {
			t.Fatalf("second writer: %v, want ErrExist", err)
		}
		if err := result(t, w2.adopt(k)); err != nil {
			t.Fatal(err)
		}
		wantRemote(t, w2.tr, k, v1, "R12")
	})
}

// Values and their temp files get Options.Mode, whatever the server's
// umask.
func TestMode(t *testing.T) {
	s := sshdtest.Start(t)
	for _, mode := range []os.FileMode{0, 0o600, 0o644} {
		opt := options(s)
		opt.Mode = mode
		tr := open(t, opt)
		k := tiertest.Key("mode")
		for _, size := range []int64{100, 3 << 20} {
			v := tiertest.Data(uint64(size), size)
			if _, err := tr.Put(context.Background(), k, bytes.NewReader(v), tiers.Meta{Size: size}); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(localPath(tr, k.String()))
			if err != nil {
				t.Fatal(err)
			}
			want := mode
			if want == 0 {
				want = defaultMode
			}
			if fi.Mode().Perm() != want {
				t.Errorf("mode %#o, size %d: file has %v", mode, size, fi.Mode().Perm())
			}
			if err := tr.Delete(context.Background(), k); err != nil {
				t.Fatal(err)
			}
		}
	}
	opt := options(s)
	opt.Mode = 0o4755
	if _, err := Open(context.Background(), opt); err == nil {
		t.Error("mode 04755 accepted")
	}
}

// An identity file with a passphrase and no agent: the error names the
// config key (agent), not a Go field.
func TestPassphraseKeyNamesAgentKey(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(nil)
	blk, err := ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	enc := filepath.Join(t.TempDir(), "id_enc")
	os.WriteFile(enc, pem.EncodeToMemory(blk), 0o600)
	_, err = loadSigners([]string{enc}, false)
	if err == nil || !strings.Contains(err.Error(), "agent = true") || strings.Contains(err.Error(), "UseAgent") {
		t.Fatalf("error %v: want one naming the config key agent", err)
	}
}
