package s3

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/s3test"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// TestStoreDown: with the store stopped (connections refused) or frozen
// (nothing answers), every operation fails with ErrUnavailable, none
// waiting longer than Timeout and its slack (minio-go's three tries once
// made a ReadAt wait three times Timeout on a frozen store), a reader open
// across the outage fails rather than hangs, and the tier works again
// once the store is back.
func TestStoreDown(t *testing.T) { eachStore(t, testStoreDown) }

func testStoreDown(t *testing.T, s *s3test.Server) {
	const timeout = 3 * time.Second
	bound := timeout + 3*time.Second // slack for -race on 2 loaded cores
	o := options(s)
	o.Timeout = timeout
	tr := mustOpen(t, o)
	ctx := context.Background()
	k := tiertest.Key("store down")
	v := tiertest.Data(3, 8<<20)
	if _, err := tr.Put(ctx, k, bytes.NewReader(v), tiers.Meta{Size: int64(len(v)), Sum: digest.Of(v)}); err != nil {
		t.Fatal(err)
	}
	small := []byte("put while down")
	ops := []struct {
		name string
		do   func(r tiers.Reader) error
	}{
		{"read", func(r tiers.Reader) error { _, err := r.ReadAt(make([]byte, 1<<20), 2<<20); return err }},
		{"stat", func(tiers.Reader) error { _, err := tr.Stat(ctx, k); return err }},
		{"open", func(tiers.Reader) error {
			r, err := tr.Open(ctx, k)
			if err == nil {
				r.Close()
			}
			return err
		}},
		{"put", func(tiers.Reader) error {
			_, err := tr.Put(ctx, tiertest.Key("put while down"), bytes.NewReader(small), tiers.Meta{Size: int64(len(small)), Sum: digest.Of(small)})
			return err
		}},
		{"delete", func(tiers.Reader) error { return tr.Delete(ctx, k) }},
		{"list", func(tiers.Reader) error { return tr.List(ctx, func(tiers.Info) error { return nil }) }},
	}
	for _, outage := range []string{"stopped", "frozen"} {
		r, err := tr.Open(ctx, k)
		if err != nil {
			t.Fatalf("%s: open before the outage: %v", outage, err)
		}
		head := make([]byte, 1<<20)
		if _, err := r.ReadAt(head, 0); err != nil || !bytes.Equal(head, v[:len(head)]) {
			t.Fatalf("%s: read before the outage: %v", outage, err)
		}
		if outage == "stopped" {
			s.Stop()
		} else {
			s.Freeze()
		}
		var took []time.Duration
		for round := range 3 {
			for _, op := range ops {
				start := time.Now()
				err := op.do(r)
				d := time.Since(start)
				took = append(took, d)
				if !errors.Is(err, tiers.ErrUnavailable) {
					t.Errorf("%s, round %d: %s: %v, want ErrUnavailable", outage, round, op.name, err)
				}
				if d > bound {
					t.Errorf("%s, round %d: %s took %v, bound %v", outage, round, op.name, d, bound)
				}
			}
		}
		r.Close()
		if outage == "stopped" {
			if err := s.Restart(); err != nil {
				t.Fatal(err)
			}
		} else {
			s.Thaw()
		}
		// Back within the longest backoff (5 s, +20%), with slack.
		back := time.Now()
		var got []byte
		for {
			got, err = readAll(tr, k)
			if err == nil {
				break
			}
			if time.Since(back) > maxBackoff+maxBackoff/5+bound {
				t.Fatalf("%s: the tier still fails %v after the store came back: %v", outage, time.Since(back), err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if !bytes.Equal(got, v) {
			t.Fatalf("%s: after the store came back the value reads wrong", outage)
		}
		slices.Sort(took)
		t.Logf("store %s: %d operations failed with ErrUnavailable, median %v, slowest %v (timeout %v); whole again %v after the store came back",
			outage, len(took), took[len(took)/2].Round(time.Microsecond), took[len(took)-1].Round(time.Millisecond), timeout, time.Since(back).Round(time.Millisecond))
	}
}

// readAll opens k and reads it whole.
func readAll(tr *Tier, k digest.Key) ([]byte, error) {
	r, err := tr.Open(context.Background(), k)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b := make([]byte, r.Info().Size)
	n, err := r.ReadAt(b, 0)
	if n == len(b) {
		err = nil
	}
	return b[:n], err
}
