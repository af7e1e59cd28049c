package bolt

import (
	"os"
	"syscall"
	"unsafe"

	bolt "go.etcd.io/bbolt"
)

// bbolt serves values from a shared, read-only memory map of the database
// file. Every page a read touches joins the process's resident set (as a
// file-backed page) and stays until the kernel reclaims it under pressure:
// reading or writing a 512 MiB entry made a daemon of 600 MiB. So reads and
// staged writes of large values tell the kernel (MADV_DONTNEED) that the
// process no longer needs those pages. On a shared file mapping this only
// drops the page table entries: the data stay in the page cache and the next
// access maps them again with a minor fault.
//
// The map must not move meanwhile: the caller holds a read transaction
// (bbolt remaps only when no transaction holds its mmap lock), and the range
// is checked to lie inside the map (a value of a write transaction's dirty
// pages lives on the heap, where MADV_DONTNEED would zero live memory).

const (
	// dropMapThreshold is the least span of values read at once that is
	// dropped: below it, pages are few and shared with other values.
	dropMapThreshold = 64 << 10
	// faultAround is how far from the pages a read touched the kernel may
	// have mapped others: a fault maps the page cache pages around it
	// (fault_around_bytes), whole large folios (up to 2 MiB) included.
	faultAround = 2 << 20
)

// Reading ahead. bbolt advises the kernel that its map is accessed at
// random (MADV_RANDOM, right after the mmap): a page fault then reads just
// the faulting page, and a value read from a file that is not in the page
// cache (after a reboot, or once the kernel reclaimed it) comes in a page
// at a time, ten times slower than the disk reads the file. So a reader
// asks for the chunks of what it reads, and of what a sequential reader
// reads next, with MADV_WILLNEED (readAhead in read.go): the kernel reads
// them in large requests in the background. The pages go into the page
// cache, not the process's resident set.
const (
	readAheadBytes = 4 << 20 // how far ahead of a sequential reader
	readAheadMin   = 1 << 20 // the least span asked for at once, short of the end
)

var pageSize = uintptr(os.Getpagesize())

// mappedRange is the span of the map a read touched.
type mappedRange struct{ lo, hi, n uintptr }

func (m *mappedRange) add(v []byte) {
	start := uintptr(unsafe.Pointer(unsafe.SliceData(v)))
	end := start + uintptr(len(v))
	if m.n == 0 || start < m.lo {
		m.lo = start
	}
	m.hi = max(m.hi, end)
	m.n += uintptr(len(v))
}

// drop drops the pages of the span, and those the kernel mapped around
// it, from the resident set. tx is the read transaction the values were
// read in.
func (m *mappedRange) drop(tx *bolt.Tx) {
	if m.n < dropMapThreshold || tx.Writable() {
		return
	}
	base := tx.DB().Info().Data
	limit := base + uintptr(tx.Size())
	if m.lo < base || m.hi > limit {
		return
	}
	lo := (m.lo - min(m.lo-base, faultAround)) &^ (faultAround - 1)
	madviseDontNeed(max(base, lo), min(limit, (m.hi+faultAround)&^(faultAround-1)))
}

// willNeed asks the kernel to read the span's pages into the page cache,
// in the background. Like drop, only inside the map of tx.
func (m *mappedRange) willNeed(tx *bolt.Tx) {
	if m.n == 0 || tx.Writable() {
		return
	}
	base := tx.DB().Info().Data
	limit := base + uintptr(tx.Size())
	if m.lo < base || m.hi > limit {
		return
	}
	madvise(m.lo, m.hi, syscall.MADV_WILLNEED)
}

// dropMap drops the whole map from the resident set, after a commit: bbolt
// rewrites every leaf a transaction changes, reading the values it keeps
// (the chunks staged before, the neighbours of new entries) through the map.
func (t *Tier) dropMap() {
	t.view(func(tx *bolt.Tx) error {
		base := tx.DB().Info().Data
		madviseDontNeed(base, base+uintptr(tx.Size()))
		return nil
	})
}

func madviseDontNeed(start, end uintptr) { madvise(start, end, syscall.MADV_DONTNEED) }

func madvise(start, end uintptr, advice int) {
	start &^= pageSize - 1
	end = (end + pageSize - 1) &^ (pageSize - 1)
	if end > start {
		syscall.Syscall(syscall.SYS_MADVISE, start, end-start, uintptr(advice))
	}
}

// preadChunk reads the data of chunk v (a value of read transaction tx,
// want bytes long with its CRC) into dst, exactly its data's length, with
// pread(2) from the database file, and checks the CRC of what it read. The
// map and the file are one page cache, and the pages of tx do not change
// while it is open; but a copy out of the map costs a page fault every few
// pages and, after the CRC has read every byte, a second pass, and
// dropping the pages (drop) a walk of the page tables. pread copies each
// byte once and the CRC reads it from the cache. ok is false, with no
// error, when pread cannot read the chunk (not inside the map of tx; a
// short read, as of a truncated file): the caller reads it from the map,
// where a truncated file is found damaged (fault.go).
func (t *Tier) preadChunk(tx *bolt.Tx, v, dst []byte, want int, id uint64, idx int64) (ok bool, err error) {
	if t.file == nil || len(v) != want || len(dst) != want-crcLen || tx.Writable() {
		return false, nil
	}
	base := tx.DB().Info().Data
	start := uintptr(unsafe.Pointer(unsafe.SliceData(v)))
	if start < base || start+uintptr(len(v)) > base+uintptr(tx.Size()) {
		return false, nil
	}
	if n, err := t.file.ReadAt(dst, int64(start-base)+crcLen); err != nil || n != len(dst) {
		return false, nil
	}
	return true, checkCRC(dst, v, id, idx)
}
