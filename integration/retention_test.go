package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flechefs/flechefs/internal/mounttest"
	"github.com/flechefs/flechefs/internal/sshdtest"
)

// TestRetentionThroughMount: a mount whose remote has max_size: entries
// written through it are uploaded, made old on the server, and `flechefs
// prune --dry-run` lists the least recently used without removing them;
// `flechefs prune` removes them from the remote (the mount still serves
// them from its local tiers), leaves the file flechefs did not write, and
// `flechefs status` shows the pass.
func TestRetentionThroughMount(t *testing.T) {
	srv := sshdtest.Start(t)
	n := mounttest.NewNode(t, "retention", srv, mounttest.Opts{
		RemoteTier: "max_size = \"310KiB\"\nprune_grace = \"1m\"\n",
	})
	var keys []string
	for i := range 6 {
		k := mounttest.Key("retention " + string(rune('a'+i)))
		if err := os.WriteFile(n.Path(k), bytes.Repeat([]byte{byte(i)}, 100<<10), 0o644); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	n.Sync(time.Minute)
	foreign := filepath.Join(srv.Dir, mounttest.Key("retention foreign"))
	if err := os.WriteFile(foreign, []byte("not written by flechefs"), 0o644); err != nil {
		t.Fatal(err)
	}
	mounttest.Eventually(t, "the uploads' last-use marks", 20*time.Second, func() bool {
		for _, k := range keys {
			if _, err := os.Stat(filepath.Join(srv.Dir, ".flechefs", "used", k)); err != nil {
				return false
			}
		}
		return true
	})
	for i, k := range keys { // keys[0] is the least recently used
		at := time.Now().Add(-time.Duration(10-i) * time.Hour)
		tv := []unix.Timeval{unix.NsecToTimeval(at.UnixNano()), unix.NsecToTimeval(at.UnixNano())}
		for _, p := range []string{filepath.Join(srv.Dir, ".flechefs", "sums", k), filepath.Join(srv.Dir, ".flechefs", "used", k)} {
			if err := unix.Lutimes(p, tv); err != nil {
				t.Fatal(err)
			}
		}
	}
	out, err := n.Flechefs("prune", "--dry-run", n.Mnt)
	if err != nil || !strings.Contains(out, "would remove 3 entries") || !strings.Contains(out, keys[0]) || strings.Contains(out, keys[5]) {
		raw, rerr := os.ReadFile(filepath.Join(n.Mnt, ".flechefs", "prune-dry-run"))
		t.Fatalf("prune --dry-run: %v\n%s\n.flechefs/prune-dry-run: %s %v\n%s", err, out, raw, rerr, n.Stderr())
	}
	if _, err := os.Stat(filepath.Join(srv.Dir, keys[0])); err != nil {
		t.Fatalf("the dry run removed an entry: %v", err)
	}
	out, err = n.Flechefs("prune", n.Mnt)
	if err != nil || !strings.Contains(out, "removed 3 entries") {
		t.Fatalf("prune: %v\n%s", err, out)
	}
	t.Logf("flechefs prune: %s", strings.TrimSpace(out))
	for i, k := range keys {
		_, err := os.Stat(filepath.Join(srv.Dir, k))
		if gone := i < 3; gone != os.IsNotExist(err) {
			t.Errorf("entry %d on the remote after the prune: %v", i, err)
		}
		if b, err := os.ReadFile(n.Path(k)); err != nil || len(b) != 100<<10 {
			t.Errorf("entry %d through the mount after the prune: %d bytes, %v", i, len(b), err)
		}
	}
	if b, err := os.ReadFile(foreign); err != nil || string(b) != "not written by flechefs" {
		t.Fatalf("the file flechefs did not write: %q, %v", b, err)
	}
	if st := n.Status(); !strings.Contains(st, "retention:") || !strings.Contains(st, "max_size 310KiB") || !strings.Contains(st, "which removed 3") {
		t.Errorf("status does not show the pass:\n%s", st)
	}
}
