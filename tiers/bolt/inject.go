package bolt

import (
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/flechefs/flechefs/digest"
	bolt "go.etcd.io/bbolt"
)

// ChunkDataOffset returns the offset in the database file at path of byte
// at of the data of chunk idx of entry k (after the chunk's CRC), for
// tests that damage a stopped node's file as a failing disk would. It is
// the one place outside this package's own tests that knows the layout of
// records and chunks. The file must not be open in another process.
func ChunkDataOffset(path string, k digest.Key, idx uint32, at int) (int64, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 3 * time.Second})
	if err != nil {
		return 0, err
	}
	defer db.Close()
	var off int64
	err = db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketKeys).Get([]byte(k.String()))
		if v == nil {
			return fmt.Errorf("%s: no entry %s", path, k)
		}
		rec, err := decodeRecord(v)
		if err != nil {
			return err
		}
		c := tx.Bucket(bucketChunks).Get(chunkKey(rec.id, idx))
		if _, err := checkChunk(c, chunkLen(rec.size, int64(rec.chunk), int64(idx)), rec.id, int64(idx)); err != nil {
			return err
		}
		if at < 0 || crcLen+at >= len(c) {
			return fmt.Errorf("chunk %d of %s has %d data bytes, not %d", idx, k, len(c)-crcLen, at+1)
		}
		// c points into bbolt's read-only map of the file.
		p := uintptr(unsafe.Pointer(&c[crcLen+at]))
		base := db.Info().Data
		if p < base || p >= base+uintptr(tx.Size()) {
			return errors.New("chunk not in the map")
		}
		off = int64(p - base)
		return nil
	})
	return off, err
}
