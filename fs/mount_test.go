package fs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/mounttest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/bolt"
	"github.com/flechefs/flechefs/tiers/memory"
)

func TestWriteCloseRead(t *testing.T) {
	m := mountT(t, Options{})
	for _, size := range []int{0, 1, 4096, 1<<20 + 1, 20 << 20} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			p := m.path(newKey())
			want := pattern(size, 1)
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			// Write in uneven pieces so request boundaries vary.
			for rest := want; len(rest) > 0; {
				n := min(len(rest), 300_001)
				if _, err := f.Write(rest[:n]); err != nil {
					t.Fatal(err)
				}
				rest = rest[n:]
			}
			if err := f.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			if size == 0 {
				// No write: published at RELEASE, just after close.
				waitFor(t, 2*time.Second, "empty entry", func() bool { _, err := os.Stat(p); return err == nil })
			}
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatalf("stat right after close: %v", err)
			}
			if fi.Size() != int64(size) || fi.Mode() != 0o444 {
				t.Errorf("stat: size %d mode %v, want %d -r--r--r--", fi.Size(), fi.Mode(), size)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if st.Ino != stableIno(digest.MustParse(filepath.Base(p))) || st.Uid != uint32(os.Getuid()) || st.Nlink != 1 {
				t.Errorf("stat: ino %d uid %d nlink %d", st.Ino, st.Uid, st.Nlink)
			}
			got, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			mustEqual(t, got, want)
			// Again, from the page cache.
			got, err = os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			mustEqual(t, got, want)
		})
	}
}

func TestReadAtOffsets(t *testing.T) {
	m := mountT(t, Options{})
	p := m.path(newKey())
	want := pattern(3<<20+17, 2)
	if err := os.WriteFile(p, want, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, c := range []struct{ off, n int }{
		{0, 1}, {1, 4095}, {4095, 2}, {1 << 20, 1 << 20}, {len(want) - 10, 10}, {len(want) - 5, 100}, {123457, 999_999},
	} {
		buf := make([]byte, c.n)
		n, err := f.ReadAt(buf, int64(c.off))
		end := min(c.off+c.n, len(want))
		if n != end-c.off || (err != nil && err != io.EOF) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", c.off, c.n, n, err)
		}
		mustEqual(t, buf[:n], want[c.off:end])
	}
	if n, err := f.ReadAt(make([]byte, 10), int64(len(want))+5); n != 0 || err != io.EOF {
		t.Errorf("ReadAt past EOF = %d, %v", n, err)
	}
}

// TestInvisibleUntilClose: while a value is written, nobody else sees the
// name; the writer's descriptor works (fstat, pwrite, ftruncate, read
// back); right after close, everybody does.
func TestInvisibleUntilClose(t *testing.T) {
	m := mountT(t, Options{})
	name := newKey()
	p := m.path(name)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(pattern(100_000, 3)); err != nil {
		t.Fatal(err)
	}
	invisible := func(when string) {
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { // another goroutine, looking up the path afresh
			defer wg.Done()
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: stat from another goroutine: %v, want ENOENT", when, err)
			}
			if g, err := os.Open(p); !errors.Is(err, os.ErrNotExist) {
				if err == nil {
					g.Close()
				}
				t.Errorf("%s: open from another goroutine: %v, want ENOENT", when, err)
			}
			ents, err := os.ReadDir(m.dir)
			if err != nil {
				t.Error(err)
			}
			for _, e := range ents {
				if e.Name() == name {
					t.Errorf("%s: readdir lists the name being written", when)
				}
			}
		}()
		wg.Wait()
	}
	invisible("after write")
	// Non-sequential writes and truncates: the hash is recomputed.
	if _, err := f.WriteAt([]byte("XYZ"), 10); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(200_000); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("tail"), 199_996); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(150_000); err != nil {
		t.Fatal(err)
	}
	fi, err := f.Stat()
	if err != nil || fi.Size() != 150_000 {
		t.Fatalf("fstat while writing: %v, %v; want size 150000", fi, err)
	}
	buf := make([]byte, 5)
	if _, err := f.ReadAt(buf, 8); err != nil || string(buf[2:]) != "XYZ" {
		t.Fatalf("read back while writing: %q, %v", buf, err)
	}
	invisible("after pwrite and truncate")
	if g, err := os.Open(fmt.Sprintf("/proc/self/fd/%d", f.Fd())); !errors.Is(err, syscall.EACCES) {
		if err == nil {
			g.Close()
		}
		t.Errorf("reopen of the writer's descriptor: %v, want EACCES", err)
	}
	want := pattern(100_000, 3)
	copy(want[10:], "XYZ")
	want = append(want, make([]byte, 50_000)...)

	if err := f.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if _, err := f.Write([]byte("late")); err == nil {
		t.Fatal("write after close succeeded")
	}
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read right after close: %v", err)
	}
	mustEqual(t, got, want)
	sum := make([]byte, 64)
	if n, err := syscall.Getxattr(p, xattrSHA256, sum); err != nil || string(sum[:n]) != digest.Of(want).String() {
		t.Fatalf("sha256 xattr %q, %v; want %s", sum, err, digest.Of(want))
	}
}

