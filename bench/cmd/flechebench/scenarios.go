package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const mib = 1 << 20

var readBuf = make([]byte, 1<<20)

// readFile reads path to its end with 1 MiB reads and returns its size.
func readFile(path string) (int64, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return 0, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	var n int64
	for {
		m, err := syscall.Read(fd, readBuf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return n, &os.PathError{Op: "read", Path: path, Err: err}
		}
		if m == 0 {
			return n, nil
		}
		n += int64(m)
	}
}

// readSet reads every name under dir, in order, and checks the sizes.
func readSet(dir string, names []string, size int64) (time.Duration, error) {
	start := time.Now()
	for _, n := range names {
		got, err := readFile(filepath.Join(dir, n))
		if err != nil {
			return 0, err
		}
		if got != size {
			return 0, fmt.Errorf("%s: read %d bytes, want %d", n, got, size)
		}
	}
	return time.Since(start), nil
}

// readAll runs the three read scenarios of one state (cold, warm,
// remount) and records files/s and MiB/s.
//
// A warm pass (the client's caches hold everything) is a copy out of the
// kernel's page cache, whose speed depends on where the kernel put the
// pages, so the read that filled them must be the same for every client:
// each warm measurement drops the files' cache (posix_fadvise DONTNEED)
// and fills it with one untimed read, warmFills times, and times
// warmPasses passes after each fill. The fastest pass counts: a pass is
// short, and a shared machine slows some.
func (b *bench) readAll(c client, state string) error {
	ds := b.ds
	warm := state == "warm"
	fills, passes := 1, 1
	if warm {
		fills, passes = warmFills, warmPasses
	}
	best := func(names []string, size int64) (time.Duration, error) {
		var min time.Duration
		for range fills {
			if warm {
				if err := dropFileCache(c.root(), names); err != nil {
					return 0, fmt.Errorf("dropping the page cache: %w", err)
				}
				if _, err := readSet(c.root(), names, size); err != nil {
					return 0, err
				}
			}
			for range passes {
				d, err := readSet(c.root(), names, size)
				if err != nil {
					return 0, err
				}
				if min == 0 || d < min {
					min = d
				}
			}
		}
		return min, nil
	}
	d, err := best(ds.small, smallSize)
	if err != nil {
		return fmt.Errorf("%s %s small: %w", c.name(), state, err)
	}
	b.res.add(c.name(), state+".small", "files/s", float64(len(ds.small))/d.Seconds())
	if d, err = best(ds.medium, mediumSize); err != nil {
		return fmt.Errorf("%s %s medium: %w", c.name(), state, err)
	}
	b.res.add(c.name(), state+".medium", "MiB/s", float64(len(ds.medium)*mediumSize)/mib/d.Seconds())
	if d, err = best([]string{ds.large}, ds.lsize); err != nil {
		return fmt.Errorf("%s %s large: %w", c.name(), state, err)
	}
	b.res.add(c.name(), state+".large", "MiB/s", float64(ds.lsize)/mib/d.Seconds())
	return nil
}

// statSet lstats every name and checks existence; it returns ops/s.
func statSet(dir string, names []string, exist bool) (float64, error) {
	var st syscall.Stat_t
	start := time.Now()
	for _, n := range names {
		err := syscall.Lstat(filepath.Join(dir, n), &st)
		switch {
		case exist && err != nil:
			return 0, fmt.Errorf("stat %s: %w", n, err)
		case !exist && err != syscall.ENOENT:
			return 0, fmt.Errorf("stat of missing %s: %v, want ENOENT", n, err)
		}
	}
	return float64(len(names)) / time.Since(start).Seconds(), nil
}

func (b *bench) statAll(c client) error {
	r, err := statSet(c.root(), b.ds.small, true)
	if err != nil {
		return fmt.Errorf("%s: %w", c.name(), err)
	}
	b.res.add(c.name(), "stat.existing", "ops/s", r)
	missing := make([]string, nSmall)
	for i := range missing {
		missing[i] = newKey()
	}
	if r, err = statSet(c.root(), missing, false); err != nil {
		return fmt.Errorf("%s: %w", c.name(), err)
	}
	b.res.add(c.name(), "stat.missing", "ops/s", r)
	return nil
}

// writeFile creates path, writes data in 1 MiB writes and closes it.
func writeFile(path string, data []byte) error {
	fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return &os.PathError{Op: "create", Path: path, Err: err}
	}
	for off := 0; off < len(data); {
		n, err := syscall.Write(fd, data[off:min(off+mib, len(data))])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			syscall.Close(fd)
			return &os.PathError{Op: "write", Path: path, Err: err}
		}
		off += n
	}
	if err := syscall.Close(fd); err != nil {
		return &os.PathError{Op: "close", Path: path, Err: err}
	}
	return nil
}

