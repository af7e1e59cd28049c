package bolt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// bbolt's page header: id (8), flags (2), count (2), overflow (4).
const (
	pageBranch   = 0x01
	pageLeaf     = 0x02
	pageFreelist = 0x10
	pageHeader   = 16
)

// damageFixture writes n entries (a third of them queued for upload) of
// 1 to 40 KiB into a fresh database at path and closes it.
func damageFixture(t testing.TB, path string, n int) map[digest.Key][]byte {
	t.Helper()
	tr, err := Open(path, Options{ChunkSize: MinChunkSize})
	if err != nil {
		t.Fatal(err)
	}
	want := map[digest.Key][]byte{}
	rnd := rand.New(rand.NewPCG(uint64(n), 7))
	for i := range n {
		k := tiertest.Key(fmt.Sprint("damage", i))
		b := tiertest.Data(uint64(i), int64(1<<10+rnd.IntN(40<<10)))
		mustPut(t, tr, k, b, i%3 == 0)
		want[k] = b
	}
	// Free some pages, so that the freelist is not empty.
	for i := 1; i < n; i += 10 {
		k := tiertest.Key(fmt.Sprint("damage", i))
		if err := tr.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
		delete(want, k)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	return want
}

// pagesOf returns the offsets of the pages of the given kind (by flags)
// whose header names their own page id: pages in use or freed, never the
// middle of an overflow run.
func pagesOf(t testing.TB, path string, kind uint16) []int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ps := int64(os.Getpagesize())
	var out []int64
	for off := int64(2 * ps); off+ps <= int64(len(b)); off += ps {
		id := binary.LittleEndian.Uint64(b[off:])
		flags := binary.LittleEndian.Uint16(b[off+8:])
		if id == uint64(off/ps) && flags == kind {
			out = append(out, off)
		}
	}
	return out
}

// flip xors bytes random bytes of each of pages pages at offs (beyond the
// header, or in it when header is set).
func flip(t testing.TB, path string, offs []int64, pages, bytes int, header bool, rnd *rand.Rand) int {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ps := os.Getpagesize()
	rnd.Shuffle(len(offs), func(i, j int) { offs[i], offs[j] = offs[j], offs[i] })
	n := min(pages, len(offs))
	for _, off := range offs[:n] {
		for range bytes {
			at := off + int64(pageHeader+rnd.IntN(ps-pageHeader))
			if header {
				at = off + int64(8+rnd.IntN(pageHeader-8))
			}
			var c [1]byte
			if _, err := f.ReadAt(c[:], at); err != nil {
				t.Fatal(err)
			}
			c[0] ^= byte(1 + rnd.IntN(255))
			if _, err := f.WriteAt(c[:], at); err != nil {
				t.Fatal(err)
			}
		}
	}
	return n
}

// readAll reads every entry of want through tr and fails the test on wrong
// bytes; it returns how many read back whole and how many failed.
func readAll(t testing.TB, tr *Tier, want map[digest.Key][]byte) (ok, failed int) {
	t.Helper()
	for k, b := range want {
		r, err := tr.Open(ctx, k)
		if err != nil {
			failed++
			continue
		}
		got, err := io.ReadAll(io.NewSectionReader(r, 0, r.Info().Size))
		r.Close()
		switch {
		case err != nil:
			failed++
		case !bytes.Equal(got, b):
			t.Fatalf("%s: read %d wrong bytes (want %d)", k, len(got), len(b))
		default:
			ok++
		}
	}
	return ok, failed
}