// TestPublishAtLastClose: closing one descriptor of the open file (a dup,
// an inherited copy) publishes nothing; the last close does, with every
// byte written through any of them.
func TestPublishAtLastClose(t *testing.T) {
	m := mountT(t, Options{})
	p := m.path(newKey())
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := syscall.Write(fd, []byte("first ")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Close(fd); err != nil {
		t.Fatalf("close of dup: %v", err)
	}
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("visible after the close of a dup: %v", err)
	}
	if _, err := f.Write([]byte("second")); err != nil {
		t.Fatalf("write after the close of a dup: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// No sleep: the lookup waits for the RELEASE the close queued.
	if got, err := os.ReadFile(p); err != nil || string(got) != "first second" {
		t.Fatalf("content %q, %v", got, err)
	}
}

// TestWriteAfterFsyncIsEIO: fsync of a write descriptor publishes at once;
// later writes fail.
func TestWriteAfterFsyncIsEIO(t *testing.T) {
	m := mountT(t, Options{})
	p := m.path(newKey())
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("first")); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(p); err != nil || string(got) != "first" {
		t.Fatalf("after fsync, before close: %q, %v", got, err)
	}
	if _, err := f.Write([]byte("second")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write after fsync: %v, want EIO", err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close after fsync: %v", err)
	}
	if got, err := os.ReadFile(p); err != nil || string(got) != "first" {
		t.Fatalf("content %q, %v", got, err)
	}
}

