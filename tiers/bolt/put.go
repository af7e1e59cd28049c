package bolt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
)

// Put stores the value read from r under k. See tiers.Tier.
//
// The value is read in chunks. One announced at most 8 MiB is kept in
// memory whole; a larger one (or one of unknown size) is written 4 MiB at a
// time in several transactions under a staging id, and one last
// transaction publishes it: entry record, LRU or queue record and
// stats, after evicting what the limit needs. That transaction goes through
// the group commit, so concurrent small puts share one fsync. Put returns
// when the value is on stable storage.
func (t *Tier) Put(ctx context.Context, k digest.Key, r io.Reader, m tiers.Meta) (tiers.Info, error) {
	info, err := t.put(ctx, k, r, m)
	if err != nil {
		return tiers.Info{}, tiers.Wrap(t.name, "put", k, err)
	}
	return info, nil
}

func (t *Tier) put(ctx context.Context, k digest.Key, r io.Reader, m tiers.Meta) (info tiers.Info, err error) {
	if err := t.writable(ctx); err != nil {
		return info, err
	}
	if err := checkKey(k); err != nil {
		return info, err
	}
	if m.Size < -1 {
		return info, fmt.Errorf("invalid size %d in meta", m.Size)
	}
	if t.limit > 0 && m.Size > 0 {
		if m.Size > t.limit {
			return info, fmt.Errorf("%w: %d bytes are more than the limit of %d", tiers.ErrNoSpace, m.Size, t.limit)
		}
		if p := t.pinned.Load(); p+m.Size > t.limit {
			return info, fmt.Errorf("%w: %d bytes do not fit: %d of the limit of %d are pinned by the upload queue", tiers.ErrNoSpace, m.Size, p, t.limit)
		}
	}
	// Refuse an existing key before reading the value; publish checks again.
	if found, err := t.exists(k); err != nil || found {
		if found {
			err = tiers.ErrExist
		}
		return info, err
	}

	e := &newEntry{key: k, pending: m.Pending, chunk: uint32(t.chunk)}
	var held []*[]byte // buffers behind e.chunks
	release := func() {
		for _, b := range held {
			t.bufs.Put(b)
		}
		held, e.chunks = held[:0], e.chunks[:0]
	}
	defer func() {
		release()
		if err != nil && e.id != 0 {
			t.dropStaged(e.id)
		}
	}()

	h := tiers.NewSummer(m)
	stageAt := t.stage
	if m.Size >= 0 && m.Size <= 2*int64(t.stage) {
		stageAt = math.MaxInt // held whole: the announced size is enforced below
	}
	for done := false; !done; {
		if err := ctx.Err(); err != nil {
			return info, err
		}
		bp := t.bufs.Get().(*[]byte)
		b := *bp
		n, rerr := io.ReadFull(r, b[crcLen:])
		switch rerr {
		case nil:
		case io.EOF, io.ErrUnexpectedEOF:
			done = true
		default:
			t.bufs.Put(bp)
			return info, rerr
		}
		if n == 0 {
			t.bufs.Put(bp)
			break
		}
		h.Write(b[crcLen : crcLen+n])
		sealChunk(b[:crcLen+n])
		held = append(held, bp)
		e.chunks = append(e.chunks, b[:crcLen+n])
		if size := h.Size(); m.Size >= 0 && size > m.Size {
			return info, fmt.Errorf("%w: more than the %d bytes announced", tiers.ErrCorrupt, m.Size)
		} else if t.limit > 0 && size > t.limit {
			return info, fmt.Errorf("%w: more than the limit of %d bytes", tiers.ErrNoSpace, t.limit)
		} else if len(e.chunks)+int(e.base) > math.MaxUint32 {
			return info, fmt.Errorf("%w: more than %d chunks", tiers.ErrNoSpace, uint32(math.MaxUint32))
		}
		if !done && len(e.chunks)*t.chunk >= stageAt {
			if err := t.stageChunks(ctx, e, m.Size); err != nil {
				return info, err
			}
			release()
		}
	}
	e.size, e.sum = h.Size(), h.Sum()
	if m.Size >= 0 && e.size != m.Size {
		return info, fmt.Errorf("%w: %d bytes, %d announced", tiers.ErrCorrupt, e.size, m.Size)
	}
	if !m.Sum.IsZero() && e.sum != m.Sum {
		return info, fmt.Errorf("%w: sha256 %s, %s announced", tiers.ErrCorrupt, e.sum, m.Sum)
	}
	e.created = nowNano()
	if !m.Created.IsZero() {
		e.created = m.Created.UnixNano()
	}
	if err := t.commit(int(e.size-int64(e.base)*int64(t.chunk)), func(w *wtx) error { return w.publish(e) }); err != nil {
		return info, err
	}
	e.id = 0 // published: nothing to clean up
	return tiers.Info{Key: k, Size: e.size, Sum: e.sum, Created: time.Unix(0, e.created)}, nil
}

