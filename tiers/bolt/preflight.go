package bolt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
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
	return boltMeta{pageSize: ne.Uint32(r[8:]), freelist: ne.Uint64(r[32:]), hwm: ne.Uint64(r[40:]), txid: ne.Uint64(r[48:])}, true
}

// preflight returns why the open file f is damaged, or nil.
func preflight(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	m, ok := readMeta(f, 0)
	ps := int64(os.Getpagesize())
	if ok {
		ps = int64(m.pageSize)
	}
	if m1, ok1 := readMeta(f, ps); ok1 && (!ok || m1.txid > m.txid) {
		m, ok = m1, true
	}
	if !ok || ps < 1024 || int64(m.pageSize) != ps {
		return nil // bbolt's to refuse
	}
	if m.hwm < 2 || m.hwm > uint64(fi.Size()/ps) {
		return fmt.Errorf("the file is truncated or its meta page is wrong: %d bytes, %d pages of %d bytes in use",
			fi.Size(), m.hwm, ps)
	}
	if m.freelist == boltNoFreelist {
		return nil
	}
	if m.freelist < 2 || m.freelist >= m.hwm {
		return fmt.Errorf("freelist page %d outside the %d pages in use", m.freelist, m.hwm)
	}
	var h [boltHeader]byte
	if _, err := f.ReadAt(h[:], int64(m.freelist)*ps); err != nil {
		return fmt.Errorf("reading the freelist page: %w", err)
	}
	ne := binary.NativeEndian
	id, flags, count, overflow := ne.Uint64(h[0:]), ne.Uint16(h[8:]), uint64(ne.Uint16(h[10:])), uint64(ne.Uint32(h[12:]))
	if id != m.freelist || flags != boltFreelistFlag || m.freelist+overflow >= m.hwm {
		return fmt.Errorf("freelist page %d: header says page %d, flags %#x, %d overflow pages", m.freelist, id, flags, overflow)
	}
	page := make([]byte, (overflow+1)*uint64(ps))
	if _, err := f.ReadAt(page, int64(m.freelist)*ps); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("reading the freelist page: %w", err)
	}
	slots := (uint64(len(page)) - boltHeader) / 8
	first := uint64(0)
	if count == 0xFFFF {
		// More ids than the header's count holds: their number is the
		// first slot, and bbolt writes it so only from 0xFFFF on.
		count, first = ne.Uint64(page[boltHeader:]), 1
		if count < 0xFFFF {
			return fmt.Errorf("freelist page %d: an overflowed count of %d", m.freelist, count)
		}
	}
	if count > slots-first {
		return fmt.Errorf("freelist page %d: %d ids do not fit in %d pages", m.freelist, count, overflow+1)
	}
	var last uint64
	for i := first; i < first+count; i++ {
		pg := ne.Uint64(page[boltHeader+8*i:])
		if pg < 2 || pg >= m.hwm || pg <= last {
			return fmt.Errorf("freelist page %d: free page id %d out of order or outside the %d pages in use", m.freelist, pg, m.hwm)
		}
		last = pg
	}
	return nil
}
