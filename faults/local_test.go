package faults

// Local faults: bytes rotting inside the bbolt file, a full disk under the
// bbolt tier and its spool, and the size bounds of every tier (and of the
// daemon's memory) under ten times their size of churn.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/mounttest"
	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/bolt"
)

// TestBoltCorruptionRepairedFromRemote flips one data byte inside a stored
// chunk of two entries (one of several chunks, one small enough to live in
// a leaf page) while the node is stopped, and restarts it with an empty RAM
// tier: the reads through the mount detect the bad CRC, never serve the
// bytes, fetch the value from the remote instead, count the corruption in
// .flechefs/stats, and the bbolt tier holds a good copy again afterwards.
func TestBoltCorruptionRepairedFromRemote(t *testing.T) {
	remote := sshdtest.Start(t)
	n := mounttest.NewNode(t, "rot", remote, mounttest.Opts{})
	big, small := seeded(1, 3<<20+12345), seeded(2, 700)
	kBig, kSmall := mounttest.Key("rot-big"), mounttest.Key("rot-small")
	for k, v := range map[string][]byte{kBig: big, kSmall: small} {
		if err := writeEntry(n.Path(k), v, true); err != nil {
			t.Fatal(err)
		}
	}
	n.Sync(30 * time.Second)
	n.Stop()

	offBig := corruptChunk(t, n.Bolt, kBig, 5, 1000)
	offSmall := corruptChunk(t, n.Bolt, kSmall, 0, 17)
	t.Logf("flipped a byte at file offset %d (chunk 5 of the 3 MiB entry) and %d (the 700-byte entry)", offBig, offSmall)

	n.Start()
	// The big entry is opened and read a little: its promotion to RAM
	// reads the whole copy, finds chunk 5 bad and removes the copy while
	// this reader still has it open. The rest of the read must continue
	// from the remote, not fail.
	f, err := os.Open(n.Path(kBig))
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 4096)
	if _, err := io.ReadFull(f, head); err != nil || !bytes.Equal(head, big[:4096]) {
		t.Fatalf("first 4 KiB of the corrupted entry: %v", err)
	}
	mounttest.Eventually(t, "the promotion finding the bad chunk", 10*time.Second, func() bool {
		return n.TierStats("bolt").Corruptions >= 1
	})
	rest, err := io.ReadAll(f)
	f.Close()
	if err != nil || !bytes.Equal(append(head, rest...), big) {
		t.Fatalf("reading on after the bad copy was removed under the reader: %d bytes, %v\n%s", 4096+len(rest), err, n.Stderr())
	}
	for k, v := range map[string][]byte{kBig: big, kSmall: small} {
		got, err := os.ReadFile(n.Path(k))
		if err != nil {
			t.Fatalf("read of %s after corruption: %v\n%s", k[:8], err, n.Stderr())
		}
		if !bytes.Equal(got, v) {
			t.Fatalf("read of %s after corruption: %d bytes, sha256 %s, want %d bytes %s",
				k[:8], len(got), mounttest.Sum(got), len(v), mounttest.Sum(v))
		}
	}
	bs := n.TierStats("bolt")
	t.Logf("bolt stats after the repairing reads: corruptions %d, hits %d, misses %d; sftp hits %d",
		bs.Corruptions, bs.Hits, bs.Misses, n.TierStats("sftp").Hits)
	if bs.Corruptions < 2 {
		t.Errorf("bolt corruptions = %d, want ≥ 2 (one per corrupted entry)", bs.Corruptions)
	}
	if !strings.Contains(n.Stderr(), "corrupt") {
		t.Errorf("no log line about the corruption:\n%s", n.Stderr())
	}
	for _, k := range []string{kBig, kSmall} {
		mounttest.Eventually(t, "bolt holding "+k[:8]+" again", 20*time.Second, func() bool {
			return strings.Contains(","+n.Xattr(k, "user.flechefs.tiers")+",", ",bolt,")
		})
	}
	n.Stop()

	// The repaired file is consistent and its copies read back right.
	tr := openBoltRO(t, n.Bolt)
	if err := tr.Check(); err != nil {
		t.Errorf("bolt Check after the repair: %v", err)
	}
	for k, v := range map[string][]byte{kBig: big, kSmall: small} {
		if got := readTier(t, tr, k); !bytes.Equal(got, v) {
			t.Errorf("bolt copy of %s after the repair: sha256 %s, want %s", k[:8], mounttest.Sum(got), mounttest.Sum(v))
		}
	}
	tr.Close()
}

