package integration

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flechefs/flechefs/internal/mounttest"
	"github.com/flechefs/flechefs/internal/remotetest"
	"github.com/flechefs/flechefs/internal/sshdtest"
)

// The fleche CacheStack scenario: A computes and publishes; B, with its own
// RAM and bbolt tiers and the same remote, reads it, holds it in RAM after
// the read, and still has it in bbolt after a restart. For every kind of
// remote.
func TestCacheStackAcrossMachines(t *testing.T) {
	remotetest.Each(t, testCacheStackAcrossMachines)
}

func testCacheStackAcrossMachines(t *testing.T, start func(testing.TB) remotetest.Store) {
	srv := start(t)
	a := newStoreNode(t, "A", srv, nodeOpts{})
	b := newStoreNode(t, "B", srv, nodeOpts{})

	k := key("simulate(42)")
	val := make([]byte, 3<<20+17)
	rand.Read(val)
	if err := os.WriteFile(a.path(k), val, 0o644); err != nil {
		t.Fatal(err)
	}
	a.sync(30 * time.Second)
	if got, sum, err := srv.Get(k); err != nil || !bytes.Equal(got, val) || sum != key(string(val)) {
		t.Fatalf("the remote does not hold the value and its checksum after sync: %q, %v", sum, err)
	}

	got, err := os.ReadFile(b.path(k))
	if err != nil || !bytes.Equal(got, val) {
		t.Fatalf("B read: %v (equal=%v)", err, bytes.Equal(got, val))
	}
	eventually(t, "B's RAM tier to hold the entry", 10*time.Second, func() bool {
		return strings.Contains(xattr(t, b.path(k), "user.flechefs.tiers"), "ram")
	})
	if ts := b.tierStats(srv.Kind()); ts.Hits != 1 {
		t.Fatalf("B's %s hits = %d, want 1", srv.Kind(), ts.Hits)
	}
	if ts := b.tierStats("ram"); ts.Promotions != 1 {
		t.Fatalf("B's ram promotions = %d, want 1", ts.Promotions)
	}
	if sum := xattr(t, b.path(k), "user.flechefs.sha256"); sum != key(string(val)) {
		t.Fatalf("sha256 xattr %q", sum)
	}
	eventually(t, "B's bolt tier to hold the entry", 10*time.Second, func() bool {
		return strings.Contains(xattr(t, b.path(k), "user.flechefs.tiers"), "bolt")
	})

	// B restarts with the remote gone: the entry comes from its bbolt tier.
	srv.Stop()
	b.restart()
	got, err = os.ReadFile(b.path(k))
	if err != nil || !bytes.Equal(got, val) {
		t.Fatalf("B read after restart: %v", err)
	}
	if where := xattr(t, b.path(k), "user.flechefs.tiers"); !strings.Contains(where, "bolt") {
		t.Fatalf("after restart the entry is in %q, want bolt", where)
	}
}

