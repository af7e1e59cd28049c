package fs

import (
	"errors"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/flechefs/flechefs/digest"
)

// TestRunningHash: a value appended in writes of every size, across the
// spool's move from memory to a file, hashes to its SHA-256 whether sum
// comes at once or after the goroutine caught up; drop stops it.
func TestRunningHash(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	src := rand.NewChaCha8([32]byte{3})
	for round := range 12 {
		sp := newSpool(t.TempDir(), 64<<10)
		rh := newRunningHash()
		var all []byte
		for range 1 + rng.IntN(12) {
			data := make([]byte, rng.IntN(3*hashStep/2))
			src.Read(data)
			if err := sp.writeAt(data, sp.size); err != nil {
				t.Fatal(err)
			}
			rh.appended(sp, data)
			all = append(all, data...)
		}
		got, err := rh.sum()
		if err != nil || got != digest.Of(all) {
			t.Fatalf("round %d: %d bytes (spool file %v): sum %v, %v; want %v", round, len(all), sp.f != nil, got, err, digest.Of(all))
		}
		sp.close()
	}

	// Dropped while it runs: it stops reading before the spool closes.
	sp := newSpool(t.TempDir(), 0)
	rh := newRunningHash()
	big := make([]byte, 8*hashStep)
	for range 8 {
		sp.writeAt(big, sp.size)
		rh.appended(sp, big)
	}
	rh.drop()
	if rh.running {
		t.Fatal("running after drop")
	}
	sp.close()
}

// TestRunningHashReadError: a spool that cannot be read back fails the
// sum rather than giving a wrong one.
func TestRunningHashReadError(t *testing.T) {
	sp := newSpool(t.TempDir(), 0)
	rh := newRunningHash()
	data := make([]byte, 3*hashStep)
	sp.writeAt(data, 0)
	sp.f.Close() // reads fail from now on
	rh.appended(sp, data)
	if _, err := rh.sum(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("sum of an unreadable spool: %v, want os.ErrClosed", err)
	}
}
