package faults

// Concurrency: readers, writers and a remover on overlapping keys through
// a mount with a remote, with every read checked as it happens.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flechefs/flechefs/internal/mounttest"
	"github.com/flechefs/flechefs/internal/sshdtest"
)

// TestStressOverlappingKeys runs 6 readers, 4 writers and a remover on 40
// shared keys for 60 s (5 s with -short) through a node with RAM, bbolt
// and SFTP tiers. Every value names its key and ends with its own SHA-256,
// so each read is checked on its own: a read returns a complete published
// value for that key, or fails with ENOENT (absent, or removed while it
// read), never anything else. Writers race each other (first writer wins)
// but not the remover, so each writer can tell by reading back whether its
// publish won: at the end attempts = won + dropped + failed, the writers'
// count of dropped values equals the daemon's dropped_publishes, no publish
// failed and none was lost, `flechefs sync` drains the queue, the remote
// and the mount hold the same values, every remote file matches its sum
// file, and the bbolt file checks clean.
func TestStressOverlappingKeys(t *testing.T) {
	const (
		nReaders, nWriters, nKeys = 6, 4, 40
	)
	dur := 60 * time.Second
	if testing.Short() {
		dur = 5 * time.Second
	}
	remote := sshdtest.Start(t)
	n := mounttest.NewNode(t, "stress", remote, mounttest.Opts{})
	keys := make([]string, nKeys)
	for i := range keys {
		keys[i] = mounttest.Key(fmt.Sprint("stress-", i))
	}
	// Writers hold a key's read lock from open to read-back, the remover
	// its write lock: writers race each other, never a remove.
	locks := make([]sync.RWMutex, nKeys)

	var (
		attempts, won, dropped, failed, refused atomic.Int64
		reads, readsOK, readsAbsent, readsCut   atomic.Int64
		removes, removesOK                      atomic.Int64
		readBytes                               atomic.Int64
		errMu                                   sync.Mutex
		errs                                    []string
	)
	fail := func(format string, a ...any) {
		errMu.Lock()
		defer errMu.Unlock()
		if len(errs) < 20 {
			errs = append(errs, fmt.Sprintf(format, a...))
		}
	}
	deadline := time.Now().Add(dur)
	var wg sync.WaitGroup
	for w := range nWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 99))
			for seq := 0; time.Now().Before(deadline); seq++ {
				i := rng.IntN(nKeys)
				size := 1 + rng.IntN(64<<10)
				if rng.IntN(10) == 0 {
					size = 1<<20 + rng.IntN(2<<20) // spills to the spool
				}
				val := stressValue(keys[i], w, seq, seeded(uint64(w)<<40|uint64(seq), size))
				locks[i].RLock()
				// Half the writers linger before close, so that writers of
				// the same key overlap and race to publish.
				linger := time.Duration(rng.IntN(2)*rng.IntN(5000)) * time.Microsecond
				switch outcome, err := stressWrite(n.Path(keys[i]), val, rng.IntN(4) == 0, linger); outcome {
				case "refused":
					refused.Add(1)
				case "failed":
					attempts.Add(1)
					failed.Add(1)
					fail("writer %d: publish of %s failed: %v", w, keys[i][:8], err)
				case "closed":
					attempts.Add(1)
					got, err := os.ReadFile(n.Path(keys[i]))
					switch {
					case err != nil:
						fail("writer %d: read-back of %s after a successful close: %v (a lost publish)", w, keys[i][:8], err)
					case bytes.Equal(got, val):
						won.Add(1)
					default:
						if verr := stressCheck(keys[i], got); verr != nil {
							fail("writer %d: read-back of %s: %v", w, keys[i][:8], verr)
						}
						dropped.Add(1)
					}
				}
				locks[i].RUnlock()
			}
		}()
	}
	for r := range nReaders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(r), 77))
			slow := r%2 == 1 // half the readers read in small pieces, with pauses
			for time.Now().Before(deadline) {
				k := keys[rng.IntN(nKeys)]
				reads.Add(1)
				data, err := stressRead(n.Path(k), slow)
				readBytes.Add(int64(len(data)))
				switch {
				case err == nil:
					if verr := stressCheck(k, data); verr != nil {
						fail("reader %d: %s: %v", r, k[:8], verr)
					}
					readsOK.Add(1)
				case errors.Is(err, os.ErrNotExist) && len(data) == 0:
					readsAbsent.Add(1)
				case errors.Is(err, syscall.ENOENT):
					// Removed while it read: what came before is the
					// start of a value written for this key.
					if verr := stressPrefix(k, data); verr != nil {
						fail("reader %d: %s: read cut by ENOENT after %d bytes: %v", r, k[:8], len(data), verr)
					}
					readsCut.Add(1)
				default:
					fail("reader %d: %s: %v after %d bytes", r, k[:8], err, len(data))
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(5, 5))
		for time.Now().Before(deadline) {
			time.Sleep(time.Duration(20+rng.IntN(60)) * time.Millisecond)
			i := rng.IntN(nKeys)
			locks[i].Lock()
			removes.Add(1)
			err := os.Remove(n.Path(keys[i]))
			if err == nil {
				removesOK.Add(1)
			} else if !errors.Is(err, os.ErrNotExist) {
				fail("remove %s: %v", keys[i][:8], err)
			}
			locks[i].Unlock()
		}
	}()
	wg.Wait()
	for _, e := range errs {
		t.Error(e)
	}
	st := n.Stats()
	t.Logf("%v: %d publishes attempted = %d won + %d dropped + %d failed; %d opens refused (key existed); daemon dropped_publishes %d",
		dur, attempts.Load(), won.Load(), dropped.Load(), failed.Load(), refused.Load(), st.DroppedPublishes)
	t.Logf("%d reads: %d complete (%d MiB), %d absent, %d cut by a remove (ENOENT); %d removes (%d of present keys)",
		reads.Load(), readsOK.Load(), readBytes.Load()>>20, readsAbsent.Load(), readsCut.Load(), removes.Load(), removesOK.Load())
	if attempts.Load() != won.Load()+dropped.Load()+failed.Load() {
		t.Errorf("attempts %d != won %d + dropped %d + failed %d", attempts.Load(), won.Load(), dropped.Load(), failed.Load())
	}
	if dropped.Load() != st.DroppedPublishes {
		t.Errorf("writers saw %d dropped publishes, the daemon counted %d", dropped.Load(), st.DroppedPublishes)
	}
	if failed.Load() != 0 {
		t.Errorf("%d publishes failed with no fault injected", failed.Load())
	}
	if won.Load() == 0 || dropped.Load() == 0 || readsOK.Load() == 0 || removesOK.Load() == 0 {
		t.Errorf("the workload did not exercise every path: won %d, dropped %d, reads %d, removes %d",
			won.Load(), dropped.Load(), readsOK.Load(), removesOK.Load())
	}

	start := time.Now()
	n.Sync(2 * time.Minute)
	st = n.Stats()
	t.Logf("sync drained in %v: %d uploaded (%d MiB), %d upload errors, %d conflicts, queue %d",
		time.Since(start).Round(time.Millisecond), st.Uploaded, st.UploadedBytes>>20, st.UploadErrors, st.Conflicts, st.Queue)
	if st.Queue != 0 || st.Unpersisted != 0 {
		t.Errorf("after sync: queue %d, unpersisted %d", st.Queue, st.Unpersisted)
	}

	// The remote and the mount agree, and every remote file matches its
	// sum file and checks on its own.
	onRemote := 0
	for _, k := range keys {
		rv, rerr := os.ReadFile(filepath.Join(remote.Dir, k))
		mv, merr := os.ReadFile(n.Path(k))
		switch {
		case errors.Is(rerr, os.ErrNotExist) && errors.Is(merr, os.ErrNotExist):
			continue
		case rerr != nil || merr != nil:
			t.Errorf("%s: remote %v, mount %v (tiers %q, upload %q)", k[:8], rerr, merr,
				xattrOr(n.Path(k), "user.flechefs.tiers"), xattrOr(n.Path(k), "user.flechefs.upload"))
			continue
		}
		onRemote++
		if err := stressCheck(k, rv); err != nil {
			t.Errorf("remote %s: %v", k[:8], err)
		}
		if !bytes.Equal(rv, mv) {
			t.Errorf("%s: the remote holds %d bytes, the mount %d other bytes", k[:8], len(rv), len(mv))
		}
		sum, size, err := readSum(remote.Dir, k)
		if err != nil || sum != mounttest.Sum(rv) || size != int64(len(rv)) {
			t.Errorf("remote %s: sum file %s %d (%v), data %s %d", k[:8], sum, size, err, mounttest.Sum(rv), len(rv))
		}
	}
	t.Logf("%d of %d keys present at the end, the same on the remote and the mount", onRemote, nKeys)
	n.Stop()
	tr := openBoltRO(t, n.Bolt)
	defer tr.Close()
	if err := tr.Check(); err != nil {
		t.Errorf("bolt Check after the stress: %v", err)
	}
}

