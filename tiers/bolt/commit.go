package bolt

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
)

// Group commit. Every transaction that changes the published state (entries,
// stats, queue, LRU index) is a call queued here. A call that finds no
// transaction running runs at once; calls that arrive while one runs are
// queued and the next of them runs them all in one transaction, sharing one
// fsync. Unlike bolt.DB.Batch this adds no delay to a lone writer.
//
// The functions run in one transaction one after the other. A function that
// fails before it changes anything returns reject(err): its caller gets err
// and the others commit. Any other error rolls the transaction back; the
// failed call is taken out and run alone afterwards, and the rest are run
// again, so functions must have no effect outside the transaction except
// through wtx.after.

const (
	maxBatchCalls = 1000
	maxBatchBytes = 16 << 20
	dropBytes     = 16 << 20
	dropEvery     = 100 * time.Millisecond
)

type call struct {
	fn   func(*wtx) error
	size int // bytes the function writes, to bound a batch
	err  error
	done chan bool // receives true when this call is to lead the next batch
}

// rejected is the error of a function that changed nothing; err may be nil.
type rejected struct{ err error }

func (r rejected) Error() string { return fmt.Sprint("rejected: ", r.err) }

func reject(err error) error { return rejected{err} }

// commit runs fn in a write transaction, possibly together with others.
func (t *Tier) commit(size int, fn func(*wtx) error) error {
	c := &call{fn: fn, size: size, done: make(chan bool, 1)}
	t.gmu.Lock()
	t.queue = append(t.queue, c)
	if t.leading {
		t.gmu.Unlock()
		if lead := <-c.done; !lead {
			return c.err
		}
		t.gmu.Lock()
	} else {
		t.leading = true
	}
	// c is at the head of the queue: take it and whatever fits after it.
	n, sz := 1, c.size
	for n < len(t.queue) && n < maxBatchCalls && sz+t.queue[n].size <= maxBatchBytes {
		sz += t.queue[n].size
		n++
	}
	batch := slices.Clone(t.queue[:n])
	t.queue = slices.Delete(t.queue, 0, n)
	t.gmu.Unlock()

	t.run(batch)

	t.gmu.Lock()
	if len(t.queue) > 0 {
		t.queue[0].done <- true
	} else {
		t.leading = false
	}
	t.gmu.Unlock()
	for _, o := range batch[1:] {
		o.done <- false
	}
	return c.err
}

// run commits a batch, isolating the calls that fail.
func (t *Tier) run(batch []*call) {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	batch = slices.Clone(batch) // the caller's copy stays whole
	var solo []*call
	for len(batch) > 0 {
		failed, err := t.runOnce(batch)
		if failed >= 0 && len(batch) > 1 {
			solo = append(solo, batch[failed])
			batch = slices.Delete(batch, failed, failed+1)
			continue
		}
		for _, c := range batch {
			if c.err == nil {
				c.err = err
			}
		}
		break
	}
	for _, c := range solo {
		_, err := t.runOnce([]*call{c})
		if c.err == nil {
			c.err = err
		}
	}
}

// runOnce runs the calls in one transaction. It returns the index of the
// call whose failure rolled it back, or -1, and the transaction's error.
// Caller holds wmu.
func (t *Tier) runOnce(batch []*call) (int, error) {
	failed := -1
	if err := t.failedErr(false); err != nil {
		return failed, err
	}
	w := &wtx{t: t, st: t.st}
	err := t.update(func(tx *bolt.Tx) error {
		w.bind(tx)
		for i, c := range batch {
			c.err = nil
			err := safely(c.fn, w)
			if r, ok := err.(rejected); ok {
				c.err = r.err
				continue
			}
			if err != nil {
				failed = i
				return err
			}
		}
		if w.st != t.st {
			return w.meta.Put(metaStats, w.st.encode())
		}
		return nil
	})
	if err != nil {
		return failed, t.classify(err)
	}
	// The commit rewrote leaves, copying their values out of the map.
	// Dropping the whole map costs a page-table walk and TLB shootdowns
	// on every core running the daemon, so it waits until the commits
	// since the last drop wrote dropBytes or dropEvery passed: the
	// resident part of the map stays within about dropBytes plus the
	// leaves of small commits.
	for _, c := range batch {
		t.sinceDrop += int64(c.size)
	}
	if t.sinceDrop >= dropBytes || time.Since(t.lastDrop) >= dropEvery {
		t.dropMap()
		t.sinceDrop, t.lastDrop = 0, time.Now()
	}
	t.setStats(w.st)
	for _, fn := range w.after {
		fn()
	}
	return -1, nil
}

