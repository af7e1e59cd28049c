package fs

import (
	"bytes"
	"io"
	"os"
	"testing"

	"github.com/flechefs/flechefs/digest"
)

// TestSpool checks the spool against a plain byte slice through writes at
// any offset and truncates, across the spill to disk.
func TestSpool(t *testing.T) {
	dir := t.TempDir()
	s := newSpool(dir, 1000)
	var ref []byte
	write := func(off int, p []byte) {
		t.Helper()
		if err := s.writeAt(p, int64(off)); err != nil {
			t.Fatal(err)
		}
		if end := off + len(p); end > len(ref) {
			ref = append(ref, make([]byte, end-len(ref))...)
		}
		copy(ref[off:], p)
	}
	trunc := func(n int) {
		t.Helper()
		if err := s.truncate(int64(n)); err != nil {
			t.Fatal(err)
		}
		if n < len(ref) {
			ref = ref[:n]
		} else {
			ref = append(ref, make([]byte, n-len(ref))...)
		}
	}
	check := func(what string, spilled bool) {
		t.Helper()
		if (s.f != nil) != spilled {
			t.Fatalf("%s: spilled = %v, want %v", what, s.f != nil, spilled)
		}
		if s.size != int64(len(ref)) {
			t.Fatalf("%s: size %d, want %d", what, s.size, len(ref))
		}
		got := make([]byte, len(ref)+10)
		n, err := s.readAt(got, 0)
		if n != len(ref) || (err != io.EOF && len(ref) > 0) || !bytes.Equal(got[:n], ref) {
			t.Fatalf("%s: readAt = %d, %v; content equal %v", what, n, err, bytes.Equal(got[:n], ref))
		}
		sum, err := s.sum()
		if err != nil || sum != digest.Of(ref) {
			t.Fatalf("%s: sum %v, %v", what, sum, err)
		}
	}
	check("empty", false)
	write(0, pattern(300, 1))
	write(500, []byte("hole before")) // a hole reads as zeros
	check("hole", false)
	trunc(100)
	trunc(400) // grows with zeros, not the old bytes
	check("shrink then grow", false)
	write(10, []byte("overwrite"))
	write(990, pattern(10, 2)) // ends at exactly the limit
	check("at limit", false)
	write(1000, []byte{1})
	check("spilled", true)
	write(5000, pattern(3000, 3))
	trunc(2000)
	trunc(2500)
	check("truncate on disk", true)

	b := s.blob(nil)
	if b.Size() != int64(len(ref)) {
		t.Fatalf("blob size %d", b.Size())
	}
	got := make([]byte, 100)
	if n, err := b.ReadAt(got, int64(len(ref))-40); n != 40 || err != io.EOF || !bytes.Equal(got[:40], ref[len(ref)-40:]) {
		t.Fatalf("blob tail read: %d, %v", n, err)
	}
	b.Release()
	b.Release() // idempotent
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("spool dir not empty: %v", ents)
	}
}

// TestSpoolBlobBytes: a value in memory is handed to the RAM tier as is,
// unless its buffer is much larger than it or it is on disk.
func TestSpoolBlobBytes(t *testing.T) {
	s := newSpool(t.TempDir(), 1<<20)
	data := pattern(16<<10, 1)
	if err := s.writeAt(data, 0); err != nil {
		t.Fatal(err)
	}
	b := s.blob(nil)
	if got := b.Bytes(); !bytes.Equal(got, data) || cap(got) > len(got)+len(got)/8 {
		t.Fatalf("Bytes of a 16 KiB write: %d bytes (cap %d), equal %v", len(got), cap(got), bytes.Equal(got, data))
	}
	if s.mem != nil {
		t.Fatal("the spool kept the buffer it handed over")
	}

	s = newSpool(t.TempDir(), 1<<20)
	s.writeAt(pattern(5000, 2), 0)
	s.truncate(1000) // the buffer stays larger
	if got := s.blob(nil).Bytes(); got != nil {
		t.Fatalf("Bytes of a 1000-byte value in a %d-byte buffer: not nil", cap(got))
	}

	s = newSpool(t.TempDir(), 100)
	s.writeAt(pattern(300, 3), 0) // spilled to disk
	b = s.blob(nil)
	defer b.Release()
	if got := b.Bytes(); got != nil {
		t.Fatal("Bytes of a spilled value: not nil")
	}
}