// TestDamagedPages flips bytes in branch, leaf and freelist pages of a
// closed database, opens it and reads every entry: the process never
// crashes, no wrong bytes are read, and a fault fails the tier (or Open
// moves the file aside).
func TestDamagedPages(t *testing.T) {
	kinds := []struct {
		name   string
		kind   uint16
		header bool
	}{
		{"branch", pageBranch, false},
		{"branch-header", pageBranch, true},
		{"leaf", pageLeaf, false},
		{"leaf-header", pageLeaf, true},
		{"freelist", pageFreelist, false},
		{"freelist-header", pageFreelist, true},
	}
	const trials = 6
	// One fixture, copied for every trial: writing 300 entries costs
	// seconds under -race, the damage and the reads a fraction of that.
	src := filepath.Join(t.TempDir(), "src.db")
	want := damageFixture(t, src, 300)
	full, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, kd := range kinds {
		t.Run(kd.name, func(t *testing.T) {
			var okN, failedN, failedTier, aside, refused int
			for trial := range trials {
				dir := t.TempDir()
				path := filepath.Join(dir, "cache.db")
				if err := os.WriteFile(path, full, 0o600); err != nil {
					t.Fatal(err)
				}
				rnd := rand.New(rand.NewPCG(uint64(trial), uint64(kd.kind)))
				offs := pagesOf(t, path, kd.kind)
				if len(offs) == 0 {
					t.Fatalf("no %s page in the file", kd.name)
				}
				flip(t, path, offs, 2, 8, kd.header, rnd)
				tr, err := Open(path, Options{ChunkSize: MinChunkSize})
				if err != nil {
					// Refused: one line naming the path.
					if !strings.Contains(err.Error(), path) || strings.Contains(err.Error(), "\n") {
						t.Fatalf("open error is not one line naming the path: %q", err)
					}
					refused++
					continue
				}
				if tr.MovedAside() != nil {
					aside++
				}
				ok, failed := readAll(t, tr, want)
				okN += ok
				failedN += failed
				if tr.Failed() != nil {
					failedTier++
				}
				tr.Close()
			}
			t.Logf("%s: %d trials: %d entries read whole, %d failed; tier failed in %d, moved aside at open in %d, refused in %d",
				kd.name, trials, okN, failedN, failedTier, aside, refused)
		})
	}
}

// TestTruncatedWhileOpen truncates the file under an open tier: reads fail
// (the SIGBUS is an error), the tier fails, nothing crashes.
func TestTruncatedWhileOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cache.db")
	want := damageFixture(t, path, 300)
	tr, err := Open(path, Options{ChunkSize: MinChunkSize})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, fi.Size()/4); err != nil {
		t.Fatal(err)
	}
	ok, failed := readAll(t, tr, want)
	if failed == 0 {
		t.Fatalf("all %d entries read whole from a file truncated to a quarter", ok)
	}
	waitFailed(t, tr)
	t.Logf("%d read whole, %d failed; %v", ok, failed, tr.Failed())
	if _, err := tr.Stat(ctx, tiertest.Key("damage0")); !errors.Is(err, tiers.ErrFailed) {
		t.Fatalf("stat on a failed tier: %v, want ErrFailed", err)
	}
}

func waitFailed(t testing.TB, tr *Tier) {
	t.Helper()
	tiertest.Eventually(t, "the tier to fail", func() bool { return tr.Failed() != nil })
}

// TestTruncatedAtOpen opens files cut at several sizes: a clean error or a
// fresh database with the damaged one moved aside, never a panic.
func TestTruncatedAtOpen(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src.db")
	want := damageFixture(t, src, 300)
	full, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	ps := os.Getpagesize()
	for _, size := range []int{100, ps, 2 * ps, 3 * ps, len(full) / 4, len(full) / 2, len(full) - ps} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "cache.db")
			if err := os.WriteFile(path, full[:size], 0o600); err != nil {
				t.Fatal(err)
			}
			ro, err := Open(path, Options{ReadOnly: true})
			if err == nil {
				ro.Close()
			} else if !strings.Contains(err.Error(), path) {
				t.Fatalf("read-only open error does not name the path: %v", err)
			}
			tr, err := Open(path, Options{ChunkSize: MinChunkSize})
			if err != nil {
				if !strings.Contains(err.Error(), path) {
					t.Fatalf("open error does not name the path: %v", err)
				}
				t.Logf("refused: %v", err)
				return
			}
			defer tr.Close()
			if a := tr.MovedAside(); a != nil {
				if _, err := os.Stat(a.Path); err != nil {
					t.Fatalf("moved aside to %s: %v", a.Path, err)
				}
				t.Logf("moved aside: %v; %d queued entries salvaged, %d lost", a.Reason, a.Requeued, a.Lost)
				if a.Requeued > 0 {
					keys, err := tr.Pending(ctx)
					if err != nil || len(keys) != a.Requeued {
						t.Fatalf("pending after salvage: %d keys, %v; want %d", len(keys), err, a.Requeued)
					}
				}
			}
			ok, failed := readAll(t, tr, want)
			t.Logf("read %d whole, %d failed; tier failed: %v", ok, failed, tr.Failed())
		})
	}
}

