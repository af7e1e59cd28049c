package tiers_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/sftp"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// Early uploads against a real sshd: a stack of RAM, bbolt (the durable
// queue) and an SFTP remote, and a writer that appends to a spool file the
// way the mount's write handle does.

var earlyDirs atomic.Int64

// earlyEnv is one machine's stack on a fresh directory of srv.
type earlyEnv struct {
	t    *testing.T
	srv  *sshdtest.Server
	url  string
	root string // where the server keeps the remote tier's files
	db   string
	st   *tiers.Stack
	// timeout is the remote tier's: an operation waiting on a frozen
	// server is released only by its watchdog, after this long.
	timeout      time.Duration
	writeThrough bool // StackOptions.WriteThrough
}

func newEarlyEnv(t *testing.T, srv *sshdtest.Server, workers int) *earlyEnv {
	return newEarlyEnvTimeout(t, srv, workers, 2*time.Second)
}

func newEarlyEnvTimeout(t *testing.T, srv *sshdtest.Server, workers int, timeout time.Duration) *earlyEnv {
	return newEarlyEnvOpts(t, srv, tiers.StackOptions{UploadWorkers: workers}, timeout)
}

func newEarlyEnvOpts(t *testing.T, srv *sshdtest.Server, opt tiers.StackOptions, timeout time.Duration) *earlyEnv {
	n := earlyDirs.Add(1)
	e := &earlyEnv{t: t, srv: srv, timeout: timeout, url: fmt.Sprintf("%s/early%d", srv.URL(), n),
		root: filepath.Join(srv.Dir, fmt.Sprintf("early%d", n)), db: filepath.Join(t.TempDir(), "cache.db"),
		writeThrough: opt.WriteThrough}
	e.open(opt.UploadWorkers)
	return e
}

// open starts the stack (again) on the same bbolt file and remote.
func (e *earlyEnv) open(workers int) {
	t := e.t
	t.Helper()
	quiet := slog.New(slog.DiscardHandler)
	b := openBolt(t, e.db)
	r, err := sftp.Open(context.Background(), sftp.Options{URL: e.url, IdentityFiles: []string{e.srv.IdentityFile},
		KnownHosts: e.srv.KnownHosts, Timeout: e.timeout, Logger: quiet, Lazy: true})
	if err != nil {
		t.Fatal(err)
	}
	e.st = newStack(t, tiers.StackOptions{UploadWorkers: workers, Logger: quiet, WriteThrough: e.writeThrough},
		tiers.Layer{Tier: mem(t, "ram", 1<<20)}, tiers.Layer{Tier: b}, tiers.Layer{Tier: r, Remote: true})
}

// temps lists the remote's temp files with their sizes.
func (e *earlyEnv) temps() map[string]int64 {
	ents, _ := os.ReadDir(filepath.Join(e.root, ".flechefs", "tmp"))
	out := map[string]int64{}
	for _, d := range ents {
		if fi, err := d.Info(); err == nil {
			out[d.Name()] = fi.Size()
		}
	}
	return out
}

// streamed waits until a temp file of the upload holds at least n bytes.
func (e *earlyEnv) streamed(n int64) {
	e.t.Helper()
	tiertest.Eventually(e.t, fmt.Sprintf("%d bytes in a remote temp file", n), func() bool {
		for _, sz := range e.temps() {
			if sz >= n {
				return true
			}
		}
		return false
	})
}

func (e *earlyEnv) noTemps() {
	e.t.Helper()
	tiertest.Eventually(e.t, "no remote temp files", func() bool { return len(e.temps()) == 0 })
}