func TestRefusals(t *testing.T) {
	m := mountT(t, Options{})
	pub := m.path(newKey())
	if err := os.WriteFile(pub, []byte("published"), 0o644); err != nil {
		t.Fatal(err)
	}
	fresh := m.path(newKey())
	is := func(what string, err, want error) {
		t.Helper()
		if !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", what, err, want)
		}
	}
	_, err := os.OpenFile(pub, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	is("O_EXCL of a published entry", err, syscall.EEXIST)
	for _, fl := range []int{os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC, os.O_RDONLY | os.O_APPEND, os.O_WRONLY | os.O_CREATE | os.O_APPEND} {
		_, err := os.OpenFile(pub, fl, 0)
		is(fmt.Sprintf("open(published, %#x)", fl), err, syscall.EACCES)
	}
	// With O_CREAT: a writer that lost the race; its value is dropped.
	for _, fl := range []int{os.O_WRONLY | os.O_CREATE | os.O_TRUNC, os.O_RDWR | os.O_CREATE} {
		f, err := os.OpenFile(pub, fl, 0o644)
		is(fmt.Sprintf("open(published, %#x)", fl), err, nil)
		if err == nil {
			_, err = f.Write([]byte("loser's value"))
			is(fmt.Sprintf("write through open(published, %#x)", fl), err, nil)
			is(fmt.Sprintf("close of open(published, %#x)", fl), f.Close(), nil)
		}
	}
	for _, bad := range []string{"ABCDEF0123456789", "abc", "0123456789abcdeg", strings.ToUpper(filepath.Base(pub))} {
		_, err := os.Stat(m.path(bad))
		is("stat "+bad, err, syscall.ENOENT)
	}
	is("mkdir", os.Mkdir(fresh, 0o755), syscall.EPERM)
	is("symlink", os.Symlink(pub, fresh), syscall.EPERM)
	is("link", os.Link(pub, fresh), syscall.EPERM)
	is("rename into .flechefs", os.Rename(pub, m.path(ctlName+"/"+newKey())), syscall.EPERM)
	is("rename of .flechefs", os.Rename(m.path(ctlName), fresh), syscall.EPERM)
	is("mknod", syscall.Mknod(fresh, syscall.S_IFIFO|0o644, 0), syscall.EPERM)
	before, err := os.Stat(pub)
	if err != nil {
		t.Fatal(err)
	}
	// Accepted, and nothing changes (entryNode.Setattr).
	is("chmod", os.Chmod(pub, 0o755), nil)
	is("chown", os.Chown(pub, 1, 1), nil)
	is("utimes", os.Chtimes(pub, time.Unix(1, 0), time.Unix(1, 0)), nil)
	if st, err := os.Stat(pub); err != nil || st.Mode() != before.Mode() || !st.ModTime().Equal(before.ModTime()) ||
		st.Size() != before.Size() || st.Sys().(*syscall.Stat_t).Uid != before.Sys().(*syscall.Stat_t).Uid {
		t.Errorf("chmod, chown, utimes changed the entry: %v %v %v → %v", before.Mode(), before.ModTime(), before.Size(), err)
	}
	is("truncate", os.Truncate(pub, 1), syscall.EPERM)
	is("setxattr", syscall.Setxattr(pub, "user.x", []byte("y"), 0), syscall.EPERM)
	// What cp -p sends before its chmod: "no ACLs here", not "refused".
	acl := []byte("\x02\x00\x00\x00\x01\x00\x06\x00\xff\xff\xff\xff\x04\x00\x04\x00\xff\xff\xff\xff\x20\x00\x04\x00\xff\xff\xff\xff")
	is("setxattr of an ACL", syscall.Setxattr(pub, "system.posix_acl_access", acl, 0), syscall.EOPNOTSUPP)
	is("removexattr", syscall.Removexattr(pub, xattrTiers), syscall.EPERM)
	is("rmdir .flechefs", os.Remove(m.path(ctlName)), syscall.EPERM)
	is("unlink stats", os.Remove(m.path(ctlName+"/stats")), syscall.EPERM)
	_, err = os.OpenFile(m.path(ctlName+"/stats"), os.O_WRONLY, 0)
	is("write stats", err, syscall.EACCES)
	_, err = os.Create(m.path(ctlName + "/" + newKey()))
	is("create in .flechefs", err, syscall.EACCES)
	if got, err := os.ReadFile(pub); err != nil || string(got) != "published" {
		t.Errorf("entry changed by the refusals: %q, %v", got, err)
	}
	if _, err := os.Stat(fresh); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused operations left %s behind: %v", fresh, err)
	}
}

