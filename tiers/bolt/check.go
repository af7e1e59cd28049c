package bolt

import (
	"bytes"
	"errors"
	"fmt"
	"runtime/debug"

	bolt "go.etcd.io/bbolt"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
)

// Check runs bbolt's consistency check and then checks the tier's own
// invariants: every entry has its chunks (CRCs verified) and exactly one
// LRU or queue record, no chunk belongs to no entry or staged put, and the
// stats record matches a count. It reads the whole database: for tests and
// repair tools, not for the serving path.
func (t *Tier) Check() (err error) {
	if t.closed.Load() {
		return tiers.Wrap(t.name, "check", digest.Key{}, tiers.ErrClosed)
	}
	if err := t.failedErr(false); err != nil {
		return tiers.Wrap(t.name, "check", digest.Key{}, err)
	}
	defer t.recoverFault(&err, debug.SetPanicOnFault(true))
	// tx.Check on a read-only transaction is not safe against concurrent
	// writers; a write transaction (rolled back) is.
	tx, err := t.db.Begin(!t.readOnly)
	if err != nil {
		return tiers.Wrap(t.name, "check", digest.Key{}, t.classify(err))
	}
	defer tx.Rollback()
	var errs []error
	for err := range tx.Check() {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		errs = t.checkTier(tx)
	}
	if len(errs) > 20 {
		errs = append(errs[:20], fmt.Errorf("and %d more", len(errs)-20))
	}
	if len(errs) > 0 {
		return tiers.Wrap(t.name, "check", digest.Key{}, fmt.Errorf("%w: %w", tiers.ErrCorrupt, errors.Join(errs...)))
	}
	return nil
}

func (t *Tier) checkTier(tx *bolt.Tx) []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	keys, chunks := tx.Bucket(bucketKeys), tx.Bucket(bucketChunks)
	lru, queue, staging := tx.Bucket(bucketLRU), tx.Bucket(bucketQueue), tx.Bucket(bucketStaging)
	var st stats
	ids := map[uint64]int64{} // entry id → chunks
	var unpinned, pinnedN int
	keys.ForEach(func(k, v []byte) error {
		if _, err := digest.Parse(string(k)); err != nil {
			bad("key %q: %v", k, err)
		}
		rec, err := decodeRecord(v)
		if err != nil {
			bad("key %s: %v", k, err)
			return nil
		}
		if _, dup := ids[rec.id]; dup {
			bad("key %s: id %d used twice", k, rec.id)
		}
		ids[rec.id] = rec.chunks()
		st.entries++
		st.bytes += rec.size
		if rec.seq != 0 {
			pinnedN++
			st.pinned += rec.size
			if q := queue.Get(u64(rec.seq)); !bytes.Equal(q, k) {
				bad("key %s: queue record %d is %q", k, rec.seq, q)
			}
		} else {
			unpinned++
			if l := lru.Get(lruKey(rec.access, rec.id)); !bytes.Equal(l, k) {
				bad("key %s: lru record is %q", k, l)
			}
		}
		cs := int64(rec.chunk)
		for i := range rec.chunks() {
			v := chunks.Get(chunkKey(rec.id, uint32(i)))
			if v == nil {
				bad("key %s: chunk %d missing", k, i)
				continue
			}
			if _, err := checkChunk(v, chunkLen(rec.size, cs, i), rec.id, i); err != nil {
				bad("key %s: %v", k, err)
			}
		}
		return nil
	})
	if n := lru.Stats().KeyN; n != unpinned {
		bad("lru has %d records for %d unpinned entries", n, unpinned)
	}
	tombs := 0
	queue.ForEach(func(sk, v []byte) error {
		if isTomb(v) {
			tombs++
			if _, _, err := decodeTomb(v); err != nil {
				bad("queue record %d: %v", uint64FromKey(sk), err)
			}
		}
		return nil
	})
	if n := queue.Stats().KeyN; n != pinnedN+tombs {
		bad("queue has %d records for %d pinned entries and %d tombstones", n, pinnedN, tombs)
	}
	chunks.ForEach(func(k, _ []byte) error {
		if len(k) != 12 {
			bad("chunk key %x", k)
			return nil
		}
		id, idx := uint64FromKey(k), int64(uint32FromKey(k[8:]))
		if n, ok := ids[id]; ok {
			if idx >= n {
				bad("chunk %d of entry %d is past its end (%d chunks)", idx, id, n)
			}
		} else if staging.Get(k[:8]) == nil {
			bad("chunk %d of id %d belongs to no entry and no staged put", idx, id)
		}
		return nil
	})
	if v := tx.Bucket(bucketMeta).Get(metaStats); v != nil {
		rec, err := decodeStats(v)
		rec.evictions = 0
		if err != nil || rec != st {
			bad("stats record %+v (%v), count %+v", rec, err, st)
		}
	} else {
		bad("no stats record")
	}
	return errs
}
