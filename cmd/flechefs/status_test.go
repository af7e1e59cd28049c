package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flechefs/flechefs/tiers"
)

// fakeMount is a directory with a .flechefs/stats file, as a mount has.
func fakeMount(t *testing.T, st tiers.Stats) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, ".flechefs"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeStats(t, dir, st)
	return dir
}

func writeStats(t *testing.T, dir string, st tiers.Stats) {
	t.Helper()
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, ".flechefs", "stats.tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, statsFile)); err != nil {
		t.Fatal(err)
	}
}

var sampleStats = tiers.Stats{
	Tiers: []tiers.TierStats{
		{Name: "ram", Available: true, Hits: 80, Misses: 20, Entries: 10, Bytes: 64 << 20, Limit: 256 << 20, Promotions: 5, Evictions: 2},
		{Name: "bolt", Available: true, Hits: 15, Misses: 5, Entries: 1000, Bytes: 3 << 29, Limit: 10 << 30, Corruptions: 1},
		{Name: "sftp", Remote: true, Available: false, Hits: 3, Misses: 2, Errors: 7, Listings: 2, ListedMisses: 500,
			Corruptions: 3, Quarantined: 2, Unquarantined: 1,
			LastError: "sftp: tier unavailable: 127.0.0.1:22: dial tcp 127.0.0.1:22: connect: connection refused (next attempt in 4s)"},
	},
	Queue: 4, Uploaded: 12, UploadedBytes: 5 << 20, UploadErrors: 3,
	LastUploadError:  "sftp: put 0123456789abcdef: tier unavailable\n(dial tcp: connection refused)",
	DroppedPublishes: 1, Unpersisted: 2,
}

func TestStatus(t *testing.T) {
	dir := fakeMount(t, sampleStats)
	code, stdout, stderr := runCLI(t, "", "status", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	lines := strings.Split(stdout, "\n")
	for _, want := range [][]string{
		{"TIER", "WHERE", "ENTRIES", "USED", "LIMIT", "FILL", "HITS", "MISSES", "HIT", "RATE", "PROMOTED", "EVICTED", "CORRUPT", "ERRORS", "STATE"},
		{"ram", "local", "10", "64MiB", "256MiB", "25.0%", "80", "20", "80.0%", "5", "2", "0", "0", "ok"},
		{"bolt", "local", "1000", "1.5GiB", "10GiB", "15.0%", "15", "5", "75.0%", "0", "0", "1", "0", "ok"},
		{"sftp", "remote", "-", "-", "-", "-", "3", "2", "60.0%", "0", "0", "3", "7", "UNAVAILABLE"},
	} {
		found := false
		for _, l := range lines {
			if strings.Join(strings.Fields(l), " ") == strings.Join(want, " ") {
				found = true
			}
		}
		if !found {
			t.Errorf("no line %q in\n%s", want, stdout)
		}
	}
	for _, want := range []string{
		"upload queue:      4 waiting, 2 not yet on local disk\n",
		"uploaded:          12 (5MiB), 3 failed attempts, 0 conflicts\n",
		"conflicts:         0 (the remote held another value of a key written here; this mount dropped its own and reads the remote's)\n",
		"last upload error: sftp: put 0123456789abcdef: tier unavailable (dial tcp: connection refused)\n",
		"dropped publishes: 1 (the key existed: first writer wins)\n",
		"listed misses:     500 in sftp without a round trip (2 listings)\n",
		"tier sftp UNAVAILABLE: sftp: tier unavailable: 127.0.0.1:22: dial tcp 127.0.0.1:22: connect: connection refused (next attempt in 4s)\n",
		"quarantined:       2 damaged copies in sftp moved to .flechefs/quarantine, 1 left in place unserved\n",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("no %q in\n%s", want, stdout)
		}
	}

	code, stdout, _ = runCLI(t, "", "status", "--json", dir)
	var back tiers.Stats
	if code != 0 || json.Unmarshal([]byte(stdout), &back) != nil || back.Queue != 4 || !strings.HasSuffix(stdout, "\n") {
		t.Errorf("--json: %d %q", code, stdout)
	}
	// Flags may follow the mount point.
	if code, stdout2, _ := runCLI(t, "", "status", dir, "--json"); code != 0 || stdout2 != stdout {
		t.Errorf("status MOUNTPOINT --json: %d %q", code, stdout2)
	}
}

func TestStatusNotMount(t *testing.T) {
	dir := t.TempDir()
	code, _, stderr := runCLI(t, "", "status", dir)
	if code != exitFail || !strings.Contains(stderr, dir+" is not a flechefs mount (it has no .flechefs/stats)") {
		t.Errorf("exit %d: %s", code, stderr)
	}
	code, _, stderr = runCLI(t, "", "status", filepath.Join(dir, "nope"))
	if code != exitFail || !strings.Contains(stderr, "no such file or directory") {
		t.Errorf("exit %d: %s", code, stderr)
	}
	os.MkdirAll(filepath.Join(dir, ".flechefs"), 0o755)
	os.WriteFile(filepath.Join(dir, statsFile), []byte("{not json"), 0o644)
	code, _, stderr = runCLI(t, "", "status", dir)
	if code != exitFail || !strings.Contains(stderr, "stats: invalid character") {
		t.Errorf("exit %d: %s", code, stderr)
	}
}