func TestUnlink(t *testing.T) {
	m := mountT(t, Options{})
	name := newKey()
	p := m.path(name)
	if err := os.WriteFile(p, []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := os.Open(p) // stays readable after unlink
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat after unlink: %v", err)
	}
	if b, err := io.ReadAll(r); err != nil || string(b) != "one" {
		t.Fatalf("reader opened before unlink: %q, %v", b, err)
	}
	if err := os.Remove(p); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("second unlink: %v", err)
	}
	if err := os.Remove(m.path("junk")); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("unlink invalid name: %v", err)
	}
	// The name can be published again, with other content, and the
	// kernel must not serve the old pages.
	if err := os.WriteFile(p, []byte("two, longer"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(p); err != nil || string(b) != "two, longer" {
		t.Fatalf("republished: %q, %v", b, err)
	}
}

func TestReaddir(t *testing.T) {
	m := mountT(t, Options{})
	var want []string
	for i := range 50 {
		name := newKey()
		if i%2 == 0 {
			name += ".out"
		}
		want = append(want, name)
		if err := os.WriteFile(m.path(name), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want = append(want, ctlName)
	slices.Sort(want)
	ents, err := os.ReadDir(m.dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, want) {
		t.Fatalf("readdir:\n got %v\nwant %v", got, want)
	}
	// ls -l style: attributes from READDIRPLUS.
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if e.Name() != ctlName && fi.Size() != int64(len(e.Name())) {
			t.Errorf("%s: size %d", e.Name(), fi.Size())
		}
	}
}

// remoteListing is a stack whose listing has no hashes, as a remote
// tier's has not, and which counts its opens.
type remoteListing struct {
	stack
	opens atomic.Int64
	size  func(tiers.Info) int64 // the size the listing says, if set
}

func (s *remoteListing) List(ctx context.Context, fn func(tiers.Info) error) error {
	return s.stack.List(ctx, func(i tiers.Info) error {
		if s.size != nil {
			i.Size = s.size(i)
		}
		i.Sum = digest.Sum{}
		return fn(i)
	})
}

func (s *remoteListing) Open(ctx context.Context, k digest.Key) (tiers.Reader, error) {
	s.opens.Add(1)
	return s.stack.Open(ctx, k)
}

// TestReadAfterListing: an entry the kernel knows from a listing without
// hashes (READDIRPLUS of remote entries) is opened with one open of the
// stack, as one it looked up: the listing's size is the value's, which is
// all the kernel's inode needs. Where the listing's size is not the
// value's (deleted and published again with another size since), the open
// answers ESTALE, and the kernel looks the name up again and reads it whole.
func TestReadAfterListing(t *testing.T) {
	for _, stale := range []bool{false, true} {
		t.Run(fmt.Sprintf("stale=%v", stale), func(t *testing.T) {
			st := &remoteListing{stack: newStack(t)}
			if stale {
				st.size = func(i tiers.Info) int64 { return i.Size - 1 }
			}
			m := mountStack(t, st, Options{})
			k, v := newKey(), pattern(100<<10, 3)
			if err := os.WriteFile(m.path(k), v, 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := os.ReadDir(m.dir); err != nil {
				t.Fatal(err)
			}
			before := st.opens.Load()
			got, err := os.ReadFile(m.path(k))
			if err != nil {
				t.Fatal(err)
			}
			mustEqual(t, got, v)
			want := int64(1)
			if stale {
				want = 2 // ESTALE, then the inode of the fresh lookup
			}
			if n := st.opens.Load() - before; n != want {
				t.Errorf("the read after the listing opened the value %d times, want %d", n, want)
			}
		})
	}
}

func TestXattrs(t *testing.T) {
	m := mountT(t, Options{})
	p := m.path(newKey())
	data := pattern(5000, 9)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	get := func(attr string) (string, error) {
		n, err := syscall.Getxattr(p, attr, nil) // size query
		if err != nil {
			return "", err
		}
		buf := make([]byte, n)
		n, err = syscall.Getxattr(p, attr, buf)
		return string(buf[:n]), err
	}
	// "unpersisted" leads the list until the stack's background copy is done.
	waitFor(t, 2*time.Second, "tiers xattr", func() bool { v, _ := get(xattrTiers); return v == "ram" })
	for attr, want := range map[string]string{
		xattrTiers: "ram", xattrSHA256: digest.Of(data).String(), xattrUpload: "none", xattrLocal: "yes",
	} {
		if got, err := get(attr); err != nil || got != want {
			t.Errorf("%s = %q, %v; want %q", attr, got, err, want)
		}
	}
	if _, err := get("user.other"); !errors.Is(err, syscall.ENODATA) {
		t.Errorf("unknown xattr: %v, want ENODATA", err)
	}
	if _, err := syscall.Getxattr(p, xattrSHA256, make([]byte, 3)); !errors.Is(err, syscall.ERANGE) {
		t.Errorf("small buffer: %v, want ERANGE", err)
	}
	buf := make([]byte, 1024)
	n, err := syscall.Listxattr(p, buf)
	if err != nil {
		t.Fatal(err)
	}
	names := strings.Split(strings.TrimSuffix(string(buf[:n]), "\x00"), "\x00")
	if !slices.Equal(names, []string{xattrTiers, xattrSHA256, xattrUpload, xattrLocal}) {
		t.Errorf("listxattr = %q", names)
	}
}

func TestControlFolder(t *testing.T) {
	m := mountT(t, Options{})
	if err := os.WriteFile(m.path(newKey()), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(m.path(ctlName))
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o555 {
		t.Fatalf("stat .flechefs: %v, %v", fi, err)
	}
	b, err := os.ReadFile(m.path(ctlName + "/stats"))
	if err != nil {
		t.Fatal(err)
	}
	var s tiers.Stats
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("stats is not JSON: %v\n%s", err, b)
	}
	if len(s.Tiers) != 1 || s.Tiers[0].Name != "ram" || s.Tiers[0].Entries < 1 {
		t.Errorf("stats: %+v", s)
	}
	v, err := os.ReadFile(m.path(ctlName + "/version"))
	if err != nil || !strings.HasPrefix(string(v), "flechefs ") {
		t.Errorf("version: %q, %v", v, err)
	}
	ents, err := os.ReadDir(m.path(ctlName))
	if err != nil || len(ents) != 2 {
		t.Errorf("readdir .flechefs: %v, %v", ents, err)
	}
}

// TestRacingWriters: writers of one new name with different contents; one
// complete value wins and every close that got a descriptor succeeds.
func TestRacingWriters(t *testing.T) {
	m := mountT(t, Options{SpoolThreshold: 64 << 10})
	const size = 700_000
	for round := range 10 {
		p := m.path(newKey())
		var wg sync.WaitGroup
		wrote := make([]bool, 4)
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o644)
				if err != nil {
					// The other writer published first: the
					// name is an existing, read-only entry.
					if !errors.Is(err, syscall.EACCES) && !errors.Is(err, syscall.EEXIST) {
						t.Errorf("round %d writer %d: open: %v", round, w, err)
					}
					return
				}
				data := bytes.Repeat([]byte{byte('a' + w)}, size)
				for off := 0; off < size; off += 100_000 {
					if _, err := f.Write(data[off:min(off+100_000, size)]); err != nil {
						t.Errorf("round %d writer %d: write: %v", round, w, err)
					}
				}
				if err := f.Close(); err != nil {
					t.Errorf("round %d writer %d: close: %v", round, w, err)
				}
				wrote[w] = true
			}()
		}
		wg.Wait()
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if len(got) != size || !bytes.Equal(got, bytes.Repeat(got[:1], size)) || !wrote[got[0]-'a'] {
			t.Fatalf("round %d: value is not one writer's complete value (%d bytes, starts %q)", round, len(got), got[:min(len(got), 8)])
		}
	}
}