// waitRemote waits until every name is on the remote with its size: the
// data is there, whatever the client still does (sum files, mtimes).
func (b *bench) waitRemote(names []string, size int64, timeout time.Duration) error {
	return waitFor(names, "files not on the remote", timeout, func(name string) bool {
		var st syscall.Stat_t
		return syscall.Lstat(filepath.Join(b.ds.remote, name), &st) == nil && st.Size == size
	})
}

// waitFor polls every 10 ms until there says every name is there, at most
// timeout. It asks about the names in order, from the first one missing:
// looking at all 2000 every 10 ms took a quarter of a core from the
// clients measured. While the names it asks about are there, it asks
// about twice as many at once the next time (up to 64, in parallel): one
// at a time, catching up with 2000 objects already in the bucket took
// SeaweedFS's HEADs about a second after the last upload, which the figure
// then counted. there is called from several goroutines.
func waitFor(names []string, missing string, timeout time.Duration, there func(name string) bool) error {
	left := names
	deadline := time.Now().Add(timeout)
	for {
		for n := 1; len(left) > 0; n = min(2*n, 64) {
			ok := make([]bool, min(n, len(left)))
			var wg sync.WaitGroup
			for i := range ok {
				wg.Go(func() { ok[i] = there(left[i]) })
			}
			wg.Wait()
			i := 0
			for i < len(ok) && ok[i] {
				i++
			}
			left = left[i:]
			if i < len(ok) {
				break
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d %s after %v", len(left), len(names), missing, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// writeSink is where the write scenarios' values must arrive, and the
// names of their metrics: PREFIX.small.close, PREFIX.small.WHERE, ...
type writeSink struct {
	prefix, where string
	// wait waits until every name is there with its size; nil: the client
	// has no remote (native, memfs).
	wait   func(names []string, size int64, timeout time.Duration) error
	remove func(names []string)
}

// writeAll runs the write scenarios of the main phase, the remote being
// sshd's directory.
func (b *bench) writeAll(c client, remote bool) error {
	s := writeSink{prefix: "write", where: "remote", remove: b.ds.removeWritten}
	if remote {
		s.wait = b.waitRemote
	}
	return b.writeTo(c, s)
}

// writeTo runs the write scenarios: 2000 small files, then the large one,
// each timed until the last close returns and, with s.wait, until the
// data is at s. It removes what it wrote afterwards.
func (b *bench) writeTo(c client, s writeSink) error {
	ds := b.ds
	names := make([]string, nSmall)
	for i := range names {
		names[i] = newKey()
	}
	large := newKey()
	defer s.remove(append(names, large))
	// Each write starts with no dirty data of the scenarios before it:
	// their writeback throttled whichever client came next (native and
	// memfs writes of the 512 MiB file took 0.13-1.60 s in one run).
	syscall.Sync()
	start := time.Now()
	for _, n := range names {
		if err := writeFile(filepath.Join(c.root(), n), ds.smallData); err != nil {
			return fmt.Errorf("%s: %w", c.name(), err)
		}
	}
	b.res.add(c.name(), s.prefix+".small.close", "s", time.Since(start).Seconds())
	if s.wait != nil {
		if err := s.wait(names, smallSize, 10*time.Minute); err != nil {
			return fmt.Errorf("%s: %w", c.name(), err)
		}
		b.res.add(c.name(), s.prefix+".small."+s.where, "s", time.Since(start).Seconds())
	}
	c.settle()
	if f, ok := c.(*flechefsClient); ok {
		f.waitQueue(time.Minute)
	}
	syscall.Sync()
	start = time.Now()
	if err := writeFile(filepath.Join(c.root(), large), ds.largeData); err != nil {
		return fmt.Errorf("%s: %w", c.name(), err)
	}
	b.res.add(c.name(), s.prefix+".large.close", "s", time.Since(start).Seconds())
	if s.wait != nil {
		if err := s.wait([]string{large}, ds.lsize, 10*time.Minute); err != nil {
			return fmt.Errorf("%s: %w", c.name(), err)
		}
		b.res.add(c.name(), s.prefix+".large."+s.where, "s", time.Since(start).Seconds())
	}
	c.settle()
	return nil
}

// verify reads a few entries through c and checks their SHA-256 against
// their names (untimed).
func (b *bench) verify(c client) error {
	for _, n := range []string{b.ds.small[0], b.ds.small[len(b.ds.small)-1], b.ds.medium[0], b.ds.large} {
		f, err := os.Open(filepath.Join(c.root(), n))
		if err != nil {
			return err
		}
		h := sha256.New()
		_, err = io.CopyBuffer(h, f, make([]byte, mib))
		f.Close()
		if err != nil {
			return err
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != n {
			return fmt.Errorf("%s: %s has sha256 %s", c.name(), n, got)
		}
	}
	return nil
}

// --- OpenSSH sftp: the transfer ceiling ---

func (b *bench) sftpBatch(batch string) (time.Duration, error) {
	s := b.srv
	cmd := exec.Command("sftp", "-q", "-b", "-", "-i", s.IdentityFile,
		"-o", "UserKnownHostsFile="+s.KnownHosts, "-o", "StrictHostKeyChecking=yes",
		"-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-c", cipher,
		"-P", strconv.Itoa(s.Port), s.User+"@127.0.0.1")
	cmd.Stdin = strings.NewReader(batch)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("sftp: %v\n%s", err, out)
	}
	return time.Since(start), nil
}

// sftpAll measures OpenSSH sftp get (to /dev/null) and put of the same
// sets; the setup of a session (an empty batch) is subtracted.
func (b *bench) sftpAll() error {
	ds := b.ds
	setup := time.Duration(1 << 62)
	for range 2 {
		d, err := b.sftpBatch("pwd\n")
		if err != nil {
			return err
		}
		setup = min(setup, d)
	}
	get := func(names []string) (time.Duration, error) {
		var sb strings.Builder
		for _, n := range names {
			fmt.Fprintf(&sb, "get %s /dev/null\n", filepath.Join(ds.remote, n))
		}
		d, err := b.sftpBatch(sb.String())
		return max(d-setup, time.Millisecond), err
	}
	d, err := get(ds.small)
	if err != nil {
		return err
	}
	b.res.add("sftp", "cold.small", "files/s", float64(nSmall)/d.Seconds())
	if d, err = get(ds.medium); err != nil {
		return err
	}
	b.res.add("sftp", "cold.medium", "MiB/s", float64(nMedium*mediumSize)/mib/d.Seconds())
	if d, err = get([]string{ds.large}); err != nil {
		return err
	}
	b.res.add("sftp", "cold.large", "MiB/s", float64(ds.lsize)/mib/d.Seconds())

	names := make([]string, nSmall)
	var sb strings.Builder
	for i := range names {
		names[i] = newKey()
		fmt.Fprintf(&sb, "put %s %s\n", ds.localSmall[i], filepath.Join(ds.remote, names[i]))
	}
	large := newKey()
	defer ds.removeWritten(append(names, large))
	if d, err = b.sftpBatch(sb.String()); err != nil {
		return err
	}
	b.res.add("sftp", "write.small.close", "s", (d - setup).Seconds())
	b.res.add("sftp", "write.small.remote", "s", (d - setup).Seconds())
	if d, err = b.sftpBatch(fmt.Sprintf("put %s %s\n", ds.localLarge, filepath.Join(ds.remote, large))); err != nil {
		return err
	}
	b.res.add("sftp", "write.large.close", "s", (d - setup).Seconds())
	b.res.add("sftp", "write.large.remote", "s", (d - setup).Seconds())
	return nil
}

// The warm read's fills and timed passes after each (readAll).
const (
	warmFills  = 3
	warmPasses = 2
)

// dropFileCache evicts the page cache of the named files (native cold
// reads, the fills of warm reads).
func dropFileCache(dir string, names []string) error {
	const posixFadvDontneed = 4
	for _, n := range names {
		f, err := os.Open(filepath.Join(dir, n))
		if err != nil {
			return err
		}
		_, _, e := syscall.Syscall6(syscall.SYS_FADVISE64, f.Fd(), 0, 0, posixFadvDontneed, 0, 0)
		f.Close()
		if e != 0 {
			return e
		}
	}
	return nil
}

var errSkip = errors.New("skipped")

// probeName is a digest no entry has.
var probeName = strings.Repeat("0f", 32)

// connect makes a just-mounted client reach its server before anything is
// timed: a stat of a missing name. sshfs connects before its mount returns;
// flechefs and rclone connect at the first use, which over the slow link
// is half a second of handshakes that would otherwise count as reading.
func connect(c client) error {
	_, err := os.Lstat(filepath.Join(c.root(), probeName))
	if err == nil || errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return fmt.Errorf("%s: connecting: %w", c.name(), err)
}
