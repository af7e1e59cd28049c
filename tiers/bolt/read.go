package bolt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/pagemem"
	"github.com/flechefs/flechefs/tiers"
)

// Stat returns k's info or ErrNotFound. It does not count as an access.
func (t *Tier) Stat(ctx context.Context, k digest.Key) (tiers.Info, error) {
	rec, err := t.lookup(ctx, k)
	if err != nil {
		return tiers.Info{}, tiers.Wrap(t.name, "stat", k, err)
	}
	return rec.info(k), nil
}

func (r *record) info(k digest.Key) tiers.Info {
	return tiers.Info{Key: k, Size: r.size, Sum: r.sum, Created: time.Unix(0, r.created)}
}

func (t *Tier) lookup(ctx context.Context, k digest.Key) (record, error) {
	var rec record
	if err := t.usable(ctx); err != nil {
		return rec, err
	}
	if err := checkKey(k); err != nil {
		return rec, err
	}
	err := t.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketKeys).Get([]byte(k.String()))
		if v == nil {
			return tiers.ErrNotFound
		}
		var err error
		rec, err = decodeRecord(v)
		return err
	})
	return rec, t.classify(err)
}

// Open opens k for reading and records the access for the LRU order.
func (t *Tier) Open(ctx context.Context, k digest.Key) (tiers.Reader, error) {
	rec, err := t.lookup(ctx, k)
	if err != nil {
		return nil, tiers.Wrap(t.name, "open", k, err)
	}
	t.touch(k)
	return &reader{t: t, key: k, rec: rec}, nil
}

// reader reads one entry. It holds no transaction between calls: each
// ReadAt reads its chunks in one read transaction. Entry ids are never
// reused, so a chunk that is gone means the entry was deleted (ErrNotFound),
// and a chunk that is there is the one this reader opened.
type reader struct {
	t   *Tier
	key digest.Key
	rec record
	// ahead is the end of the span of the value asked for ahead of the
	// reads (readAhead in mmap.go).
	ahead atomic.Int64
}

func (r *reader) Info() tiers.Info { return r.rec.info(r.key) }

func (r *reader) Close() error { return nil }

// ReadAt reads len(p) bytes at off, checking the CRC of every chunk it
// touches. It returns io.EOF with the bytes before the end when the range
// reaches the end of the value.
func (r *reader) ReadAt(p []byte, off int64) (int, error) {
	n, err := r.readAt(p, off)
	if err != nil && err != io.EOF {
		err = tiers.Wrap(r.t.name, "read", r.key, err)
	}
	return n, err
}

func (r *reader) readAt(p []byte, off int64) (int, error) {
	t, size := r.t, r.rec.size
	if off < 0 {
		return 0, errNegativeOffset
	}
	if off >= size {
		return 0, io.EOF
	}
	if t.closed.Load() {
		return 0, tiers.ErrClosed
	}
	var eof bool
	if int64(len(p)) > size-off {
		p, eof = p[:size-off], true
	}
	cs := int64(r.rec.chunk)
	n := 0
	err := t.view(func(tx *bolt.Tx) error {
		var mapped mappedRange
		defer mapped.drop(tx)
		b := tx.Bucket(bucketChunks)
		r.readAhead(tx, b, off, int64(len(p)))
		for n < len(p) {
			pos := off + int64(n)
			idx := pos / cs
			v := b.Get(chunkKey(r.rec.id, uint32(idx)))
			if v == nil {
				return r.missing(tx, idx)
			}
			mapped.add(v)
			want := chunkLen(size, cs, idx)
			// A whole chunk is read into p with pread, part of one
			// out of the map.
			if pos == idx*cs && len(p)-n >= want-crcLen {
				if ok, err := t.preadChunk(tx, v, p[n:n+want-crcLen], want, r.rec.id, idx); ok || err != nil {
					if err != nil {
						return err
					}
					n += want - crcLen
					continue
				}
			}
			data, err := checkChunk(v, want, r.rec.id, idx)
			if err != nil {
				return err
			}
			n += copy(p[n:], data[pos-idx*cs:])
		}
		return nil
	})
	if err != nil {
		err = t.classify(err)
		if errors.Is(err, tiers.ErrCorrupt) {
			t.dropCorrupt(r.key, r.rec.id, err)
		}
		return n, err
	}
	if eof {
		return n, io.EOF
	}
	return n, nil
}

// readAhead asks the kernel to read the chunks of [off, off+n) into the
// page cache before they are touched, and for a reader that reads on from
// where it was, the next readAheadBytes too (see mmap.go). b is the chunks
// bucket of tx, the read transaction the reads run in.
func (r *reader) readAhead(tx *bolt.Tx, b *bolt.Bucket, off, n int64) {
	size, cs := r.rec.size, int64(r.rec.chunk)
	ahead := r.ahead.Load()
	sequential := off == 0 || off <= ahead
	if sequential && (off+n+readAheadBytes/2 <= ahead || ahead >= size) {
		return // asked for already, with half a window to spare
	}
	from, to := off, min(size, off+n)
	if sequential {
		// On from what was asked for, a window ahead.
		from, to = max(off, ahead), min(size, off+n+readAheadBytes)
	}
	if to-from < readAheadMin && to < size {
		return // a little more is asked for at the next read
	}
	r.ahead.Store(to)
	var spans mappedRange
	for idx := from / cs; idx*cs < to; idx++ {
		if v := b.Get(chunkKey(r.rec.id, uint32(idx))); v != nil {
			spans.add(v)
		}
	}
	spans.willNeed(tx)
}

