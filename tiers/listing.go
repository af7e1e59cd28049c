package tiers

import (
	"context"
	"sync"
	"time"

	"github.com/flechefs/flechefs/digest"
	"golang.org/x/sync/singleflight"
)

// listCache keeps the remote tiers' listing. It is refreshed in the
// background when older than ListTTL, so List never waits on a slow or dead
// remote longer than a short first-time bound. Concurrent callers share one
// refresh (singleflight).
type listCache struct {
	mu      sync.Mutex
	entries map[digest.Key]Info
	at      time.Time
	refresh singleflight.Group
}

func (c *listCache) add(info Info) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries != nil {
		c.entries[info.Key] = info
	}
}

func (c *listCache) forget(k digest.Key) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.entries, k)
}

// remoteListing returns the cached remote listing, starting a refresh when
// stale. The first call waits up to wait for it.
func (s *Stack) remoteListing(wait time.Duration) map[digest.Key]Info {
	c := &s.list
	c.mu.Lock()
	stale, first := time.Since(c.at) > s.opt.ListTTL, c.entries == nil
	c.mu.Unlock()
	if stale {
		done := c.refresh.DoChan("", func() (any, error) {
			s.refreshList()
			return nil, nil
		})
		if first {
			select {
			case <-done:
			case <-time.After(wait):
			}
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[digest.Key]Info, len(c.entries))
	for k, v := range c.entries {
		out[k] = v
	}
	return out
}

// refreshList lists every remote tier into the cache, unless the stack is
// closed: the refresh counts in s.wg, taken under s.mu, so Close waits for it
// or it does not start.
func (s *Stack) refreshList() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	fresh := map[digest.Key]Info{}
	ok := true
	for _, l := range s.remotes {
		ctx, cancel := context.WithTimeout(s.ctx, s.opt.RemoteTimeout)
		err := l.Tier.List(ctx, func(in Info) error { fresh[in.Key] = in; return nil })
		cancel()
		s.noteErr(l, err)
		if err != nil {
			ok = false
		}
	}
	c := &s.list
	c.mu.Lock()
	defer c.mu.Unlock()
	if ok || c.entries == nil {
		c.entries = fresh
	}
	if ok {
		c.at = time.Now()
	} else {
		// Try again after a short while, not at every readdir.
		c.at = time.Now().Add(-s.opt.ListTTL + min(s.opt.ListTTL, 5*time.Second))
	}
}

// List calls fn once per key held by any tier. Remote listings come from a
// cache refreshed in the background; List never waits long on a remote.
func (s *Stack) List(ctx context.Context, fn func(Info) error) error {
	seen := map[digest.Key]bool{}
	emit := func(in Info) error {
		if seen[in.Key] {
			return nil
		}
		seen[in.Key] = true
		return fn(in)
	}
	s.mu.Lock()
	var pend []Info
	s.keys.each(func(_ digest.Key, ks *keyState) bool {
		if ks.pub != nil {
			pend = append(pend, ks.pub.info)
		}
		return true
	})
	s.mu.Unlock()
	for _, in := range pend {
		if err := emit(in); err != nil {
			return err
		}
	}
	for l := range s.layers.local() {
		if err := l.Tier.List(ctx, emit); err != nil {
			return err
		}
	}
	if len(s.remotes) > 0 {
		for _, in := range s.remoteListing(min(2*time.Second, s.opt.RemoteTimeout)) {
			if s.deleter.tombstoned(in.Key) {
				continue // deleted here; the remote's delete is queued
			}
			if err := emit(in); err != nil {
				return err
			}
		}
	}
	return nil
}