// TestBoltCorruptionWithoutGoodCopy: with no other copy (no remote, RAM
// empty after the restart), the corrupted entry is never served: the read
// fails with EIO after returning only correct bytes, the corruption is
// counted, the bad copy is removed (ENOENT afterwards) and the file checks
// clean.
func TestBoltCorruptionWithoutGoodCopy(t *testing.T) {
	n := mounttest.NewNode(t, "rot-alone", nil, mounttest.Opts{})
	v := seeded(3, 2<<20)
	k := mounttest.Key("rot-alone")
	if err := writeEntry(n.Path(k), v, true); err != nil {
		t.Fatal(err)
	}
	n.Stop()
	off := corruptChunk(t, n.Bolt, k, 6, 4096) // the last chunk of eight
	t.Logf("flipped a byte at file offset %d (chunk 6 of 8)", off)
	n.Start()

	f, err := os.Open(n.Path(k))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(f)
	f.Close()
	// EIO when this read met the bad chunk; ENOENT when the promotion to
	// RAM met it first and removed the copy under this reader.
	if !errors.Is(err, syscall.EIO) && !errors.Is(err, syscall.ENOENT) {
		t.Errorf("read of the corrupted entry: %d bytes, err %v; want EIO or ENOENT", len(got), err)
	}
	if !bytes.Equal(got, v[:len(got)]) {
		t.Errorf("the %d bytes read before the error differ from the value", len(got))
	}
	t.Logf("read returned %d good bytes, then %v", len(got), err)
	if c := n.TierStats("bolt").Corruptions; c < 1 {
		t.Errorf("bolt corruptions = %d, want ≥ 1", c)
	}
	mounttest.Eventually(t, "the bad copy removed", 10*time.Second, func() bool {
		f, err := os.Open(n.Path(k)) // an OPEN reaches the daemon, whatever the kernel cached
		if err == nil {
			f.Close()
		}
		return errors.Is(err, os.ErrNotExist)
	})
	n.Stop()
	tr := openBoltRO(t, n.Bolt)
	defer tr.Close()
	if err := tr.Check(); err != nil {
		t.Errorf("bolt Check after the bad copy was dropped: %v", err)
	}
	if u := tr.Usage(); u.Entries != 0 {
		t.Errorf("bolt still holds %d entries", u.Entries)
	}
}

