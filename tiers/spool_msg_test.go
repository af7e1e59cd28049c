package tiers_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// A fetch that fails because the spool directory cannot take the value
// says so (naming spool_dir), and is not "tier unavailable": the remote
// answered.
func TestSpoolFailureNamesTheSpool(t *testing.T) {
	ram, remote := mem(t, "ram", 64<<20), mem(t, "remote", 64<<20)
	spool := t.TempDir()
	s, err := tiers.NewStack([]tiers.Layer{{Tier: ram}, {Tier: remote, Remote: true}}, tiers.StackOptions{SpoolDir: spool})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	k := tiertest.Key("spooled")
	tiertest.Put(t, remote, k, tiertest.Data(7, 3<<20)) // over memFetch: spooled
	// A file where the directory was: no temp file can be made in it.
	if err := os.Remove(spool); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(spool, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = s.Open(context.Background(), k)
	if err == nil {
		t.Fatal("open succeeded without a spool")
	}
	if errors.Is(err, tiers.ErrUnavailable) || !strings.Contains(err.Error(), "spool directory") || !strings.Contains(err.Error(), "spool_dir") {
		t.Fatalf("error %q: want one naming the spool directory, not ErrUnavailable", err)
	}
}
