package integration

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers/sftp"
)

// pickleWriter is fleche's PickleFile writing on the server: it takes
// <digest>.lock (O_EXCL), writes <digest> in place, non-atomically, in
// several chunks (waiting for a line on stdin after each, so that the test
// looks at the mounts mid-write), then removes the lock. It is a process of
// its own writing straight into the sshd's directory.
const pickleWriter = `
import os, sys
root, d, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
lock = os.path.join(root, d + ".lock")
os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
with open(os.path.join(root, d), "wb") as f:
    for i in range(n):
        f.write(bytes([65 + i]) * 100000)
        f.flush()
        os.fsync(f.fileno())
        print("chunk", i, flush=True)
        sys.stdin.readline()
os.remove(lock)
print("done", flush=True)
`

// pickleValue is what pickleWriter writes in n chunks.
func pickleValue(n int) []byte {
	var b []byte
	for i := range n {
		b = append(b, bytes.Repeat([]byte{byte(65 + i)}, 100000)...)
	}
	return b
}

func listsName(t *testing.T, dir, name string) bool {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(ents, func(e fs.DirEntry) bool { return e.Name() == name })
}

// readEventually reads path until it opens (a new foreign file is absent
// for the tier's settle time, and the kernel keeps a miss for 1 s).
func readEventually(t *testing.T, path string, d time.Duration) []byte {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			return b
		}
		if !errors.Is(err, fs.ErrNotExist) || time.Now().After(deadline) {
			t.Fatalf("read %s: %v", filepath.Base(path), err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestPickleFileOnServer: a fleche-PickleFile-style writer on the server
// and two mounts interoperate both ways. While it writes (its .lock held,
// in chunks), the entry is absent from lookups and listings of both
// mounts; once it is done, it appears complete, is served and listed, its
// checksum record is written (adopted) and the second mount verifies
// against it; the file itself is never changed or removed. A value written
// through a mount is a plain file the server side reads.
func TestPickleFileOnServer(t *testing.T) {
	srv := sshdtest.Start(t)
	m1 := newNode(t, "m1", srv, nodeOpts{})
	m2 := newNode(t, "m2", srv, nodeOpts{})
	const chunks = 4
	d := key("pickled call")
	want := pickleValue(chunks)

	cmd := exec.Command("python3", "-c", pickleWriter, srv.Dir, d, fmt.Sprint(chunks))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	out := bufio.NewScanner(stdout)
	for i := range chunks {
		if !out.Scan() {
			t.Fatalf("writer stopped before chunk %d", i)
		}
		for _, n := range []*node{m1, m2} {
			if _, err := os.Stat(n.path(d)); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("%s: lookup after chunk %d of %d: %v, want ENOENT", n.name, i+1, chunks, err)
			}
			if listsName(t, n.mnt, d) {
				t.Fatalf("%s lists the entry after chunk %d of %d", n.name, i+1, chunks)
			}
		}
		if i == 1 {
			// Held for longer than the settle time mid-write: the lock
			// alone keeps it absent.
			time.Sleep(6 * time.Second)
			if _, err := os.Stat(m1.path(d)); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("lookup of a file held under its lock for 6 s: %v, want ENOENT", err)
			}
		}
		io.WriteString(stdin, "\n")
	}
	if !out.Scan() || out.Text() != "done" {
		t.Fatalf("writer: %q", out.Text())
	}
	cmd.Wait()
	fi0, err := os.Stat(filepath.Join(srv.Dir, d))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got := readEventually(t, m1.path(d), 30*time.Second)
	t.Logf("served %v after the writer finished (settle time 5 s)", time.Since(start).Round(100*time.Millisecond))
	if !bytes.Equal(got, want) {
		t.Fatalf("m1 read %d bytes, want %d (%x vs %x)", len(got), len(want), sha256.Sum256(got), sha256.Sum256(want))
	}
	if !listsName(t, m1.mnt, d) {
		t.Fatal("m1 does not list the entry it serves")
	}
	rec, err := sftp.LocalSum(srv.Dir, d)
	if err != nil || rec.Sum != sha256.Sum256(want) || rec.Size != int64(len(want)) {
		t.Fatalf("record after the first read: %+v, %v", rec, err)
	}
	if x := xattr(t, m1.path(d), "user.flechefs.sha256"); x != fmt.Sprintf("%x", sha256.Sum256(want)) {
		t.Fatalf("sha256 xattr %q", x)
	}
	if got := readEventually(t, m2.path(d), 30*time.Second); !bytes.Equal(got, want) {
		t.Fatal("m2 read other bytes")
	}
	fi1, err := os.Stat(filepath.Join(srv.Dir, d))
	if err != nil || fi1.Size() != fi0.Size() || !fi1.ModTime().Equal(fi0.ModTime()) {
		t.Fatalf("the writer's file changed: %v, %v", fi1, err)
	}
	if b, _ := os.ReadFile(filepath.Join(srv.Dir, d)); !bytes.Equal(b, want) {
		t.Fatal("the writer's file holds other bytes")
	}
	for _, n := range []*node{m1, m2} {
		if st := n.tierStats("sftp"); st.Corruptions != 0 || st.Quarantined != 0 {
			t.Fatalf("%s: %+v", n.name, st)
		}
	}

	// The other way: a value written through m1 is a plain file the
	// server side (fleche reading its directory) reads.
	k2 := key("written through a mount")
	v2 := []byte("from the mount\n")
	if err := os.WriteFile(m1.path(k2), v2, 0o644); err != nil {
		t.Fatal(err)
	}
	m1.sync(time.Minute)
	if b, err := os.ReadFile(filepath.Join(srv.Dir, k2)); err != nil || !bytes.Equal(b, v2) {
		t.Fatalf("server side reads %q, %v", b, err)
	}
}

