package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/flechefs/flechefs/tiers"
)

// syncSteps runs a syncer on a fake mount whose stats go through states,
// one per poll (the last one repeats), on a fake clock that advances by
// step per poll.
func syncSteps(t *testing.T, tty bool, step time.Duration, giveUp, timeout time.Duration, states ...tiers.Stats) (string, error) {
	t.Helper()
	dir := fakeMount(t, states[0])
	now := time.Unix(1e9, 0)
	i := 0
	var out bytes.Buffer
	s := &syncer{
		mountpoint: dir, timeout: timeout, giveUp: giveUp, out: &out, tty: tty, interval: time.Millisecond,
		now: func() time.Time { return now },
		sleep: func(time.Duration) {
			now = now.Add(step)
			if i+1 < len(states) {
				i++
				writeStats(t, dir, states[i])
			}
		},
	}
	err := s.run()
	return out.String(), err
}

func queue(q, unpersisted, uploaded, errs int64, lastErr string, remoteUp bool) tiers.Stats {
	return tiers.Stats{
		Tiers: []tiers.TierStats{
			{Name: "bolt", Available: true},
			{Name: "sftp", Remote: true, Available: remoteUp},
		},
		Queue: q, Unpersisted: unpersisted, Uploaded: uploaded, UploadErrors: errs, LastUploadError: lastErr,
	}
}

func TestSyncDone(t *testing.T) {
	for _, tty := range []bool{false, true} {
		out, err := syncSteps(t, tty, 400*time.Millisecond, time.Minute, time.Hour,
			queue(3, 2, 0, 0, "", true), queue(3, 0, 0, 0, "", true), queue(5, 0, 1, 0, "", true),
			queue(1, 0, 5, 0, "", true), queue(0, 0, 6, 0, "", true))
		if err != nil {
			t.Fatalf("tty %v: %v\n%s", tty, err, out)
		}
		if !strings.Contains(out, ": all uploaded (1.6s)\n") {
			t.Errorf("tty %v: output:\n%s", tty, out)
		}
		if !tty && !strings.Contains(out, "flechefs sync: 3 waiting (2 not yet on disk), 0 uploaded (0B)\n") {
			t.Errorf("plain output:\n%s", out)
		}
		if tty && !strings.Contains(out, "uploading") && !strings.Contains(out, "waiting") {
			t.Errorf("progress bar output:\n%q", out)
		}
	}
	out, err := syncSteps(t, false, time.Second, time.Minute, time.Hour, queue(0, 0, 9, 0, "", true))
	if err != nil || !strings.Contains(out, "nothing to upload") {
		t.Errorf("empty queue: %v %q", err, out)
	}
}

func TestSyncGivesUp(t *testing.T) {
	// Attempts fail and nothing is uploaded: give up after --give-up.
	out, err := syncSteps(t, false, 10*time.Second, 30*time.Second, time.Hour,
		queue(3, 0, 0, 0, "", true), queue(3, 0, 0, 1, "", true), queue(3, 0, 0, 2, "sftp: put x: permission denied", true))
	if err == nil || !strings.Contains(err.Error(), "uploads keep failing: nothing uploaded for 30s: 3 entries still waiting; last upload error: sftp: put x: permission denied") {
		t.Fatalf("err %v\n%s", err, out)
	}
	// The remote is down.
	_, err = syncSteps(t, true, 10*time.Second, 30*time.Second, time.Hour, queue(2, 0, 0, 0, "", false))
	if err == nil || !strings.Contains(err.Error(), "remote tier sftp is unavailable: nothing uploaded for 30s: 2 entries still waiting") {
		t.Fatalf("err %v", err)
	}
	// Slow but no failure: wait for the timeout instead.
	_, err = syncSteps(t, false, 10*time.Second, 30*time.Second, 2*time.Minute, queue(2, 0, 0, 0, "", true))
	if err == nil || !strings.Contains(err.Error(), "timed out after 2m: 2 entries still waiting") {
		t.Fatalf("err %v", err)
	}
	// Progress resets the give-up clock.
	states := []tiers.Stats{}
	for n := int64(10); n >= 0; n-- {
		states = append(states, queue(n, 0, 10-n, 2*(10-n), "flaky", true))
	}
	if out, err := syncSteps(t, false, 20*time.Second, 30*time.Second, time.Hour, states...); err != nil {
		t.Fatalf("flaky but progressing: %v\n%s", err, out)
	}
}

func TestSyncNotMount(t *testing.T) {
	code, _, stderr := runCLI(t, "", "sync", t.TempDir())
	if code != exitFail || !strings.Contains(stderr, "is not a flechefs mount") {
		t.Errorf("exit %d: %s", code, stderr)
	}
}