func TestShellRedirect(t *testing.T) {
	m := mountT(t, Options{})
	// The shell opens the file, dup2s it onto stdout and closes the
	// original (a FLUSH with no write); seq writes and exits.
	p := m.path(newKey())
	out, err := exec.Command("/bin/sh", "-c", "seq 1 200000 > "+p).CombinedOutput()
	if err != nil {
		t.Fatalf("sh: %v\n%s", err, out)
	}
	var want bytes.Buffer
	for i := 1; i <= 200000; i++ {
		fmt.Fprintf(&want, "%d\n", i)
	}
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read right after the shell returned: %v", err)
	}
	mustEqual(t, got, want.Bytes())

	// A builtin writing through the shell's own descriptor.
	p2 := m.path(newKey())
	if out, err := exec.Command("/bin/sh", "-c", "printf 'hello\\n' > "+p2).CombinedOutput(); err != nil {
		t.Fatalf("sh: %v\n%s", err, out)
	}
	if got, err := os.ReadFile(p2); err != nil || string(got) != "hello\n" {
		t.Fatalf("printf > f: %q, %v", got, err)
	}

	// Empty entries: published at release, just after close.
	for _, script := range []string{": > %s", "touch %s"} {
		p := m.path(newKey())
		if out, err := exec.Command("/bin/sh", "-c", fmt.Sprintf(script, p)).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", script, err, out)
		}
		waitFor(t, 2*time.Second, script, func() bool {
			fi, err := os.Stat(p)
			return err == nil && fi.Size() == 0
		})
	}
}

// TestKilledWriter: a writer killed by a signal publishes nothing.
func TestKilledWriter(t *testing.T) {
	m := mountT(t, Options{})
	p := m.path(newKey())
	script := fmt.Sprintf(`sh -c 'printf partial; kill -9 $$' > %s; true`, p)
	if out, err := exec.Command("/bin/sh", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("sh: %v\n%s", err, out)
	}
	// Killed before writing anything: no empty entry at release either.
	p2 := m.path(newKey())
	script = fmt.Sprintf(`sh -c 'kill -9 $$' > %s; true`, p2)
	if out, err := exec.Command("/bin/sh", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("sh: %v\n%s", err, out)
	}
	time.Sleep(200 * time.Millisecond) // let RELEASE arrive
	for _, p := range []string{p, p2} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("value of a killed writer was published: %v", err)
		}
	}
}