// TestBoltDiskFull puts the bbolt file and the spool on a 64 MiB ext4
// filesystem, with a bbolt limit of 1 GiB so that the disk fills first.
// Writers that fsync before close are told ENOSPC (by write(2) when the
// spool cannot grow, or by the fsync or close when the entry could not be
// persisted); nothing hangs, the daemon keeps serving every entry that was
// durably written, deleting entries lets new durable writes succeed, and
// the database checks clean after the node stops.
func TestBoltDiskFull(t *testing.T) {
	if testing.Short() {
		t.Skip("long: fills a 64 MiB filesystem")
	}
	small := smallFS(t, 64)
	n := mounttest.NewNode(t, "full", nil, mounttest.Opts{RAM: "8MiB", NoStart: true})
	dbPath, spool := filepath.Join(small, "cache.db"), filepath.Join(small, "spool")
	relocate(t, n, map[string]string{n.Bolt: dbPath, n.Spool: spool})
	n.Start()

	type entry struct {
		key  string
		data []byte
	}
	var durable, failed []entry
	var full error
	var fullAt, fullSize int
	// Alternate values that stay in the daemon's memory (512 KiB) and
	// values that spill to the spool (3 MiB).
	for i := 0; i < 100 && full == nil; i++ {
		size := 512 << 10
		if i%2 == 1 {
			size = 3 << 20
		}
		e := entry{mounttest.Key(fmt.Sprint("full-", i)), seeded(uint64(100+i), size)}
		if err := writeEntry(n.Path(e.key), e.data, true); err != nil {
			full, fullAt, fullSize = err, i, size
			failed = append(failed, e)
			break
		}
		durable = append(durable, e)
	}
	free := freeBytes(t, small)
	t.Logf("first failure at entry %d (%d bytes) after %d durable entries: %s; %d bytes free on the filesystem; bolt file %d bytes (%d on disk)",
		fullAt, fullSize, len(durable), errnoName(full), free, fileSize(t, dbPath), diskBytes(dbPath))
	if full == nil {
		t.Fatalf("wrote %d entries (%d MiB) to a 64 MiB disk without an error", len(durable), len(durable)*7/4)
	}
	if !errors.Is(full, syscall.ENOSPC) {
		t.Errorf("the write that found the disk full failed with %v, want ENOSPC\n%s", full, n.Stderr())
	}
	// A few more writes of both kinds: each fails with ENOSPC or succeeds,
	// none hangs, and the daemon stays up.
	var more []string
	for i := range 6 {
		size := 512 << 10
		if i%2 == 1 {
			size = 3 << 20
		}
		k := mounttest.Key(fmt.Sprint("full-more-", i))
		data := seeded(uint64(500+i), size)
		err := writeEntry(n.Path(k), data, true)
		more = append(more, fmt.Sprintf("%d KiB: %v", size>>10, errnoName(err)))
		if err == nil {
			durable = append(durable, entry{k, data})
		} else {
			failed = append(failed, entry{k, data})
		}
		if err != nil && !errors.Is(err, syscall.ENOSPC) {
			t.Errorf("write of %d bytes on the full disk: %v, want ENOSPC or success", size, err)
		}
	}
	t.Logf("writes on the full disk: %s", strings.Join(more, "; "))
	if !mounttest.IsMounted(n.Mnt) || !n.Running() {
		t.Fatalf("the daemon died on the full disk\n%s", n.Stderr())
	}
	bs := n.TierStats("bolt")
	t.Logf("bolt: %d entries, %d bytes, %d errors", bs.Entries, bs.Bytes, bs.Errors)

	// A write that failed left the name absent, or (when only its
	// durability failed) holding exactly the value: never part of it.
	var visible []string
	for _, e := range failed {
		got, err := os.ReadFile(n.Path(e.key))
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			t.Errorf("failed write %s: read: %v", e.key[:8], err)
		case !bytes.Equal(got, e.data):
			t.Errorf("failed write %s: visible with %d bytes, not its %d", e.key[:8], len(got), len(e.data))
		default:
			visible = append(visible, fmt.Sprintf("%s (%d KiB)", e.key[:8], len(e.data)>>10))
		}
	}
	t.Logf("%d failed writes; visible anyway, complete: %v", len(failed), visible)

	// Every durable entry reads back right.
	for _, e := range durable {
		got, err := os.ReadFile(n.Path(e.key))
		if err != nil || !bytes.Equal(got, e.data) {
			t.Fatalf("durable entry %s on the full disk: %d bytes, %v", e.key[:8], len(got), err)
		}
	}

	// Deleting frees room in the database: new durable writes of values
	// that stay in memory succeed. (The file does not shrink, so the
	// spool still has no room unless the filesystem does.)
	var freed int64
	for _, e := range durable[:len(durable)/2] {
		if err := os.Remove(n.Path(e.key)); err != nil {
			t.Fatal(err)
		}
		freed += int64(len(e.data))
	}
	durable = durable[len(durable)/2:]
	var after []string
	for i := range 4 {
		k := mounttest.Key(fmt.Sprint("full-after-", i))
		data := seeded(uint64(900+i), 512<<10)
		if err := writeEntry(n.Path(k), data, true); err != nil {
			t.Errorf("durable write of 512 KiB after deleting %d bytes: %v\n%s", freed, err, n.Stderr())
			continue
		}
		after = append(after, k)
		durable = append(durable, entry{k, data})
	}
	spill := mounttest.Key("full-after-spill")
	spillErr := writeEntry(n.Path(spill), seeded(999, 3<<20), true)
	t.Logf("after deleting %d bytes: %d of 4 durable 512 KiB writes succeeded; a 3 MiB write (spool): %v; %d bytes free",
		freed, len(after), errnoName(spillErr), freeBytes(t, small))
	if spillErr == nil {
		durable = append(durable, entry{spill, seeded(999, 3<<20)})
	}
	for _, e := range durable {
		got, err := os.ReadFile(n.Path(e.key))
		if err != nil || !bytes.Equal(got, e.data) {
			t.Fatalf("entry %s after the deletes: %d bytes, %v", e.key[:8], len(got), err)
		}
	}
	n.Stop()

	tr := openBoltRO(t, dbPath)
	defer tr.Close()
	if err := tr.Check(); err != nil {
		t.Errorf("bolt Check after the full disk: %v", err)
	}
	for _, e := range durable {
		if got := readTier(t, tr, e.key); !bytes.Equal(got, e.data) {
			t.Errorf("durable entry %s not in the database after the stop (%d bytes)", e.key[:8], len(got))
		}
	}
	t.Logf("after the stop: %d entries in the database, all %d durable ones read back", tr.Usage().Entries, len(durable))
}

