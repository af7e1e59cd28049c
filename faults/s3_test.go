package faults

// Faults only an S3 store has: objects overwritten in place, and a
// replicated store that loses a volume server.

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/flechefs/flechefs/internal/mounttest"
	"github.com/flechefs/flechefs/internal/remotetest"
	"github.com/flechefs/flechefs/internal/s3test"
)

// TestS3DamagedObjects overwrites objects in the bucket with other bytes,
// keeping their metadata (a bad disk under the store, a tool that rewrote
// them): a node without a copy of its own never serves one (EIO, or
// ENOENT when the lookup found the damage; an empty object was served as
// an empty value before its size was recorded and checked), counts each
// as a corruption of the s3 tier, keeps none in a local tier and moves
// the object, whole, into the tier's quarantine; the node that wrote the
// values keeps serving its good copies, and a node that writes them again
// repairs the store.
func TestS3DamagedObjects(t *testing.T) {
	st := remotetest.NewS3(t, s3test.Start(t))
	flip := func(d []byte, off int) []byte {
		b := bytes.Clone(d)
		b[off] ^= 0x40
		return b
	}
	damages := []struct {
		name string
		size int
		bad  func(d []byte) []byte
	}{
		{"flipped first byte", 200 << 10, func(d []byte) []byte { return flip(d, 0) }},
		{"flipped last byte", 200 << 10, func(d []byte) []byte { return flip(d, len(d)-1) }},
		{"flipped middle byte, streamed", 5 << 20, func(d []byte) []byte { return flip(d, len(d)/2) }},
		{"truncated", 300 << 10, func(d []byte) []byte { return d[:len(d)/2] }},
		{"truncated, streamed", 5 << 20, func(d []byte) []byte { return d[:len(d)-1] }},
		{"extended", 300 << 10, func(d []byte) []byte { return append(bytes.Clone(d), "trailing garbage"...) }},
		{"empty", 100 << 10, func(d []byte) []byte { return nil }},
		{"another value", 2 << 20, func(d []byte) []byte { return content(17, 18, 0, len(d)) }},
	}
	good := st.Node(t, "good", mounttest.Opts{RemoteTimeout: remoteTimeout.String()})
	keys := make([]string, len(damages))
	data := map[string][]byte{}
	for i, dm := range damages {
		d := content(17, 17, i, dm.size+i)
		keys[i] = mounttest.Key("s3 damaged " + dm.name)
		data[keys[i]] = d
		writeFile(t, good.Path(keys[i]), d, true)
	}
	good.Sync(time.Minute)
	for i, dm := range damages {
		k := keys[i]
		st.Overwrite(t, k, dm.bad(data[k]))
	}

	n := st.Node(t, "victim", mounttest.Opts{RemoteTimeout: remoteTimeout.String()})
	var eio, enoent int
	for i, dm := range damages {
		k := keys[i]
		c0 := n.TierStats("s3").Corruptions
		var errs []string
		for attempt := range 2 {
			_, nr, err, took := timedRead(n.Path(k), nil, 0)
			switch {
			case err == nil:
				t.Errorf("%s (attempt %d): served %d bytes", dm.name, attempt, nr)
			case isEIO(err):
				eio++
			case errors.Is(err, fs.ErrNotExist):
				enoent++
			default:
				t.Errorf("%s: %v, want EIO or ENOENT", dm.name, err)
			}
			if took > bound {
				t.Errorf("%s: the read took %v", dm.name, took)
			}
			errs = append(errs, fmt.Sprint(err))
		}
		if c := n.TierStats("s3").Corruptions - c0; c == 0 {
			t.Errorf("%s: not counted as a corruption (%s)", dm.name, strings.Join(errs, "; "))
		}
		if w, err := mounttest.XattrE(n.Path(k), "user.flechefs.tiers"); err == nil && (strings.Contains(w, "ram") || strings.Contains(w, "bolt")) {
			t.Errorf("%s: a local tier holds it: %q", dm.name, w)
		}
		if !strings.Contains(n.Stderr(), k) {
			t.Errorf("%s: %s not in the log", dm.name, k[:12])
		}
		// Never deleted: the damaged object is in the quarantine, as it
		// was, and no longer under its key.
		if q := st.Quarantined(t, k); len(q) != 1 || !bytes.Equal(q[0], dm.bad(data[k])) {
			t.Errorf("%s: %d copies in the quarantine, want the damaged object", dm.name, len(q))
		}
		if _, _, err := st.Get(k); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: the key's object after the quarantine: %v, want it absent", dm.name, err)
		}
		t.Logf("%-30s %s", dm.name, strings.Join(errs, "; "))
	}
	for _, ts := range n.Stats().Tiers {
		if ts.Name != "s3" && ts.Corruptions != 0 {
			t.Errorf("tier %s counted %d corruptions", ts.Name, ts.Corruptions)
		}
	}
	for _, k := range keys {
		if sum, _, err, _ := timedRead(good.Path(k), nil, 0); err != nil || sum != mounttest.Sum(data[k]) {
			t.Errorf("%s: the node with a good copy reads %v", k[:12], err)
		}
	}
	ts := n.TierStats("s3")
	if ts.Quarantined != int64(len(damages)) || ts.Unquarantined != 0 {
		t.Errorf("quarantined %d, unquarantined %d; want %d and 0", ts.Quarantined, ts.Unquarantined, len(damages))
	}
	// A node that computes the values again uploads them into the freed keys.
	healer := st.Node(t, "healer", mounttest.Opts{RemoteTimeout: remoteTimeout.String()})
	for _, k := range keys {
		writeFile(t, healer.Path(k), data[k], true)
	}
	healer.Sync(time.Minute)
	for i, k := range keys {
		if got, sum, err := st.Get(k); err != nil || !bytes.Equal(got, data[k]) || sum != mounttest.Sum(data[k]) {
			t.Errorf("%s: after the healer's upload the store holds %d bytes, record %q, %v", damages[i].name, len(got), sum, err)
		}
	}
	t.Logf("%d damaged objects: %d reads failed with EIO, %d with ENOENT, none served; s3 corruptions %d, moved to the quarantine %d; the writer served its good copies; a healer's uploads repaired every key",
		len(damages), eio, enoent, ts.Corruptions, ts.Quarantined)
}

