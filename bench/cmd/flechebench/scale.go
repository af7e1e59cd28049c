package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/bolt"
)

// scaleValue is the size of every value of the scale database.
const scaleValue = 16

func scaleKey(i int) string {
	h := sha256.Sum256(fmt.Appendf(nil, "flechebench scale %d", i))
	return hex.EncodeToString(h[:])
}

// scaleDB returns the path of a bbolt tier holding n entries, building it
// the first time (through the bolt tier's own Put, many at once so that
// the group commit batches them) and keeping it next to the work
// directory for later runs.
func (b *bench) scaleDB(n int) (string, error) {
	dir := b.opt.work + "-cache"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, fmt.Sprintf("scale-%d.db", n))
	done := path + ".done"
	if _, err := os.Stat(done); err == nil {
		return path, nil
	}
	os.Remove(path)
	start := time.Now()
	t, err := bolt.Open(path, bolt.Options{Limit: 64 << 30})
	if err != nil {
		return "", err
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	val := bytes.Repeat([]byte("v"), scaleValue)
	for range 1000 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				k := digest.MustParse(scaleKey(i))
				_, err := t.Put(context.Background(), k, bytes.NewReader(val), tiers.Meta{Size: scaleValue})
				if err != nil {
					select {
					case errc <- err:
					default:
					}
					return
				}
				if i%100_000 == 0 && i > 0 {
					b.logf("scale: %d entries in %v", i, time.Since(start).Round(time.Second))
				}
			}
		}()
	}
	wg.Wait()
	if err := t.Close(); err != nil {
		return "", err
	}
	select {
	case err := <-errc:
		return "", err
	default:
	}
	fi, _ := os.Stat(path)
	b.logf("scale: built %d entries (%d MiB) in %v", n, fi.Size()>>20, time.Since(start).Round(time.Second))
	return path, os.WriteFile(done, nil, 0o644)
}

// scalePhase mounts flechefs over the big database and measures the time
// from the start of `flechefs mount` to the mount, then the latency of
// lookups (stat of names the kernel has not seen) and of open+read of hits.
func (b *bench) scalePhase() error {
	n := b.opt.scaleN
	path, err := b.scaleDB(n)
	if err != nil {
		return fmt.Errorf("scale: %w", err)
	}
	for r := range b.opt.repeats {
		// The database file's pages leave the page cache: the mount and the
		// first lookups read from the disk.
		if err := dropFileCache(filepath.Dir(path), []string{filepath.Base(path)}); err != nil {
			return err
		}
		c := b.newFlechefs("flechefs-scale")
		c.db = path
		b.defer_(c.kill)
		if err := os.MkdirAll(filepath.Dir(c.cfgPath), 0o755); err != nil {
			return err
		}
		cfg := fmt.Sprintf("spool_dir = %q\n[[tier]]\nkind = \"memory\"\nsize = \"256MiB\"\n[[tier]]\nkind = \"bolt\"\npath = %q\nsize = \"64GiB\"\n", c.spool, path)
		if err := os.WriteFile(c.cfgPath, []byte(cfg), 0o644); err != nil {
			return err
		}
		start := time.Now()
		if err := c.run(nil, b.opt.flechefs, "mount", "--config", c.cfgPath, c.mnt); err != nil {
			return err
		}
		b.res.add("flechefs", "scale.mount", "s", time.Since(start).Seconds())
		rng := rand.New(rand.NewPCG(uint64(r), 7))
		stat := make([]time.Duration, 0, 2000)
		var st syscall.Stat_t
		for range 2000 {
			p := filepath.Join(c.mnt, scaleKey(rng.IntN(n)))
			t := time.Now()
			if err := syscall.Lstat(p, &st); err != nil {
				c.stop()
				return fmt.Errorf("scale: stat %s: %w", p, err)
			}
			stat = append(stat, time.Since(t))
		}
		read := make([]time.Duration, 0, 2000)
		for range 2000 {
			p := filepath.Join(c.mnt, scaleKey(rng.IntN(n)))
			t := time.Now()
			got, err := readFile(p)
			if err != nil || got != scaleValue {
				c.stop()
				return fmt.Errorf("scale: read %s: %d bytes, %v", p, got, err)
			}
			read = append(read, time.Since(t))
		}
		if err := c.stop(); err != nil {
			return err
		}
		b.res.add("flechefs", "scale.stat.p50", "ms", pct(stat, 50))
		b.res.add("flechefs", "scale.stat.p99", "ms", pct(stat, 99))
		b.res.add("flechefs", "scale.read.p50", "ms", pct(read, 50))
		b.res.add("flechefs", "scale.read.p99", "ms", pct(read, 99))
		b.logf("scale %d: mount %v, stat p99 %.3f ms, open+read p99 %.3f ms", r+1,
			time.Duration(b.res.m["flechefs\x00scale.mount"].vals[r]*1e9).Round(time.Millisecond), pct(stat, 99), pct(read, 99))
	}
	return nil
}

// pct is the p-th percentile of ds, in milliseconds.
func pct(ds []time.Duration, p int) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := min(len(s)-1, (len(s)*p+99)/100-1)
	return s[max(i, 0)].Seconds() * 1000
}
