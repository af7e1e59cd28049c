package integration

import (
	"crypto/rand"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/flechefs/flechefs/internal/mounttest"
	"github.com/flechefs/flechefs/internal/sshdtest"
)

// BenchmarkReadAfterListing reads 300 remote 16 KiB entries on a fresh
// mount, once after listing the directory (READDIRPLUS makes their inodes
// from the remote listing, which has no hashes) and once on another fresh
// mount without listing, and reports both times per file. They should be
// about equal: an open of a listed entry must not cost another lookup.
//
//	go test -run '^$' -bench ReadAfterListing -benchtime 3x ./integration/
func BenchmarkReadAfterListing(b *testing.B) {
	srv := sshdtest.Start(b)
	writer := mounttest.NewNode(b, "writer", srv, mounttest.Opts{})
	var keys []string
	for i := range 300 {
		k := mounttest.Key(fmt.Sprint("listed ", i))
		v := make([]byte, 16<<10)
		rand.Read(v)
		if err := os.WriteFile(writer.Path(k), v, 0o644); err != nil {
			b.Fatal(err)
		}
		keys = append(keys, k)
	}
	writer.Sync(time.Minute)
	readAll := func(n *mounttest.Node) time.Duration {
		os.Stat(n.Path(mounttest.Key("connect first"))) // the dial is not timed
		start := time.Now()
		for _, k := range keys {
			if _, err := os.ReadFile(n.Path(k)); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start)
	}
	var listed, unlisted time.Duration
	runs := 0
	for b.Loop() {
		l := mounttest.NewNode(b, fmt.Sprint("listed", runs), srv, mounttest.Opts{})
		u := mounttest.NewNode(b, fmt.Sprint("unlisted", runs), srv, mounttest.Opts{})
		os.Stat(l.Path(mounttest.Key("connect first")))
		if _, err := os.ReadDir(l.Mnt); err != nil {
			b.Fatal(err)
		}
		listed += readAll(l)
		unlisted += readAll(u)
		runs++
	}
	per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(runs*len(keys)) }
	b.ReportMetric(per(listed), "µs/listed-file")
	b.ReportMetric(per(unlisted), "µs/unlisted-file")
}
