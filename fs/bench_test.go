package fs

import (
	"io"
	"os"
	"syscall"
	"testing"
	"time"
)

// BenchmarkSequentialRead reads a 64 MiB entry through the mount with a
// 1 MiB buffer. cold: the kernel's page cache for the file is dropped
// (posix_fadvise DONTNEED) before every pass, so every byte crosses FUSE;
// warm: passes after the first are served by the page cache
// (FOPEN_KEEP_CACHE).
func BenchmarkSequentialRead(b *testing.B) {
	const size = 64 << 20
	m := mountT(b, Options{})
	p := m.path(newKey())
	if err := os.WriteFile(p, pattern(size, 5), 0o644); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	readAll := func(b *testing.B, dropCache bool) {
		f, err := os.Open(p)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if dropCache {
			fadviseDontNeed(b, f)
		}
		n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
		if err != nil || n != size {
			b.Fatalf("read %d bytes, %v", n, err)
		}
	}
	b.Run("cold", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			readAll(b, true)
		}
	})
	b.Run("warm", func(b *testing.B) {
		readAll(b, false) // fill the page cache
		b.SetBytes(size)
		b.ResetTimer()
		for b.Loop() {
			readAll(b, false)
		}
	})
}

func fadviseDontNeed(b *testing.B, f *os.File) {
	const posixFadvDontneed = 4
	if _, _, e := syscall.Syscall6(syscall.SYS_FADVISE64, f.Fd(), 0, 0, posixFadvDontneed, 0, 0); e != 0 {
		b.Fatalf("fadvise: %v", e)
	}
}

// BenchmarkCreate16KiB creates, writes and closes 2000 files of 16 KiB per
// iteration (each a fresh key: LOOKUP miss, CREATE, WRITE, FLUSH+publish,
// RELEASE).
func BenchmarkCreate16KiB(b *testing.B) {
	const files = 2000
	m := mountT(b, Options{})
	data := pattern(16<<10, 6)
	start := time.Now()
	n := 0
	for b.Loop() {
		for range files {
			if err := os.WriteFile(m.path(newKey()), data, 0o644); err != nil {
				b.Fatal(err)
			}
		}
		n += files
	}
	b.SetBytes(files * int64(len(data)))
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "files/s")
}
