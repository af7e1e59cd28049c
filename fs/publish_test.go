package fs

import (
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
)

// sh runs a shell script with $1 = p and returns its exit status.
func sh(t *testing.T, script, p string) int {
	t.Helper()
	err := exec.Command("/bin/sh", "-c", script, "sh", p).Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0
}

// TestShellPatterns: a value written by several processes through one
// open file is published whole when the last of them closes it.
func TestShellPatterns(t *testing.T) {
	m := mountT(t, Options{})
	for _, c := range []struct{ script, want string }{
		{`{ /bin/echo a; /bin/echo b; } > "$1"`, "a\nb\n"},
		{`{ echo a; sleep 0.2; echo b; } > "$1"`, "a\nb\n"},
		{`exec 3> "$1"; /bin/echo a >&3; /bin/echo b >&3; exec 3>&-`, "a\nb\n"},
		{`printf 'a\nb\n' | xargs -n1 /bin/echo > "$1"`, "a\nb\n"},
		{`: > "$1"`, ""},
	} {
		p := m.path(newKey())
		if rc := sh(t, c.script, p); rc != 0 {
			t.Errorf("%s: exit %d", c.script, rc)
		}
		// No sleep: read-after-close.
		if got, err := os.ReadFile(p); err != nil || string(got) != c.want {
			t.Errorf("%s: %q, %v; want %q", c.script, got, err, c.want)
		}
	}
}

