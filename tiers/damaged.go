package tiers

import (
	"sync"
	"time"

	"github.com/flechefs/flechefs/digest"
)

// damagedSet remembers, for Policy.DamagedTTL, the keys whose remote copy
// a lookup's fetch found damaged, with the error that said so. A lookup of
// a small remote value fetches it at once (fetcher.go, lookupByOpen); when
// that fetch finds the copy damaged and quarantines it before the Open
// that follows the lookup arrives (a loaded machine), the Open would find
// the copy gone and answer absent, after the lookup said present. The
// first such Open answers the damage instead, as an Open that met it
// itself does: a read of a damaged copy fails with EIO, whoever found it
// first. Later ones find the key absent, as lookups already do.
type damagedSet struct {
	mu  sync.Mutex
	ttl time.Duration
	m   map[digest.Key]damaged
}

type damaged struct {
	err error
	at  time.Time
}

// add records that a lookup's fetch found k's remote copy damaged (err),
// and forgets the records older than the TTL, which keeps the set as
// small as the damage found in one TTL.
func (d *damagedSet) add(k digest.Key, err error) {
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	for dk, v := range d.m {
		if now.Sub(v.at) > d.ttl {
			delete(d.m, dk)
		}
	}
	if d.m == nil {
		d.m = map[digest.Key]damaged{}
	}
	d.m[k] = damaged{err: err, at: now}
}

// take returns, and forgets, the error that found k's remote copy damaged
// less than the TTL ago, or nil.
func (d *damagedSet) take(k digest.Key) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.m[k]
	delete(d.m, k)
	if !ok || time.Since(v.at) > d.ttl {
		return nil
	}
	return v.err
}