// TestOldUnrecordedFileNeverRemoved: a record-less file a year old (seeded
// by rsync or cp) is served and adopted under the default; under
// foreign = "ignore" it is absent, unlisted, and an upload of the same key
// from the mount leaves it as it is. No lookup, read, listing or upload
// removes it.
func TestOldUnrecordedFileNeverRemoved(t *testing.T) {
	srv := sshdtest.Start(t)
	seed := func(name string, b []byte) string {
		p := filepath.Join(srv.Dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		old := time.Now().Add(-365 * 24 * time.Hour)
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
		return p
	}
	adoptK, ignoreK := key("seeded, adopted"), key("seeded, ignored")
	seeded := []byte("seeded by rsync\n")
	pa, pi := seed(adoptK, seeded), seed(ignoreK, seeded)

	m1 := newNode(t, "adopt", srv, nodeOpts{})
	if !listsName(t, m1.mnt, adoptK) {
		t.Fatal("an old record-less file is not listed")
	}
	if b, err := os.ReadFile(m1.path(adoptK)); err != nil || !bytes.Equal(b, seeded) {
		t.Fatalf("read %q, %v", b, err)
	}
	if _, err := sftp.LocalSum(srv.Dir, adoptK); err != nil {
		t.Fatalf("not adopted: %v", err)
	}

	m2 := newNode(t, "ignore", srv, nodeOpts{remoteTier: `foreign = "ignore"`})
	if _, err := os.Stat(m2.path(ignoreK)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("foreign = ignore: lookup %v, want ENOENT", err)
	}
	if listsName(t, m2.mnt, ignoreK) {
		t.Fatal("foreign = ignore: listed")
	}
	// Computed again on this mount and uploaded: the remote's file wins
	// and stays as it is.
	if err := os.WriteFile(m2.path(ignoreK), []byte("computed here\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m2.sync(time.Minute)
	if st := m2.stats(); st.Conflicts != 1 {
		t.Fatalf("conflicts %d, want 1 (the remote keeps the file)", st.Conflicts)
	}
	for _, p := range []string{pa, pi} {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(b, seeded) {
			t.Fatalf("%s: %q, %v: the seeded file was changed or removed", filepath.Base(p), b, err)
		}
	}
	if _, err := sftp.LocalSum(srv.Dir, ignoreK); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("foreign = ignore wrote a record: %v", err)
	}
}

// TestSelfVerifyingForeignFile: under foreign = "verify" a record-less
// file whose name is the SHA-256 of its content is served and adopted; one
// whose content is not is never served (EIO), is moved to
// .flechefs/quarantine (not deleted), and `flechefs status` counts it.
func TestSelfVerifyingForeignFile(t *testing.T) {
	srv := sshdtest.Start(t)
	good := []byte("content-addressed\n")
	goodK := fmt.Sprintf("%x", sha256.Sum256(good))
	badK := fmt.Sprintf("%x", sha256.Sum256([]byte("what it should hold")))
	bad := []byte("damaged bytes\n")
	for name, b := range map[string][]byte{goodK: good, badK: bad} {
		p := filepath.Join(srv.Dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		old := time.Now().Add(-time.Hour)
		os.Chtimes(p, old, old)
	}
	n := newNode(t, "verify", srv, nodeOpts{remoteTier: `foreign = "verify"`})
	if b, err := os.ReadFile(n.path(goodK)); err != nil || !bytes.Equal(b, good) {
		t.Fatalf("self-verifying file: %q, %v", b, err)
	}
	if _, err := sftp.LocalSum(srv.Dir, goodK); err != nil {
		t.Fatalf("self-verifying file not adopted: %v", err)
	}
	b, err := os.ReadFile(n.path(badK))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("a file whose content is not its name's SHA-256: %q, %v; want EIO", b, err)
	}
	if _, err := os.Stat(filepath.Join(srv.Dir, badK)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the damaged file is still under its name: %v", err)
	}
	q, _ := filepath.Glob(filepath.Join(srv.Dir, ".flechefs", "quarantine", badK+".*"))
	if len(q) != 1 {
		t.Fatalf("quarantine holds %v, want the damaged file", q)
	}
	if got, _ := os.ReadFile(q[0]); !bytes.Equal(got, bad) {
		t.Fatal("the quarantined file holds other bytes")
	}
	if st := n.tierStats("sftp"); st.Quarantined != 1 || st.Corruptions != 1 {
		t.Fatalf("stats %+v", st)
	}
	out, err := n.flechefs("status", n.mnt)
	if err != nil || !strings.Contains(out, "quarantined:") || !strings.Contains(out, "1 damaged copies in sftp") {
		t.Fatalf("status: %v\n%s", err, out)
	}
}