// holds checks the remote's data file and sum file of k.
func (e *earlyEnv) holds(k digest.Key, want []byte) {
	e.t.Helper()
	got, err := os.ReadFile(filepath.Join(e.root, k.String()))
	if err != nil || !bytes.Equal(got, want) {
		e.t.Fatalf("remote data file of %s: %v (%d bytes, want %d, equal %v)", k, err, len(got), len(want), bytes.Equal(got, want))
	}
	rec, err := sftp.LocalSum(e.root, k.String())
	if err != nil || rec.Sum != digest.Of(want) || rec.Size != int64(len(want)) {
		e.t.Fatalf("remote sum record of %s: %+v, %v", k, rec, err)
	}
}

func (e *earlyEnv) sync(d time.Duration) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := e.st.Sync(ctx, nil); err != nil {
		e.t.Fatalf("sync: %v; stats %+v", err, e.st.Stats())
	}
}

// remoteBytesIn is how many bytes the stack sent to the remote tier.
func (e *earlyEnv) remoteBytesIn() int64 {
	for _, ts := range e.st.Stats().Tiers {
		if ts.Remote {
			return ts.BytesIn
		}
	}
	return -1
}

// spoolWriter appends to an unlinked file as the mount's write handle
// does, reporting each append to its early upload.
type spoolWriter struct {
	t     *testing.T
	f     *os.File
	size  int64
	early *tiers.EarlyUpload
}

func newSpoolWriter(t *testing.T) *spoolWriter {
	f, err := os.CreateTemp(t.TempDir(), "spool-*")
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(f.Name())
	t.Cleanup(func() { f.Close() })
	return &spoolWriter{t: t, f: f}
}

func (w *spoolWriter) write(b []byte) {
	w.t.Helper()
	for len(b) > 0 {
		n := min(len(b), 1<<20)
		if _, err := w.f.WriteAt(b[:n], w.size); err != nil {
			w.t.Fatal(err)
		}
		w.size += int64(n)
		b = b[n:]
		if w.early != nil {
			w.early.Written(w.size)
		}
	}
}

// blob hands the spool to Publish, with its early upload.
func (w *spoolWriter) blob() tiers.Blob {
	return &earlyBlob{f: w.f, size: w.size, early: w.early}
}

type earlyBlob struct {
	f     *os.File
	size  int64
	early *tiers.EarlyUpload
}

func (b *earlyBlob) ReadAt(p []byte, off int64) (int, error) { return b.f.ReadAt(p, off) }
func (b *earlyBlob) Size() int64                             { return b.size }
func (b *earlyBlob) Release()                                {}
func (b *earlyBlob) EarlyUpload() *tiers.EarlyUpload         { return b.early }

