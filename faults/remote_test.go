package faults

// A remote that goes away mid-read and mid-upload, that is down when the
// mount starts, and that returns garbage.

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/mounttest"
	"github.com/flechefs/flechefs/internal/remotetest"
	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers/sftp"
)

// bound is how long an operation on an unreachable remote may take: the
// tests set remote_timeout (and the tier's timeout) to 5s. What the bound
// tells apart is a request that gives up after the timeout from one that
// waits for TCP (minutes) or for ever, or that waits the timeout once per
// retry; the slack of one more timeout covers the race detector on a
// loaded 2-core machine (make test passes while a second one runs).
const (
	remoteTimeout = 5 * time.Second
	bound         = 2 * remoteTimeout
)

// putRemote stores data under key in a remote root the way the sftp tier
// does: the data file and .flechefs/sums/<key>.
func putRemote(t testing.TB, root, key string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(root, ".flechefs", "sums"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, key), data, 0o644); err != nil {
		t.Fatal(err)
	}
	writeSum(t, root, key, mounttest.Sum(data), int64(len(data)))
}

func writeSum(t testing.TB, root, key, sum string, size int64) {
	t.Helper()
	ds, err := digest.ParseSum(sum)
	if err == nil {
		err = sftp.WriteLocalSum(root, key, sftp.SumRecord{Sum: ds, Size: size, Created: time.Now()})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// garbleSum replaces key's sum record with a regular file holding b (the
// earlier format) or, when link is set, with a symlink to b.
func garbleSum(root, key, b string, link bool) {
	p := filepath.Join(root, ".flechefs", "sums", key)
	os.Remove(p)
	if link {
		os.Symlink(b, p)
	} else {
		os.WriteFile(p, []byte(b), 0o644)
	}
}

// readSum reads the sum record of key.
func readSum(root, key string) (sum string, size int64, err error) {
	r, err := sftp.LocalSum(root, key)
	return r.Sum.String(), r.Size, err
}

// verifyRemote checks a remote root against the entries a node shows
// (key → sha256): each is on the remote with the same bytes and a sum file
// that says so, the remote holds nothing else at its top, and every sum
// file has its data file. It returns the number of files left in
// .flechefs/tmp (leftovers of uploads cut short; removed after an hour).
func verifyRemote(t *testing.T, root string, want map[string]string) int {
	t.Helper()
	ents, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range ents {
		name := e.Name()
		if name == ".flechefs" {
			continue
		}
		if !e.Type().IsRegular() {
			t.Errorf("remote: %s is not a regular file (%v)", name, e.Type())
			continue
		}
		wantSum, ok := want[name]
		if !ok {
			t.Errorf("remote: %s is not an entry of the node", name)
			continue
		}
		seen[name] = true
		sum, size, err := readAll(filepath.Join(root, name))
		if err != nil || sum != wantSum {
			t.Errorf("remote: %s holds sha256 %s, the node %s (%v)", name[:12], sum, wantSum, err)
			continue
		}
		ss, sz, err := readSum(root, name)
		if err != nil || ss != sum || sz != size {
			t.Errorf("remote: the sum file of %s says %s %d, the data is %s %d (%v)", name[:12], ss, sz, sum, size, err)
		}
	}
	for k := range want {
		if !seen[k] {
			t.Errorf("remote: %s is missing after sync", k[:12])
		}
	}
	sums, _ := os.ReadDir(filepath.Join(root, ".flechefs", "sums"))
	for _, e := range sums {
		if _, err := os.Stat(filepath.Join(root, e.Name())); err != nil {
			t.Errorf("remote: sum file %s without data: %v", e.Name(), err)
		}
	}
	tmp, _ := os.ReadDir(filepath.Join(root, ".flechefs", "tmp"))
	return len(tmp)
}

// verifyStore checks a remote against the entries a node shows (key →
// sha256), as verifyRemote does for an sftp remote, whose leftovers in
// .flechefs/tmp it returns (0 for the others).
func verifyStore(t *testing.T, s remotetest.Store, want map[string]string) int {
	t.Helper()
	if s, ok := s.(*remotetest.SFTP); ok {
		return verifyRemote(t, s.Dir, want)
	}
	remotetest.Verify(t, s, want)
	return 0
}

// checkNoPartial checks that every value the remote holds is the complete
// value of its key (want: key → sha256), with a record that says so (or,
// on an sftp remote, no record yet), and returns how many it checked.
func checkNoPartial(t *testing.T, s remotetest.Store, want map[string]string) int {
	t.Helper()
	keys := s.Keys(t)
	for _, k := range keys {
		data, sum, err := s.Get(k)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since the listing: nothing partial
		}
		got := mounttest.Sum(data)
		switch {
		case err != nil:
			t.Errorf("%s: reading %s: %v", s.Kind(), k[:12], err)
		case got != want[k]:
			t.Errorf("%s: %s holds %d bytes with sha256 %s, not the value written (%s)", s.Kind(), k[:12], len(data), got, want[k])
		case sum == "" && s.Kind() == "sftp":
			// Renamed into place, its record still to come.
		case sum != got:
			t.Errorf("%s: %s: the record says %q, the data is %s", s.Kind(), k[:12], sum, got)
		}
	}
	return len(keys)
}

// timedRead opens path (unless f is given), reads from off to the end and
// returns the bytes' sum, how many were read, the error and the time taken.
func timedRead(path string, f *os.File, off int64) (string, int64, error, time.Duration) {
	start := time.Now()
	if f == nil {
		var err error
		if f, err = os.Open(path); err != nil {
			return "", 0, err, time.Since(start)
		}
		defer f.Close()
	}
	h := sha256.New()
	n, err := io.CopyBuffer(h, io.NewSectionReader(f, off, 1<<40), make([]byte, 1<<20))
	return fmt.Sprintf("%x", h.Sum(nil)), n, err, time.Since(start)
}

// isEIO reports whether err is EIO.
func isEIO(err error) bool { return errors.Is(err, syscall.EIO) }

// TestRemoteStopMidRead stops (or freezes) the server while a node streams
// a remote-only entry, 24 times, for every kind of remote: the read
// completes with the right bytes or fails with EIO within remote_timeout
// plus slack; opening another remote entry fails the same way; local
// entries keep being served; after the server is back the entry reads
// whole and correct, and nothing half-fetched was kept.
func TestRemoteStopMidRead(t *testing.T) {
	if testing.Short() {
		t.Skip("long fault suite; runs without -short")
	}
	remotetest.Each(t, testRemoteStopMidRead)
}

func testRemoteStopMidRead(t *testing.T, startStore func(testing.TB) remotetest.Store) {
	const trials, size = 24, 8 << 20
	srv := startStore(t)
	n := srv.Node(t, "reader", mounttest.Opts{RemoteTimeout: remoteTimeout.String()})
	// Remote-only entries: two per trial, placed on the server directly.
	type entry struct {
		key, sum string
		data     []byte
	}
	var remote []entry
	for i := range 2 * trials {
		d := content(11, 11, i, size)
		k := mounttest.Key(fmt.Sprintf("remote-only %d", i))
		srv.Put(t, k, d)
		remote = append(remote, entry{k, mounttest.Sum(d), d})
	}
	// A local entry, written through the mount and durable.
	local := content(12, 12, 12, 3<<20+5)
	lk := mounttest.Key("local")
	writeFile(t, n.Path(lk), local, true)
	n.Sync(time.Minute)

	var failed, completed, openFails int
	var maxFail, maxOpen, maxBack time.Duration
	for trial := range trials {
		a, b := remote[2*trial], remote[2*trial+1]
		freeze := trial%6 == 5
		// Look both up while the server is up: the kernel caches the names.
		// A lookup within the dial backoff after the restart (a failed
		// dial of the trial before) misses at once, so it is retried.
		for _, e := range []entry{a, b} {
			start := time.Now()
			for {
				_, err := os.Stat(n.Path(e.key))
				if err == nil {
					break
				}
				if time.Since(start) > 5*time.Second {
					t.Fatalf("trial %d: stat of a remote entry: %v", trial, err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		f, err := os.Open(n.Path(a.key))
		if err != nil {
			t.Fatalf("trial %d: open: %v", trial, err)
		}
		head := make([]byte, 256<<10)
		if _, err := io.ReadFull(f, head); err != nil || !bytes.Equal(head, a.data[:len(head)]) {
			t.Fatalf("trial %d: first 256 KiB: %v", trial, err)
		}
		if freeze {
			srv.Freeze() // a hung host: no FIN, no RST
		} else {
			srv.Stop()
		}
		sum, nr, err, took := timedRead("", f, int64(len(head)))
		f.Close()
		switch {
		case err == nil && sum == mounttest.Sum(a.data[len(head):]):
			completed++ // the fetch had finished before the stop
		case err == nil:
			t.Errorf("trial %d: the read after the stop returned %d wrong bytes", trial, nr)
		case !isEIO(err):
			t.Errorf("trial %d: the read after the stop failed with %v, want EIO", trial, err)
		default:
			failed++
			maxFail = max(maxFail, took)
		}
		if took > bound {
			t.Errorf("trial %d (freeze %v): the read took %v, bound %v", trial, freeze, took, bound)
		}
		// The other remote entry: its name is known, its bytes are not here.
		_, _, err, took = timedRead(n.Path(b.key), nil, 0)
		if !isEIO(err) {
			t.Errorf("trial %d: reading a remote-only entry with the server down: %v, want EIO", trial, err)
		} else {
			openFails++
		}
		maxOpen = max(maxOpen, took)
		if took > bound {
			t.Errorf("trial %d (freeze %v): reading a remote-only entry took %v, bound %v", trial, freeze, took, bound)
		}
		// Local entries are served.
		if sum, _, err, took := timedRead(n.Path(lk), nil, 0); err != nil || sum != mounttest.Sum(local) || took > time.Second {
			t.Errorf("trial %d: local entry with the server down: %v, %v", trial, err, took)
		}
		if freeze {
			srv.Thaw()
		} else if err := srv.Restart(); err != nil {
			t.Fatal(err)
		}
		// Back: the entry reads whole and right (the dial backoff may make
		// the first tries fail at once).
		start := time.Now()
		for {
			sum, _, err, _ := timedRead(n.Path(a.key), nil, 0)
			if err == nil && sum == a.sum {
				break
			}
			if err == nil {
				t.Fatalf("trial %d: after the restart the entry reads as %s", trial, sum)
			}
			if time.Since(start) > 30*time.Second {
				t.Fatalf("trial %d: entry unreadable 30s after the server came back: %v\n%s", trial, err, n.Stderr())
			}
			time.Sleep(100 * time.Millisecond)
		}
		maxBack = max(maxBack, time.Since(start))
		if w := n.Xattr(a.key, "user.flechefs.sha256"); w != a.sum {
			t.Errorf("trial %d: sha256 xattr %s", trial, w)
		}
	}
	st := n.Stats()
	for _, ts := range st.Tiers {
		if ts.Corruptions != 0 {
			t.Errorf("tier %s counted %d corruptions", ts.Name, ts.Corruptions)
		}
	}
	// Nothing half-fetched was kept: every remote entry that is in bbolt
	// now is complete (checked by reading all of them back).
	for _, e := range remote {
		if w, err := mounttest.XattrE(n.Path(e.key), "user.flechefs.tiers"); err == nil && strings.Contains(w, "bolt") {
			if sum, _, err, _ := timedRead(n.Path(e.key), nil, 0); err != nil || sum != e.sum {
				t.Errorf("%s in %s reads %s %v", e.key[:12], w, sum, err)
			}
		}
	}
	t.Logf("%d stops mid-read (%d as a frozen server): %d reads failed with EIO (slowest %v), %d had completed before the stop; %d/%d opens of another remote entry failed with EIO (slowest %v); bound %v; entry readable again at most %v after the server came back",
		trials, trials/6, failed, maxFail.Round(time.Millisecond), completed, openFails, trials, maxOpen.Round(time.Millisecond), bound, maxBack.Round(time.Millisecond))
}

// writeFile writes data to path through the mount, with an fsync before
// close when durable.
func writeFile(t testing.TB, path string, data []byte, durable bool) {
	t.Helper()
	if err := writeFileE(path, data, durable); err != nil {
		t.Fatal(err)
	}
}

func writeFileE(path string, data []byte, durable bool) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if durable {
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// TestRemoteStopMidUpload stops the server while uploads are in flight (20
// times an sshd, 10 times a SeaweedFS, whose restart takes seconds where
// sshd's takes milliseconds), and writes more while it is down, for every
// kind of remote:
// writes succeed locally at once; once the server is back, before the
// queue catches up, whatever the remote holds under a key is that key's
// complete value (an sftp data file may still lack its record: an upload
// cut between its rename and its record; an S3 object never lacks its
// checksum); after `flechefs sync` returns, the remote holds every entry
// exactly, with its record, and nothing else.
func TestRemoteStopMidUpload(t *testing.T) {
	if testing.Short() {
		t.Skip("long fault suite; runs without -short")
	}
	remotetest.Each(t, testRemoteStopMidUpload)
}

func testRemoteStopMidUpload(t *testing.T, startStore func(testing.TB) remotetest.Store) {
	srv := startStore(t)
	trials := 20
	if srv.Kind() == "s3" {
		trials = 10
	}
	n := srv.Node(t, "uploader", mounttest.Opts{RemoteTimeout: remoteTimeout.String()})
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
	want := map[string]string{}
	var maxDown, maxSync time.Duration
	var queuedAtStop int64
	i, checked := 0, 0
	write := func(trial int) (string, []byte) {
		i++
		d := content(13, trial, i, 512<<10+rng.IntN(3<<20))
		k := mounttest.Key(fmt.Sprintf("upload %d", i))
		writeFile(t, n.Path(k), d, false)
		want[k] = mounttest.Sum(d)
		return k, d
	}
	for trial := range trials {
		for range 6 {
			write(trial)
		}
		time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond)
		queuedAtStop += n.Stats().Queue
		srv.Stop()
		// Writes go on while the server is down, and read back.
		for range 3 {
			start := time.Now()
			k, d := write(trial)
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("trial %d: a write with the server down took %v", trial, took)
			}
			maxDown = max(maxDown, time.Since(start))
			if sum, _, err, _ := timedRead(n.Path(k), nil, 0); err != nil || sum != mounttest.Sum(d) {
				t.Errorf("trial %d: read back with the server down: %v", trial, err)
			}
		}
		if err := srv.Restart(); err != nil {
			t.Fatal(err)
		}
		checked += checkNoPartial(t, srv, want)
		start := time.Now()
		n.Sync(2 * time.Minute)
		maxSync = max(maxSync, time.Since(start))
	}
	tmp := verifyStore(t, srv, want)
	st := n.Stats()
	if st.Conflicts != 0 {
		t.Errorf("%d conflicts", st.Conflicts)
	}
	for _, ts := range st.Tiers {
		if ts.Corruptions != 0 {
			t.Errorf("tier %s counted %d corruptions", ts.Name, ts.Corruptions)
		}
	}
	// Stops between an upload's rename and its record leave data without
	// its record; the retry, once the settle time has passed, hashes it,
	// finds its own value and records its sum (adoption), never removing it.
	cut := strings.Count(n.Stderr(), "published without its sum record")
	t.Logf("%d stops mid-upload, %d entries (%d still queued just before the stops): %d remote copies found complete right after the restarts, all on the remote with matching records after sync; %d upload attempts failed (%d cut between the data's rename and its record, then adopted); %d leftovers in .flechefs/tmp; slowest write while down %v, slowest sync after restart %v",
		trials, len(want), queuedAtStop, checked, st.UploadErrors, cut, tmp, maxDown.Round(time.Millisecond), maxSync.Round(time.Millisecond))
}

// TestMountWithRemoteDown mounts while the server is down, for every kind
// of remote: the mount works from the local tiers, says so once in its log
// and in `flechefs status`, and uploads what was written meanwhile when
// the server returns.
func TestMountWithRemoteDown(t *testing.T) {
	remotetest.Each(t, testMountWithRemoteDown)
}

func testMountWithRemoteDown(t *testing.T, startStore func(testing.TB) remotetest.Store) {
	srv := startStore(t)
	srv.Stop()
	start := time.Now()
	n := srv.Node(t, "degraded", mounttest.Opts{RemoteTimeout: remoteTimeout.String()})
	mountTook := time.Since(start)
	want := map[string]string{}
	for i := range 5 {
		d := content(14, 14, i, 100<<10*i)
		k := mounttest.Key(fmt.Sprintf("degraded %d", i))
		writeFile(t, n.Path(k), d, i%2 == 0)
		want[k] = mounttest.Sum(d)
		if sum, _, err, _ := timedRead(n.Path(k), nil, 0); err != nil || sum != want[k] {
			t.Fatalf("read back: %v", err)
		}
	}
	// Misses ask the remote, which is down: ENOENT within the bound.
	for i := range 5 {
		start := time.Now()
		_, err := os.Stat(n.Path(mounttest.Key(fmt.Sprintf("absent %d", i))))
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("stat of an absent key with the remote down: %v", err)
		}
		if took := time.Since(start); took > bound {
			t.Errorf("stat of an absent key took %v", took)
		}
	}
	mounttest.Eventually(t, "status to show the remote unavailable", 2*bound, func() bool {
		out, _ := n.Flechefs("status", n.Mnt)
		return strings.Contains(tierLine(out, srv.Kind()), "UNAVAILABLE")
	})
	status := n.Status()
	log := n.Stderr()
	probe := strings.Count(log, "remote tier unavailable")
	stack := strings.Count(log, "tier unavailable; serving from the other tiers")
	if probe != 1 {
		t.Errorf("the mount logged %d times that the remote is unavailable at start, want 1:\n%s", probe, log)
	}
	if stack > 1 {
		t.Errorf("the stack logged the remote unavailable %d times, want at most 1:\n%s", stack, log)
	}
	if q := n.Stats().Queue; q != 5 {
		t.Errorf("queue %d, want 5", q)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	n.Sync(2 * time.Minute)
	caughtUp := time.Since(start)
	verifyStore(t, srv, want)
	mounttest.Eventually(t, "status to show the remote ok", 2*bound, func() bool {
		out, _ := n.Flechefs("status", n.Mnt)
		return strings.Contains(tierLine(out, srv.Kind()), " ok")
	})
	if c := strings.Count(n.Stderr(), "remote tier unavailable"); c != 1 {
		t.Errorf("after the catch-up the start-up warning was logged %d times", c)
	}
	t.Logf("mounted with the remote down in %v; log: %d start-up warning, %d stack warning; status line %q; caught up (5 entries) %v after the server returned",
		mountTook.Round(time.Millisecond), probe, stack, tierLine(status, srv.Kind()), caughtUp.Round(time.Millisecond))
}

// tierLine is the line of `flechefs status` of the tier called name.
func tierLine(status, name string) string {
	for _, l := range strings.Split(status, "\n") {
		if strings.HasPrefix(l, name+" ") {
			return strings.Join(strings.Fields(l), " ")
		}
	}
	return ""
}

// snapshot records every file below dir, except skip, with its mode, size
// and content hash.
func snapshot(t *testing.T, dir, skip string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == skip {
			return filepath.SkipDir
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		v := fmt.Sprintf("%v %d", fi.Mode(), fi.Size())
		if fi.Mode().IsRegular() {
			sum, _, err := readAll(p)
			if err != nil {
				return err
			}
			v += " " + sum
		}
		out[p] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestRemoteGarbage damages remote entries every way a remote can:
// truncated, extended, flipped bytes, wrong, garbled and lying sum files,
// plus junk names, a directory and a symlink under keys' names. Every
// damaged entry is detected, never served (EIO, or ENOENT when the damage
// shows already at lookup), counted as a corruption, logged and moved to
// the quarantine; a node holding a good copy serves it; nothing outside the
// remote root changes. (A file without a sum record is not damage: it is
// served as a foreign file, see TestOldUnrecordedFileNeverRemoved; a
// symlink without one is nobody's entry, absent and not counted.)
func TestRemoteGarbage(t *testing.T) {
	srv := sshdtest.Start(t)
	root := filepath.Join(srv.Dir, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("sftp://%s@%s%s", srv.User, srv.Addr, root)
	// A secret outside the root, and a symlink to it under a key's name.
	outside := filepath.Join(srv.Dir, "outside")
	os.MkdirAll(outside, 0o755)
	os.WriteFile(filepath.Join(outside, "secret"), []byte("not an entry"), 0o644)
	// Old, so that a file without a record would be served if the name
	// were followed (TestRemoteReaderSparesUploadInProgress).
	long := time.Now().Add(-2 * time.Hour)
	os.Chtimes(filepath.Join(outside, "secret"), long, long)

	type damage struct {
		name  string
		apply func(k string, d []byte)
	}
	flip := func(k string, off int) {
		p := filepath.Join(root, k)
		b, _ := os.ReadFile(p)
		b[off] ^= 0x40
		os.WriteFile(p, b, 0o644)
	}
	damages := []damage{
		{"truncated", func(k string, d []byte) { os.Truncate(filepath.Join(root, k), int64(len(d)/2)) }},
		{"empty data", func(k string, d []byte) { os.Truncate(filepath.Join(root, k), 0) }},
		{"extended", func(k string, d []byte) {
			f, _ := os.OpenFile(filepath.Join(root, k), os.O_APPEND|os.O_WRONLY, 0)
			f.Write([]byte("trailing garbage"))
			f.Close()
		}},
		{"flipped first byte", func(k string, d []byte) { flip(k, 0) }},
		{"flipped middle byte", func(k string, d []byte) { flip(k, len(d)/2) }},
		{"flipped last byte", func(k string, d []byte) { flip(k, len(d)-1) }},
		{"wrong checksum", func(k string, d []byte) { writeSum(t, root, k, mounttest.Sum([]byte("other")), int64(len(d))) }},
		{"sum file of another size", func(k string, d []byte) { writeSum(t, root, k, mounttest.Sum(d), int64(len(d)+1)) }},
		{"garbled sum file", func(k string, d []byte) { garbleSum(root, k, "\x00\xffgarbage\nsha256 zz\n", false) }},
		{"garbled sum record", func(k string, d []byte) { garbleSum(root, k, "garbage.1.1", true) }},
		{"sum file is a directory", func(k string, d []byte) {
			p := filepath.Join(root, ".flechefs", "sums", k)
			os.Remove(p)
			os.Mkdir(p, 0o755)
		}},
		{"old symlink out of the root, no sum", func(k string, d []byte) {
			os.Remove(filepath.Join(root, ".flechefs", "sums", k))
			os.Remove(filepath.Join(root, k))
			os.Symlink(filepath.Join(outside, "secret"), filepath.Join(root, k))
		}},
	}
	// A node that wrote some of the entries itself holds good copies.
	good := mounttest.NewNode(t, "good", srv, mounttest.Opts{RemoteURL: url, RemoteTimeout: remoteTimeout.String()})
	keys := map[string]string{} // key → damage
	data := map[string][]byte{}
	for i, dm := range damages {
		d := content(15, 15, i, 200<<10+i)
		k := mounttest.Key("garbage " + dm.name)
		keys[k], data[k] = dm.name, d
		writeFile(t, good.Path(k), d, true)
	}
	good.Sync(time.Minute)
	for k := range keys {
		for _, dm := range damages {
			if dm.name == keys[k] {
				dm.apply(k, data[k])
			}
		}
	}
	// Junk: names that are not keys, a directory under a key's name.
	junk := []string{"junk", "...", "..hidden", "0123456789abcdef..", "0123456789abcdef.a.b",
		"0123456789ABCDEF", "0123456789abcdef\x01", "-rf", " 0123456789abcdef"}
	for _, j := range junk {
		if err := os.WriteFile(filepath.Join(root, j), []byte("junk"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dirKey := mounttest.Key("a directory")
	os.Mkdir(filepath.Join(root, dirKey), 0o755)
	writeSum(t, root, dirKey, mounttest.Sum(nil), 0)
	before := snapshot(t, srv.Dir, root)

	// A second node with no copy of its own.
	n := mounttest.NewNode(t, "victim", srv, mounttest.Opts{RemoteURL: url, RemoteTimeout: remoteTimeout.String()})
	ents, err := os.ReadDir(n.Mnt)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if _, err := digest.Parse(e.Name()); err != nil && e.Name() != ".flechefs" {
			t.Errorf("the listing shows %q", e.Name())
		}
		if e.Name() == dirKey {
			t.Errorf("the listing shows the directory %s", dirKey[:12])
		}
	}
	var eio, enoent int
	for _, k := range sortedKeys(keys) {
		what := keys[k]
		c0 := n.TierStats("sftp").Corruptions
		var errs []string
		for attempt := range 2 {
			_, nr, err, took := timedRead(n.Path(k), nil, 0)
			switch {
			case err == nil:
				t.Errorf("%s (attempt %d): served %d bytes", what, attempt, nr)
			case isEIO(err) && attempt == 0:
				eio++
			case errors.Is(err, fs.ErrNotExist) && attempt == 0:
				enoent++
			case isEIO(err) || errors.Is(err, fs.ErrNotExist):
			default:
				t.Errorf("%s: %v, want EIO or ENOENT", what, err)
			}
			if took > bound {
				t.Errorf("%s: the read took %v", what, took)
			}
			errs = append(errs, fmt.Sprint(err))
		}
		c1 := n.TierStats("sftp").Corruptions
		// A directory at the sum file's path reads as a plain SFTP
		// failure (SSH_FX_FAILURE), which the tier cannot tell from an
		// I/O error: never served, but not counted as a corruption.
		// A symlink without a record is nobody's entry: absent.
		if c1 == c0 && what != "sum file is a directory" && what != "old symlink out of the root, no sum" {
			t.Errorf("%s: not counted as a corruption (%s)", what, strings.Join(errs, "; "))
		}
		t.Logf("%-34s %d corruptions: %s", what, c1-c0, strings.Join(errs, "; "))
		if w, err := mounttest.XattrE(n.Path(k), "user.flechefs.tiers"); err == nil && (strings.Contains(w, "ram") || strings.Contains(w, "bolt")) {
			t.Errorf("%s: a local tier holds it: %q", what, w)
		}
	}
	for _, name := range []string{dirKey} {
		if _, _, err, _ := timedRead(n.Path(name), nil, 0); err == nil {
			t.Errorf("a directory under a key's name was served")
		}
	}
	var corrupt int64
	for _, ts := range n.Stats().Tiers {
		if ts.Name == "sftp" {
			corrupt = ts.Corruptions
		} else if ts.Corruptions != 0 {
			t.Errorf("tier %s counted %d corruptions", ts.Name, ts.Corruptions)
		}
	}
	if corrupt < int64(len(damages)-2) {
		t.Errorf("sftp corruptions %d, want at least %d (one per damaged entry but the sum directory and the symlink)", corrupt, len(damages)-2)
	}
	log := n.Stderr()
	logged := strings.Count(log, "corrupt remote copy detected")
	for k, what := range keys {
		if !strings.Contains(log, k) && what != "sum file is a directory" && what != "old symlink out of the root, no sum" {
			t.Errorf("%s: %s not in the log", what, k[:12])
		}
	}
	// The node with good copies serves them, whatever the remote holds.
	for k, what := range keys {
		if sum, _, err, _ := timedRead(good.Path(k), nil, 0); err != nil || sum != mounttest.Sum(data[k]) {
			t.Errorf("%s: the node with a good copy reads %v", what, err)
		}
	}
	good.Restart() // RAM is gone: bbolt serves
	for k, what := range keys {
		if sum, _, err, _ := timedRead(good.Path(k), nil, 0); err != nil || sum != mounttest.Sum(data[k]) {
			t.Errorf("%s: after restart the node with a good copy reads %v", what, err)
		}
		if w := good.Xattr(k, "user.flechefs.tiers"); !strings.HasPrefix(w, "ram") && !strings.HasPrefix(w, "bolt") {
			t.Errorf("%s: the good copy is in %q", what, w)
		}
	}
	// Nothing outside the root changed; the junk is still there.
	after := snapshot(t, srv.Dir, root)
	for _, p := range sortedKeys(before) {
		if after[p] != before[p] {
			t.Errorf("outside the remote root %s changed: %q → %q", p, before[p], after[p])
		}
	}
	for _, p := range sortedKeys(after) {
		if _, ok := before[p]; !ok {
			t.Errorf("outside the remote root %s appeared", p)
		}
	}
	for _, j := range junk {
		if _, err := os.Lstat(filepath.Join(root, j)); err != nil {
			t.Errorf("junk %q: %v", j, err)
		}
	}
	// Damaged copies were moved aside, never deleted.
	quarantined, _ := filepath.Glob(filepath.Join(root, ".flechefs", "quarantine", "*"))
	q := n.TierStats("sftp").Quarantined
	if nq := int64(len(quarantined)); q == 0 || nq < q {
		t.Errorf("quarantined %d (stats), %d files in the quarantine", q, nq)
	}
	t.Logf("%d damaged entries: %d reads failed with EIO, %d with ENOENT (damage seen at lookup), 0 served; sftp corruptions %d; %d 'corrupt remote copy detected' log lines; %d moved to the quarantine (%d files with their records); %d junk names never listed; nothing outside the root changed; the good node served all from RAM, then bbolt",
		len(keys), eio, enoent, corrupt, logged, q, len(quarantined), len(junk)+1)
}

// TestRemoteGarbageHealedByUpload puts damaged copies on the remote before
// a node uploads the same keys: a damage the remote's Stat shows (sizes
// that disagree, a garbled sum file) is counted, the bad copy moved to the
// quarantine and the good value uploaded in its place; sync does not
// return before.
func TestRemoteGarbageHealedByUpload(t *testing.T) {
	srv := sshdtest.Start(t)
	root := srv.Dir
	damages := map[string]func(k string, d []byte){
		"truncated": func(k string, d []byte) {
			putRemote(t, root, k, d)
			os.Truncate(filepath.Join(root, k), int64(len(d)/2))
		},
		"empty": func(k string, d []byte) { putRemote(t, root, k, d); os.Truncate(filepath.Join(root, k), 0) },
		"extended": func(k string, d []byte) {
			putRemote(t, root, k, d)
			os.WriteFile(filepath.Join(root, k), append(append([]byte{}, d...), 'x'), 0o644)
		},
		"sum of another size": func(k string, d []byte) { putRemote(t, root, k, d); writeSum(t, root, k, mounttest.Sum(d), 7) },
		"garbled sum": func(k string, d []byte) {
			putRemote(t, root, k, d)
			garbleSum(root, k, "size -1\n", false)
		},
	}
	want := map[string]string{}
	n := mounttest.NewNode(t, "healer", srv, mounttest.Opts{RemoteTimeout: remoteTimeout.String()})
	// The damaged copies appear after the node published (the server is
	// down meanwhile, so the uploads wait), as when another writer's
	// upload was cut short or a disk went bad: the node meets them only
	// when it uploads.
	srv.Stop()
	data := map[string][]byte{}
	for i, what := range sortedKeys(damages) {
		d := content(16, 16, i, 300<<10+i)
		k := mounttest.Key("heal " + what)
		writeFile(t, n.Path(k), d, true)
		want[k], data[k] = mounttest.Sum(d), d
	}
	for _, what := range sortedKeys(damages) {
		k := mounttest.Key("heal " + what)
		damages[what](k, data[k])
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	n.Sync(time.Minute)
	tmp := verifyRemote(t, root, want)
	ts := n.TierStats("sftp")
	if ts.Corruptions != int64(len(damages)) || ts.Quarantined != int64(len(damages)) {
		t.Errorf("sftp corruptions %d, quarantined %d, want %d", ts.Corruptions, ts.Quarantined, len(damages))
	}
	st := n.Stats()
	t.Logf("%d damaged remote copies replaced by the uploads: corruptions %d, conflicts %d, upload errors %d, tmp leftovers %d",
		len(damages), ts.Corruptions, st.Conflicts, st.UploadErrors, tmp)
}

// TestRemoteReaderSparesUploadInProgress: a data file without its sum
// record is also what a healthy upload looks like for one round trip (the
// tier renames the data into place, then writes the record). A reader
// meeting it then must not serve it (it looks like a write in progress:
// modified within the settle time) and must not remove it: the writer is
// about to complete it. One without a record that is old is served (a
// foreign file, or an upload whose record the writer's death cut), adopted
// and never removed or counted as damage.
func TestRemoteReaderSparesUploadInProgress(t *testing.T) {
	srv := sshdtest.Start(t)
	n := mounttest.NewNode(t, "reader", srv, mounttest.Opts{RemoteTimeout: remoteTimeout.String()})
	young, old := mounttest.Key("upload in progress"), mounttest.Key("abandoned")
	dy, do := content(19, 19, 1, 700<<10), content(19, 19, 2, 500<<10)
	putRemote(t, srv.Dir, young, dy)
	putRemote(t, srv.Dir, old, do)
	os.Remove(filepath.Join(srv.Dir, ".flechefs", "sums", young))
	os.Remove(filepath.Join(srv.Dir, ".flechefs", "sums", old))
	long := time.Now().Add(-2 * time.Hour)
	os.Chtimes(filepath.Join(srv.Dir, old), long, long)

	if _, n, err, _ := timedRead(n.Path(young), nil, 0); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a fresh copy without its record: %d bytes, %v; want ENOENT", n, err)
	}
	if sum, _, err, _ := timedRead(n.Path(old), nil, 0); err != nil || sum != mounttest.Sum(do) {
		t.Fatalf("an old copy without its record: %v; want it served", err)
	}
	for _, k := range []string{young, old} {
		if _, err := os.Stat(filepath.Join(srv.Dir, k)); err != nil {
			t.Fatalf("the reader removed %s: %v", k[:12], err)
		}
	}
	if s, sz, err := readSum(srv.Dir, old); err != nil || s != mounttest.Sum(do) || sz != int64(len(do)) {
		t.Errorf("the old copy's record after its read: %s %d, %v", s, sz, err)
	}
	if c := n.TierStats("sftp").Corruptions; c != 0 {
		t.Errorf("sftp corruptions %d, want 0", c)
	}
	// The writer completes its upload: the entry is served, whole.
	writeSum(t, srv.Dir, young, mounttest.Sum(dy), int64(len(dy)))
	var err error
	mounttest.Eventually(t, "the completed entry to be served", 10*time.Second, func() bool {
		var sum string
		sum, _, err, _ = timedRead(n.Path(young), nil, 0)
		return err == nil && sum == mounttest.Sum(dy)
	})
	t.Logf("a fresh copy without its record: not served, kept, served once its record came; a 2-hour-old one: served, adopted, kept, not counted")
}