// TestSalvageQueue damages the freelist so that bbolt cannot open the file
// for writing, and checks that the fresh database holds the queued entries,
// byte for byte, queued again.
func TestSalvageQueue(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cache.db")
	want := damageFixture(t, path, 300)
	offs := pagesOf(t, path, pageFreelist)
	if len(offs) == 0 {
		t.Fatal("no freelist page")
	}
	// A count of 0xffff free ids makes bbolt read past the page.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range offs {
		if _, err := f.WriteAt([]byte{0xff, 0xff}, off+10); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	tr, err := Open(path, Options{ChunkSize: MinChunkSize})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	a := tr.MovedAside()
	if a == nil {
		t.Fatal("a garbled freelist count was not found at open")
	}
	keys, err := tr.Pending(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != a.Requeued || a.Requeued == 0 {
		t.Fatalf("%d pending, %d requeued (lost %d)", len(keys), a.Requeued, a.Lost)
	}
	for _, k := range keys {
		r, err := tr.Open(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(io.NewSectionReader(r, 0, r.Info().Size))
		if err != nil || !bytes.Equal(got, want[k]) {
			t.Fatalf("%s: salvaged %d bytes, %v; want %d", k, len(got), err, len(want[k]))
		}
	}
	if err := tr.Check(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%v: %d requeued, %d lost", a.Reason, a.Requeued, a.Lost)
}

// TestDeletedWhileOpen removes (then replaces) the file under an open tier:
// the tier fails for writes within a few seconds, reads of the open file go
// on.
func TestDeletedWhileOpen(t *testing.T) {
	for _, replace := range []bool{false, true} {
		t.Run(fmt.Sprint("replace=", replace), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "cache.db")
			want := damageFixture(t, path, 30)
			tr, err := Open(path, Options{ChunkSize: MinChunkSize})
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			start := time.Now()
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			if replace {
				if err := os.WriteFile(path, nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			waitFailed(t, tr)
			t.Logf("failed after %v: %v", time.Since(start).Round(time.Millisecond), tr.Failed())
			err = put(t, tr, tiertest.Key("after"), []byte("x"), true)
			if !errors.Is(err, tiers.ErrFailed) {
				t.Fatalf("put after the file was deleted: %v, want ErrFailed", err)
			}
			if ok, failed := readAll(t, tr, want); failed != 0 {
				t.Fatalf("reads of the deleted file: %d whole, %d failed", ok, failed)
			}
		})
	}
}

// TestBranchCycle points a child of a branch page back at the page itself,
// and at another branch page: bbolt's recursive search would follow either
// until the goroutine's stack overflowed, a fatal error. Open finds the
// damage first and moves the file aside; nothing crashes, nothing wrong is
// read.
func TestBranchCycle(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src.db")
	want := damageFixture(t, src, 300)
	full, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	branches := inUse(t, src, pagesOf(t, src, pageBranch))
	if len(branches) < 2 {
		t.Fatalf("%d branch pages in the fixture, want at least 2", len(branches))
	}
	ps := int64(os.Getpagesize())
	cases := 0
	for i, off := range branches {
		for _, to := range []int64{off, branches[(i+1)%len(branches)]} {
			dir := t.TempDir()
			path := filepath.Join(dir, "cache.db")
			b := bytes.Clone(full)
			// The last element's child: element i at 16 + 16*i, its page
			// id 8 bytes into it.
			count := int64(binary.LittleEndian.Uint16(b[off+10:]))
			at := off + 16 + 16*(count-1) + 8
			if binary.LittleEndian.Uint64(b[at:]) == uint64(to/ps) {
				continue // already its child: no damage
			}
			cases++
			binary.LittleEndian.PutUint64(b[at:], uint64(to/ps))
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			tr, err := Open(path, Options{ChunkSize: MinChunkSize})
			if err != nil {
				t.Fatalf("branch page %d -> %d: %v", off/ps, to/ps, err)
			}
			a := tr.MovedAside()
			if a == nil {
				tr.Close()
				t.Fatalf("branch page %d -> %d: opened as sound", off/ps, to/ps)
			}
			if !strings.Contains(a.Reason.Error(), "reached twice") {
				t.Errorf("branch page %d -> %d: moved aside because %v", off/ps, to/ps, a.Reason)
			}
			readAll(t, tr, want)
			tr.Close()
		}
	}
	t.Logf("%d branch pages pointed at themselves or at another branch page, %d cases: all moved aside at open", len(branches), cases)
}

// inUse returns the pages at offs that a tree of the database at path
// reaches (not freed ones).
func inUse(t *testing.T, path string, offs []int64) []int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, ok, err := currentMeta(f)
	if err != nil || !ok {
		t.Fatalf("meta: %v %v", ok, err)
	}
	w := treeWalk{f: f, m: m, seen: map[uint64]bool{}}
	if err := w.walk("root", m.root, true); err != nil {
		t.Fatal(err)
	}
	for _, b := range w.buckets {
		if b.root != 0 {
			if err := w.walk(b.name, b.root, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	ps := int64(m.pageSize)
	return slices.DeleteFunc(offs, func(off int64) bool { return !w.seen[uint64(off/ps)] })
}