func safely(fn func(*wtx) error, w *wtx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = w.t.fail(false, fmt.Errorf("panic in a write transaction: %v", p))
		}
	}()
	return fn(w)
}

// wtx is one write transaction of the group commit, with a copy of the
// stats that its functions keep up to date and the in-memory effects to
// apply once it is committed.
type wtx struct {
	t                                       *Tier
	tx                                      *bolt.Tx
	keys, chunks, lru, queue, staging, meta *bolt.Bucket
	st                                      stats
	after                                   []func()
	touched                                 bool // touches applied in this transaction
}

func (w *wtx) bind(tx *bolt.Tx) {
	w.tx = tx
	w.keys = tx.Bucket(bucketKeys)
	w.chunks = tx.Bucket(bucketChunks)
	w.lru = tx.Bucket(bucketLRU)
	w.queue = tx.Bucket(bucketQueue)
	w.staging = tx.Bucket(bucketStaging)
	w.meta = tx.Bucket(bucketMeta)
	// Their keys grow (ids, sequence numbers, access times): fill split
	// pages completely instead of leaving half of each for inserts.
	w.chunks.FillPercent = appendFill
	w.lru.FillPercent = appendFill
	w.queue.FillPercent = appendFill
}

// appendFill is the fill of pages split in buckets whose keys are appended.
const appendFill = 1.0

// newEntry is a value ready to publish: its last chunks (the earlier ones are
// already staged under id, if id is not 0) and what the entry record needs.
type newEntry struct {
	key     digest.Key
	id      uint64   // staging id, 0 if nothing was staged
	base    uint32   // index of chunks[0]
	chunks  [][]byte // sealed chunk values (CRC first)
	size    int64
	sum     digest.Sum
	created int64
	pending bool
	chunk   uint32
}

// publish makes e visible: chunks, entry record, LRU or queue record, stats,
// evicting the least recently used entries first if the limit needs it.
func (w *wtx) publish(e *newEntry) error {
	k := []byte(e.key.String())
	if w.keys.Get(k) != nil {
		return reject(tiers.ErrExist)
	}
	if err := w.makeRoom(e.size); err != nil {
		return err
	}
	id := e.id
	if id == 0 {
		var err error
		if id, err = w.chunks.NextSequence(); err != nil {
			return err
		}
	} else if err := w.staging.Delete(u64(id)); err != nil {
		return err
	}
	for i, c := range e.chunks {
		if err := w.chunks.Put(chunkKey(id, e.base+uint32(i)), c); err != nil {
			return err
		}
	}
	rec := record{id: id, size: e.size, sum: e.sum, created: e.created, access: nowNano(), chunk: e.chunk}
	if e.pending {
		seq, err := w.queue.NextSequence()
		if err != nil {
			return err
		}
		rec.seq = seq
		if err := w.queue.Put(u64(seq), k); err != nil {
			return err
		}
		w.st.pinned += e.size
	} else if err := w.lru.Put(lruKey(rec.access, id), k); err != nil {
		return err
	}
	if err := w.keys.Put(k, rec.encode()); err != nil {
		return err
	}
	w.st.entries++
	w.st.bytes += e.size
	return nil
}

// makeRoom evicts least recently used entries until size more bytes fit
// under the limit. It rejects, changing nothing, when they cannot fit: the
// LRU index holds exactly the unpinned entries, so the check is exact.
func (w *wtx) makeRoom(size int64) error {
	limit := w.t.limit
	if limit <= 0 {
		return nil
	}
	if size > limit {
		return reject(fmt.Errorf("%w: %d bytes are more than the limit of %d", tiers.ErrNoSpace, size, limit))
	}
	need := w.st.bytes + size - limit
	if need <= 0 {
		return nil
	}
	if need > w.st.bytes-w.st.pinned {
		return reject(fmt.Errorf("%w: %d bytes do not fit: %d of the limit of %d are pinned by the upload queue",
			tiers.ErrNoSpace, size, w.st.pinned, limit))
	}
	if err := w.applyTouches(); err != nil {
		return err
	}
	return w.evict(need)
}

