package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// memoryPhase mounts flechefs with a 64 MiB RAM tier (and bbolt and SFTP),
// fills the RAM tier (reading the small and medium files), writes a new
// 512 MiB entry, waits for its upload, reads it back (from
// bbolt: it is over the RAM tier's admission limit) and reads the remote's
// 512 MiB file cold (fetched to a spool, promoted to bbolt), then reports
// the daemon's VmHWM, the kernel's peak of its resident set.
func (b *bench) memoryPhase() error {
	for r := range b.opt.repeats {
		c := b.newFlechefs("flechefs-mem")
		c.ramSize = "64MiB"
		b.defer_(c.kill)
		if err := c.start(true); err != nil {
			return err
		}
		smp := sampleRSS(c.pid())
		k := newKey()
		var steps []string
		step := func(what string) {
			st := procStatus(c.pid(), "VmHWM", "RssAnon", "RssFile")
			steps = append(steps, fmt.Sprintf("%s: hwm %d anon %d file %d", what, st["VmHWM"]>>20, st["RssAnon"]>>20, st["RssFile"]>>20))
		}
		err := func() error {
			defer b.ds.removeWritten([]string{k})
			// Fill the RAM tier first: the 2000 small and 8 medium files
			// are 64 MiB.
			if _, err := readSet(c.mnt, b.ds.small, smallSize); err != nil {
				return err
			}
			if _, err := readSet(c.mnt, b.ds.medium, mediumSize); err != nil {
				return err
			}
			c.settle()
			step("RAM tier filled")
			if err := writeFile(filepath.Join(c.mnt, k), b.ds.largeData); err != nil {
				return err
			}
			step("written")
			if err := b.waitRemote([]string{k}, b.ds.lsize, 10*time.Minute); err != nil {
				return err
			}
			c.settle()
			step("uploaded and persisted")
			if _, err := readSet(c.mnt, []string{k}, b.ds.lsize); err != nil {
				return err
			}
			step("read back")
			if _, err := readSet(c.mnt, []string{b.ds.large}, b.ds.lsize); err != nil {
				return err
			}
			c.settle()
			step("remote 512 MiB read and promoted")
			return nil
		}()
		b.logf("memory %d: MiB after each step: %s", r+1, strings.Join(steps, "; "))
		hwm := vmHWM(c.pid())
		peak := smp.stop()
		if serr := c.stop(); err == nil {
			err = serr
		}
		if err != nil {
			return fmt.Errorf("memory phase: %w", err)
		}
		b.res.add("flechefs", "memory.hwm", "MiB", float64(hwm)/mib)
		b.res.add("flechefs", "memory.peak.anon", "MiB", float64(peak.anon)/mib)
		b.res.add("flechefs", "memory.peak.file", "MiB", float64(peak.file)/mib)
		b.logf("memory %d: VmHWM %d MiB (sampled peaks: anon %d MiB, file %d MiB)", r+1, hwm>>20, peak.anon>>20, peak.file>>20)
	}
	return nil
}

// procStatus reads fields (in kB) of /proc/PID/status, in bytes.
func procStatus(pid int, fields ...string) map[string]int64 {
	out := map[string]int64{}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		for _, want := range fields {
			if k == want {
				n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
				out[k] = n << 10
			}
		}
	}
	return out
}

func vmHWM(pid int) int64 { return procStatus(pid, "VmHWM")["VmHWM"] }

type rssPeak struct{ anon, file int64 }

type sampler struct {
	stopc chan struct{}
	wg    sync.WaitGroup
	peak  rssPeak
}

// sampleRSS samples the anonymous and file-backed resident sets of pid
// every 20 ms until stop.
func sampleRSS(pid int) *sampler {
	s := &sampler{stopc: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			st := procStatus(pid, "RssAnon", "RssFile")
			s.peak.anon = max(s.peak.anon, st["RssAnon"])
			s.peak.file = max(s.peak.file, st["RssFile"])
			select {
			case <-s.stopc:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *sampler) stop() rssPeak {
	close(s.stopc)
	s.wg.Wait()
	return s.peak
}
