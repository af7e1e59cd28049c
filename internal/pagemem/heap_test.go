package pagemem

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"unsafe"
)

// The advised range is marked for huge pages, and the heap's next large
// allocation lands in it: the runtime reuses the freed range before it maps
// new address space (what AdviseHeap relies on).
func TestAdviseHeapRangeIsReused(t *testing.T) {
	if _, err := os.Stat("/sys/kernel/mm/transparent_hugepage/enabled"); err != nil {
		if start, end := adviseRange(64 << 20); start != end {
			t.Fatalf("no transparent huge pages here, yet %#x-%#x advised", start, end)
		}
		t.Log("this kernel has no transparent huge pages: nothing is advised")
		return
	}
	start, end := adviseRange(64 << 20)
	if end-start < 60<<20 {
		t.Fatalf("advised %d bytes of 64 MiB", end-start)
	}
	flags, err := vmFlags(start)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(" "+flags+" ", " hg ") {
		t.Fatalf("the range at %#x is not marked for huge pages: VmFlags %q", start, flags)
	}
	runtime.GC()
	b := make([]byte, 16<<20)
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	// The freed range begins up to a huge page before the advised one.
	if p < start-hugeSize || p+uintptr(len(b)) > end {
		t.Fatalf("a 16 MiB allocation after the collection is at %#x, outside the freed range around the advised %#x-%#x", p, start, end)
	}
	for i := range b { // the pages are new: they read as zero
		if b[i] != 0 {
			t.Fatalf("byte %d of a new allocation is %d", i, b[i])
		}
	}
}

func TestAdviseHeapBounds(t *testing.T) {
	if got := adviseSize(hugeSize); got != 0 {
		t.Fatalf("AdviseHeap(2 MiB) would allocate %d bytes: too few to hold a whole huge page after alignment", got)
	}
	if memTotal() < 64<<20 {
		t.Fatalf("MemTotal not read from /proc/meminfo: %d", memTotal())
	}
	got := adviseSize(1 << 50)
	if raceEnabled && got != 0 {
		t.Fatalf("a race build would allocate %d bytes for the advice", got)
	}
	if got > maxAdvise || got > memTotal()/4 {
		t.Fatalf("AdviseHeap(1 PiB) would allocate %d bytes: more than %d or a quarter of the machine's memory", got, maxAdvise)
	}
	if got == 0 && !raceEnabled && !strictOvercommit() && !limitedAddressSpace() {
		t.Fatal("AdviseHeap(1 PiB) would allocate nothing, with neither strict accounting nor a bounded address space")
	}
}

// vmFlags returns the VmFlags line of the mapping that holds addr.
func vmFlags(addr uintptr) (string, error) {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	in := false
	for sc.Scan() {
		line := sc.Text()
		var lo, hi uintptr
		if n, _ := fmt.Sscanf(line, "%x-%x ", &lo, &hi); n == 2 {
			in = lo <= addr && addr < hi
			continue
		}
		if flags, ok := strings.CutPrefix(line, "VmFlags:"); ok && in {
			return strings.TrimSpace(flags), nil
		}
	}
	return "", fmt.Errorf("no mapping holds %#x", addr)
}
