package integration

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/sftp"
)

// putRemote publishes a value on the remote the way another machine's
// flechefs does, through the sftp tier, streaming it from r.
func putRemote(t *testing.T, srv *sshdtest.Server, k string, r io.Reader, size int64) {
	t.Helper()
	tr, err := sftp.Open(context.Background(), sftp.Options{URL: srv.URL(), IdentityFiles: []string{srv.IdentityFile}, KnownHosts: srv.KnownHosts})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if _, err := tr.Put(context.Background(), digest.MustParse(k), r, tiers.Meta{Size: size}); err != nil {
		t.Fatal(err)
	}
}

// zeroHashReader yields size pseudo-random bytes cheaply (a counter stream).
type patternReader struct{ off, size int64 }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.off >= p.size {
		return 0, io.EOF
	}
	n := min(int64(len(b)), p.size-p.off)
	for i := range n {
		x := p.off + i
		b[i] = byte(x ^ x>>8 ^ x>>17)
	}
	p.off += n
	return int(n), nil
}

// A remote-only entry streams: the first bytes arrive long before the whole
// value (issue: under 10% of the full fetch time for 512 MiB), and the bytes
// are right.
func TestRemoteReadStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 512 MiB; runs without -short (CI)")
	}
	const size = 512 << 20
	srv := sshdtest.Start(t)
	k := key("stream-512MiB")
	putRemote(t, srv, k, &patternReader{size: size}, size)
	n := newNode(t, "reader", srv, nodeOpts{})

	start := time.Now()
	f, err := os.Open(n.path(k))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	if _, err := io.ReadFull(f, buf[:4096]); err != nil {
		t.Fatal(err)
	}
	first := time.Since(start)
	h := sha256.New()
	want := sha256.New()
	io.Copy(want, &patternReader{size: size})
	h.Write(buf[:4096])
	if _, err := io.CopyBuffer(h, f, buf); err != nil {
		t.Fatal(err)
	}
	total := time.Since(start)
	if string(h.Sum(nil)) != string(want.Sum(nil)) {
		t.Fatal("streamed bytes differ from the value")
	}
	t.Logf("512 MiB remote read: first 4 KiB after %v, whole value after %v (%.1f%%, %.0f MiB/s)",
		first, total, 100*first.Seconds()/total.Seconds(), size/(1<<20)/total.Seconds())
	if first > total/10 {
		t.Fatalf("first bytes after %v, more than 10%% of the full fetch (%v)", first, total)
	}
}

// A fetch that fails midway is never promoted, and the reader gets EIO,
// not wrong bytes.
func TestRemoteReadFailsMidway(t *testing.T) {
	const size = 256 << 20
	srv := sshdtest.Start(t)
	k := key("midway")
	putRemote(t, srv, k, &patternReader{size: size}, size)
	n := newNode(t, "reader", srv, nodeOpts{})

	f, err := os.Open(n.path(k))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	if _, err := io.ReadFull(f, buf); err != nil {
		t.Fatal(err)
	}
	srv.Kill() // the connection drops mid-transfer
	start := time.Now()
	var rerr error
	var got int64 = 1 << 20
	for {
		m, err := f.Read(buf)
		got += int64(m)
		if err != nil {
			rerr = err
			break
		}
	}
	if !errors.Is(rerr, syscall.EIO) {
		t.Fatalf("read after the server died: %v after %d bytes, want EIO", rerr, got)
	}
	if got >= size {
		t.Fatal("the reader got the whole value from a failed fetch")
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("EIO after %v; the remote timeout is 5s", d)
	}
	time.Sleep(200 * time.Millisecond)
	where := xattr(t, n.path(k), "user.flechefs.tiers")
	if where != "" && where != "sftp" {
		t.Fatalf("a failed fetch left copies in %q", where)
	}
	// The server comes back: once the tier has reconnected (it backs off
	// after a failed dial), the value is fetched whole and right.
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	want := sha256.New()
	io.Copy(want, &patternReader{size: size})
	var last error
	eventually(t, "a whole refetch after the restart", 30*time.Second, func() bool {
		g, err := os.Open(n.path(k))
		if err != nil {
			last = err
			return false
		}
		defer g.Close()
		h := sha256.New()
		if _, err := io.Copy(h, g); err != nil {
			last = err
			return false // EIO while the tier is still backing off
		}
		if string(h.Sum(nil)) != string(want.Sum(nil)) {
			t.Fatal("refetch after restart differs")
		}
		return true
	})
	_ = last
}
