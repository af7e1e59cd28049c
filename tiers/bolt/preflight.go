package bolt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"slices"
)

// preflight checks, with plain reads of the file (no map, so no fault), what
// bbolt trusts without looking when it opens a database: that the file holds
// every page below the high water mark of its current meta page, and that the
// freelist page is one (a freelist page of the right id, whose ids fit in it,
// are sorted and lie between the meta pages and the high water mark). bbolt
// loads a freelist whose count was damaged without an error, and would then
// hand pages in use out again, overwriting live data; a truncated file
// faults at the first access to a lost page. Either is a damaged database,
// moved aside at Open (salvage.go).
//
// It runs once bbolt has opened (and locked) the file, so that no other
// process is writing it meanwhile. A file whose meta pages do not check out
// is left to bbolt, which refuses it.

// The layout of bbolt's pages (go.etcd.io/bbolt/internal/common): a 16-byte
// header (id 8, flags 2, count 2, overflow 4), and in a meta page a meta
// record after it: magic 4, version 4, page size 4, flags 4, root bucket 16,
// freelist page id 8, high water mark 8, txid 8, checksum 8 (FNV-64a of the
// bytes before it).
const (
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	boltFreelistFlag = 0x10
	boltNoFreelist   = ^uint64(0)
	boltHeader       = 16
	boltMetaLen      = 64
)

type boltMeta struct {
	pageSize uint32
	root     uint64 // the root bucket's page
	freelist uint64
	hwm      uint64
	txid     uint64
}

// readMeta reads the meta record of the page at off; ok is false when it
// does not check out.
func readMeta(f *os.File, off int64) (m boltMeta, ok bool) {
	var b [boltHeader + boltMetaLen]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		return m, false
	}
	r := b[boltHeader:]
	ne := binary.NativeEndian
	h := fnv.New64a()
	h.Write(r[:56])
	if ne.Uint32(r[0:]) != boltMagic || ne.Uint32(r[4:]) != boltVersion || ne.Uint64(r[56:]) != h.Sum64() {
		return m, false
	}
	return boltMeta{pageSize: ne.Uint32(r[8:]), root: ne.Uint64(r[16:]), freelist: ne.Uint64(r[32:]), hwm: ne.Uint64(r[40:]), txid: ne.Uint64(r[48:])}, true
}

// currentMeta returns the meta record bbolt would use (the valid one with
// the higher txid) after checking that the file holds every page in use;
// ok is false when no meta page checks out (bbolt's to refuse).
func currentMeta(f *os.File) (m boltMeta, ok bool, err error) {
	fi, err := f.Stat()
	if err != nil {
		return m, false, err
	}
	m, ok = readMeta(f, 0)
	ps := int64(os.Getpagesize())
	if ok {
		ps = int64(m.pageSize)
	}
	if m1, ok1 := readMeta(f, ps); ok1 && (!ok || m1.txid > m.txid) {
		m, ok = m1, true
	}
	if !ok || ps < 1024 || int64(m.pageSize) != ps {
		return m, false, nil
	}
	if m.hwm < 2 || m.hwm > uint64(fi.Size()/ps) {
		return m, false, fmt.Errorf("the file is truncated or its meta page is wrong: %d bytes, %d pages of %d bytes in use",
			fi.Size(), m.hwm, ps)
	}
	return m, true, nil
}

// preflight returns why the open file f is damaged, or nil.
func preflight(f *os.File) error {
	m, ok, err := currentMeta(f)
	if err != nil || !ok {
		return err
	}
	free, err := checkFreelist(f, m)
	if err != nil {
		return err
	}
	return checkTrees(f, m, nil, free)
}

