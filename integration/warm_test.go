package integration

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/flechefs/flechefs/internal/sshdtest"
)

// flechefs warm on a fresh mount fetches the named entries from the remote
// into its local tiers: with the server stopped afterwards, every one is
// still read, whole. A key no tier holds is named, and the exit status is
// 1; keys come from the arguments or the standard input.
func TestWarm(t *testing.T) {
	srv := sshdtest.Start(t)
	a := newNode(t, "A", srv, nodeOpts{})
	values := map[string][]byte{}
	var keys []string
	for i := range 40 {
		size := 3000 + i*100
		if i%8 == 0 {
			size = 2<<20 + i // larger than a lookup fetches at once
		}
		v := make([]byte, size)
		rand.Read(v)
		k := key(fmt.Sprint("warm-", i))
		values[k] = v
		keys = append(keys, k)
		if err := os.WriteFile(a.path(k), v, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	a.sync(time.Minute)

	b := newNode(t, "B", srv, nodeOpts{})
	missing := key("warm-missing")
	out, err := b.flechefs("warm", b.mnt, missing, keys[0], keys[1])
	if code := exitCode(err); code != 1 || !strings.Contains(out, missing+": missing") {
		t.Fatalf("warm with a missing key: exit %d, output:\n%s", code, out)
	}
	if out, err := b.FlechefsStdin(strings.Join(keys, "\n")+"\n", "warm", b.mnt); err != nil {
		t.Fatalf("warm: %v\n%s", err, out)
	} else if !strings.Contains(out, fmt.Sprintf("%d of %d entries local", len(keys), len(keys))) {
		t.Fatalf("warm output:\n%s", out)
	}
	for _, k := range keys {
		if x := xattr(t, b.path(k), "user.flechefs.local"); x != "yes" {
			t.Fatalf("%s after warm: user.flechefs.local=%q", k, x)
		}
	}
	srv.Stop()
	for _, k := range keys {
		got, err := os.ReadFile(b.path(k))
		if err != nil || !bytes.Equal(got, values[k]) {
			t.Fatalf("read of warmed %s with the server stopped: %v (%d bytes of %d)", k, err, len(got), len(values[k]))
		}
	}
}

// exitCode is the exit status of a command's error, 0 for none, -1 if it
// did not exit.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}