func TestSpoolSpills(t *testing.T) {
	m := mountT(t, Options{SpoolThreshold: 1 << 20})
	p := m.path(newKey())
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	h := digest.NewHasher()
	chunk := make([]byte, 1<<20)
	for i := range 64 {
		for j := range chunk {
			chunk[j] = byte(i + j)
		}
		h.Write(chunk)
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
		if i == 0 && spoolFiles(t, m.spool) != 0 {
			t.Fatalf("spilled at 1 MiB, threshold is 1 MiB")
		}
	}
	if n := spoolFiles(t, m.spool); n != 1 {
		t.Fatalf("%d open spool files in %s while writing 64 MiB, want 1", n, m.spool)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Size() != 64<<20 {
		t.Fatalf("stat: %v, %v", fi, err)
	}
	sum := make([]byte, 64)
	if n, err := syscall.Getxattr(p, xattrSHA256, sum); err != nil || string(sum[:n]) != h.Sum().String() {
		t.Fatalf("sha256 %q, %v; want %s", sum, err, h.Sum())
	}
	f2, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	rh := digest.NewHasher()
	if _, err := io.Copy(rh, f2); err != nil || rh.Sum() != h.Sum() {
		t.Fatalf("read back: %v, sum %s want %s", err, rh.Sum(), h.Sum())
	}
}

// spoolFiles counts this process's open (unlinked) spool files in dir.
func spoolFiles(t *testing.T, dir string) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		l, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err == nil && strings.HasPrefix(l, dir+"/flechefs-spool-") {
			n++
		}
	}
	return n
}

func TestPublishErrors(t *testing.T) {
	var failMu sync.Mutex
	var fail error // what Publish fails with
	fs := &faultStack{stack: newStack(t)}
	fs.publishFn = func(ctx context.Context, k digest.Key, b tiers.Blob, sum digest.Sum) (tiers.Info, error) {
		failMu.Lock()
		err := fail
		failMu.Unlock()
		if err != nil {
			b.Release()
			return tiers.Info{}, tiers.Wrap("stack", "publish", k, err)
		}
		return fs.stack.Publish(ctx, k, b, sum)
	}
	m := mountStack(t, fs, Options{})
	for _, c := range []struct {
		err  error
		want error // from fsync
	}{
		{tiers.ErrNoSpace, syscall.ENOSPC},
		{tiers.ErrReadOnly, syscall.EROFS},
		{tiers.ErrExist, nil}, // another writer won: fsync succeeds
	} {
		failMu.Lock()
		fail = c.err
		failMu.Unlock()
		for _, fsync := range []bool{true, false} {
			p := m.path(newKey())
			f, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write([]byte("data")); err != nil {
				t.Fatal(err)
			}
			if fsync {
				err = f.Sync()
				if (c.want == nil && err != nil) || (c.want != nil && !errors.Is(err, c.want)) {
					t.Errorf("publish failing with %v: fsync = %v, want %v", c.err, err, c.want)
				}
			}
			// The last close does not wait for the publish: nobody
			// would hear its error (it is logged and counted).
			if err := f.Close(); err != nil && !fsync {
				t.Errorf("publish failing with %v: close = %v", c.err, err)
			}
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("publish failing with %v: stat = %v", c.err, err)
			}
		}
	}
	w := m.writeStats(t)
	if w.Dropped.PublishError != 4 || w.Dropped.Exists != 2 || w.Published != 0 {
		t.Errorf("write counters %+v, want 4 publish errors, 2 existing, 0 published", w)
	}
}

func TestFsync(t *testing.T) {
	m := mountT(t, Options{})
	p := m.path(newKey())
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("durable")); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync before close: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Sync(); err != nil {
		t.Fatalf("fsync of a read handle: %v", err)
	}
	d, err := os.Open(m.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		t.Fatalf("fsync of the directory: %v", err)
	}
}