// stressValue is a value that names its key and writer and ends with the
// SHA-256 of what precedes it, so that any read can be checked alone.
func stressValue(key string, w, seq int, payload []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "flechefs-stress key=%s w=%d seq=%d len=%d\n", key, w, seq, len(payload))
	b.Write(payload)
	s := sha256.Sum256(b.Bytes())
	b.WriteString(hex.EncodeToString(s[:]) + "\n")
	return b.Bytes()
}

// stressCheck tells whether data is a complete value made by stressValue
// for key.
func stressCheck(key string, data []byte) error {
	nl := bytes.IndexByte(data, '\n')
	if nl < 0 {
		return fmt.Errorf("%d bytes without a header", len(data))
	}
	var k string
	var w, seq, n int
	if _, err := fmt.Sscanf(string(data[:nl]), "flechefs-stress key=%s w=%d seq=%d len=%d", &k, &w, &seq, &n); err != nil {
		return fmt.Errorf("header %q: %v", clipBytes(data[:nl]), err)
	}
	if k != key {
		return fmt.Errorf("the value of key %s is under %s", k, key)
	}
	if want := nl + 1 + n + 65; len(data) != want {
		return fmt.Errorf("value of writer %d seq %d: %d bytes, want %d (partial or padded)", w, seq, len(data), want)
	}
	body, trailer := data[:len(data)-65], data[len(data)-65:]
	s := sha256.Sum256(body)
	if string(trailer) != hex.EncodeToString(s[:])+"\n" {
		return fmt.Errorf("value of writer %d seq %d: checksum mismatch (corrupt)", w, seq)
	}
	return nil
}

