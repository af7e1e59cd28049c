package pagemem

import (
	"bytes"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// Huge pages for the heap.
//
// Under the kernel's transparent-huge-page mode "madvise" (the default of
// Debian and Ubuntu) memory gets 2 MiB pages only where a program asked for
// them, and the Go runtime does not ask for its heap: every 4 KiB of heap
// growth costs a page fault at its first write. Most of a daemon's growth is
// not in buffers Make can map ahead: the SSH client's packets, pkg/sftp's
// replies and bbolt's commit buffers are allocated by those libraries. On
// the project's virtual machines a fault costs about 12 µs, while one huge
// page maps 512 of them for about the cost of one (the figures are in
// docs/performance.md).
//
// AdviseHeap has the heap map a range of address space at once, marks it
// MADV_HUGEPAGE and frees it again. The runtime keeps a freed range mapped
// and allocates from the lowest free addresses first, so the heap's later
// growth lands in that range, and the first write into each aligned 2 MiB
// of it takes one huge page instead of 512 faults. Nothing is written here:
// until used, the range costs address space only. The Go runtime is built to
// live on huge pages (its scavenger avoids breaking dense ones, as it does
// under the mode "always"); what changes is that the kernel's khugepaged may
// rebuild a huge page over a range the runtime gave back, so the resident
// heap can stay nearer its peak: never beyond the advised range, which is
// bounded by the caller's figure.

// maxAdvise bounds the advised range whatever the caller asks: address
// space is cheap, but a kernel that accounts it (below) or a small machine
// must never fail the allocation.
const maxAdvise = 1 << 30

// AdviseHeap advises up to n bytes of heap address space for huge pages
// and reports how many it advised: 0 when the kernel has no transparent
// huge pages or accounts every mapping in full (vm.overcommit_memory = 2),
// when the process's address space is limited (ulimit -v), or on a small
// machine: there the allocation could fail, and a failed allocation ends a
// Go program. A build with the race detector advises nothing (race.go).
// It runs a garbage collection; call it once, at start.
func AdviseHeap(n int64) int64 {
	if n = adviseSize(n); n == 0 {
		return 0
	}
	start, end := adviseRange(int(n))
	hugeLo.Store(start)
	hugeHi.Store(end)
	runtime.GC()
	return int64(end - start)
}

// hugeLo and hugeHi bound the range AdviseHeap advised (empty: none).
var hugeLo, hugeHi atomic.Uintptr

// inHugeRange reports whether [start, end) lies in the advised range.
func inHugeRange(start, end uintptr) bool {
	return start >= hugeLo.Load() && end <= hugeHi.Load()
}

// adviseSize is the range AdviseHeap(n) allocates, or 0 for none.
func adviseSize(n int64) int64 {
	n = min(n, maxAdvise, memTotal()/4)
	if raceEnabled || n < 2*hugeSize || unsafe.Sizeof(uintptr(0)) < 8 || strictOvercommit() || limitedAddressSpace() {
		return 0
	}
	return n
}

const hugeSize = 2 << 20

// adviseRange allocates n bytes, advises the whole huge pages inside them
// and drops them; it returns the advised range (empty when the kernel
// refused).
func adviseRange(n int) (start, end uintptr) {
	b := make([]byte, n) // new address space: the runtime does not clear it
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	start = (p + hugeSize - 1) &^ (hugeSize - 1)
	end = (p + uintptr(n)) &^ (hugeSize - 1)
	if end <= start {
		return 0, 0
	}
	_, _, errno := syscall.Syscall(syscall.SYS_MADVISE, start, end-start, syscall.MADV_HUGEPAGE)
	runtime.KeepAlive(b) // mapped until the advice is given
	if errno != 0 {
		return 0, 0
	}
	return start, end
}

// memTotal is the machine's memory in bytes (MemTotal), or 0 when unknown.
func memTotal() int64 {
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) != nil {
		return 0
	}
	return int64(si.Totalram) * int64(si.Unit)
}

// strictOvercommit reports whether the kernel charges every private
// writable mapping in full against its commit limit (mode 2): there the
// advised range would count as memory used.
func strictOvercommit() bool {
	b, err := os.ReadFile("/proc/sys/vm/overcommit_memory")
	return err != nil || string(bytes.TrimSpace(b)) == "2"
}

// limitedAddressSpace reports whether the process's address space is
// bounded (RLIMIT_AS, ulimit -v).
func limitedAddressSpace() bool {
	var l syscall.Rlimit
	return syscall.Getrlimit(syscall.RLIMIT_AS, &l) != nil || l.Cur != ^uint64(0)
}