// checkFreelist checks the freelist page of m and returns the free page
// ids, sorted.
func checkFreelist(f *os.File, m boltMeta) ([]uint64, error) {
	ps := int64(m.pageSize)
	if m.freelist == boltNoFreelist {
		return nil, nil
	}
	if m.freelist < 2 || m.freelist >= m.hwm {
		return nil, fmt.Errorf("freelist page %d outside the %d pages in use", m.freelist, m.hwm)
	}
	var h [boltHeader]byte
	if _, err := f.ReadAt(h[:], int64(m.freelist)*ps); err != nil {
		return nil, fmt.Errorf("reading the freelist page: %w", err)
	}
	ne := binary.NativeEndian
	id, flags, count, overflow := ne.Uint64(h[0:]), ne.Uint16(h[8:]), uint64(ne.Uint16(h[10:])), uint64(ne.Uint32(h[12:]))
	if id != m.freelist || flags != boltFreelistFlag || m.freelist+overflow >= m.hwm {
		return nil, fmt.Errorf("freelist page %d: header says page %d, flags %#x, %d overflow pages", m.freelist, id, flags, overflow)
	}
	page := make([]byte, (overflow+1)*uint64(ps))
	if _, err := f.ReadAt(page, int64(m.freelist)*ps); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("reading the freelist page: %w", err)
	}
	slots := (uint64(len(page)) - boltHeader) / 8
	first := uint64(0)
	if count == 0xFFFF {
		// More ids than the header's count holds: their number is the
		// first slot, and bbolt writes it so only from 0xFFFF on.
		count, first = ne.Uint64(page[boltHeader:]), 1
		if count < 0xFFFF {
			return nil, fmt.Errorf("freelist page %d: an overflowed count of %d", m.freelist, count)
		}
	}
	if count > slots-first {
		return nil, fmt.Errorf("freelist page %d: %d ids do not fit in %d pages", m.freelist, count, overflow+1)
	}
	var last uint64
	free := make([]uint64, 0, count)
	for i := first; i < first+count; i++ {
		pg := ne.Uint64(page[boltHeader+8*i:])
		if pg < 2 || pg >= m.hwm || pg <= last {
			return nil, fmt.Errorf("freelist page %d: free page id %d out of order or outside the %d pages in use", m.freelist, pg, m.hwm)
		}
		last = pg
		free = append(free, pg)
	}
	return free, nil
}

// The B+tree pages. A branch page's elements are (pos 4, key size 4, child
// page id 8), a leaf page's (flags 4, pos 4, key size 4, value size 4),
// each 16 bytes after the header; a leaf element with flag 1 is a bucket,
// whose value starts with its root page id (0: an inline bucket, stored in
// the value).
const (
	boltBranchFlag = 0x01
	boltLeafFlag   = 0x02
	boltBucketElem = 0x01
	boltElem       = 16
	// boltMaxDepth is deeper than any tree bbolt builds (each branch page
	// holds at least two children): a path longer than that is a cycle.
	boltMaxDepth = 64
	// boltMaxOverflow bounds the overflow pages of a page the walk reads
	// whole (a branch page, a leaf of the root bucket): 64 KiB keys at
	// most, a few of them per page.
	boltMaxOverflow = 1024
)

// checkTrees walks the tree of the root bucket and the trees of the named
// buckets in it (every bucket when names is nil), with plain reads of f,
// not through bbolt: each page a pointer reaches must be below the high
// water mark, not free (free, sorted), reached once, at most boltMaxDepth
// deep, and, when read, a branch or leaf page whose header names it. The
// leaves of the buckets are not read (walk).
//
// bbolt trusts these pages. Its Cursor.search is recursive: a damaged
// branch page that points back up its tree sends it round the cycle until
// the goroutine's stack overflows, a fatal error that no recover() catches.
func checkTrees(f *os.File, m boltMeta, names [][]byte, free []uint64) error {
	w := treeWalk{f: f, m: m, free: free, seen: map[uint64]bool{}}
	if err := w.walk("the root bucket", m.root, true); err != nil {
		return err
	}
	for _, b := range w.buckets {
		if names != nil && !slices.ContainsFunc(names, func(n []byte) bool { return string(n) == b.name }) {
			continue
		}
		if b.root == 0 {
			continue // inline: in its parent's leaf, already read
		}
		if err := w.walk(fmt.Sprintf("bucket %q", b.name), b.root, false); err != nil {
			return err
		}
	}
	// The leaves not read: each must be a page in use that no other
	// pointer reaches and that is not a branch page read above.
	slices.Sort(w.leaves)
	for i, id := range w.leaves {
		switch {
		case id < 2 || id >= m.hwm:
			return fmt.Errorf("a leaf pointer to page %d, outside the %d pages in use", id, m.hwm)
		case w.seen[id] || i > 0 && w.leaves[i-1] == id:
			return fmt.Errorf("page %d: reached twice (a cycle, or two parents)", id)
		case w.isFree(id):
			return fmt.Errorf("a leaf pointer to page %d, a free page", id)
		}
	}
	return nil
}

