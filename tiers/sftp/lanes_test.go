package sftp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"testing/iotest"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// fetchAll reads k with WriteTo, as the stack's fetch does.
func fetchAll(t *testing.T, tr *Tier, k digest.Key) []byte {
	t.Helper()
	r, err := tr.Open(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var buf bytes.Buffer
	if _, err := r.(io.WriterTo).WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// laneTier opens a tier that uses lanes on loopback too.
func laneTier(t *testing.T, opt Options) *Tier {
	tr := open(t, opt)
	tr.laneRTT = 0
	return tr
}

// A large fetch reads through the lanes, and what it writes is the value.
func TestFetchThroughLanes(t *testing.T) {
	s := sshdtest.Start(t)
	tr := laneTier(t, options(s))
	k := tiertest.Key("lanes")
	b := tiertest.Data(5, 24<<20+12345)
	tiertest.Put(t, tr, k, b)
	for i := range 3 {
		before := tr.laneChunks.Load()
		if !bytes.Equal(fetchAll(t, tr, k), b) {
			t.Fatalf("fetch %d differs", i)
		}
		// The first fetch starts the lanes; they may come up late.
		if n := tr.laneChunks.Load() - before; n == 0 && i > 0 {
			t.Fatalf("fetch %d read no chunk through a lane", i)
		}
	}
	if n := len(tr.cur.lanes.clients); n != defaultChannels-1 {
		t.Fatalf("%d lanes, want %d", n, defaultChannels-1)
	}
	// A value just under the threshold, and channels = 1: no lanes.
	small := tiertest.Key("no lanes")
	tiertest.Put(t, tr, small, b[:laneMin])
	opt := options(s)
	opt.URL = tr.opt.URL
	opt.Channels = 1
	one := laneTier(t, opt)
	before := tr.laneChunks.Load()
	if !bytes.Equal(fetchAll(t, tr, small), b[:laneMin]) || !bytes.Equal(fetchAll(t, one, k), b) {
		t.Fatal("fetch differs")
	}
	if tr.laneChunks.Load() != before || one.laneChunks.Load() != 0 {
		t.Fatal("lanes used below the threshold or with channels = 1")
	}
}

// A lane whose file is not the main handle's (removed and uploaded again
// after the open) is not used: the fetch reads what the open found.
func TestLaneRefusesReplacedFile(t *testing.T) {
	s := sshdtest.Start(t)
	tr := laneTier(t, options(s))
	k := tiertest.Key("replaced")
	b := tiertest.Data(6, 48<<20)
	tiertest.Put(t, tr, k, b)
	fetchAll(t, tr, k) // the lanes are up
	r, err := tr.Open(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.(*reader).waitHead(); err != nil {
		t.Fatal(err)
	}
	// Same size, other bytes, another time, renamed over the name.
	p := filepath.Join(tr.rem.root, k.String())
	other := tiertest.Data(7, int64(len(b)))
	if err := os.WriteFile(p+".new", other, 0o644); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(p+".new", later, later); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p+".new", p); err != nil {
		t.Fatal(err)
	}
	before := tr.laneChunks.Load()
	var buf bytes.Buffer
	if _, err := r.(io.WriterTo).WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), b) {
		t.Fatal("the fetch mixed in the replacing file")
	}
	if n := tr.laneChunks.Load() - before; n != 0 {
		t.Fatalf("%d chunks read through lanes that opened another file", n)
	}
}

// A server that allows one session per connection: the lanes do not start
// and fetches read through the main session.
func TestLanesRefusedByServer(t *testing.T) {
	s := sshdtest.StartWith(t, sshdtest.Options{MaxSessions: 1})
	tr := laneTier(t, options(s))
	k := tiertest.Key("one session")
	b := tiertest.Data(8, 12<<20)
	tiertest.Put(t, tr, k, b)
	for range 2 {
		if !bytes.Equal(fetchAll(t, tr, k), b) {
			t.Fatal("fetch differs")
		}
	}
	if n := tr.laneChunks.Load(); n != 0 {
		t.Fatalf("%d chunks through lanes the server refused", n)
	}
	works(t, tr, "after")
}

// Lanes are for long links: a fetch on loopback reads through the main
// session only, one over a link of 4 ms round trip through the lanes.
func TestLanesOnlyOnLongLinks(t *testing.T) {
	s := sshdtest.Start(t)
	direct, slow := slowTiers(t, s, 2*time.Millisecond, defaultChannels)
	k := tiertest.Key("long link")
	b := tiertest.Data(9, 24<<20)
	tiertest.Put(t, direct, k, b)
	for range 2 {
		if !bytes.Equal(fetchAll(t, direct, k), b) || !bytes.Equal(fetchAll(t, slow, k), b) {
			t.Fatal("fetch differs")
		}
	}
	// The rule, whatever this machine measured: a loaded CI machine can
	// make even loopback take 2 ms.
	for _, c := range []struct {
		name string
		tr   *Tier
	}{{"loopback", direct}, {"4 ms link", slow}} {
		rtt, n := c.tr.cur.rtt, c.tr.laneChunks.Load()
		if (n > 0) != (rtt >= laneRTT) {
			t.Errorf("%s: round trip %v, %d chunks through lanes", c.name, rtt, n)
		}
		t.Logf("%s: round trip %v, %d chunks through lanes", c.name, rtt, n)
	}
	if slow.cur.rtt < laneRTT {
		t.Fatalf("the 4 ms link measured %v", slow.cur.rtt)
	}
}

// A large upload writes through the lanes too; the value reads back whole,
// and a source that fails half-way leaves nothing behind.
func TestPutThroughLanes(t *testing.T) {
	s := sshdtest.Start(t)
	tr := laneTier(t, options(s))
	b := tiertest.Data(10, 40<<20+777)
	for i := range 2 {
		k := tiertest.Key(fmt.Sprint("lane put ", i))
		before := tr.laneChunks.Load()
		tiertest.Put(t, tr, k, b)
		if n := tr.laneChunks.Load() - before; n == 0 && i > 0 {
			t.Fatalf("put %d wrote no chunk through a lane", i)
		}
		if !bytes.Equal(tiertest.Get(t, tr, k), b) {
			t.Fatalf("put %d reads back different", i)
		}
	}
	k := tiertest.Key("lane put fails")
	src := io.MultiReader(bytes.NewReader(b[:20<<20]), iotest.ErrReader(errors.New("boom")))
	if _, err := tr.Put(context.Background(), k, src, tiers.Meta{Size: int64(len(b))}); err == nil {
		t.Fatal("put of a failing source succeeded")
	}
	noEntry(t, tr, k)
	eventuallyNoTemps(t, tr)
}