// TestSizeBoundsUnderChurn writes ten times the bbolt tier's size through
// a node with a 32 MiB RAM tier and a 64 MiB bbolt tier, reading entries
// back as it goes, and samples .flechefs/stats, the daemon's memory and
// the database file size every 50 ms: no tier ever holds more logical
// bytes than its limit, the daemon's RSS stays below the RAM tier's size
// plus a fixed allowance, and the file stays within 1.5 times its limit.
// The daemon is built without the race detector for this test, so that
// its memory is the one users get.
func TestSizeBoundsUnderChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("long: writes 640 MiB through the mount")
	}
	const (
		ramLimit  = 32 << 20
		boltLimit = 64 << 20
		overhead  = 96 << 20 // the RSS allowance on top of the RAM tier
		fileRatio = 1.5
	)
	plain := plainBinary(t)
	n := mounttest.NewNode(t, "churn", nil, mounttest.Opts{RAM: "32MiB", BoltSize: "64MiB",
		Wrap: []string{"sh", "-c", `shift; exec "$0" "$@"`, plain}})

	var (
		mu                       sync.Mutex
		maxRAM, maxBolt, maxFile int64
		maxRSS, hwm, samples     int64
		maxAnon, maxMapped       int64
		maxUnpersisted           int64
		ramEvict, boltEvict      int64
		sampleErr                error
		stop                     = make(chan struct{})
		sampled                  = make(chan struct{})
		pid                      = n.PID()
	)
	go func() {
		defer close(sampled)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			st, err := n.StatsE()
			rss, peak, anon, file := procMem(pid)
			fsz := diskBytes(n.Bolt)
			mu.Lock()
			if err != nil && sampleErr == nil {
				sampleErr = err
			}
			maxUnpersisted = max(maxUnpersisted, st.Unpersisted)
			for _, ts := range st.Tiers {
				switch ts.Name {
				case "ram":
					maxRAM = max(maxRAM, ts.Bytes)
					ramEvict = ts.Evictions
				case "bolt":
					maxBolt = max(maxBolt, ts.Bytes)
					boltEvict = ts.Evictions
				}
			}
			maxRSS, hwm, maxFile = max(maxRSS, rss), max(hwm, peak), max(maxFile, fsz)
			maxAnon, maxMapped = max(maxAnon, anon), max(maxMapped, file)
			samples++
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()

	// Values from 4 KiB to 8 MiB, two writers, each entry read back once
	// right away and an older one now and then.
	const total = 10 * boltLimit
	var written atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			var keys []string
			for i := 0; written.Load() < total; i++ {
				size := 4<<10 + rng.IntN(8<<20)
				if rng.IntN(3) > 0 {
					size = 4<<10 + rng.IntN(1<<20) // most values stay below the spool threshold
				}
				k := mounttest.Key(fmt.Sprint("churn-", w, "-", i))
				data := seeded(uint64(w<<32|i), size)
				if err := writeEntry(n.Path(k), data, false); err != nil {
					errs <- fmt.Errorf("write %d of writer %d: %w", i, w, err)
					return
				}
				written.Add(int64(size))
				keys = append(keys, k)
				if got, err := os.ReadFile(n.Path(k)); err != nil || !bytes.Equal(got, data) {
					errs <- fmt.Errorf("read back of %s: %d bytes, %v", k[:8], len(got), err)
					return
				}
				if i%5 == 4 {
					// An older entry: gone (evicted everywhere) or intact.
					j := rng.IntN(len(keys))
					got, err := os.ReadFile(n.Path(keys[j]))
					if err == nil && !bytes.Equal(got, seeded(uint64(w<<32|j), len(got))) {
						errs <- fmt.Errorf("old entry %s read back wrong", keys[j][:8])
						return
					}
					if err != nil && !errors.Is(err, os.ErrNotExist) {
						errs <- fmt.Errorf("old entry %s: %v", keys[j][:8], err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stop)
	<-sampled
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if sampleErr != nil {
		t.Errorf("reading stats: %v", sampleErr)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("wrote %d MiB in %v (%.0f MiB/s); %d samples", written.Load()>>20, elapsed.Round(time.Millisecond),
		float64(written.Load())/(1<<20)/elapsed.Seconds(), samples)
	t.Logf("max ram bytes %d (limit %d, %d evictions), max bolt bytes %d (limit %d, %d evictions)",
		maxRAM, ramLimit, ramEvict, maxBolt, boltLimit, boltEvict)
	t.Logf("daemon VmRSS max %d MiB, VmHWM %d MiB; anonymous max %d MiB (%d MiB over the RAM tier, allowance %d MiB), file-backed (the bbolt map) max %d MiB",
		maxRSS>>20, hwm>>20, maxAnon>>20, (maxAnon-ramLimit)>>20, overhead>>20, maxMapped>>20)
	t.Logf("bolt file on disk max %d MiB = %.2f × its limit; at most %d entries waited for persistence", maxFile>>20, float64(maxFile)/boltLimit, maxUnpersisted)
	if maxRAM > ramLimit {
		t.Errorf("the RAM tier held %d bytes, limit %d", maxRAM, ramLimit)
	}
	if maxBolt > boltLimit {
		t.Errorf("the bbolt tier held %d bytes, limit %d", maxBolt, boltLimit)
	}
	if ramEvict == 0 || boltEvict == 0 {
		t.Errorf("no churn: %d RAM and %d bbolt evictions", ramEvict, boltEvict)
	}
	// The anonymous memory is the daemon's own; the file-backed part is
	// the bbolt file's map, page cache the kernel reclaims at will, and
	// is bounded by the file's size.
	if maxAnon > ramLimit+overhead {
		t.Errorf("daemon anonymous RSS %d MiB is above RAM %d MiB + %d MiB", maxAnon>>20, ramLimit>>20, overhead>>20)
	}
	if peak := max(maxRSS, hwm); float64(peak) > ramLimit+overhead+fileRatio*boltLimit {
		t.Errorf("daemon peak RSS %d MiB is above RAM %d MiB + %d MiB + the bbolt file's bound %.0f MiB",
			peak>>20, ramLimit>>20, overhead>>20, fileRatio*boltLimit/(1<<20))
	}
	if float64(maxFile) > fileRatio*boltLimit {
		t.Errorf("bolt file reached %d bytes, above %.1f × %d", maxFile, fileRatio, boltLimit)
	}
}

// seeded returns n pseudo-random bytes determined by seed: a prefix of a
// longer value of the same seed is the same bytes.
func seeded(seed uint64, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8(seedBytes(seed)).Read(b) //nolint:errcheck // never fails
	return b
}

func seedBytes(seed uint64) [32]byte {
	var s [32]byte
	binary.BigEndian.PutUint64(s[:], seed)
	return s
}

// writeEntry creates path, writes data, fsyncs it when durable, and closes
// it, returning the first error (the close's included).
func writeEntry(path string, data []byte, durable bool) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	for off := 0; off < len(data); {
		m, err := f.Write(data[off:min(off+1<<20, len(data))])
		if err != nil {
			f.Close()
			return err
		}
		off += m
	}
	if durable {
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// corruptChunk flips one data byte (at byte at of the chunk's data, after
// its CRC) of chunk idx of the entry key in the stopped node's bbolt file,
// writing the file directly as a failing disk would: the chunk's stored
// CRC no longer matches. It returns the file offset it changed.
func corruptChunk(t *testing.T, path, key string, idx uint32, at int) int64 {
	t.Helper()
	k := digest.MustParse(key)
	off, err := bolt.ChunkDataOffset(path, k, idx, at)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	// The file now holds a chunk whose CRC does not match its data.
	if _, err := bolt.ChunkDataOffset(path, k, idx, at); !errors.Is(err, tiers.ErrCorrupt) {
		t.Fatalf("flipping the byte at %d did not break chunk %d of %s: %v", off, idx, key, err)
	}
	return off
}

// openBoltRO opens a stopped node's database read-only for checks.
func openBoltRO(t *testing.T, path string) *bolt.Tier {
	t.Helper()
	tr, err := bolt.Open(path, bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// readTier reads key's whole value from tr, nil when it is missing.
func readTier(t *testing.T, tr *bolt.Tier, key string) []byte {
	t.Helper()
	k, err := digest.Parse(key)
	if err != nil {
		t.Fatal(err)
	}
	r, err := tr.Open(t.Context(), k)
	if errors.Is(err, tiers.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := tiers.ReadAll(r)
	if err != nil {
		t.Fatalf("reading %s from bolt: %v", key[:8], err)
	}
	return b
}

// smallFS mounts a fresh ext4 filesystem of mib MiB (a loop device over a
// sparse image) and unmounts it at cleanup.
func smallFS(t *testing.T, mib int) string {
	t.Helper()
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "fs.img"), filepath.Join(dir, "fs")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][]string{
		{"truncate", "-s", fmt.Sprintf("%dM", mib), img},
		{"mkfs.ext4", "-q", "-F", "-m", "0", img},
		{"mount", "-o", "loop", img, mnt},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(c, " "), err, out)
		}
	}
	// Registered after NewNode's cleanup would run first; this one is
	// registered before the node, so it runs after the node stopped.
	t.Cleanup(func() {
		for i := 0; ; i++ {
			out, err := exec.Command("umount", mnt).CombinedOutput()
			if err == nil {
				return
			}
			if i == 50 {
				t.Errorf("umount %s: %v %s", mnt, err, out)
				exec.Command("umount", "-l", mnt).Run()
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	return mnt
}

// relocate rewrites a node's config, replacing paths (the bbolt file, the
// spool dir) with others.
func relocate(t *testing.T, n *mounttest.Node, paths map[string]string) {
	t.Helper()
	b, err := os.ReadFile(n.Config)
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(b)
	for from, to := range paths {
		q := strconv.Quote(from)
		if !strings.Contains(cfg, q) {
			t.Fatalf("config has no %s:\n%s", q, cfg)
		}
		cfg = strings.ReplaceAll(cfg, q, strconv.Quote(to))
	}
	if err := os.WriteFile(n.Config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// diskBytes is the space a file takes on disk (its allocated blocks), 0 if
// it is missing.
func diskBytes(path string) int64 {
	var st syscall.Stat_t
	if syscall.Stat(path, &st) != nil {
		return 0
	}
	return max(st.Blocks*512, 0)
}

// procMem returns VmRSS, VmHWM, RssAnon and RssFile of pid in bytes (0
// when it is gone).
func procMem(pid int) (rss, hwm, anon, file int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb << 10
		case "VmHWM:":
			hwm = kb << 10
		case "RssAnon:":
			anon = kb << 10
		case "RssFile:":
			file = kb << 10
		}
	}
	return rss, hwm, anon, file
}

var (
	plainOnce sync.Once
	plainBin  string
	plainErr  error
)

// plainBinary builds flechefs without the race detector (once per run),
// for the tests that measure the daemon's memory.
func plainBinary(t *testing.T) string {
	t.Helper()
	plainOnce.Do(func() {
		plainBin = filepath.Join(mounttest.Base(), "flechefs-norace")
		out, err := exec.Command("go", "build", "-o", plainBin, "github.com/flechefs/flechefs/cmd/flechefs").CombinedOutput()
		if err != nil {
			plainErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if plainErr != nil {
		t.Fatal(plainErr)
	}
	return plainBin
}

// errnoName is err's errno name for the logs, "ok" for nil.
func errnoName(err error) string {
	var en syscall.Errno
	var pe *os.PathError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &pe) && errors.As(err, &en):
		return pe.Op + ": " + en.Error()
	case errors.As(err, &en):
		return en.Error()
	}
	return err.Error()
}