type treeWalk struct {
	f       *os.File
	buf     []byte
	m       boltMeta
	free    []uint64 // sorted
	seen    map[uint64]bool
	leaves  []uint64 // the pages of the bottom levels of the buckets, not read
	buckets []struct {
		name string
		root uint64
	}
}

// walk checks the tree of what, rooted at page root, a level at a time.
// With leaves, it reads the leaves whole and collects the buckets they
// hold. Without, when the first page of a level below the root is a leaf,
// the level is the tree's bottom (a bbolt tree is balanced): its other
// pages join w.leaves unread. A large bucket has a thousand leaves to each
// branch page, and reading each leaf's header would make an open read the
// whole index.
func (w *treeWalk) walk(what string, root uint64, leaves bool) error {
	level := []uint64{root}
	for depth := 0; len(level) > 0; depth++ {
		if depth > boltMaxDepth {
			return fmt.Errorf("%s: deeper than %d levels", what, boltMaxDepth)
		}
		var next []uint64
		for i, id := range level {
			kids, leaf, err := w.page(what, id, leaves, next)
			if err != nil {
				return err
			}
			if leaf && !leaves && i == 0 {
				w.leaves = append(w.leaves, level[1:]...)
				break
			}
			next = kids
		}
		level = next
	}
	return nil
}

// page checks page id of the tree of what, appends its children to kids,
// and says whether it is a leaf. It reads the page once.
func (w *treeWalk) page(what string, id uint64, leaves bool, kids []uint64) ([]uint64, bool, error) {
	ps := uint64(w.m.pageSize)
	bad := func(format string, args ...any) ([]uint64, bool, error) {
		return nil, false, fmt.Errorf("%s: page %d: %s", what, id, fmt.Sprintf(format, args...))
	}
	if id < 2 || id >= w.m.hwm {
		return bad("outside the %d pages in use", w.m.hwm)
	}
	if w.seen[id] {
		return bad("reached twice (a cycle, or two parents)")
	}
	if w.isFree(id) {
		return bad("a free page")
	}
	w.seen[id] = true
	ne := binary.NativeEndian
	if uint64(cap(w.buf)) < ps {
		w.buf = make([]byte, ps)
	}
	page := w.buf[:ps]
	if _, err := w.f.ReadAt(page, int64(id*ps)); err != nil {
		return bad("%v", err)
	}
	hid, flags, count, overflow := ne.Uint64(page[0:]), ne.Uint16(page[8:]), uint64(ne.Uint16(page[10:])), uint64(ne.Uint32(page[12:]))
	if hid != id || flags != boltBranchFlag && flags != boltLeafFlag || id+overflow >= w.m.hwm {
		return bad("header says page %d, flags %#x, %d overflow pages", hid, flags, overflow)
	}
	leaf := flags == boltLeafFlag
	if overflow > boltMaxOverflow && (!leaf || leaves) {
		// A damaged count must not make the walk allocate the file.
		return bad("%d overflow pages, more than a branch page or the root bucket needs", overflow)
	}
	if leaf && !leaves {
		return kids, true, nil
	}
	if overflow > 0 { // rare for a branch page or the root bucket's leaves
		w.buf = make([]byte, (overflow+1)*ps)
		page = w.buf
		if _, err := w.f.ReadAt(page, int64(id*ps)); err != nil {
			return bad("%v", err)
		}
	}
	if boltHeader+count*boltElem > uint64(len(page)) {
		return bad("%d elements do not fit", count)
	}
	for i := range count {
		e := page[boltHeader+i*boltElem:]
		if flags == boltBranchFlag {
			kids = append(kids, ne.Uint64(e[8:]))
			continue
		}
		if ne.Uint32(e[0:])&boltBucketElem == 0 {
			continue
		}
		at := boltHeader + i*boltElem + uint64(ne.Uint32(e[4:]))
		ksize, vsize := uint64(ne.Uint32(e[8:])), uint64(ne.Uint32(e[12:]))
		if at+ksize+vsize > uint64(len(page)) || vsize < 16 {
			return bad("bucket element %d outside the page", i)
		}
		w.buckets = append(w.buckets, struct {
			name string
			root uint64
		}{string(page[at : at+ksize]), ne.Uint64(page[at+ksize:])})
	}
	return kids, leaf, nil
}

func (w *treeWalk) isFree(id uint64) bool {
	_, ok := slices.BinarySearch(w.free, id)
	return ok
}
