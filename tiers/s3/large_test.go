package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/s3test"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// TestFirstWriterWinsLarge: a value past minio-go's multipart threshold
// (16 MiB) keeps its first writer too: it goes up in one PUT, whose
// If-None-Match the store honours (a multipart completion's, SeaweedFS
// does not).
func TestFirstWriterWinsLarge(t *testing.T) { eachStore(t, testFirstWriterWinsLarge) }

func testFirstWriterWinsLarge(t *testing.T, s *s3test.Server) {
	tr := mustOpen(t, options(s))
	k := tiertest.Key("large first writer")
	a, b := tiertest.Data(1, 48<<20+5), tiertest.Data(2, 48<<20+5)
	if _, err := tr.Put(context.Background(), k, bytes.NewReader(a), tiers.Meta{Size: int64(len(a)), Sum: digest.Of(a)}); err != nil {
		t.Fatal(err)
	}
	_, err := tr.Put(context.Background(), k, bytes.NewReader(b), tiers.Meta{Size: int64(len(b)), Sum: digest.Of(b)})
	if !errors.Is(err, tiers.ErrExist) {
		t.Fatalf("second large put: %v; want ErrExist", err)
	}
	if info, err := tr.Stat(context.Background(), k); err != nil || info.Sum != digest.Of(a) {
		t.Fatalf("the object after two puts: %+v, %v; want the first value", info, err)
	}
}

// TestFetchLargeInRanges reads a 64 MiB value whole through WriteTo: the
// bytes arrive in order and right, the ranged GETs run Ranges at a time
// (each of the first Ranges waits for the others to start: a fetch that
// asked for them one after another would never get past the first), and
// never more than Ranges are in flight.
func TestFetchLargeInRanges(t *testing.T) { eachStore(t, testFetchLargeInRanges) }

