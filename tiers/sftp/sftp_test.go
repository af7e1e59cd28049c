package sftp

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

var subdirs atomic.Int64

// options returns Options for a fresh remote subdirectory of s.
func options(s *sshdtest.Server) Options {
	return Options{
		URL:           fmt.Sprintf("%s/t%d", s.URL(), subdirs.Add(1)),
		IdentityFiles: []string{s.IdentityFile},
		KnownHosts:    s.KnownHosts,
		Timeout:       3 * time.Second,
		Logger:        slog.New(slog.DiscardHandler),
	}
}

func open(t testing.TB, opt Options) *Tier {
	t.Helper()
	tr, err := Open(context.Background(), opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// localPath is where the server keeps p of the tier's root.
func localPath(tr *Tier, p ...string) string {
	return filepath.Join(append([]string{filepath.FromSlash(tr.rem.root)}, p...)...)
}

func TestConformance(t *testing.T) { conformance(t, false) }

// The suite again with every large fetch through lanes (lanes.go), which
// loopback does not use otherwise.
func TestConformanceLanes(t *testing.T) { conformance(t, true) }

func conformance(t *testing.T, lanes bool) {
	s := sshdtest.Start(t)
	tiertest.Run(t, func(t *testing.T) tiers.Tier {
		tr, err := Open(context.Background(), options(s))
		if err != nil {
			t.Fatal(err)
		}
		if lanes {
			tr.laneRTT = 0
		}
		return tr
	}, tiertest.Options{
		Reopen: func(t *testing.T, tr tiers.Tier) tiers.Tier {
			old := tr.(*Tier)
			old.Close()
			again := open(t, old.opt)
			again.laneRTT = old.laneRTT
			return again
		},
	})
}

func TestLayout(t *testing.T) {
	s := sshdtest.Start(t)
	tr := open(t, options(s))
	if got := tr.packetSize(); got != openSSHPacket {
		t.Errorf("packet size %d, want %d on OpenSSH", got, openSSHPacket)
	}
	k := tiertest.Key("layout")
	b := tiertest.Data(1, 3<<20+17)
	created := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	info, err := tr.Put(context.Background(), k, bytes.NewReader(b), tiers.Meta{Size: -1, Created: created})
	if err != nil {
		t.Fatal(err)
	}
	// The record keeps milliseconds, rounded up.
	if info.Sum != digest.Of(b) || info.Size != int64(len(b)) || !info.Created.Equal(created.Truncate(time.Millisecond).Add(time.Millisecond)) {
		t.Fatalf("put info %+v", info)
	}
	// The data file is the raw value under the key's name.
	raw, err := os.ReadFile(localPath(tr, k.String()))
	if err != nil || !bytes.Equal(raw, b) {
		t.Fatalf("data file: %v, equal=%v", err, bytes.Equal(raw, b))
	}
	// The sum record is a symlink: sha256 in base64url, size and
	// creation in milliseconds in base 36, short enough for the inode.
	target, err := os.Readlink(localPath(tr, ".flechefs", "sums", k.String()))
	if err != nil {
		t.Fatal(err)
	}
	sum := digest.Of(b)
	want := base64.RawURLEncoding.EncodeToString(sum[:]) + "." + strconv.FormatInt(int64(len(b)), 36) + "." +
		strconv.FormatInt(time.Date(2024, 5, 6, 7, 8, 9, 124000000, time.UTC).UnixMilli(), 36)
	if target != want || len(target) >= 60 {
		t.Fatalf("sum record %q, want %q (under 60 characters)", target, want)
	}
	if ents, _ := os.ReadDir(localPath(tr, ".flechefs", "tmp")); len(ents) != 0 {
		t.Fatalf("temp files left: %v", ents)
	}
	st, err := tr.Stat(context.Background(), k)
	if err != nil || st != info {
		t.Fatalf("stat = %+v, %v; want %+v", st, err, info)
	}
	// WriteTo fetches the whole value.
	r, err := tr.Open(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var buf bytes.Buffer
	n, err := r.(io.WriterTo).WriteTo(&buf)
	if err != nil || n != int64(len(b)) || !bytes.Equal(buf.Bytes(), b) {
		t.Fatalf("WriteTo = %d, %v", n, err)
	}
	// Twice: WriteTo starts at 0 each time.
	buf.Reset()
	if n, err := r.(io.WriterTo).WriteTo(&buf); err != nil || !bytes.Equal(buf.Bytes(), b) {
		t.Fatalf("second WriteTo = %d, %v", n, err)
	}
}

func TestReadOnly(t *testing.T) {
	s := sshdtest.Start(t)
	opt := options(s)
	rw := open(t, opt)
	k := tiertest.Key("ro")
	tiertest.Put(t, rw, k, []byte("value"))
	opt.ReadOnly = true
	ro := open(t, opt)
	if _, err := ro.Put(context.Background(), tiertest.Key("other"), strings.NewReader("x"), tiers.UnknownMeta); !errors.Is(err, tiers.ErrReadOnly) {
		t.Fatalf("put: %v", err)
	}
	if err := ro.Delete(context.Background(), k); !errors.Is(err, tiers.ErrReadOnly) {
		t.Fatalf("delete: %v", err)
	}
	if got := tiertest.Get(t, ro, k); string(got) != "value" {
		t.Fatalf("read %q", got)
	}
}

func TestParseURL(t *testing.T) {
	r, err := parseURL("sftp://bob@example.org:2222/srv/cache/")
	if err != nil || r.user != "bob" || r.addr != "example.org:2222" || r.root != "/srv/cache" || r.port != 2222 {
		t.Fatalf("%+v %v", r, err)
	}
	r, err = parseURL("sftp://example.org/x")
	if err != nil || r.port != 22 || r.addr != "example.org:22" || r.user == "" {
		t.Fatalf("%+v %v", r, err)
	}
	r, err = parseURL("sftp://[::1]:23/x")
	if err != nil || r.addr != "[::1]:23" {
		t.Fatalf("%+v %v", r, err)
	}
	for _, bad := range []string{"", "http://h/x", "sftp://h", "sftp://h/x?y=1", "sftp://u:pw@h/x", "sftp:///x", "sftp://h:99999/x"} {
		if _, err := parseURL(bad); err == nil {
			t.Errorf("parseURL(%q) accepted", bad)
		}
	}
}

func TestSumRecord(t *testing.T) {
	s := sumFile{sum: digest.Of([]byte("x")), size: 2<<30 - 1, created: time.UnixMilli(1764000000123)}
	got, err := parseSumLink(s.link())
	if err != nil || got != s {
		t.Fatalf("round trip %+v, %v", got, err)
	}
	if n := len(s.link()); n >= 60 {
		t.Fatalf("record of a value under 2 GiB has %d characters, want < 60 (an ext4 fast symlink)", n)
	}
	if got, err := parseSumLink(s.link() + ".future"); err != nil || got != s {
		t.Fatalf("a fourth field: %v", err)
	}
	for _, bad := range []string{"", "x.1.1", s.link()[:42] + ".1.1", s.link()[:43] + ".-1.1", s.link()[:43] + ".1",
		s.link()[:43] + ".1.zz!", s.link()[:43] + "..1"} {
		if _, err := parseSumLink(bad); err == nil {
			t.Errorf("parseSumLink(%q) accepted", bad)
		}
	}
}

// TestSumFile: records of the earlier format, regular files.
func TestSumFile(t *testing.T) {
	s := sumFile{sum: digest.Of([]byte("x")), size: 42, created: time.Unix(1, 5).UTC()}
	got, err := parseSumFile(s.marshal())
	if err != nil || got != s {
		t.Fatalf("round trip %+v, %v", got, err)
	}
	if _, err := parseSumFile([]byte("size 1\n")); err == nil {
		t.Fatal("sum file without sha256 accepted")
	}
	if _, err := parseSumFile([]byte("sha256 zz\nsize 1\n")); err == nil {
		t.Fatal("bad hex accepted")
	}
	if got, err := parseSumFile(append(s.marshal(), "future field\n"...)); err != nil || got != s {
		t.Fatalf("unknown line: %v", err)
	}
}

// TestPutCanceled stops an upload when the context ends and leaves nothing.
func TestPutCanceled(t *testing.T) {
	s := sshdtest.Start(t)
	tr := open(t, options(s))
	ctx, cancel := context.WithCancel(context.Background())
	k := tiertest.Key("canceled")
	r := &hookReader{n: 1 << 40, at: 16 << 20, hook: cancel}
	if _, err := tr.Put(ctx, k, r, tiers.UnknownMeta); !errors.Is(err, context.Canceled) {
		t.Fatalf("put: %v", err)
	}
	noEntry(t, tr, k)
	if ents, _ := os.ReadDir(localPath(tr, ".flechefs", "tmp")); len(ents) != 0 {
		t.Fatalf("temp files left: %v", ents)
	}
	if _, err := tr.Stat(ctx, k); !errors.Is(err, context.Canceled) {
		t.Fatalf("stat with a canceled context: %v", err)
	}
}

// TestLayoutRemoved: a put recreates .flechefs when someone removed it.
func TestLayoutRemoved(t *testing.T) {
	s := sshdtest.Start(t)
	tr := open(t, options(s))
	if err := os.RemoveAll(localPath(tr, ".flechefs")); err != nil {
		t.Fatal(err)
	}
	k := tiertest.Key("again")
	tiertest.Put(t, tr, k, []byte("v"))
	if st, err := tr.Stat(context.Background(), k); err != nil || st.Sum != digest.Of([]byte("v")) {
		t.Fatalf("stat = %+v, %v", st, err)
	}
}

// TestTwoMachinesRace: two tiers on one root (two machines) put different
// bytes under the same keys at the same time. Exactly one wins each key, and
// the sum file always describes the winner's bytes.
func TestTwoMachinesRace(t *testing.T) {
	s := sshdtest.Start(t)
	opt := options(s)
	a, b := open(t, opt), open(t, opt)
	const keys = 20
	for i := range keys {
		k := tiertest.Key(fmt.Sprint("race", i))
		va, vb := tiertest.Data(uint64(2*i), 300000), tiertest.Data(uint64(2*i+1), 300001)
		errs := make(chan error, 2)
		for _, w := range []struct {
			tr *Tier
			v  []byte
		}{{a, va}, {b, vb}} {
			go func() {
				_, err := w.tr.Put(context.Background(), k, bytes.NewReader(w.v), tiers.Meta{Size: int64(len(w.v))})
				errs <- err
			}()
		}
		e1, e2 := <-errs, <-errs
		if (e1 == nil) == (e2 == nil) || !(errors.Is(e1, tiers.ErrExist) || errors.Is(e2, tiers.ErrExist)) {
			t.Fatalf("key %d: %v, %v; want one winner and one ErrExist", i, e1, e2)
		}
		got := tiertest.Get(t, a, k)
		if !bytes.Equal(got, va) && !bytes.Equal(got, vb) {
			t.Fatalf("key %d: stored bytes are neither writer's", i)
		}
		st, err := b.Stat(context.Background(), k)
		if err != nil || st.Sum != digest.Of(got) || st.Size != int64(len(got)) {
			t.Fatalf("key %d: stat %+v, %v does not describe the stored bytes", i, st, err)
		}
	}
}

// WriteTo writes the head Open read, then the rest from the server, for
// sizes on either side of the head and of a packet; an Open of a value
// larger than the head asks for its size (fstat) beside the head read and
// still finds a size that disagrees with the record.
func TestWriteToAroundTheHead(t *testing.T) {
	s := sshdtest.Start(t)
	tr := open(t, options(s))
	ctx := context.Background()
	packet := tr.packetSize()
	for _, size := range []int{0, 1, headSize - 1, headSize, headSize + 1, packet - 1, packet, packet + 1, 3*packet + 17} {
		k := tiertest.Key(fmt.Sprint("around ", size))
		v := tiertest.Data(uint64(size), int64(size))
		tiertest.Put(t, tr, k, v)
		r, err := tr.Open(ctx, k)
		if err != nil {
			t.Fatalf("size %d: open: %v", size, err)
		}
		if info := r.Info(); info.Size != int64(size) || info.Sum != digest.Of(v) || info.Created.IsZero() {
			t.Fatalf("size %d: Info %+v", size, info)
		}
		var buf bytes.Buffer
		n, err := r.(io.WriterTo).WriteTo(&buf)
		if err != nil || n != int64(size) || !bytes.Equal(buf.Bytes(), v) {
			t.Fatalf("size %d: WriteTo = %d, %v (equal %v)", size, n, err, bytes.Equal(buf.Bytes(), v))
		}
		// A second WriteTo of the same reader gives the same bytes.
		buf.Reset()
		if n, err := r.(io.WriterTo).WriteTo(&buf); err != nil || n != int64(size) || !bytes.Equal(buf.Bytes(), v) {
			t.Fatalf("size %d: second WriteTo = %d, %v", size, n, err)
		}
		r.Close()
		if size <= headSize {
			continue
		}
		// Grown behind the record: Open's fstat, sent with the head
		// read, sees it (at Open or at the first read).
		f, err := os.OpenFile(localPath(tr, k.String()), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Write([]byte("more"))
		f.Close()
		if err := openAndRead(tr, k); !errors.Is(err, tiers.ErrCorrupt) {
			t.Fatalf("size %d: open of a grown file: %v, want ErrCorrupt", size, err)
		}
	}
}
