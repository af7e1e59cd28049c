package integration

import (
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/flechefs/flechefs/internal/sshdtest"
)

// A burst of misses on mount A lists the shared remote once and answers
// the following misses from that listing; an entry mount B publishes
// afterwards is still seen by A within negative_ttl (1 s here), counted
// from the listing's start, not cached as a miss beyond it.
func TestAbsentListingAcrossMounts(t *testing.T) {
	const ttl = time.Second // the harness's negative_ttl
	srv := sshdtest.Start(t)
	a := newNode(t, "A", srv, nodeOpts{})
	// B's close returns once the entry is on the remote: it publishes
	// well within A's listing.
	b := newNode(t, "B", srv, nodeOpts{extra: `write = "through"`})

	names := make([]string, 100)
	for i := range names {
		names[i] = key(fmt.Sprintf("absent-%d", i))
	}
	target := names[0] // looked up first, so its miss ends first
	for _, k := range names {
		if _, err := os.Stat(a.path(k)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("stat of a missing name: %v", err)
		}
	}
	var listed time.Time // no earlier than the listing's start
	eventually(t, "A to list the remote", 5*time.Second, func() bool {
		listed = time.Now()
		return a.tierStats("sftp").Listings >= 1
	})
	// Misses now cost A no remote lookup: they are answered by the listing.
	before := a.tierStats("sftp").ListedMisses
	for i := range 50 {
		if _, err := os.Stat(a.path(key(fmt.Sprintf("absent-more-%d", i)))); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("stat of a missing name: %v", err)
		}
	}
	if n := a.tierStats("sftp").ListedMisses - before; n < 40 {
		t.Fatalf("%d of 50 misses answered by the listing\n%s", n, a.stderr)
	}

	if err := os.WriteFile(b.path(target), []byte("from B"), 0o644); err != nil {
		t.Fatal(err)
	}
	published := time.Now()
	if d := published.Sub(listed); d > ttl/2 {
		t.Fatalf("test too slow: B published %v after A's listing", d)
	}

	var found time.Time
	for deadline := published.Add(ttl + 3*time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(a.path(target)); err == nil {
			found = time.Now()
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	if found.IsZero() {
		t.Fatalf("A never saw B's entry\n%s", a.stderr)
	}
	const slack = 250 * time.Millisecond
	t.Logf("published %v after the listing was seen; A saw it %v after the publish",
		published.Sub(listed).Round(time.Millisecond), found.Sub(published).Round(time.Millisecond))
	if d := found.Sub(published); d > ttl+slack {
		t.Fatalf("A saw B's entry %v after its publish; negative_ttl is %v", d, ttl)
	}
	if d := found.Sub(listed); d > ttl+slack {
		t.Fatalf("A saw B's entry %v after its listing started; its misses may be kept only %v", d, ttl)
	}
	got, err := os.ReadFile(a.path(target))
	if err != nil || string(got) != "from B" {
		t.Fatalf("A read %q, %v", got, err)
	}
}
