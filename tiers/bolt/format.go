package bolt

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
)

// Bucket names. The layout is described in doc.go.
var (
	bucketKeys    = []byte("keys")
	bucketChunks  = []byte("chunks")
	bucketLRU     = []byte("lru")
	bucketQueue   = []byte("queue")
	bucketStaging = []byte("staging")
	bucketMeta    = []byte("meta")

	allBuckets = [][]byte{bucketKeys, bucketChunks, bucketLRU, bucketQueue, bucketStaging, bucketMeta}

	metaFormat = []byte("format")
	metaStats  = []byte("stats")
)

// formatID is stored under meta/format; Open refuses a file with another one.
const formatID = "flechefs-bolt/1"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// record is the value under keys/<key>.
type record struct {
	id      uint64 // entry id: the prefix of its chunk keys; never reused
	size    int64
	sum     digest.Sum
	created int64  // unix nanoseconds
	access  int64  // unix nanoseconds; with id, the key of its lru record
	seq     uint64 // queue sequence number; 0: not waiting for upload
	chunk   uint32 // chunk size the value was written with
}

const (
	recordVersion = 1
	recordLen     = 1 + 8 + 8 + 32 + 8 + 8 + 8 + 4
)

func (r *record) encode() []byte {
	b := make([]byte, recordLen)
	b[0] = recordVersion
	binary.BigEndian.PutUint64(b[1:], r.id)
	binary.BigEndian.PutUint64(b[9:], uint64(r.size))
	copy(b[17:49], r.sum[:])
	binary.BigEndian.PutUint64(b[49:], uint64(r.created))
	binary.BigEndian.PutUint64(b[57:], uint64(r.access))
	binary.BigEndian.PutUint64(b[65:], r.seq)
	binary.BigEndian.PutUint32(b[73:], r.chunk)
	return b
}

func decodeRecord(b []byte) (record, error) {
	var r record
	if len(b) != recordLen || b[0] != recordVersion {
		return r, fmt.Errorf("%w: entry record of %d bytes, version %d", tiers.ErrCorrupt, len(b), firstByte(b))
	}
	r.id = binary.BigEndian.Uint64(b[1:])
	r.size = int64(binary.BigEndian.Uint64(b[9:]))
	copy(r.sum[:], b[17:49])
	r.created = int64(binary.BigEndian.Uint64(b[49:]))
	r.access = int64(binary.BigEndian.Uint64(b[57:]))
	r.seq = binary.BigEndian.Uint64(b[65:])
	r.chunk = binary.BigEndian.Uint32(b[73:])
	if r.size < 0 || r.chunk == 0 || r.id == 0 {
		return r, fmt.Errorf("%w: entry record with size %d, chunk size %d, id %d", tiers.ErrCorrupt, r.size, r.chunk, r.id)
	}
	return r, nil
}

func firstByte(b []byte) int {
	if len(b) == 0 {
		return -1
	}
	return int(b[0])
}

// chunks is the number of chunks of the record's value.
func (r *record) chunks() int64 { return chunkCount(r.size, int64(r.chunk)) }

func chunkCount(size, chunk int64) int64 { return (size + chunk - 1) / chunk }

// chunkKey is the key of chunk idx of entry id: id and idx big-endian, so
// that an entry's chunks are adjacent and in order.
func chunkKey(id uint64, idx uint32) []byte {
	b := make([]byte, 12)
	binary.BigEndian.PutUint64(b, id)
	binary.BigEndian.PutUint32(b[8:], idx)
	return b
}

// chunkLen is the stored length (CRC included) of chunk idx of a value.
func chunkLen(size, chunk, idx int64) int {
	return crcLen + int(min(chunk, size-idx*chunk))
}

// crcLen is the length of the CRC32C that starts every chunk value.
const crcLen = 4

// sealChunk writes the CRC32C of b[crcLen:] into b[:crcLen].
func sealChunk(b []byte) {
	binary.BigEndian.PutUint32(b, crc32.Checksum(b[crcLen:], castagnoli))
}

// checkChunk verifies a stored chunk's length and CRC and returns its data.
func checkChunk(v []byte, want int, id uint64, idx int64) ([]byte, error) {
	if len(v) != want {
		return nil, fmt.Errorf("%w: chunk %d of entry %d has %d bytes, want %d", tiers.ErrCorrupt, idx, id, len(v), want)
	}
	if err := checkCRC(v[crcLen:], v, id, idx); err != nil {
		return nil, err
	}
	return v[crcLen:], nil
}

// checkCRC verifies a chunk's data against the CRC32C at the start of its
// stored value v.
func checkCRC(data, v []byte, id uint64, idx int64) error {
	if got, stored := crc32.Checksum(data, castagnoli), binary.BigEndian.Uint32(v); got != stored {
		return fmt.Errorf("%w: chunk %d of entry %d: crc32c %08x, stored %08x", tiers.ErrCorrupt, idx, id, got, stored)
	}
	return nil
}

// u64 is a big-endian uint64 key: entry ids in staging, sequence numbers in queue.
func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func uint64FromKey(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

func uint32FromKey(b []byte) uint32 { return binary.BigEndian.Uint32(b) }

// lruKey orders entries by last access, oldest first; the id makes it unique.
func lruKey(access int64, id uint64) []byte {
	b := make([]byte, 16)
	binary.BigEndian.PutUint64(b, uint64(max(access, 0)))
	binary.BigEndian.PutUint64(b[8:], id)
	return b
}

// stats is the record under meta/stats, updated in every transaction that
// changes it, so that Open reads the tier's fill without a scan.
type stats struct {
	entries   int64
	bytes     int64 // logical bytes of the published values
	evictions int64
	pinned    int64 // bytes of the entries waiting for upload (never evicted)
}

const statsLen = 32

func (s stats) encode() []byte {
	b := make([]byte, statsLen)
	binary.BigEndian.PutUint64(b[0:], uint64(s.entries))
	binary.BigEndian.PutUint64(b[8:], uint64(s.bytes))
	binary.BigEndian.PutUint64(b[16:], uint64(s.evictions))
	binary.BigEndian.PutUint64(b[24:], uint64(s.pinned))
	return b
}

func decodeStats(b []byte) (stats, error) {
	if len(b) != statsLen {
		return stats{}, fmt.Errorf("%w: stats record of %d bytes", tiers.ErrCorrupt, len(b))
	}
	return stats{
		entries:   int64(binary.BigEndian.Uint64(b[0:])),
		bytes:     int64(binary.BigEndian.Uint64(b[8:])),
		evictions: int64(binary.BigEndian.Uint64(b[16:])),
		pinned:    int64(binary.BigEndian.Uint64(b[24:])),
	}, nil
}
