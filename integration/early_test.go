package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers/sftp"
)

// Large values are uploaded while they are written (see tiers/doc.go,
// "Early uploads").

// remoteTemps lists the remote's temp files with their sizes.
func remoteTemps(srv *sshdtest.Server) map[string]int64 {
	ents, _ := os.ReadDir(filepath.Join(srv.Dir, ".flechefs", "tmp"))
	out := map[string]int64{}
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			out[e.Name()] = fi.Size()
		}
	}
	return out
}

// streaming waits until a remote temp file of key holds at least n bytes.
func streaming(t *testing.T, srv *sshdtest.Server, k string, n int64) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d bytes of %s in a remote temp file", n, k[:8]), 20*time.Second, func() bool {
		for name, sz := range remoteTemps(srv) {
			if strings.HasPrefix(name, k+".") && sz >= n {
				return true
			}
		}
		return false
	})
}

// remoteVerified reports whether the remote holds want under k with its
// sum file.
func remoteVerified(srv *sshdtest.Server, k string, want []byte) bool {
	got, err := os.ReadFile(filepath.Join(srv.Dir, k))
	if err != nil || !bytes.Equal(got, want) {
		return false
	}
	rec, err := sftp.LocalSum(srv.Dir, k)
	return err == nil && rec.Sum == digest.Of(want) && rec.Size == int64(len(want))
}

func noRemoteTemps(t *testing.T, srv *sshdtest.Server) {
	t.Helper()
	eventually(t, "no remote temp files", 20*time.Second, func() bool { return len(remoteTemps(srv)) == 0 })
}

// A 96 MiB file written with dd is on the remote, verified, soon after
// close, uploaded once; a second mount reads it back identical.
func TestLargeWriteUploadsWhileWriting(t *testing.T) {
	srv := sshdtest.Start(t)
	a := newNode(t, "A", srv, nodeOpts{})
	val := make([]byte, 96<<20+4097)
	if _, err := (&patternReader{size: int64(len(val))}).Read(val); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "value")
	if err := os.WriteFile(src, val, 0o644); err != nil {
		t.Fatal(err)
	}
	k := key(string(val))

	// While the file is open, its bytes are going to the remote.
	f, err := os.OpenFile(a.path(k), os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(val[:32<<20]); err != nil {
		t.Fatal(err)
	}
	streaming(t, srv, k, 16<<20)
	f.Close() // publishes the first 32 MiB under k: a key of its own
	a.sync(60 * time.Second)

	// dd, and the remote holds the verified value soon after close.
	k2 := key("dd " + k)
	start := time.Now()
	a.run("dd", "if="+src, "of="+a.path(k2), "bs=1M", "status=none")
	closed := time.Since(start)
	eventually(t, "the remote to hold the verified value", 30*time.Second, func() bool { return remoteVerified(srv, k2, val) })
	t.Logf("dd of %d MiB: closed after %v, on the remote after %v", len(val)>>20, closed.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	a.sync(30 * time.Second)
	st := a.stats()
	if st.Uploaded != 2 || st.UploadedBytes != 32<<20+int64(len(val)) || st.UploadErrors != 0 {
		t.Fatalf("stats: uploaded %d (%d bytes), errors %d", st.Uploaded, st.UploadedBytes, st.UploadErrors)
	}
	if in := a.tierStats("sftp").BytesIn; in != 32<<20+int64(len(val)) {
		t.Fatalf("%d bytes sent to the remote for %d: a value was uploaded twice", in, 32<<20+len(val))
	}
	if up := xattr(t, a.path(k2), "user.flechefs.upload"); up != "done" {
		t.Fatalf("upload xattr %q", up)
	}
	noRemoteTemps(t, srv)

	b := newNode(t, "B", srv, nodeOpts{})
	got, err := os.ReadFile(b.path(k2))
	if err != nil || !bytes.Equal(got, val) {
		t.Fatalf("B read: %v (%d bytes, equal %v)", err, len(got), bytes.Equal(got, val))
	}
}

// A write below what was already sent abandons the early upload: the value
// published is uploaded by the queue, right, and no temp file stays.
func TestLargeWriteRewrittenUploadsRightBytes(t *testing.T) {
	srv := sshdtest.Start(t)
	a := newNode(t, "A", srv, nodeOpts{})
	val := make([]byte, 40<<20)
	(&patternReader{size: int64(len(val))}).Read(val)
	k := key("rewritten")
	f, err := os.OpenFile(a.path(k), os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(val[:24<<20]); err != nil {
		t.Fatal(err)
	}
	streaming(t, srv, k, 12<<20)
	copy(val[1000:], "rewritten after it was sent")
	if _, err := f.WriteAt(val[1000:2000], 1000); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(val[24<<20:], 24<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	a.sync(60 * time.Second)
	if !remoteVerified(srv, k, val) {
		t.Fatal("the remote does not hold the rewritten value")
	}
	noRemoteTemps(t, srv)
}

// A writer killed mid-write publishes nothing, and its early upload leaves
// nothing on the remote.
func TestLargeWriteKilledLeavesNothing(t *testing.T) {
	srv := sshdtest.Start(t)
	a := newNode(t, "A", srv, nodeOpts{})
	k := key("killed writer")
	// 1 MiB every 10 ms, at most 300 MiB, then it waits to be killed.
	cmd := exec.Command("python3", "-c", `import sys, time
f = open(sys.argv[1], "wb", buffering=0)
for i in range(300):
    f.write(bytes([i % 256]) * (1 << 20))
    time.sleep(0.01)
time.sleep(600)
`, a.path(k))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	streaming(t, srv, k, 8<<20)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	noRemoteTemps(t, srv)
	if _, err := os.Stat(filepath.Join(srv.Dir, k)); !os.IsNotExist(err) {
		t.Fatalf("killed writer's value on the remote: %v", err)
	}
	if _, err := os.Stat(a.path(k)); !os.IsNotExist(err) {
		t.Fatalf("killed writer's value on the mount: %v", err)
	}
	if st := a.stats(); st.Queue != 0 || st.Uploaded != 0 {
		t.Fatalf("stats: queue %d uploaded %d", st.Queue, st.Uploaded)
	}
}
