// Package pagemem allocates byte buffers whose pages are mapped before
// they are first written, and has the heap's growth mapped with huge pages.
//
// A buffer that holds a value (the spool of a small write, a fetch into
// memory, a copy into the RAM tier) is usually memory the process has not
// touched yet: the Go heap grows, or reuses pages it gave back to the
// kernel. Each 4 KiB page then costs a page fault at its first write. In
// virtual machines that back guest memory lazily (Firecracker, where
// flechefs's CI and bench run) such a fault costs dozens of times the copy
// of the page's bytes, and about twice what the same page costs when the
// kernel maps a whole range in one call (MADV_POPULATE_WRITE): the host's
// share remains, the guest's fault entry and exit per page go. The figures
// are in docs/performance.md. Make asks for that mapping right after the
// allocation. Memory the heap reuses without giving it back is mapped
// already, and the call then costs one system call.
//
// The heap's growth that Make cannot reach, the buffers other libraries
// allocate, is what AdviseHeap (heap.go) is for: it has that growth mapped
// with huge pages, one fault per 2 MiB.
package pagemem

import (
	"sync/atomic"
	"syscall"
	"unsafe"
)

// minPopulate is the smallest buffer worth a madvise call: below two
// pages the range holds at most one whole page.
const minPopulate = 2 * pageSize

const pageSize = 4096

// unsupported is set once the kernel refused MADV_POPULATE_WRITE (before
// Linux 5.14): the faults happen as before.
var unsupported atomic.Bool

// Make returns make([]byte, n, c) with the whole pages of its capacity
// mapped writable. Pages already mapped (reused heap memory) are left as
// they are; new ones are zero, as a fault would give them: the contents are
// exactly make's.
func Make(n, c int) []byte {
	b := make([]byte, n, c)
	populate(b[:c])
	return b
}

// Bytes is Make(n, n): a buffer of exactly n bytes.
func Bytes(n int) []byte { return Make(n, n) }

// populate maps the whole pages of b writable, if they are not yet. It
// never changes b's contents. In the range AdviseHeap advised it does
// nothing: there the first write maps 2 MiB at once, and mapping ahead
// would only move that cost into the caller (an Open waiting for its fetch
// buffer).
func populate(b []byte) {
	if cap(b) < minPopulate || unsupported.Load() {
		return
	}
	start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	end := start + uintptr(cap(b))
	start = (start + pageSize - 1) &^ (pageSize - 1)
	end &^= pageSize - 1
	if end <= start || inHugeRange(start, end) {
		return
	}
	_, _, errno := syscall.Syscall(syscall.SYS_MADVISE, start, end-start, madvPopulateWrite)
	if errno == syscall.EINVAL {
		unsupported.Store(true)
	}
}

// madvPopulateWrite is MADV_POPULATE_WRITE (Linux 5.14).
const madvPopulateWrite = 23
