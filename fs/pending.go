package fs

import (
	"sync"
	"time"

	"github.com/flechefs/flechefs/digest"
)

// releaseWait bounds how long a lookup, open, unlink, create, rename or
// listing waits for the RELEASE of a write handle of its name, counted from
// that handle's last FLUSH. The kernel queues RELEASE before close(2) (or
// the exit of the last holder) returns, but go-fuse may serve a later
// LOOKUP first; waiting closes that window, so a name is complete and
// visible to everyone once its last close has returned. A FLUSH that is not
// the last close (the shell's own close after dup2, a child's exit inside a
// brace group) makes lookups in the next second wait for nothing but this
// bound, then answer absent.
const releaseWait = time.Second

// pendingWrites holds the write handles that have not ended yet, per key:
// the names that must look absent to lookups until their value is
// published, and that lookups wait for once a FLUSH has come.
type pendingWrites struct {
	mu sync.Mutex
	m  map[digest.Key]map[*writeHandle]struct{}
}

func newPendingWrites() *pendingWrites {
	return &pendingWrites{m: map[digest.Key]map[*writeHandle]struct{}{}}
}

func (p *pendingWrites) add(h *writeHandle) {
	p.mu.Lock()
	hs := p.m[h.key]
	if hs == nil {
		hs = map[*writeHandle]struct{}{}
		p.m[h.key] = hs
	}
	hs[h] = struct{}{}
	p.mu.Unlock()
}

func (p *pendingWrites) remove(h *writeHandle) {
	p.mu.Lock()
	if hs := p.m[h.key]; hs != nil {
		delete(hs, h)
		if len(hs) == 0 {
			delete(p.m, h.key)
		}
	}
	p.mu.Unlock()
}

// writing reports whether k has a write handle that has not ended.
func (p *pendingWrites) writing(k digest.Key) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.m[k]) > 0
}

// shadowOf reports whether k has a shadow write handle opened by pid (the
// truncate of open(O_TRUNC) comes after the open, without the handle).
func (p *pendingWrites) shadowOf(k digest.Key, pid uint32) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for h := range p.m[k] {
		if h.shadow && h.pid == pid {
			return true
		}
	}
	return false
}

// flushed returns the handles of k that have had a FLUSH and not ended,
// shadows excepted; when all, those of every key, shadows included.
func (p *pendingWrites) flushed(k digest.Key, all bool) []*writeHandle {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*writeHandle
	add := func(hs map[*writeHandle]struct{}) {
		for h := range hs {
			// A lookup of a name with a shadow handle finds the entry
			// that exists: it need not wait for the shadow.
			if h.flushedAt.Load() != 0 && (all || !h.shadow) {
				out = append(out, h)
			}
		}
	}
	if all {
		for _, hs := range p.m {
			add(hs)
		}
	} else {
		add(p.m[k])
	}
	return out
}

// wait waits until every flushed handle of k has ended: one whose RELEASE
// has come until its publish is done, any other until releaseWait after its
// last FLUSH.
func (p *pendingWrites) wait(k digest.Key) { waitEnded(p.flushed(k, false)) }

// waitAll is wait for every key (a listing).
func (p *pendingWrites) waitAll() { waitEnded(p.flushed(digest.Key{}, true)) }

func waitEnded(hs []*writeHandle) {
	for _, h := range hs {
		for {
			if h.releasing.Load() {
				<-h.ended
				break
			}
			left := time.Until(time.Unix(0, h.flushedAt.Load()).Add(releaseWait))
			if left <= 0 {
				break
			}
			t := time.NewTimer(left)
			select {
			case <-h.ended:
				t.Stop()
			case <-t.C:
				continue // a later FLUSH may have moved the bound, or RELEASE come
			}
			break
		}
	}
}