// The shell idiom users write, and the everyday tools.
func TestShell(t *testing.T) {
	n := newNode(t, "shell", nil, nodeOpts{})
	k := key("features(img_001)")
	script := `f="$1"
[ -e "$f" ] || { echo computing >&2; printf 'result %s\n' 42 > "$f"; }
cat "$f"`
	runScript := func() (string, string) {
		cmd := exec.Command("sh", "-c", script, "sh", n.path(k))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("script: %v %s", err, stderr.String())
		}
		return string(out), stderr.String()
	}
	out, errOut := runScript()
	if out != "result 42\n" || !strings.Contains(errOut, "computing") {
		t.Fatalf("first run: %q %q", out, errOut)
	}
	out, errOut = runScript()
	if out != "result 42\n" || errOut != "" {
		t.Fatalf("second run recomputed: %q %q", out, errOut)
	}

	// cp in, cp out, dd, ls, find, test -e, rm.
	src := filepath.Join(n.dir, "src.bin")
	data := make([]byte, 5<<20+3)
	rand.Read(data)
	os.WriteFile(src, data, 0o644)
	k2 := key("big")
	n.run("cp", src, n.path(k2))
	n.run("cmp", src, n.path(k2))
	n.run("dd", "if="+n.path(k2), "of="+filepath.Join(n.dir, "dd.out"), "bs=1M", "status=none")
	n.run("cmp", src, filepath.Join(n.dir, "dd.out"))
	k3 := key("dd")
	n.run("dd", "if="+src, "of="+n.path(k3), "bs=64k", "status=none")
	n.run("cmp", src, n.path(k3))

	ls := n.run("ls", n.mnt)
	for _, want := range []string{k, k2, k3} {
		if !strings.Contains(ls, want) {
			t.Fatalf("ls does not list %s:\n%s", want, ls)
		}
	}
	found := lines(n.run("find", n.mnt, "-maxdepth", "1", "-type", "f", "-name", k2[:8]+"*"))
	if len(found) != 1 || found[0] != n.path(k2) {
		t.Fatalf("find: %q", found)
	}
	n.sh(`test -e "` + n.path(k2) + `"`)
	n.run("rm", n.path(k2))
	if err := exec.Command("test", "-e", n.path(k2)).Run(); err == nil {
		t.Fatal("test -e true after rm")
	}
	// Copiers that set mode and times after the data, once the entry is
	// published: accepted, nothing changes, and they exit 0.
	for i, cmd := range [][]string{
		{"cp", "-p", src},
		{"install", "-m", "0640", src},
		{"sh", "-c", `cp -p "$0" "$0.moved" && mv "$0.moved" "$1"`, src},
	} {
		kc := key(fmt.Sprintf("copier %d", i))
		args := append(cmd[1:], n.path(kc))
		n.run(cmd[0], args...)
		n.run("cmp", src, n.path(kc))
		if st, err := os.Stat(n.path(kc)); err != nil || st.Mode().Perm() != 0o444 {
			t.Errorf("%v: mode of the entry %v, %v", cmd, st.Mode(), err)
		}
	}
	n.run("touch", n.path(k))
	// A zero-byte result.
	k4 := key("empty")
	n.sh(`: > "` + n.path(k4) + `"`)
	eventually(t, "the empty entry", 5*time.Second, func() bool {
		st, err := os.Stat(n.path(k4))
		return err == nil && st.Size() == 0
	})
	// Entries are read-only files published at the write's close.
	st, err := os.Stat(n.path(k))
	if err != nil || st.Mode().Perm() != 0o444 {
		t.Fatalf("mode of an entry: %v %v", st.Mode(), err)
	}
}

// Python, standard library only, including fleche's PickleFile layout.
func TestPython(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is needed for this test (apt-get install python3)")
	}
	n := newNode(t, "python", nil, nodeOpts{})
	script := `
import hashlib, os, pickle, sys, errno
root = sys.argv[1]

def key(*call):
    return hashlib.sha256(repr(call).encode()).hexdigest()

# Plain files.
p = os.path.join(root, key("plain"))
assert not os.path.exists(p)
with open(p, "wb") as f:
    f.write(b"x" * 100000)
assert os.path.exists(p)
with open(p, "rb") as f:
    assert f.read() == b"x" * 100000
# A writer that lost the race (it found the key absent, another process
# published first): its open succeeds, its value is dropped at close.
with open(p, "wb") as f:
    f.write(b"y" * 10)
with open(p, "rb") as f:
    assert f.read() == b"x" * 100000
try:
    os.open(p, os.O_WRONLY)
    raise SystemExit("opening a published entry for writing without O_CREAT succeeded")
except PermissionError:
    pass

# fleche's PickleFile: <root>/<digest> holds the pickle, <digest>.lock is
# created exclusively around the write and removed after.
class PickleFile:
    def __init__(self, root): self.root = root
    def path(self, d): return os.path.join(self.root, d)
    def __contains__(self, d): return os.path.exists(self.path(d))
    def save(self, d, value):
        lock = self.path(d) + ".lock"
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        try:
            with open(self.path(d), "wb") as f:
                pickle.dump(value, f)
        finally:
            os.close(fd)
            os.remove(lock)
    def load(self, d):
        with open(self.path(d), "rb") as f:
            return pickle.load(f)

store = PickleFile(root)
d = key("simulate", 1, 2.5)
assert d not in store
value = {"energy": [1.5, 2.5], "label": "run-1", "blob": bytes(range(256)) * 1000}
store.save(d, value)
assert d in store
assert store.load(d) == value
assert not os.path.exists(store.path(d) + ".lock")
names = os.listdir(root)
assert d in names and not any(n.endswith(".lock") for n in names), names

# shutil copies the data, then sets the mode (copy) or mode and times
# (copy2) on the published entry: accepted, nothing changes.
import shutil, tempfile
src = os.path.join(tempfile.mkdtemp(), "result.bin")
with open(src, "wb") as f:
    f.write(os.urandom(300000))
os.chmod(src, 0o640)
for copier in (shutil.copy, shutil.copy2, shutil.copyfile, shutil.move):
    dst = os.path.join(root, key("copied by", copier.__name__))
    with open(src, "rb") as f:
        want = f.read()
    if copier is shutil.move:
        keep = src + ".keep"
        shutil.copy2(src, keep)
        copier(keep, dst)
        assert not os.path.exists(keep)
    else:
        copier(src, dst)
    with open(dst, "rb") as f:
        assert f.read() == want, copier.__name__
    assert os.stat(dst).st_mode & 0o777 == 0o444, (copier.__name__, oct(os.stat(dst).st_mode))
print("ok")
`
	out, err := exec.Command(py, "-c", script, n.mnt).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("python: %v\n%s\ndaemon:\n%s", err, out, n.stderr)
	}
}

