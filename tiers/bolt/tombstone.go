package bolt

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
)

// A tombstone is a queued remote delete (tiers.TombstoneQueue). It lives in
// the queue bucket beside the uploads, under its own sequence number, with
// the value
//
//	"tombstone " <key> " " <sha256 hex, or "-" when unknown>
//
// An upload's value is the bare key name; the "tombstone " prefix is never
// a key. Binaries that predate tombstones parse every queue value as a key
// and refuse to mount while one is queued ("reading the upload queue: ...
// invalid key \"tombstone ...\""), rather than serve the deleted entry from
// the remote again: run `flechefs sync` with this version first, which
// waits until the queued deletes are done.
const tombPrefix = "tombstone "

func encodeTomb(k digest.Key, sum digest.Sum) []byte {
	s := "-"
	if !sum.IsZero() {
		s = hex.EncodeToString(sum[:])
	}
	return []byte(tombPrefix + k.String() + " " + s)
}

// isTomb reports whether a queue value is a tombstone.
func isTomb(v []byte) bool { return bytes.HasPrefix(v, []byte(tombPrefix)) }

func decodeTomb(v []byte) (digest.Key, digest.Sum, error) {
	rest := strings.TrimPrefix(string(v), tombPrefix)
	name, s, ok := strings.Cut(rest, " ")
	var sum digest.Sum
	if !ok {
		return digest.Key{}, sum, fmt.Errorf("%w: queue: tombstone %q without a sum field", tiers.ErrCorrupt, v)
	}
	k, err := digest.Parse(name)
	if err != nil {
		return k, sum, fmt.Errorf("%w: queue: tombstone: %v", tiers.ErrCorrupt, err)
	}
	if s != "-" {
		b, err := hex.DecodeString(s)
		if err != nil || len(b) != len(sum) {
			return k, sum, fmt.Errorf("%w: queue: tombstone of %s: sum %q", tiers.ErrCorrupt, name, s)
		}
		copy(sum[:], b)
	}
	return k, sum, nil
}

// DeleteQueued removes k's entry, if any, and queues a tombstone for it, in
// one commit: a crash leaves both done or neither.
func (t *Tier) DeleteQueued(ctx context.Context, k digest.Key, sum digest.Sum) (uint64, error) {
	if err := t.writable(ctx); err != nil {
		return 0, tiers.Wrap(t.name, "delete", k, err)
	}
	if err := checkKey(k); err != nil {
		return 0, tiers.Wrap(t.name, "delete", k, err)
	}
	kb := []byte(k.String())
	var seq uint64
	err := t.commit(0, func(w *wtx) error {
		if v := w.keys.Get(kb); v != nil {
			rec, err := decodeRecord(v)
			if err != nil {
				return reject(err)
			}
			if err := w.deleteEntry(kb, rec); err != nil {
				return err
			}
		}
		s, err := w.queue.NextSequence()
		if err != nil {
			return err
		}
		seq = s
		return w.queue.Put(u64(s), encodeTomb(k, sum))
	})
	return seq, tiers.Wrap(t.name, "delete", k, err)
}

// Tombstones returns the queued remote deletes, oldest first.
func (t *Tier) Tombstones(ctx context.Context) ([]tiers.Tombstone, error) {
	if err := t.usable(ctx); err != nil {
		return nil, tiers.Wrap(t.name, "tombstones", digest.Key{}, err)
	}
	var out []tiers.Tombstone
	err := t.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketQueue).ForEach(func(sk, v []byte) error {
			if !isTomb(v) {
				return nil
			}
			k, sum, err := decodeTomb(v)
			if err != nil {
				return err
			}
			out = append(out, tiers.Tombstone{Key: k, Sum: sum, ID: uint64FromKey(sk)})
			return nil
		})
	})
	if err != nil {
		return nil, tiers.Wrap(t.name, "tombstones", digest.Key{}, t.classify(err))
	}
	return out, nil
}

// TombstoneDone removes the tombstone id. Not an error if it is gone.
func (t *Tier) TombstoneDone(ctx context.Context, id uint64) error {
	if err := t.writable(ctx); err != nil {
		return tiers.Wrap(t.name, "tombstone done", digest.Key{}, err)
	}
	err := t.commit(0, func(w *wtx) error {
		if v := w.queue.Get(u64(id)); v == nil || !isTomb(v) {
			return reject(nil)
		}
		return w.queue.Delete(u64(id))
	})
	return tiers.Wrap(t.name, "tombstone done", digest.Key{}, err)
}
