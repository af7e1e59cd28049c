package fs

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
)

// persistStub answers WaitPersisted: every key is persisted but fail.
type persistStub struct {
	stack // nil: nothing else is called
	calls atomic.Int64
	fail  digest.Key
}

func (p *persistStub) WaitPersisted(ctx context.Context, k digest.Key) error {
	p.calls.Add(1)
	if k == p.fail {
		return errors.New("no space")
	}
	return nil
}

// TestUndurablePruned: the keys a mount published are forgotten once
// persisted, by one goroutine per undurablePrune publishes (not one per
// publish); a key whose persistence failed stays for fsync of the directory.
func TestUndurablePruned(t *testing.T) {
	opt, err := Options{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	st := &persistStub{}
	r := newRoot(st, opt)
	defer r.cancel()
	key := func(i int) digest.Key { return digest.MustParse(fmt.Sprintf("%064x", i+1)) }
	st.fail = key(3)
	for i := range undurablePrune - 1 {
		r.settled(key(i), true)
	}
	time.Sleep(10 * time.Millisecond)
	if n := st.calls.Load(); n != 0 {
		t.Fatalf("%d WaitPersisted calls before undurablePrune publishes", n)
	}
	r.settled(key(undurablePrune-1), true)
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		n, pruning, at := len(r.undurable), r.pruning, r.pruneAt
		_, failKept := r.undurable[st.fail]
		r.mu.Unlock()
		if !pruning && n == 1 {
			if !failKept {
				t.Fatalf("the key whose persistence failed was forgotten")
			}
			if at != 1+undurablePrune {
				t.Errorf("pruneAt %d, want %d", at, 1+undurablePrune)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("undurable holds %d keys (pruning %v), want 1", n, pruning)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := st.calls.Load(); n != undurablePrune {
		t.Errorf("%d WaitPersisted calls, want %d", n, undurablePrune)
	}
}