// evict removes least recently used unpinned entries until need bytes are freed.
func (w *wtx) evict(need int64) error {
	for need > 0 {
		lk, v := w.lru.Cursor().First()
		if lk == nil {
			return fmt.Errorf("%w: nothing left to evict (stats say %d unpinned bytes)", tiers.ErrNoSpace, w.st.bytes-w.st.pinned)
		}
		k := bytes.Clone(v)
		rv := w.keys.Get(k)
		if rv == nil {
			return fmt.Errorf("%w: lru record for missing key %q", tiers.ErrCorrupt, k)
		}
		rec, err := decodeRecord(rv)
		if err != nil {
			return err
		}
		if err := w.deleteEntry(k, rec); err != nil {
			return err
		}
		w.st.evictions++
		need -= rec.size
		w.t.log.Debug("evicted", "key", string(k), "size", rec.size)
	}
	return nil
}

// deleteEntry removes an entry's record, chunks and LRU or queue record.
func (w *wtx) deleteEntry(k []byte, rec record) error {
	if err := deleteChunks(w.chunks, rec.id); err != nil {
		return err
	}
	if rec.seq != 0 {
		if err := w.queue.Delete(u64(rec.seq)); err != nil {
			return err
		}
		w.st.pinned -= rec.size
	} else if err := w.lru.Delete(lruKey(rec.access, rec.id)); err != nil {
		return err
	}
	if err := w.keys.Delete(k); err != nil {
		return err
	}
	w.st.entries--
	w.st.bytes -= rec.size
	return nil
}

// deleteChunks removes every chunk of entry (or staging) id. The chunks go
// in key order, so each seek must find a key above the one deleted before:
// in a damaged tree a cursor may return a key that the search of Delete
// does not find (Delete then does nothing), and seeking again would return
// it forever. That is reported as damage instead.
func deleteChunks(b *bolt.Bucket, id uint64) error {
	prefix := u64(id)
	c := b.Cursor()
	var last []byte
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Seek(prefix) {
		if last != nil && bytes.Compare(k, last) <= 0 {
			return fmt.Errorf("%w: chunk %x is still there after its delete", errDamaged, k)
		}
		last = bytes.Clone(k)
		if err := b.Delete(last); err != nil {
			return err
		}
	}
	return nil
}

// applyTouches writes the access times recorded in memory since the last
// flush into the entry records and the LRU index.
func (w *wtx) applyTouches() error {
	if w.touched {
		return nil
	}
	w.touched = true
	w.t.tmu.Lock()
	snap := make(map[digest.Key]int64, len(w.t.touched))
	for k, at := range w.t.touched {
		snap[k] = at
	}
	w.t.tmu.Unlock()
	if len(snap) == 0 {
		return nil
	}
	for key, at := range snap {
		k := []byte(key.String())
		v := w.keys.Get(k)
		if v == nil {
			continue
		}
		rec, err := decodeRecord(v)
		if err != nil {
			return err
		}
		if at <= rec.access {
			continue
		}
		if rec.seq == 0 {
			if err := w.lru.Delete(lruKey(rec.access, rec.id)); err != nil {
				return err
			}
			if err := w.lru.Put(lruKey(at, rec.id), k); err != nil {
				return err
			}
		}
		rec.access = at
		if err := w.keys.Put(k, rec.encode()); err != nil {
			return err
		}
	}
	w.after = append(w.after, func() {
		w.t.tmu.Lock()
		defer w.t.tmu.Unlock()
		for k, at := range snap {
			if w.t.touched[k] == at {
				delete(w.t.touched, k)
			}
		}
	})
	return nil
}

// unpin removes k from the upload queue and makes it evictable.
func (w *wtx) unpin(k []byte) error {
	v := w.keys.Get(k)
	if v == nil {
		return reject(nil)
	}
	rec, err := decodeRecord(v)
	if err != nil {
		return reject(err)
	}
	if rec.seq == 0 {
		return reject(nil)
	}
	if err := w.queue.Delete(u64(rec.seq)); err != nil {
		return err
	}
	rec.seq = 0
	if err := w.lru.Put(lruKey(rec.access, rec.id), k); err != nil {
		return err
	}
	if err := w.keys.Put(k, rec.encode()); err != nil {
		return err
	}
	w.st.pinned -= rec.size
	return nil
}

// classify adds the tier's sentinels to bbolt and system errors.
func (t *Tier) classify(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, bolt.ErrDatabaseNotOpen), errors.Is(err, bolt.ErrTxClosed):
		return fmt.Errorf("%w: %v", tiers.ErrClosed, err)
	case isNoSpace(err) && !errors.Is(err, tiers.ErrNoSpace):
		return fmt.Errorf("%w: %w", tiers.ErrNoSpace, err)
	}
	return err
}