// missing tells a deleted entry (ErrNotFound) from a lost chunk (ErrCorrupt).
func (r *reader) missing(tx *bolt.Tx, idx int64) error {
	if v := tx.Bucket(bucketKeys).Get([]byte(r.key.String())); v != nil {
		if rec, err := decodeRecord(v); err == nil && rec.id == r.rec.id {
			return fmt.Errorf("%w: chunk %d of entry %d is missing", tiers.ErrCorrupt, idx, r.rec.id)
		}
	}
	return tiers.ErrNotFound
}

// dropCorrupt deletes an entry found corrupt, if it is still the same one,
// so that no bad copy is served again.
func (t *Tier) dropCorrupt(k digest.Key, id uint64, cause error) {
	if t.readOnly {
		t.log.Error("corrupt entry in a read-only tier", "key", k, "err", cause)
		return
	}
	err := t.delete(context.Background(), k, id)
	t.log.Error("deleted a corrupt entry", "key", k, "err", cause, "delete", err)
}

// WriteTo writes the whole value to w, from offset 0 whatever was read
// before, in large pieces copied out of short read transactions.
func (r *reader) WriteTo(w io.Writer) (int64, error) {
	size := r.rec.size
	cs := int64(r.rec.chunk)
	buf := pagemem.Bytes(int(min(max(1, (4<<20)/cs)*cs, size)))
	var off int64
	for off < size {
		n, err := r.ReadAt(buf, off)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			off += int64(m)
			if werr != nil {
				return off, werr
			}
			if m < n {
				return off, io.ErrShortWrite
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return off, err
		}
	}
	return off, nil
}

// List calls fn for every entry, reading them a page at a time so that fn
// runs outside any transaction (it may call the tier).
func (t *Tier) List(ctx context.Context, fn func(tiers.Info) error) error {
	var after []byte
	page := make([]tiers.Info, 0, listPage)
	for {
		if err := t.usable(ctx); err != nil {
			return tiers.Wrap(t.name, "list", digest.Key{}, err)
		}
		page = page[:0]
		err := t.view(func(tx *bolt.Tx) error {
			c := tx.Bucket(bucketKeys).Cursor()
			k, v := c.First()
			if after != nil {
				if k, v = c.Seek(after); bytes.Equal(k, after) {
					k, v = c.Next()
				}
			}
			for ; k != nil && len(page) < listPage; k, v = c.Next() {
				if after != nil && bytes.Compare(k, after) <= 0 {
					// Out of order: a damaged tree, which could make
					// the pages go round forever.
					return fmt.Errorf("%w: key %q listed after %q", errDamaged, k, after)
				}
				after = bytes.Clone(k)
				key, err := digest.Parse(string(k))
				if err != nil {
					t.log.Error("skipping an invalid key", "err", err)
					continue
				}
				rec, err := decodeRecord(v)
				if err != nil {
					t.log.Error("skipping a bad record", "key", key, "err", err)
					continue
				}
				page = append(page, rec.info(key))
			}
			return nil
		})
		if err != nil {
			return tiers.Wrap(t.name, "list", digest.Key{}, t.classify(err))
		}
		for _, in := range page {
			if err := fn(in); err != nil {
				return err
			}
		}
		if len(page) < listPage {
			return nil
		}
	}
}

// Pending returns the keys waiting for upload, oldest first.
func (t *Tier) Pending(ctx context.Context) ([]digest.Key, error) {
	if err := t.usable(ctx); err != nil {
		return nil, tiers.Wrap(t.name, "pending", digest.Key{}, err)
	}
	var keys []digest.Key
	err := t.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketQueue).ForEach(func(_, v []byte) error {
			if isTomb(v) {
				return nil // a queued remote delete (Tombstones)
			}
			k, err := digest.Parse(string(v))
			if err != nil {
				return fmt.Errorf("%w: queue: %v", tiers.ErrCorrupt, err)
			}
			keys = append(keys, k)
			return nil
		})
	})
	if err != nil {
		return nil, tiers.Wrap(t.name, "pending", digest.Key{}, t.classify(err))
	}
	return keys, nil
}

// IsPending reports whether k waits for upload (one B+tree lookup).
func (t *Tier) IsPending(k digest.Key) bool {
	if t.closed.Load() || k.IsZero() {
		return false
	}
	var pending bool
	t.view(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketKeys).Get([]byte(k.String())); v != nil {
			rec, err := decodeRecord(v)
			pending = err == nil && rec.seq != 0
		}
		return nil
	})
	return pending
}
