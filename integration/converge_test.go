package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers/sftp"
)

// One key, one value, everywhere: two mounts on one remote write the same
// 20 keys with different values at the same time (a non-deterministic
// computation run on two machines). The remote keeps its first writer's
// value of each key; the losing mount drops its own and, after `flechefs
// sync` on both, both mounts and a fresh third serve the remote's bytes
// for every key, and the remote's record describes its data.
func TestTwoMountsConverge(t *testing.T) {
	srv := sshdtest.Start(t)
	a := newNode(t, "A", srv, nodeOpts{})
	b := newNode(t, "B", srv, nodeOpts{})
	const keys = 20
	ks := make([]string, keys)
	var wg sync.WaitGroup
	for i := range keys {
		ks[i] = key(fmt.Sprint("converge", i))
		for _, n := range []*node{a, b} {
			// Sizes on both sides of the small-upload line; values
			// differ in size too for some keys, not for others.
			size := 1000 + i*70000
			if n == b && i%2 == 0 {
				size += 17
			}
			pat := []byte(n.name + fmt.Sprint(i))
			v := bytes.Repeat(pat, size/len(pat)+1)[:size]
			wg.Go(func() {
				if err := os.WriteFile(n.path(ks[i]), v, 0o644); err != nil {
					t.Errorf("%s: write %d: %v", n.name, i, err)
				}
			})
		}
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	a.sync(2 * time.Minute)
	b.sync(2 * time.Minute)
	c := newNode(t, "C", srv, nodeOpts{})
	root := srv.Dir
	for i, k := range ks {
		remote, err := os.ReadFile(filepath.Join(root, k))
		if err != nil {
			t.Fatalf("key %d: not on the remote: %v", i, err)
		}
		rec, err := sftp.LocalSum(root, k)
		if err != nil || rec.Sum != digest.Of(remote) || rec.Size != int64(len(remote)) {
			t.Fatalf("key %d: record %+v, %v does not describe the remote data", i, rec, err)
		}
		for _, n := range []*node{a, b, c} {
			got, err := os.ReadFile(n.path(k))
			if err != nil || !bytes.Equal(got, remote) {
				t.Fatalf("key %d: %s serves %d bytes (%q...), err %v; the remote holds %d (%q...)\n%s",
					i, n.name, len(got), head(got), err, len(remote), head(remote), n.stderr)
			}
			if up := xattr(t, n.path(k), "user.flechefs.upload"); up != "done" {
				t.Errorf("key %d: %s says upload %q", i, n.name, up)
			}
			if sum := xattr(t, n.path(k), "user.flechefs.sha256"); sum != digest.Of(remote).String() {
				t.Errorf("key %d: %s says sha256 %s, the remote's is %s", i, n.name, sum, digest.Of(remote))
			}
		}
	}
	// Each key was won by one mount; the other lost it at its upload (a
	// conflict) or, when the winner's upload came before its own create,
	// never published its value (its lookup found the key: the write went
	// to a shadow and was dropped).
	sa, sb := a.stats(), b.stats()
	t.Logf("conflicts: A %d, B %d; dropped publishes: A %d, B %d", sa.Conflicts, sb.Conflicts, sa.DroppedPublishes, sb.DroppedPublishes)
	if sa.Conflicts+sb.Conflicts == 0 || sa.Conflicts+sb.Conflicts > keys {
		t.Errorf("conflicts: A %d + B %d, want 1 to %d", sa.Conflicts, sb.Conflicts, keys)
	}
	if st := a.Status(); !strings.Contains(st, "conflicts:") {
		t.Errorf("status has no conflicts line:\n%s", st)
	}
}

// rm and a rewrite on one mount (delete_remote = true, the default): a
// mount that holds the old value in its local tiers keeps serving it (it
// does not ask the remote about a key it holds) until its copies leave
// them; a mount without a copy reads the new value. README, "Two
// machines".
func TestRewriteElsewhereKeepsLocalCopy(t *testing.T) {
	srv := sshdtest.Start(t)
	a := newNode(t, "A", srv, nodeOpts{})
	b := newNode(t, "B", srv, nodeOpts{})
	k := key("rewritten elsewhere")
	v1, v2 := []byte("first value"), []byte("second, other value")
	if err := os.WriteFile(a.path(k), v1, 0o644); err != nil {
		t.Fatal(err)
	}
	a.sync(time.Minute)
	if got, err := os.ReadFile(b.path(k)); err != nil || !bytes.Equal(got, v1) {
		t.Fatalf("B: %q, %v", got, err)
	}
	if err := os.Remove(a.path(k)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(a.path(k), v2, 0o644); err != nil {
		t.Fatal(err)
	}
	a.sync(time.Minute)
	b.sync(time.Minute)
	if got, _ := os.ReadFile(b.path(k)); !bytes.Equal(got, v1) {
		t.Fatalf("B serves %q; the documented behaviour is that it keeps its copy of %q", got, v1)
	}
	c := newNode(t, "C", srv, nodeOpts{})
	if got, err := os.ReadFile(c.path(k)); err != nil || !bytes.Equal(got, v2) {
		t.Fatalf("C: %q, %v; want %q", got, err, v2)
	}
}

func head(b []byte) []byte { return b[:min(len(b), 12)] }