// stageChunks writes e's chunks in their own transaction under e's staging
// id, allocating it (and recording it in the staging bucket) the first time.
// Before the first, it evicts what a value of the announced size needs, so
// that the file does not grow by the staged bytes on top of a full tier.
func (t *Tier) stageChunks(ctx context.Context, e *newEntry, announced int64) error {
	if e.id == 0 && t.limit > 0 && announced > 0 && t.bytes.Load()+announced > t.limit {
		err := t.commit(0, func(w *wtx) error {
			return w.makeRoom(announced)
		})
		if err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	id := e.id
	err := t.update(func(tx *bolt.Tx) error {
		ch := tx.Bucket(bucketChunks)
		ch.FillPercent = appendFill
		if id == 0 {
			var err error
			if id, err = ch.NextSequence(); err != nil {
				return err
			}
			if err := tx.Bucket(bucketStaging).Put(u64(id), u64(uint64(nowNano()))); err != nil {
				return err
			}
		}
		for i, c := range e.chunks {
			if err := ch.Put(chunkKey(id, e.base+uint32(i)), c); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return t.classify(err)
	}
	// The commit read the last chunks staged before (bbolt rewrites the
	// leaf they share with the new ones) through the map.
	t.dropMap()
	e.id = id
	e.base += uint32(len(e.chunks))
	if testHookStaged != nil {
		testHookStaged(id, e.base)
	}
	return nil
}

// testHookStaged, if set, is called after each staging transaction.
var testHookStaged func(id uint64, chunks uint32)

// dropStaged deletes the chunks of a put that failed. If that fails too, the
// flusher retries; Open removes whatever is still left.
func (t *Tier) dropStaged(id uint64) {
	if err := t.deleteStaged(id); err != nil {
		if errors.Is(err, tiers.ErrClosed) {
			return // Open removes them
		}
		t.log.Warn("removing the chunks of a failed put", "id", id, "err", err)
		t.omu.Lock()
		t.orphans = append(t.orphans, id)
		t.omu.Unlock()
	}
}

func (t *Tier) deleteStaged(id uint64) error {
	return t.classify(t.update(func(tx *bolt.Tx) error {
		s := tx.Bucket(bucketStaging)
		if s.Get(u64(id)) == nil {
			return nil // published, or already removed
		}
		if err := deleteChunks(tx.Bucket(bucketChunks), id); err != nil {
			return err
		}
		return s.Delete(u64(id))
	}))
}

func (t *Tier) retryOrphans() {
	t.omu.Lock()
	ids := t.orphans
	t.orphans = nil
	t.omu.Unlock()
	for i, id := range ids {
		if err := t.deleteStaged(id); err != nil {
			t.omu.Lock()
			t.orphans = append(t.orphans, ids[i:]...)
			t.omu.Unlock()
			return
		}
	}
}

// exists reports whether k has an entry.
func (t *Tier) exists(k digest.Key) (bool, error) {
	var found bool
	err := t.view(func(tx *bolt.Tx) error {
		found = tx.Bucket(bucketKeys).Get([]byte(k.String())) != nil
		return nil
	})
	return found, t.classify(err)
}

// Delete removes k's entry, its chunks and its LRU or queue record. Readers
// open on it fail with ErrNotFound afterwards.
func (t *Tier) Delete(ctx context.Context, k digest.Key) error {
	return tiers.Wrap(t.name, "delete", k, t.delete(ctx, k, 0))
}

// delete removes k; if id is not 0, only if k's entry has that id.
func (t *Tier) delete(ctx context.Context, k digest.Key, id uint64) error {
	if err := t.writable(ctx); err != nil {
		return err
	}
	if err := checkKey(k); err != nil {
		return err
	}
	kb := []byte(k.String())
	return t.commit(0, func(w *wtx) error {
		v := w.keys.Get(kb)
		if v == nil {
			return reject(tiers.ErrNotFound)
		}
		rec, err := decodeRecord(v)
		if err != nil {
			return reject(err)
		}
		if id != 0 && rec.id != id {
			return reject(tiers.ErrNotFound)
		}
		return w.deleteEntry(kb, rec)
	})
}

// Uploaded removes k from the upload queue and makes it evictable. It is
// not an error if k is not queued or not stored.
func (t *Tier) Uploaded(ctx context.Context, k digest.Key) error {
	err := t.writable(ctx)
	if err == nil {
		err = checkKey(k)
	}
	if err == nil {
		kb := []byte(k.String())
		err = t.commit(0, func(w *wtx) error { return w.unpin(kb) })
	}
	return tiers.Wrap(t.name, "uploaded", k, err)
}

var errNegativeOffset = errors.New("negative offset")
