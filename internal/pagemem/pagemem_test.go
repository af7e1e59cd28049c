package pagemem

import (
	"bytes"
	"fmt"
	"runtime/debug"
	"syscall"
	"testing"
)

func TestMakeIsZeroed(t *testing.T) {
	for _, n := range []int{0, 1, 4095, 8192, 16 << 10, 4<<20 + 3} {
		b := Make(n, n+5)
		if len(b) != n || cap(b) != n+5 {
			t.Fatalf("Make(%d, %d): len %d cap %d", n, n+5, len(b), cap(b))
		}
		if !bytes.Equal(b[:cap(b)], make([]byte, n+5)) {
			t.Fatalf("Make(%d): not zero", n)
		}
	}
}

// populate maps pages; it must not change what they hold, including memory
// the heap reuses.
func TestPopulateKeepsContents(t *testing.T) {
	b := make([]byte, 1<<20+123)
	for i := range b {
		b[i] = byte(i*7 + 1)
	}
	want := bytes.Clone(b)
	populate(b)
	populate(b[3:])
	if !bytes.Equal(b, want) {
		t.Fatal("populate changed the buffer")
	}
	if unsupported.Load() {
		t.Log("MADV_POPULATE_WRITE is not supported by this kernel: populate does nothing")
	}
}

// BenchmarkFill fills buffers of fresh memory allocated by make or by Make:
// the difference is the page faults Make saves. The buffers are kept, as the
// RAM tier keeps values, and every 64 MiB dropped and given back to the
// kernel (untimed), so that every buffer is memory the process has not
// touched yet, as when the heap grows.
func BenchmarkFill(b *testing.B) {
	for _, size := range []int{16 << 10, 4 << 20} {
		src := bytes.Repeat([]byte{1}, size)
		for _, alloc := range []struct {
			name string
			f    func(int) []byte
		}{{"make", func(n int) []byte { return make([]byte, n) }}, {"Make", func(n int) []byte { return Bytes(n) }}} {
			b.Run(fmt.Sprintf("%s/%dKiB", alloc.name, size>>10), func(b *testing.B) {
				b.SetBytes(int64(size))
				var kept [][]byte
				for i := 0; b.Loop(); i++ {
					buf := alloc.f(size)
					copy(buf, src)
					kept = append(kept, buf)
					if len(kept)*size >= 64<<20 {
						b.StopTimer()
						kept = nil
						debug.FreeOSMemory()
						b.StartTimer()
					}
				}
			})
		}
	}
}

// BenchmarkMapPage is the cost of mapping one 4 KiB page of fresh
// anonymous memory: by a fault at its first write, or in one call for the
// whole range (what populate does). ns/op is per page.
func BenchmarkMapPage(b *testing.B) {
	const span = 64 << 20
	for _, how := range []string{"fault", "populate"} {
		b.Run(how, func(b *testing.B) {
			b.SetBytes(pageSize)
			for pages := 0; pages < b.N; pages += span / pageSize {
				b.StopTimer()
				m, err := syscall.Mmap(-1, 0, span, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
				if err != nil {
					b.Fatal(err)
				}
				n := min(span/pageSize, b.N-pages)
				b.StartTimer()
				if how == "populate" {
					populate(m[:n*pageSize])
				}
				for i := 0; i < n; i++ {
					m[i*pageSize] = 1
				}
				b.StopTimer()
				syscall.Munmap(m)
				b.StartTimer()
			}
		})
	}
}