// stressPrefix tells whether data is the start of a value stressValue made
// for key: the header, when complete, says which writer and payload, and
// the value is made again to compare.
func stressPrefix(key string, data []byte) error {
	head := []byte("flechefs-stress key=" + key + " ")
	nl := bytes.IndexByte(data, '\n')
	if nl < 0 {
		if !bytes.HasPrefix(data, head) && !bytes.HasPrefix(head, data) {
			return fmt.Errorf("starts with %q", clipBytes(data))
		}
		return nil
	}
	var k string
	var w, seq, n int
	if _, err := fmt.Sscanf(string(data[:nl]), "flechefs-stress key=%s w=%d seq=%d len=%d", &k, &w, &seq, &n); err != nil || k != key {
		return fmt.Errorf("header %q (%v)", clipBytes(data[:nl]), err)
	}
	full := stressValue(key, w, seq, seeded(uint64(w)<<40|uint64(seq), n))
	if !bytes.HasPrefix(full, data) {
		return fmt.Errorf("not the start of the value of writer %d seq %d", w, seq)
	}
	return nil
}

func clipBytes(b []byte) string {
	if len(b) > 100 {
		return string(b[:100]) + "..."
	}
	return string(b)
}

// stressWrite publishes val at path, writing in pieces of up to 256 KiB,
// with an fsync before close when durable, and waits linger before the
// close. It returns "refused" when the
// open failed because the key exists, "closed" when close returned 0 (the
// value won or was dropped), and "failed" with the error otherwise.
func stressWrite(path string, val []byte, durable bool, linger time.Duration) (string, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if errors.Is(err, os.ErrExist) || errors.Is(err, syscall.EACCES) {
		return "refused", err
	}
	if err != nil {
		return "failed", err
	}
	for off := 0; off < len(val); off += 256 << 10 {
		if _, err := f.Write(val[off:min(off+256<<10, len(val))]); err != nil {
			f.Close()
			return "failed", err
		}
	}
	if durable {
		if err := f.Sync(); err != nil {
			f.Close()
			return "failed", err
		}
	}
	time.Sleep(linger)
	if err := f.Close(); err != nil {
		return "failed", err
	}
	return "closed", nil
}

// stressRead reads a whole entry, in one go or in 16 KiB pieces with
// pauses, returning what it read and the first error.
func stressRead(path string, slow bool) ([]byte, error) {
	if !slow {
		return os.ReadFile(path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []byte
	buf := make([]byte, 16<<10)
	for {
		m, err := f.Read(buf)
		out = append(out, buf[:m]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		time.Sleep(200 * time.Microsecond)
	}
}

func xattrOr(path, name string) string {
	v, err := mounttest.XattrE(path, name)
	if err != nil {
		return err.Error()
	}
	return v
}

// TestRemoveWhileReadingFromBolt removes an entry that is served from the
// bbolt tier (too large for the RAM tier) while a descriptor is half way
// through it: the rest of the read returns the value's bytes or fails with
// ENOENT, never other bytes and never a short success.
func TestRemoveWhileReadingFromBolt(t *testing.T) {
	n := mounttest.NewNode(t, "rm-bolt", nil, mounttest.Opts{RAM: "1MiB"})
	k := mounttest.Key("rm-bolt")
	val := seeded(77, 4<<20)
	if err := writeEntry(n.Path(k), val, true); err != nil {
		t.Fatal(err)
	}
	n.Restart() // nothing in RAM or in the page cache
	f, err := os.Open(n.Path(k))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := make([]byte, 64<<10)
	if _, err := io.ReadFull(f, head); err != nil || !bytes.Equal(head, val[:len(head)]) {
		t.Fatalf("first 64 KiB: %v", err)
	}
	if err := os.Remove(n.Path(k)); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(f)
	got := append(head, rest...)
	switch {
	case err == nil && !bytes.Equal(got, val):
		t.Errorf("read after the remove succeeded with %d bytes that are not the value", len(got))
	case err != nil && !errors.Is(err, syscall.ENOENT):
		t.Errorf("read after the remove: %v", err)
	case err != nil && !bytes.Equal(got, val[:len(got)]):
		t.Errorf("the %d bytes before the error are not the value's", len(got))
	}
	t.Logf("reading on after the remove: %d of %d bytes, then %v", len(got), len(val), err)
}
