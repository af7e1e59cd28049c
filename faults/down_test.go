package faults

// What a read of an entry held only by the remote answers while the remote
// is down.

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/flechefs/flechefs/internal/mounttest"
	"github.com/flechefs/flechefs/internal/remotetest"
)

// TestRemoteOnlyReadWhileDown: node a uploads entries; node b, whose local
// tiers hold none of them, loses the remote. A lookup of one of those names
// (stat, open, the shell's [ -e f ]) is a miss, ENOENT, answered without
// waiting on the server, so `[ -e f ] || compute > f` computes; an open of a
// name b had looked up before the outage (the kernel still holds it) cannot
// get the bytes and fails with EIO. After the server returns, b reads every
// entry. For every kind of remote.
func TestRemoteOnlyReadWhileDown(t *testing.T) {
	remotetest.Each(t, testRemoteOnlyReadWhileDown)
}

func testRemoteOnlyReadWhileDown(t *testing.T, startStore func(testing.TB) remotetest.Store) {
	srv := startStore(t)
	a := srv.Node(t, "writer", mounttest.Opts{RemoteTimeout: remoteTimeout.String()})
	b := srv.Node(t, "reader", mounttest.Opts{RemoteTimeout: remoteTimeout.String()})
	const names = 20
	want := map[string]string{}
	var keys []string
	for i := range names {
		d := content(21, 21, i, 4<<10+i)
		k := mounttest.Key(fmt.Sprintf("remote only %d", i))
		writeFile(t, a.Path(k), d, false)
		want[k] = mounttest.Sum(d)
		keys = append(keys, k)
	}
	// A large value (not fetched at lookup) that b looks up, and so the
	// kernel knows, before the outage.
	big := content(21, 22, 0, 3<<20)
	bigKey := mounttest.Key("remote only, looked up before")
	writeFile(t, a.Path(bigKey), big, false)
	a.Sync(2 * time.Minute)
	if _, err := os.Stat(b.Path(bigKey)); err != nil {
		t.Fatalf("b: stat of %s with the remote up: %v", bigKey[:12], err)
	}
	time.Sleep(1500 * time.Millisecond) // the reader the lookup kept is closed after a second

	srv.Stop()
	var took []time.Duration
	for i, k := range keys {
		start := time.Now()
		var err error
		switch i % 3 {
		case 0:
			_, err = os.Stat(b.Path(k))
		case 1:
			var f *os.File
			if f, err = os.Open(b.Path(k)); err == nil {
				f.Close()
			}
		case 2:
			// The shell's test, in a process of its own.
			if out, e := exec.Command("sh", "-c", `[ -e "$1" ]`, "sh", b.Path(k)).CombinedOutput(); e == nil {
				err = fmt.Errorf("[ -e ] found it: %s", out)
			} else if _, serr := os.Stat(b.Path(k)); serr != nil {
				err = serr
			}
		}
		took = append(took, time.Since(start))
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("b: lookup %d of a remote-only entry with the remote down: %v, want ENOENT", i, err)
		}
	}
	start := time.Now()
	f, err := os.Open(b.Path(bigKey))
	if err == nil {
		buf := make([]byte, 4096)
		_, err = f.Read(buf)
		f.Close()
	}
	bigTook := time.Since(start)
	if !errors.Is(err, syscall.EIO) {
		t.Errorf("b: open of a remote-only entry looked up before the outage: %v, want EIO", err)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	mounttest.Eventually(t, "b to read every entry after the server returned", 4*bound, func() bool {
		for k, sum := range want {
			if got, _, err := readAll(b.Path(k)); err != nil || got != sum {
				return false
			}
		}
		return true
	})
	slices.Sort(took)
	t.Logf("remote down: %d lookups of remote-only names answered ENOENT, median %v, slowest %v (remote_timeout %v); an open of a name looked up before the outage answered EIO after %v",
		len(took), took[len(took)/2].Round(time.Microsecond), took[len(took)-1].Round(time.Microsecond), remoteTimeout, bigTook.Round(time.Microsecond))
}