// Two mounts sharing one remote: write on A, flechefs sync, read on B.
func TestTwoMountsShareRemote(t *testing.T) {
	srv := sshdtest.Start(t)
	a := newNode(t, "A", srv, nodeOpts{})
	b := newNode(t, "B", srv, nodeOpts{})
	keys := map[string][]byte{}
	for i := range 20 {
		k := key("two" + string(rune('a'+i)))
		v := make([]byte, 1000*i)
		rand.Read(v)
		keys[k] = v
		if err := os.WriteFile(a.path(k), v, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	a.sync(30 * time.Second)
	if st := a.stats(); st.Queue != 0 || st.Uploaded < 20 {
		t.Fatalf("after sync: queue %d uploaded %d", st.Queue, st.Uploaded)
	}
	for k, v := range keys {
		got, err := os.ReadFile(b.path(k))
		if err != nil || !bytes.Equal(got, v) {
			t.Fatalf("B read %s: %v", k, err)
		}
	}
}

// Restart: entries survive, and a stop with uploads pending resumes them.
// For every kind of remote.
func TestRestartResumesQueue(t *testing.T) {
	remotetest.Each(t, testRestartResumesQueue)
}

func testRestartResumesQueue(t *testing.T, start func(testing.TB) remotetest.Store) {
	srv := start(t)
	srv.Stop() // the remote is down: uploads queue
	n := newStoreNode(t, "restart", srv, nodeOpts{})
	keys := map[string][]byte{}
	for i := range 10 {
		k := key("resume" + string(rune('a'+i)))
		v := make([]byte, 50000+i)
		rand.Read(v)
		keys[k] = v
		if err := os.WriteFile(n.path(k), v, 0o644); err != nil {
			t.Fatal(err)
		}
		if up := xattr(t, n.path(k), "user.flechefs.upload"); up != "pending" {
			t.Fatalf("upload xattr %q with the remote down, want pending", up)
		}
	}
	// Wait until they are in bbolt, then stop.
	f, _ := os.Open(n.mnt)
	f.Sync()
	f.Close()
	eventually(t, "persistence", 10*time.Second, func() bool { return n.stats().Unpersisted == 0 })
	if q := n.stats().Queue; q != 10 {
		t.Fatalf("queue %d, want 10", q)
	}
	n.stop()
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	n.start()
	for k, v := range keys {
		got, err := os.ReadFile(n.path(k))
		if err != nil || !bytes.Equal(got, v) {
			t.Fatalf("read after restart: %v", err)
		}
	}
	n.sync(60 * time.Second)
	for k, v := range keys {
		got, sum, err := srv.Get(k)
		if err != nil || !bytes.Equal(got, v) || sum != key(string(v)) {
			t.Fatalf("remote copy of %s after resume: checksum %q, %v", k, sum, err)
		}
	}
}

// write = "through": fsync returns once the remote holds the entry. With
// the remote down it fails with EIO, as the writer must hear that the
// entry is not on the remote; the entry is the key's here all the same
// (read back, upload pending), and reaches the remote once it returns.
func TestWriteThroughRemoteDown(t *testing.T) {
	srv := sshdtest.Start(t)
	n := newNode(t, "through", srv, nodeOpts{extra: `write = "through"`})
	writeSync := func(k string, v []byte) error {
		f, err := os.Create(n.path(k))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.Write(v); err != nil {
			t.Fatal(err)
		}
		return f.Sync()
	}
	up := key("through-up")
	if err := writeSync(up, []byte("on the remote at fsync")); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(srv.Dir, up)); err != nil || string(got) != "on the remote at fsync" {
		t.Fatalf("remote copy right after fsync: %q, %v", got, err)
	}

	srv.Stop()
	k := key("through-down")
	v := make([]byte, 70000)
	rand.Read(v)
	if err := writeSync(k, v); !errors.Is(err, syscall.EIO) {
		t.Fatalf("fsync of a write-through entry with the remote down: %v, want EIO", err)
	}
	if got, err := os.ReadFile(n.path(k)); err != nil || !bytes.Equal(got, v) {
		t.Fatalf("read back of the entry whose upload failed: %v", err)
	}
	if x := xattr(t, n.path(k), "user.flechefs.upload"); x != "pending" {
		t.Fatalf("upload xattr %q, want pending", x)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	n.sync(60 * time.Second)
	if got, err := os.ReadFile(filepath.Join(srv.Dir, k)); err != nil || !bytes.Equal(got, v) {
		t.Fatalf("remote copy after the remote returned: %v", err)
	}
}

// Every refusal, with its errno.
func TestRefusals(t *testing.T) {
	n := newNode(t, "errno", nil, nodeOpts{})
	k := key("published")
	if err := os.WriteFile(n.path(k), []byte("v"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := n.path(k)
	other := n.path(key("other"))
	check := func(what string, err error, want syscall.Errno) {
		t.Helper()
		if (want == 0 && err != nil) || (want != 0 && !errors.Is(err, want)) {
			t.Errorf("%s: got %v, want %v", what, err, want)
		}
	}
	_, err := os.Stat(filepath.Join(n.mnt, "NOT-A-KEY"))
	check("lookup of an invalid name", err, syscall.ENOENT)
	_, err = os.Stat(filepath.Join(n.mnt, strings.ToUpper(k)))
	check("lookup of uppercase hex", err, syscall.ENOENT)
	// A name that is not a key is a private scratch file, never listed.
	if f, err := os.Create(filepath.Join(n.mnt, "notes.txt")); err != nil {
		t.Errorf("create of a scratch file: %v", err)
	} else {
		f.Close()
		if names := n.run("ls", "-a", n.mnt); strings.Contains(names, "notes.txt") {
			t.Errorf("scratch file listed: %s", names)
		}
		check("unlink of a scratch file", os.Remove(filepath.Join(n.mnt, "notes.txt")), 0)
	}
	_, err = os.OpenFile(p, os.O_WRONLY, 0)
	check("open of a published entry for writing", err, syscall.EACCES)
	_, err = os.OpenFile(p, os.O_RDWR, 0)
	check("open O_RDWR", err, syscall.EACCES)
	_, err = os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	check("O_CREAT|O_EXCL of an existing entry", err, syscall.EEXIST)
	check("mkdir", os.Mkdir(other, 0o755), syscall.EPERM)
	check("symlink", os.Symlink(p, other), syscall.EPERM)
	check("link", os.Link(p, other), syscall.EPERM)
	check("rename into .flechefs", os.Rename(p, filepath.Join(n.mnt, ".flechefs", k)), syscall.EPERM)
	check("rename of an entry to a name that is not a key", os.Rename(p, filepath.Join(n.mnt, "x.txt")), syscall.EXDEV)
	check("truncate", os.Truncate(p, 0), syscall.EPERM)
	check("setxattr", syscall.Setxattr(p, "user.x", []byte("y"), 0), syscall.EPERM)
	check("remove of a missing entry", os.Remove(other), syscall.ENOENT)
	_, err = os.Create(filepath.Join(n.mnt, ".flechefs", "x"))
	if err == nil {
		t.Error("creating a file in .flechefs succeeded")
	}
	if got, err := os.ReadFile(p); err != nil || string(got) != "v" {
		t.Fatalf("the entry changed: %q %v", got, err)
	}
}

// The negative-lookup TTL: a name created on another machine becomes
// visible here within the TTL.
func TestNegativeTTLAcrossMachines(t *testing.T) {
	srv := sshdtest.Start(t)
	a := newNode(t, "A", srv, nodeOpts{})
	b := newNode(t, "B", srv, nodeOpts{})
	k := key("appears-later")
	if _, err := os.Stat(b.path(k)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat before: %v", err)
	}
	missed := time.Now()
	os.WriteFile(a.path(k), []byte("hello"), 0o644)
	a.sync(30 * time.Second)
	mounttest.VisibleWithinTTL(t, missed, time.Second, b.path(k))
}

// A second mount of a config whose bbolt file another mount holds fails at
// once, says so, and says how to give it a database of its own; the first
// mount is untouched.
func TestSecondMountSameDatabase(t *testing.T) {
	n := newNode(t, "first", nil, nodeOpts{})
	other := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := n.flechefs("mount", "--config", n.Config, other)
	if err == nil {
		n.flechefs("umount", other)
		t.Fatalf("second mount of the same database succeeded: %s", out)
	}
	for _, want := range []string{"in use by another flechefs", "--bolt PATH"} {
		if !strings.Contains(out, want) {
			t.Errorf("the error does not say %q: %s", want, out)
		}
	}
	if mounttest.IsMounted(other) {
		t.Error("the second mount point is mounted")
	}
	k := key("still here")
	if err := os.WriteFile(n.path(k), []byte("v"), 0o644); err != nil {
		t.Fatalf("the first mount after the refusal: %v", err)
	}
}
