package faults

// rm while the remote is down: the delete is queued (a tombstone in the
// bbolt queue), survives a restart of the daemon and is carried out when
// the server returns, before a newer value of the key is uploaded.

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flechefs/flechefs/internal/mounttest"
	"github.com/flechefs/flechefs/internal/sshdtest"
)

func TestRemoveWhileRemoteDown(t *testing.T) {
	trials := 5
	if testing.Short() {
		trials = 2
	}
	srv := sshdtest.Start(t)
	n := mounttest.NewNode(t, "remover", srv, mounttest.Opts{RemoteTimeout: remoteTimeout.String()})
	var slowestRm, slowestCatchUp time.Duration
	for trial := range trials {
		key := func(s string) string { return mounttest.Key(fmt.Sprintf("rm trial %d %s", trial, s)) }
		gone, rewritten, kept := key("gone"), key("rewritten"), key("kept")
		old := map[string][]byte{}
		for _, k := range []string{gone, rewritten, kept} {
			old[k] = content(31, trial, len(old), 10<<10+len(old))
			writeFile(t, n.Path(k), old[k], false)
		}
		n.Sync(2 * time.Minute)
		for k := range old {
			if _, err := os.Stat(filepath.Join(srv.Dir, k)); err != nil {
				t.Fatalf("trial %d: not on the remote after sync: %v", trial, err)
			}
		}

		srv.Stop()
		for _, k := range []string{gone, rewritten} {
			start := time.Now()
			if err := os.Remove(n.Path(k)); err != nil {
				t.Fatalf("trial %d: rm with the remote down: %v", trial, err)
			}
			slowestRm = max(slowestRm, time.Since(start))
			if _, err := os.Stat(n.Path(k)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("trial %d: stat after rm: %v", trial, err)
			}
		}
		nv := content(32, trial, 0, 12<<10)
		writeFile(t, n.Path(rewritten), nv, false)
		if st := n.Stats(); st.Deletes != 2 {
			t.Errorf("trial %d: %d queued deletes before the restart, want 2", trial, st.Deletes)
		}

		// The daemon restarts with the server still down: the deletes
		// are still queued, the deleted entry stays deleted.
		n.Restart()
		if st := n.Stats(); st.Deletes != 2 {
			t.Errorf("trial %d: %d queued deletes after the restart, want 2", trial, st.Deletes)
		}
		if status := n.Status(); !strings.Contains(status, "queued deletes:") {
			t.Errorf("trial %d: status does not show the queued deletes:\n%s", trial, status)
		}
		if _, err := os.Stat(n.Path(gone)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("trial %d: the deleted entry after the restart: %v", trial, err)
		}
		if sum, _, err := readAll(n.Path(rewritten)); err != nil || sum != mounttest.Sum(nv) {
			t.Errorf("trial %d: the rewritten entry after the restart: %v", trial, err)
		}
		for k := range old {
			if _, err := os.Stat(filepath.Join(srv.Dir, k)); err != nil {
				t.Fatalf("trial %d: the server's copy went while it was down: %v", trial, err)
			}
		}

		if err := srv.Restart(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		n.Sync(2 * time.Minute)
		slowestCatchUp = max(slowestCatchUp, time.Since(start))
		if st := n.Stats(); st.Deletes != 0 {
			t.Errorf("trial %d: %d queued deletes after sync", trial, st.Deletes)
		}
		if _, err := os.Lstat(filepath.Join(srv.Dir, gone)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("trial %d: the deleted entry is still on the remote: %v", trial, err)
		}
		if _, err := os.Lstat(filepath.Join(srv.Dir, ".flechefs", "sums", gone)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("trial %d: the deleted entry's record is still on the remote: %v", trial, err)
		}
		for k, want := range map[string]string{rewritten: mounttest.Sum(nv), kept: mounttest.Sum(old[kept])} {
			sum, _, err := readAll(filepath.Join(srv.Dir, k))
			if err != nil || sum != want {
				t.Errorf("trial %d: remote %s: %s, %v; want %s", trial, k[:12], sum, err, want)
			}
			if rs, _, err := readSum(srv.Dir, k); err != nil || rs != want {
				t.Errorf("trial %d: remote record of %s: %s, %v", trial, k[:12], rs, err)
			}
		}
		if _, err := os.Stat(n.Path(gone)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("trial %d: the deleted entry came back: %v", trial, err)
		}
	}
	t.Logf("%d trials (sshd stopped, 2 rm, 1 rewrite, daemon restarted, sshd restarted): every rm returned 0 (slowest %v), the deletes survived the restart and were done on the server after sync (slowest sync %v), the rewritten value replaced the old one there, nothing else touched",
		trials, slowestRm.Round(time.Millisecond), slowestCatchUp.Round(time.Millisecond))
}