func publish(t *testing.T, st *tiers.Stack, k digest.Key, w *spoolWriter, v []byte) {
	t.Helper()
	if _, err := st.Publish(context.Background(), k, w.blob(), digest.Of(v)); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

// The value is sent while it is written, the publish adopts that upload,
// and nothing is sent twice.
func TestEarlyUploadStreamsWhileWriting(t *testing.T) {
	e := newEarlyEnv(t, sshdtest.Start(t), 2)
	k := tiertest.Key("early-ok")
	v := tiertest.Data(1, 40<<20+123)
	w := newSpoolWriter(t)
	w.write(v[:1<<20])
	if w.early = e.st.BeginUpload(k, w.f); w.early == nil {
		t.Fatal("BeginUpload declined with an SFTP remote and no upload running")
	}
	w.write(v[1<<20 : 24<<20])
	e.streamed(16 << 20) // on the remote before the value is complete
	if up := e.st.UploadState(k); up != tiers.UploadDone {
		t.Fatalf("upload state %q before the publish", up) // not queued yet
	}
	w.write(v[24<<20:])
	publish(t, e.st, k, w, v)
	e.sync(30 * time.Second)
	e.holds(k, v)
	e.noTemps()
	st := e.st.Stats()
	if st.Uploaded != 1 || st.UploadedBytes != int64(len(v)) || st.Queue != 0 || st.UploadErrors != 0 {
		t.Fatalf("stats after sync: %+v", st)
	}
	if n := e.remoteBytesIn(); n != int64(len(v)) {
		t.Fatalf("%d bytes sent to the remote for a value of %d: uploaded twice?", n, len(v))
	}
	if up := e.st.UploadState(k); up != tiers.UploadDone {
		t.Fatalf("upload state %q after sync", up)
	}
	got, err := read(t, e.st, k)
	if err != nil || !bytes.Equal(got, v) {
		t.Fatalf("read back: %v", err)
	}
}

// With WriteThrough the value streams while it is written too, and Publish
// returns once the remote holds it: the publish waits for the upload begun
// while writing, which is the value's one upload, instead of sending it
// again.
func TestEarlyUploadWriteThrough(t *testing.T) {
	e := newEarlyEnvOpts(t, sshdtest.Start(t), tiers.StackOptions{UploadWorkers: 2, WriteThrough: true}, 2*time.Second)
	k := tiertest.Key("early-through")
	v := tiertest.Data(9, 24<<20+5)
	w := newSpoolWriter(t)
	w.write(v[:1<<20])
	if w.early = e.st.BeginUpload(k, w.f); w.early == nil {
		t.Fatal("BeginUpload declined with WriteThrough")
	}
	w.write(v[1<<20:])
	publish(t, e.st, k, w, v)
	e.holds(k, v) // no sync: Publish returned once the remote had it
	if up := e.st.UploadState(k); up != tiers.UploadDone {
		t.Fatalf("upload state %q after a write-through publish", up)
	}
	if n := e.remoteBytesIn(); n != int64(len(v)) {
		t.Fatalf("%d bytes sent to the remote for a value of %d: uploaded twice?", n, len(v))
	}
	if st := e.st.Stats(); st.Uploaded != 1 || st.UploadErrors != 0 {
		t.Fatalf("stats: %+v", st)
	}
}

// Bytes that changed after they were sent (a writer that wrote below the
// end without the mount noticing) fail the early upload's checksum: the
// queue uploads the published value instead.
func TestEarlyUploadChecksSum(t *testing.T) {
	e := newEarlyEnv(t, sshdtest.Start(t), 2)
	k := tiertest.Key("early-changed")
	v := tiertest.Data(2, 20<<20)
	w := e.startEarly(k, v[:12<<20])
	copy(v[:4096], tiertest.Data(3, 4096))
	if _, err := w.f.WriteAt(v[:4096], 0); err != nil {
		t.Fatal(err)
	}
	w.write(v[12<<20:])
	e.delivered(k, w, v, 30*time.Second)
	if n := e.remoteBytesIn(); n <= int64(len(v)) {
		t.Fatalf("%d bytes sent: the corrupt early upload was not replaced by a second one", n)
	}
}

// A writer that writes below what was sent abandons the early upload (the
// mount does it at that write); the value published after is uploaded by
// the queue, right, and no temp file is left.
func TestEarlyUploadAbandonedByRewrite(t *testing.T) {
	e := newEarlyEnv(t, sshdtest.Start(t), 2)
	k := tiertest.Key("early-rewrite")
	v := tiertest.Data(4, 20<<20)
	w := e.startEarly(k, v[:12<<20])
	w.early.Abort()
	w.early = nil
	copy(v[100:200], tiertest.Data(5, 100))
	if _, err := w.f.WriteAt(v[100:200], 100); err != nil {
		t.Fatal(err)
	}
	w.write(v[12<<20:])
	e.delivered(k, w, v, 30*time.Second)
}

// An early upload whose writer goes away (killed, failed, released without
// publishing) leaves nothing on the remote; nor does one cut short by the
// stack's Close, which removes the temp file before it returns.
func TestEarlyUploadAbortLeavesNothing(t *testing.T) {
	srv := sshdtest.Start(t)
	e := newEarlyEnv(t, srv, 2)
	k := tiertest.Key("early-abort")
	v := tiertest.Data(6, 16<<20)
	w := e.startEarly(k, v[:12<<20])
	w.early.Abort()
	e.noTemps()
	if _, err := os.Stat(filepath.Join(e.root, k.String())); !os.IsNotExist(err) {
		t.Fatalf("aborted value on the remote: %v", err)
	}

	e2 := newEarlyEnv(t, srv, 2)
	w2 := e2.startEarly(k, v[:12<<20])
	if err := e2.st.Close(); err != nil {
		t.Fatal(err)
	}
	if tmp := e2.temps(); len(tmp) != 0 {
		t.Fatalf("temp files after Close: %v", tmp)
	}
	w2.write(v[12<<20:]) // a write after the stack closed: the upload is gone
}

// Another machine publishes the key while ours streams: first writer wins,
// the conflict is counted, and nothing of ours is left.
func TestEarlyUploadLosesToOtherWriter(t *testing.T) {
	srv := sshdtest.Start(t)
	e := newEarlyEnv(t, srv, 2)
	k := tiertest.Key("early-lost")
	v := tiertest.Data(7, 20<<20)
	w := e.startEarly(k, v[:12<<20])

	other, err := sftp.Open(context.Background(), sftp.Options{URL: e.url, IdentityFiles: []string{srv.IdentityFile},
		KnownHosts: srv.KnownHosts, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	theirs := tiertest.Data(8, 3<<20)
	tiertest.Put(t, other, k, theirs)

	w.write(v[12<<20:])
	publish(t, e.st, k, w, v)
	e.sync(30 * time.Second)
	e.holds(k, theirs)
	e.noTemps()
	if st := e.st.Stats(); st.Conflicts != 1 || st.Queue != 0 {
		t.Fatalf("stats: %+v, want 1 conflict and an empty queue", st)
	}
}

// The remote dies mid-stream: the writer goes on at local speed, its
// publish is not delayed, and the value reaches the remote through the
// queue once the server is back.
func TestEarlyUploadRemoteKilled(t *testing.T) {
	srv := sshdtest.Start(t)
	e := newEarlyEnvTimeout(t, srv, 2, 30*time.Second) // see TestEarlyUploadRemoteFrozen
	k := tiertest.Key("early-killed")
	v := tiertest.Data(9, 32<<20)
	w := e.startEarly(k, v[:12<<20])
	srv.Kill()
	start := time.Now()
	w.write(v[12<<20:])
	publish(t, e.st, k, w, v)
	if d := time.Since(start); d > e.timeout/2 {
		t.Fatalf("writing 20 MiB and publishing with the remote dead took %v: it waited for the remote (timeout %v)", d, e.timeout)
	}
	if up := e.st.UploadState(k); up != tiers.UploadPending {
		t.Fatalf("upload state %q with the remote dead", up)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	e.sync(60 * time.Second)
	e.holds(k, v)
	e.noTemps() // the killed upload's, removed after the reconnect
}

// The remote hangs mid-stream: the writer is not slowed down; the
// upload finishes once the server answers again. The remote's timeout is
// long (30 s), so that a writer or publish that waited on the frozen
// server would take that long, and the bound below holds on any machine.
func TestEarlyUploadRemoteFrozen(t *testing.T) {
	srv := sshdtest.Start(t)
	e := newEarlyEnvTimeout(t, srv, 2, 30*time.Second)
	k := tiertest.Key("early-frozen")
	v := tiertest.Data(10, 48<<20)
	w := e.startEarly(k, v[:12<<20])
	srv.Freeze()
	start := time.Now()
	w.write(v[12<<20:])
	publish(t, e.st, k, w, v)
	if d := time.Since(start); d > e.timeout/2 {
		t.Fatalf("writing 36 MiB and publishing with the remote frozen took %v: it waited for the remote (timeout %v)", d, e.timeout)
	}
	time.Sleep(500 * time.Millisecond)
	srv.Thaw()
	e.sync(60 * time.Second)
	e.holds(k, v)
	e.noTemps()
}

// A value published while its early upload is stuck is in the durable
// queue: after a restart of the stack the queue uploads it.
func TestEarlyUploadResumesAfterRestart(t *testing.T) {
	srv := sshdtest.Start(t)
	e := newEarlyEnv(t, srv, 2)
	k := tiertest.Key("early-restart")
	v := tiertest.Data(11, 24<<20)
	w := e.startEarly(k, v[:12<<20])
	srv.Freeze()
	w.write(v[12<<20:])
	publish(t, e.st, k, w, v)
	if err := e.st.WaitDurable(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	if err := e.st.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(e.root, k.String())); !os.IsNotExist(err) {
		t.Fatalf("value on the remote before the restart: %v", err)
	}
	srv.Thaw()
	e.open(2)
	if up := e.st.UploadState(k); up != tiers.UploadPending {
		t.Fatalf("upload state %q after the restart", up)
	}
	e.sync(60 * time.Second)
	e.holds(k, v)
	// The stuck upload's temp file could not be removed before the stack
	// closed (the server did not answer): it is left to the sweep of
	// abandoned temp files (an hour old), as a killed daemon's would be.
	for name := range e.temps() {
		if !strings.HasPrefix(name, k.String()+".") || strings.HasSuffix(name, ".sum") {
			t.Fatalf("unexpected temp file %s", name)
		}
	}
	if n := len(e.temps()); n > 1 {
		t.Fatalf("%d temp files left, want at most the stuck upload's", n)
	}
}

// At most UploadWorkers early uploads run at once; beyond, BeginUpload
// declines and the writer publishes as usual.
func TestEarlyUploadLimit(t *testing.T) {
	e := newEarlyEnv(t, sshdtest.Start(t), 1)
	w1 := newSpoolWriter(t)
	u1 := e.st.BeginUpload(tiertest.Key("limit1"), w1.f)
	if u1 == nil {
		t.Fatal("first BeginUpload declined")
	}
	if u := e.st.BeginUpload(tiertest.Key("limit2"), newSpoolWriter(t).f); u != nil {
		t.Fatal("second BeginUpload accepted with UploadWorkers 1")
	}
	u1.Abort()
	tiertest.Eventually(t, "the aborted upload to end", func() bool {
		u := e.st.BeginUpload(tiertest.Key("limit3"), newSpoolWriter(t).f)
		if u != nil {
			u.Abort()
		}
		return u != nil
	})
}

// Without a remote that takes growing values there is no early upload.
func TestEarlyUploadNeedsStreamingRemote(t *testing.T) {
	s := newStack(t, tiers.StackOptions{}, tiers.Layer{Tier: mem(t, "ram", 1<<20)}, tiers.Layer{Tier: mem(t, "far", 1<<30), Remote: true})
	if u := s.BeginUpload(tiertest.Key("x"), newSpoolWriter(t).f); u != nil {
		t.Fatal("BeginUpload with a memory remote")
	}
	if _, err := s.Publish(context.Background(), tiertest.Key("x"), newBlob([]byte("v")), digest.Of([]byte("v"))); err != nil {
		t.Fatal(err)
	}
}

// startEarly begins an early upload of k, writes first and waits until
// 4 MiB of it is on the remote.
func (e *earlyEnv) startEarly(k digest.Key, first []byte) *spoolWriter {
	e.t.Helper()
	w := newSpoolWriter(e.t)
	w.early = e.st.BeginUpload(k, w.f)
	w.write(first)
	e.streamed(4 << 20)
	return w
}

// delivered publishes w as k, whose value is v, and checks that the remote
// then holds exactly v, with no temp file left.
func (e *earlyEnv) delivered(k digest.Key, w *spoolWriter, v []byte, within time.Duration) {
	e.t.Helper()
	publish(e.t, e.st, k, w, v)
	e.sync(within)
	e.holds(k, v)
	e.noTemps()
}
