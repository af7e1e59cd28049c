package faults

// `flechefs sync` right after writes: every entry whose last close returned
// before sync started is on the remote when sync returns.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flechefs/flechefs/internal/mounttest"
	"github.com/flechefs/flechefs/internal/sshdtest"
)

// TestSyncRightAfterWrites writes a burst of small entries from one shell
// and runs `flechefs sync` in the same script the moment the last write's
// close returns, many times over. The kernel sends RELEASE (where the mount
// publishes) asynchronously to the last close, and the burst's entries are
// held before they are persisted; sync must still wait for every one of
// them. After each sync the test reads the sshd's directory directly.
func TestSyncRightAfterWrites(t *testing.T) {
	trials, perTrial := 30, 20
	if testing.Short() {
		trials = 10
	}
	srv := sshdtest.Start(t)
	n := mounttest.NewNode(t, "syncer", srv, mounttest.Opts{RemoteTimeout: remoteTimeout.String()})
	// The sync client without the race detector: a -race binary takes
	// about a second to start, by which time the uploads are done.
	bin := plainBinary(t)
	nothing := 0
	for trial := range trials {
		var script strings.Builder
		script.WriteString("set -e\n")
		want := map[string]string{}
		for i := range perTrial {
			k := mounttest.Key(fmt.Sprintf("sync trial %d entry %d", trial, i))
			v := fmt.Sprintf("value of trial %d entry %d\n", trial, i)
			want[k] = v
			fmt.Fprintf(&script, "printf '%%s' '%s' > %s\n", v, filepath.Join(n.Mnt, k))
		}
		fmt.Fprintf(&script, "exec %s sync --timeout 2m %s\n", bin, n.Mnt)
		out, err := exec.Command("sh", "-c", script.String()).CombinedOutput()
		if err != nil {
			t.Fatalf("trial %d: %v\n%s\ndaemon:\n%s", trial, err, out, n.Stderr())
		}
		if strings.Contains(string(out), "nothing to upload") {
			nothing++
		}
		missing := 0
		for k, v := range want {
			b, err := os.ReadFile(filepath.Join(srv.Dir, k))
			if err != nil || string(b) != v {
				missing++
			}
			if _, err := os.Lstat(filepath.Join(srv.Dir, ".flechefs", "sums", k)); err != nil {
				missing++
			}
		}
		if missing > 0 {
			t.Errorf("trial %d: sync returned (%q) with %d of %d entries (or their sum records) not on the remote",
				trial, strings.TrimSpace(string(out)), missing, perTrial)
		}
	}
	t.Logf("%d trials of %d writes then sync: every entry on the remote with its record after every sync; sync said \"nothing to upload\" %d times",
		trials, perTrial, nothing)
}