// TestS3ReplicaLostMidRead: a SeaweedFS whose master keeps every object on
// both of its volume servers loses one (SIGKILL) while a node streams a
// large remote-only value, once for each volume server: the read
// completes with the value's bytes (the store serves the replica), and
// the copy kept in the local tiers is the value.
func TestS3ReplicaLostMidRead(t *testing.T) {
	const size = 96 << 20
	s := s3test.StartWith(t, s3test.Options{VolumeServers: 2})
	st := remotetest.NewS3(t, s)
	var keys []string
	var vals [][]byte
	for i := range 2 {
		d := content(18, 18, i, size+i)
		k := mounttest.Key(fmt.Sprintf("replicated %d", i))
		st.Put(t, k, d)
		keys, vals = append(keys, k), append(vals, d)
	}
	n := st.Node(t, "reader", mounttest.Opts{RemoteTimeout: remoteTimeout.String()})
	for i, k := range keys {
		f, err := os.Open(n.Path(k))
		if err != nil {
			t.Fatalf("volume server %d: open: %v", i, err)
		}
		head := make([]byte, 1<<20)
		if _, err := f.ReadAt(head, 0); err != nil || !bytes.Equal(head, vals[i][:len(head)]) {
			t.Fatalf("volume server %d: first MiB: %v", i, err)
		}
		s.KillVolume(i)
		sum, nr, err, took := timedRead("", f, 0)
		f.Close()
		if err != nil || sum != mounttest.Sum(vals[i]) {
			t.Fatalf("volume server %d killed mid-read: read %d bytes (sha256 %s, want %s) in %v, %v\n%s",
				i, nr, sum, mounttest.Sum(vals[i]), took, err, n.Stderr())
		}
		mounttest.Eventually(t, "the value to be kept locally", time.Minute, func() bool {
			w, err := mounttest.XattrE(n.Path(k), "user.flechefs.tiers")
			return err == nil && strings.Contains(w, "bolt")
		})
		if got, _, err, _ := timedRead(n.Path(k), nil, 0); err != nil || got != mounttest.Sum(vals[i]) {
			t.Errorf("volume server %d: the local copy reads %s, %v", i, got, err)
		}
		t.Logf("volume server %d killed after the first MiB of %d: the read completed with the right bytes in %v", i, size, took.Round(time.Millisecond))
		if err := s.Restart(); err != nil {
			t.Fatal(err)
		}
	}
	if c := n.TierStats("s3").Corruptions; c != 0 {
		t.Errorf("s3 corruptions %d", c)
	}
}