// TestNegativeTTL: a miss is cached at most NegativeTTL; a publish by
// another user of the stack shows within it; a publish through this mount
// shows at once.
func TestNegativeTTL(t *testing.T) {
	st := newStack(t)
	m := mountStack(t, st, Options{NegativeTTL: 500 * time.Millisecond})
	name := newKey()
	p := m.path(name)
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	missed := time.Now() // the kernel's negative entry expires at most 500ms after this
	b := &spoolBlob{mem: []byte("elsewhere"), size: 9}
	if _, err := st.Publish(context.Background(), digest.MustParse(name), b, digest.Of(b.mem)); err != nil {
		t.Fatal(err)
	}
	mounttest.VisibleWithinTTL(t, missed, 500*time.Millisecond, p)

	p2 := m.path(newKey())
	if _, err := os.Stat(p2); !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if err := os.WriteFile(p2, []byte("here"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p2); err != nil {
		t.Fatalf("miss, then publish through the mount: stat = %v", err)
	}

	// Published elsewhere while this mount still trusts its miss: the
	// create succeeds, and so does close, but the first value stays.
	name3 := newKey()
	p3 := m.path(name3)
	if _, err := os.Stat(p3); !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	b3 := &spoolBlob{mem: []byte("first"), size: 5}
	if _, err := st.Publish(context.Background(), digest.MustParse(name3), b3, digest.Of(b3.mem)); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p3, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err == nil {
		if _, err := f.Write([]byte("second")); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatalf("close of the losing writer: %v", err)
		}
	} else if !errors.Is(err, syscall.EEXIST) {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(p3); err != nil || string(got) != "first" {
		t.Fatalf("after a lost race: %q, %v", got, err)
	}
	if got := st.Stats().DroppedPublishes; got != 1 {
		t.Errorf("dropped_publishes = %d, want 1", got)
	}

	if _, err := mount(t.TempDir(), st, Options{NegativeTTL: 3 * time.Second}); err == nil {
		t.Fatal("NegativeTTL of 3s accepted")
	}
}

func TestReadAhead(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Log("not root: read_ahead_kb is left alone")
		return
	}
	m := mountT(t, Options{ReadAheadKB: 2048})
	var st syscall.Stat_t
	if err := syscall.Stat(m.dir, &st); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", devMajor(st.Dev), devMinor(st.Dev)))
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(b)) != "2048" {
		t.Errorf("read_ahead_kb = %s, want 2048", b)
	}
}

// TestConcurrentMix runs writers, readers, listers and unlinkers at once
// (for the race detector as much as for the results).
func TestConcurrentMix(t *testing.T) {
	m := mountT(t, Options{SpoolThreshold: 32 << 10})
	const workers, each = 6, 25
	names := make([][]string, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				name := newKey()
				data := pattern(1000*i+w, byte(w))
				if err := os.WriteFile(m.path(name), data, 0o644); err != nil {
					t.Errorf("write: %v", err)
					return
				}
				got, err := os.ReadFile(m.path(name))
				if err != nil || !bytes.Equal(got, data) {
					t.Errorf("read back %s: %d bytes, %v", name, len(got), err)
				}
				if i%5 == 4 {
					if err := os.Remove(m.path(name)); err != nil {
						t.Errorf("unlink: %v", err)
					}
				} else {
					names[w] = append(names[w], name)
				}
				if i%7 == 0 {
					if _, err := os.ReadDir(m.dir); err != nil {
						t.Errorf("readdir: %v", err)
					}
				}
			}
		}()
	}
	wg.Wait()
	ents, err := os.ReadDir(m.dir)
	if err != nil {
		t.Fatal(err)
	}
	want := 1 // .flechefs
	for _, n := range names {
		want += len(n)
	}
	if len(ents) != want {
		t.Errorf("readdir: %d entries, want %d", len(ents), want)
	}
}