// TestDroppedWriters: a value whose writer was killed or failed is not
// published, unless PublishFailed for a failure status.
func TestDroppedWriters(t *testing.T) {
	for _, publishFailed := range []bool{false, true} {
		m := mountT(t, Options{PublishFailed: publishFailed})
		failed := m.path(newKey())
		if rc := sh(t, `sh -c 'echo partial; exit 3' > "$1"`, failed); rc != 3 {
			t.Fatalf("exit %d", rc)
		}
		killed := m.path(newKey())
		sh(t, `sh -c 'echo partial; kill -9 $$' > "$1"`, killed)
		timedOut := m.path(newKey())
		sh(t, `{ echo partial; timeout -s TERM 0.2 sleep 5; echo more; } > "$1"`, timedOut)

		got, err := os.ReadFile(failed)
		if publishFailed {
			if err != nil || string(got) != "partial\n" {
				t.Errorf("publish_failed: failed writer's value %q, %v", got, err)
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("failed writer's value published: %q, %v", got, err)
		}
		for _, p := range []string{killed, timedOut} {
			if got, err := os.ReadFile(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("killed writer's value published: %q, %v", got, err)
			}
		}
		w := m.writeStats(t)
		wantFailed := int64(1)
		if publishFailed {
			wantFailed = 0
		}
		if w.Dropped.Killed != 2 || w.Dropped.FailedExit != wantFailed {
			t.Errorf("publish_failed=%v: dropped %+v, want 2 killed, %d failed exits", publishFailed, w.Dropped, wantFailed)
		}
	}
}

// TestRacingCreate: a create without O_EXCL of a key that exists succeeds
// and its value is dropped; the first value stays.
func TestRacingCreate(t *testing.T) {
	m := mountT(t, Options{})
	p := m.path(newKey())
	if err := os.WriteFile(p, []byte("first"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The second writer's kernel still believes the name absent: it
	// sends CREATE, not OPEN. Drop the dentry so it must look it up.
	for range 2 {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			t.Fatalf("open of an existing key with O_CREAT: %v", err)
		}
		if _, err := f.Write([]byte("second, longer")); err != nil {
			t.Fatal(err)
		}
		// Readers meanwhile see the first value, size included.
		if got, err := os.ReadFile(p); err != nil || string(got) != "first" {
			t.Fatalf("while the loser writes: %q, %v", got, err)
		}
		if st, err := os.Stat(p); err != nil || st.Size() != 5 {
			t.Fatalf("stat while the loser writes: %v, %v", st, err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := os.ReadFile(p); err != nil || string(got) != "first" {
		t.Fatalf("after the losers: %q, %v", got, err)
	}
	if w := m.writeStats(t); w.Dropped.Exists != 2 || w.Published != 1 {
		t.Errorf("counters %+v, want 1 published, 2 existing", w)
	}
}

// TestScratchFiles: names that are not keys are private scratch files,
// renamed into place to publish.
func TestScratchFiles(t *testing.T) {
	m := mountT(t, Options{})
	k := newKey()
	tmp := m.path("." + k + ".Xa81qz")
	if err := os.WriteFile(tmp, []byte("scratch value"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tmp, 0o640); err != nil {
		t.Fatal(err)
	}
	mt := time.Unix(1_000_000, 0)
	if err := os.Chtimes(tmp, mt, mt); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(tmp)
	if err != nil || st.Mode().Perm() != 0o640 || !st.ModTime().Equal(mt) || st.Size() != 13 {
		t.Fatalf("scratch file attributes: %v, %v", st, err)
	}
	if f, err := os.OpenFile(tmp, os.O_RDWR, 0); err != nil {
		t.Fatal(err)
	} else {
		if err := f.Sync(); err != nil {
			t.Errorf("fsync of a scratch file: %v", err)
		}
		f.Close()
	}
	names := listNames(t, m.dir)
	if slices.ContainsFunc(names, func(n string) bool { return strings.Contains(n, "Xa81qz") }) {
		t.Errorf("scratch file listed: %v", names)
	}
	if _, err := os.Stat(m.path(k)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("key visible before the rename: %v", err)
	}
	if err := os.Rename(tmp, m.path(k)); err != nil {
		t.Fatalf("rename scratch to key: %v", err)
	}
	if got, err := os.ReadFile(m.path(k)); err != nil || string(got) != "scratch value" {
		t.Fatalf("after rename: %q, %v", got, err)
	}
	if st, err := os.Stat(m.path(k)); err != nil || st.Mode().Perm() != 0o444 {
		t.Fatalf("renamed entry: %v, %v", st, err)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("scratch name after rename: %v", err)
	}

	// Renamed onto an existing key: succeeds, the first value stays.
	tmp2 := m.path("tmp-second")
	if err := os.WriteFile(tmp2, []byte("second"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp2, m.path(k)); err != nil {
		t.Fatalf("rename onto an existing key: %v", err)
	}
	if got, err := os.ReadFile(m.path(k)); err != nil || string(got) != "scratch value" {
		t.Fatalf("after a losing rename: %q, %v", got, err)
	}

	// Scratch to scratch, then unlink.
	a, b := m.path("a.part"), m.path("b.part")
	if err := os.WriteFile(a, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(a, b); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(b); err != nil || string(got) != "x" {
		t.Fatalf("renamed scratch: %q, %v", got, err)
	}
	if err := os.Remove(b); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(b); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("unlinked scratch: %v", err)
	}
	if f, err := os.OpenFile(m.path("excl.part"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err != nil {
		t.Fatal(err)
	} else {
		f.Close()
	}
	if _, err := os.OpenFile(m.path("excl.part"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("O_EXCL of an existing scratch file: %v", err)
	}
	if w := m.writeStats(t); w.Scratch != 1 || w.Published != 1 || w.Dropped.Exists != 1 {
		t.Errorf("counters %+v, want 1 scratch, 1 published, 1 existing", w)
	}
}

// TestRenameEntry: an entry renamed to an absent key moves its value.
func TestRenameEntry(t *testing.T) {
	m := mountT(t, Options{})
	k1, k2 := newKey(), newKey()
	want := make([]byte, 3<<20) // past the spool's memory
	for i := range want {
		want[i] = byte(i * 7)
	}
	if err := os.WriteFile(m.path(k1), want, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(m.path(k1)); err != nil { // the kernel holds k1's inode
		t.Fatal(err)
	}
	if err := os.Rename(m.path(k1), m.path(k2)); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(m.path(k2))
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, got, want)
	if _, err := os.Stat(m.path(k1)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("source after rename: %v", err)
	}
	sum := make([]byte, 64)
	if n, err := syscall.Getxattr(m.path(k2), xattrSHA256, sum); err != nil || string(sum[:n]) != digest.Of(want).String() {
		t.Errorf("sha256 of the renamed entry: %q, %v", sum[:n], err)
	}
	if err := os.Rename(m.path(k2), m.path("not a key")); !errors.Is(err, syscall.EXDEV) {
		t.Errorf("rename of an entry to a scratch name: %v, want EXDEV", err)
	}
}

func listNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestRenameClosedScratchPublishes: a temp file closed and then renamed
// to a key is readable under the key as soon as the rename returns, even
// while the kernel's RELEASE of its handle is still to come. Here a dup of
// the descriptor holds the handle 50 ms after the first close (its FLUSH):
// the rename waits for that RELEASE instead of leaving the publish to it.
func TestRenameClosedScratchPublishes(t *testing.T) {
	m := mountT(t, Options{})
	tmp, key := m.path("tmp.result"), m.path(newKey())
	f, err := os.Create(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("the result")); err != nil {
		t.Fatal(err)
	}
	dup, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil { // FLUSH; the handle lives on in dup
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() {
		time.Sleep(50 * time.Millisecond) // well within releaseWait
		syscall.Close(dup)                // FLUSH and RELEASE
		close(closed)
	}()
	t.Cleanup(func() { <-closed }) // before the unmount
	if err := os.Rename(tmp, key); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(key); err != nil || string(b) != "the result" {
		t.Fatalf("read right after the rename: %q, %v", b, err)
	}
}
