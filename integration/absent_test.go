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
// afterwards is still seen by A within negative_ttl, counted from the
// listing's start, not cached as a miss beyond it.
//
// The test asserts orders, not speeds: every lookup of A that starts after
// the listing's TTL has run out must find the entry, and none that ends
// before it may. negative_ttl is its maximum, 2 s, so that B publishes
// within the listing's life unless the machine is very loaded.
func TestAbsentListingAcrossMounts(t *testing.T) {
	const ttl = 2 * time.Second
	srv := sshdtest.Start(t)
	a := newNode(t, "A", srv, nodeOpts{negTTL: ttl.String()})
	// B's last close uploads the entry as it publishes it, not after the
	// upload queue's hold.
	b := newNode(t, "B", srv, nodeOpts{extra: `write = "through"`})

	names := make([]string, 100)
	for i := range names {
		names[i] = key(fmt.Sprintf("absent-%d", i))
	}
	target := names[0]
	start := time.Now() // no later than the listing's start
	for _, k := range names {
		if _, err := os.Stat(a.path(k)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("stat of a missing name: %v", err)
		}
	}
	var listed time.Time // no earlier than the listing's start
	eventually(t, "A to list the remote", time.Minute, func() bool {
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
	if published.Sub(listed) > ttl/2 {
		// The listing may have run out before B's entry was there: the
		// lookups below still must find it, but nothing shows that the
		// listing hid it until its end.
		t.Logf("the machine is slow: B published %v after A's listing (negative_ttl %v)", published.Sub(listed), ttl)
	}
	// The listing's misses, and the kernel's copies of them, end at its
	// start + ttl at the latest: a lookup that starts later (with a kernel
	// tick of slack) must find the entry.
	expired := listed.Add(ttl + 50*time.Millisecond)
	var found time.Time
	for {
		begun := time.Now()
		_, err := os.Stat(a.path(target))
		if err == nil {
			found = time.Now()
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		if begun.After(expired) {
			t.Fatalf("a lookup %v after the listing was seen still missed B's entry; negative_ttl is %v\n%s", begun.Sub(listed), ttl, a.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// And the listing answered until its end: a lookup that found the entry
	// ended no earlier than the listing's start + ttl (start is earlier
	// than that start), unless a second listing began, which a poll every
	// 100 ms does not start.
	if found.Before(start.Add(ttl)) && a.tierStats("sftp").Listings == 1 {
		t.Fatalf("A saw B's entry %v after its misses began, before the listing's TTL %v ran out", found.Sub(start), ttl)
	}
	t.Logf("published %v after the listing was seen; A saw it %v after the publish",
		published.Sub(listed).Round(time.Millisecond), found.Sub(published).Round(time.Millisecond))
	got, err := os.ReadFile(a.path(target))
	if err != nil || string(got) != "from B" {
		t.Fatalf("A read %q, %v", got, err)
	}
}