// TestLockFileRemovedAfterClose: fleche's PickleFile creates <digest>.lock
// exclusively, closes it without writing and removes it. The empty value is
// published at RELEASE, which the kernel sends after close(2) returned; the
// stat and the unlink right after must still find it.
func TestLockFileRemovedAfterClose(t *testing.T) {
	m := mountT(t, Options{})
	for i := range 300 {
		p := m.path(newKey() + ".lock")
		fd, err := syscall.Open(p, syscall.O_CREAT|syscall.O_EXCL|syscall.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		syscall.Close(fd)
		if i%2 == 0 {
			var st syscall.Stat_t
			if err := syscall.Stat(p, &st); err != nil {
				t.Fatalf("round %d: stat right after close: %v", i, err)
			}
		}
		if err := syscall.Unlink(p); err != nil {
			t.Fatalf("round %d: unlink right after close: %v", i, err)
		}
	}
}

// statsStack reports a disk nearly full under its bbolt tier (a fault:
// the test disk cannot be filled).
type statsStack struct {
	stack
	diskFree atomic.Int64
}

func (s *statsStack) Stats() tiers.Stats {
	st := s.stack.Stats()
	for i := range st.Tiers {
		if st.Tiers[i].DiskBytes > 0 && s.diskFree.Load() > 0 {
			st.Tiers[i].DiskFree = s.diskFree.Load()
		}
	}
	return st
}

// TestStatfs: df reports the largest local tier (bbolt here, not RAM):
// its size, its values' bytes as used, and no more free room than its
// disk has.
func TestStatfs(t *testing.T) {
	mem, err := memory.New(memory.Options{Limit: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	const limit = 256 << 20
	bt, err := bolt.Open(filepath.Join(t.TempDir(), "cache.db"), bolt.Options{Limit: limit})
	if err != nil {
		t.Fatal(err)
	}
	st, err := tiers.NewStack([]tiers.Layer{{Tier: mem}, {Tier: bt}}, tiers.StackOptions{SpoolDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	fake := &statsStack{stack: st}
	m := mountStack(t, fake, Options{})
	statfs := func() syscall.Statfs_t {
		t.Helper()
		var fs syscall.Statfs_t
		if err := syscall.Statfs(m.dir, &fs); err != nil {
			t.Fatal(err)
		}
		return fs
	}
	fs := statfs()
	if fs.Bsize != 4096 || fs.Blocks != limit/4096 || fs.Bfree != fs.Blocks || fs.Bavail != fs.Blocks || fs.Files != fs.Ffree {
		t.Fatalf("empty: bsize %d blocks %d bfree %d bavail %d files %d ffree %d; want %d blocks, all free",
			fs.Bsize, fs.Blocks, fs.Bfree, fs.Bavail, fs.Files, fs.Ffree, limit/4096)
	}
	f, err := os.Create(m.path(newKey()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(pattern(400<<10, 3)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil { // in bbolt now
		t.Fatal(err)
	}
	f.Close()
	fs = statfs()
	if want := uint64(limit-400<<10) / 4096; fs.Bfree != want || fs.Bavail != want || fs.Files != fs.Ffree+1 {
		t.Errorf("one 400 KiB entry: bfree %d bavail %d files %d ffree %d; want %d free blocks, 1 file",
			fs.Bfree, fs.Bavail, fs.Files, fs.Ffree, want)
	}
	fake.diskFree.Store(1 << 20)
	if fs = statfs(); fs.Bfree != 256 || fs.Blocks != limit/4096 {
		t.Errorf("disk with 1 MiB free: bfree %d, blocks %d; want 256 free of %d", fs.Bfree, fs.Blocks, limit/4096)
	}
}

// TestFsyncDirAfterClose: close(2) returns before the kernel's RELEASE is
// served, and the publish happens there. An fsync of the root that begins
// after the close returned covers the entry: it waits for that publish.
// The publish is held here until the fsync has had time to return early.
func TestFsyncDirAfterClose(t *testing.T) {
	gate, entered := make(chan struct{}), make(chan struct{})
	var published atomic.Bool
	fst := &faultStack{stack: newStack(t)}
	fst.publishFn = func(ctx context.Context, k digest.Key, b tiers.Blob, sum digest.Sum) (tiers.Info, error) {
		close(entered)
		<-gate
		info, err := fst.stack.Publish(ctx, k, b, sum)
		published.Store(err == nil)
		return info, err
	}
	m := mountStack(t, fst, Options{})
	open := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(open) // before the unmount, which waits for the RELEASE
	if err := os.WriteFile(m.path(newKey()), []byte("closed, then the root fsync'd"), 0o644); err != nil {
		t.Fatal(err)
	}
	<-entered // the RELEASE is being served
	d, err := os.Open(m.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	synced := make(chan error, 1)
	go func() { synced <- d.Sync() }()
	select {
	case err := <-synced:
		t.Fatalf("fsync of the root returned (%v) while the publish of an entry closed before it was held", err)
	case <-time.After(200 * time.Millisecond):
	}
	open()
	if err := <-synced; err != nil {
		t.Fatalf("fsync of the root: %v", err)
	}
	if !published.Load() {
		t.Fatal("fsync of the root returned before the publish ended")
	}
}