func testFetchLargeInRanges(t *testing.T, s *s3test.Server) {
	opt := options(s)
	opt.Ranges, opt.RangeSize = 4, 2<<20
	tr := mustOpen(t, opt)
	data := tiertest.Data(3, 64<<20+12345)
	k := tiertest.Key("large in ranges")
	tiertest.Put(t, tr, k, data)

	var (
		mu      sync.Mutex
		started int
		offs    []int64
		peak    int64
	)
	all := make(chan struct{})
	tr.rangeHook = func(off int64) {
		mu.Lock()
		started++
		offs = append(offs, off)
		if started == opt.Ranges {
			close(all)
		}
		first := started <= opt.Ranges
		peak = max(peak, tr.rangesInFlight.Load()+1)
		mu.Unlock()
		if first {
			select {
			case <-all:
			case <-time.After(time.Minute):
				t.Errorf("range at %d: the other ranges of the window did not start within a minute", off)
			}
		}
	}
	r, err := tr.Open(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := r.Info(); got.Size != int64(len(data)) || got.Sum != digest.Of(data) {
		t.Fatalf("Info = %+v; want size %d and the value's sum", got, len(data))
	}
	cw := &checkWriter{want: data}
	n, err := r.(io.WriterTo).WriteTo(cw)
	if err != nil || n != int64(len(data)) || cw.off != int64(len(data)) {
		t.Fatalf("WriteTo = %d, %v (%d bytes checked); want %d bytes", n, err, cw.off, len(data))
	}
	mu.Lock()
	defer mu.Unlock()
	want := (int64(len(data)) - headSize + opt.RangeSize - 1) / opt.RangeSize
	if int64(len(offs)) != want {
		t.Errorf("%d ranged GETs; want %d of %d bytes after the %d-byte head", len(offs), want, opt.RangeSize, headSize)
	}
	if peak > int64(opt.Ranges) {
		t.Errorf("%d ranged GETs in flight at once; the window is %d", peak, opt.Ranges)
	}
}

// checkWriter checks that what is written is want, in order.
type checkWriter struct {
	want []byte
	off  int64
}

func (w *checkWriter) Write(p []byte) (int, error) {
	if w.off+int64(len(p)) > int64(len(w.want)) {
		return 0, fmt.Errorf("write of %d bytes at %d: past the value's %d", len(p), w.off, len(w.want))
	}
	if !bytes.Equal(p, w.want[w.off:w.off+int64(len(p))]) {
		return 0, fmt.Errorf("write of %d bytes at %d: not the value's bytes", len(p), w.off)
	}
	w.off += int64(len(p))
	return len(p), nil
}

// TestReadReplacedObject: a reader opened before its object was deleted
// and written again with another value fails; it never hands out bytes of
// the second value.
func TestReadReplacedObject(t *testing.T) { eachStore(t, testReadReplacedObject) }

func testReadReplacedObject(t *testing.T, s *s3test.Server) {
	tr := mustOpen(t, options(s))
	k := tiertest.Key("replaced")
	a, b := tiertest.Data(4, 3<<20), tiertest.Data(5, 3<<20)
	tiertest.Put(t, tr, k, a)
	r, err := tr.Open(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := tr.Delete(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	tiertest.Put(t, tr, k, b)
	cw := &checkWriter{want: a}
	n, err := r.(io.WriterTo).WriteTo(cw)
	if err == nil {
		t.Fatalf("WriteTo of a replaced object = %d bytes, no error; want an error", n)
	}
	if !errors.Is(err, tiers.ErrNotFound) {
		t.Errorf("WriteTo: %v; want ErrNotFound (the value opened is gone)", err)
	}
	buf := make([]byte, 1<<20)
	if _, err := r.ReadAt(buf, 2<<20); !errors.Is(err, tiers.ErrNotFound) {
		t.Errorf("ReadAt past the head: %v; want ErrNotFound", err)
	}
}

// TestMultipart: a value over the one-PUT limit (lowered here from 5 GiB)
// goes up in parts and reads back whole with its checksum; a second writer
// of the key is refused before it uploads; a value whose bytes differ from
// the announced SHA-256 is aborted, leaving no object and no upload behind.
func TestMultipart(t *testing.T) { eachStore(t, testMultipart) }

func testMultipart(t *testing.T, s *s3test.Server) {
	tr := mustOpen(t, options(s))
	tr.putLimit = 1 << 20
	ctx := context.Background()
	k := tiertest.Key("multipart")
	a := tiertest.Data(3, 3*partSize+12345) // four parts, the last short
	if _, err := tr.Put(ctx, k, bytes.NewReader(a), tiers.Meta{Size: int64(len(a)), Sum: digest.Of(a)}); err != nil {
		t.Fatal(err)
	}
	if got := tiertest.Get(t, tr, k); !bytes.Equal(got, a) {
		t.Fatalf("read back %d bytes, not the value's %d", len(got), len(a))
	}
	b := tiertest.Data(4, 2*partSize)
	if _, err := tr.Put(ctx, k, bytes.NewReader(b), tiers.Meta{Size: int64(len(b)), Sum: digest.Of(b)}); !errors.Is(err, tiers.ErrExist) {
		t.Fatalf("second writer: %v; want ErrExist", err)
	}
	if info, err := tr.Stat(ctx, k); err != nil || info.Sum != digest.Of(a) {
		t.Fatalf("after the second writer: %+v, %v; want the first value", info, err)
	}

	bad := tiertest.Key("multipart damaged")
	c := tiertest.Data(5, 2*partSize+7)
	announced := digest.Of(c)
	c[len(c)-1] ^= 1 // the last part's bytes differ from the sum
	if _, err := tr.Put(ctx, bad, bytes.NewReader(c), tiers.Meta{Size: int64(len(c)), Sum: announced}); !errors.Is(err, tiers.ErrCorrupt) {
		t.Fatalf("put of bytes that differ from their sum: %v; want ErrCorrupt", err)
	}
	if _, err := tr.c.StatObject(ctx, tr.opt.Bucket, tr.object(bad), minio.StatObjectOptions{}); minio.ToErrorResponse(err).Code != "NoSuchKey" {
		t.Fatalf("a damaged multipart upload left an object: %v", err)
	}
	for u := range tr.c.ListIncompleteUploads(ctx, tr.opt.Bucket, tr.opt.Prefix, true) {
		if u.Err != nil {
			t.Fatal(u.Err)
		}
		t.Errorf("an upload is left behind: %s %s", u.Key, u.UploadID)
	}
}
