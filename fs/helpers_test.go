package fs

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/mountinfo"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/memory"
)

// mounted records every mountpoint the tests used, so TestMain can check
// that none is left behind.
var (
	mountedMu sync.Mutex
	mounted   []string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if left := leftMounts(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: mounts left behind: %v\n", left)
		code = 1
	}
	os.Exit(code)
}

// leftMounts returns the test mountpoints still mounted.
func leftMounts() []string {
	mountedMu.Lock()
	defer mountedMu.Unlock()
	all, err := mountinfo.Read()
	if err != nil {
		return nil
	}
	var left []string
	for _, e := range all {
		if slices.Contains(mounted, e.Point) {
			left = append(left, e.Point)
		}
	}
	return left
}

// newStack returns a RAM-only stack, closed at the end of the test.
func newStack(t testing.TB) *tiers.Stack {
	t.Helper()
	mem, err := memory.New(memory.Options{Limit: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	st, err := tiers.NewStack([]tiers.Layer{{Tier: mem}}, tiers.StackOptions{SpoolDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("stack close: %v", err)
		}
	})
	return st
}

type testMount struct {
	dir   string
	spool string
	st    stack
	srv   *Server
}

func (m *testMount) path(name string) string { return m.dir + "/" + name }

// mountStack mounts st on a fresh directory and unmounts it at cleanup.
func mountStack(t testing.TB, st stack, opt Options) *testMount {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("these tests mount a real FUSE filesystem and need /dev/fuse: %v", err)
	}
	m := &testMount{dir: t.TempDir(), spool: t.TempDir(), st: st}
	if opt.SpoolDir == "" {
		opt.SpoolDir = m.spool
	}
	if opt.Logger == nil {
		level := slog.LevelWarn
		if os.Getenv("FLECHEFS_DEBUG") != "" { // FUSE request trace
			opt.Debug, level = true, slog.LevelDebug
		}
		opt.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	}
	srv, err := mount(m.dir, st, opt)
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	m.srv = srv
	mountedMu.Lock()
	mounted = append(mounted, srv.Mountpoint())
	mountedMu.Unlock()
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return m
}

// mountT mounts a fresh RAM-only stack.
func mountT(t testing.TB, opt Options) *testMount {
	t.Helper()
	return mountStack(t, newStack(t), opt)
}

var keySeq struct {
	sync.Mutex
	n int
}

// newKey returns a fresh valid key name.
func newKey() string {
	keySeq.Lock()
	defer keySeq.Unlock()
	keySeq.n++
	return digest.Of(fmt.Appendf(nil, "key %d %d", keySeq.n, time.Now().UnixNano())).String()
}

// pattern returns n bytes that differ with seed and position.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+i/4099) ^ seed
	}
	return b
}

// waitFor polls cond for up to d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// faultStack wraps a stack and replaces Publish (restic's mock style).
type faultStack struct {
	stack
	publishFn func(ctx context.Context, k digest.Key, b tiers.Blob, sum digest.Sum) (tiers.Info, error)
}

func (f *faultStack) Publish(ctx context.Context, k digest.Key, b tiers.Blob, sum digest.Sum) (tiers.Info, error) {
	if f.publishFn != nil {
		return f.publishFn(ctx, k, b, sum)
	}
	return f.stack.Publish(ctx, k, b, sum)
}

func mustEqual(t testing.TB, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("content differs: got %d bytes, want %d; first difference at %d", len(got), len(want), i)
	}
}

// writeStats reads the mount's write counters from .flechefs/stats.
func (m *testMount) writeStats(t testing.TB) WriteStats {
	t.Helper()
	b, err := os.ReadFile(m.path(ctlName + "/stats"))
	if err != nil {
		t.Fatal(err)
	}
	var st MountStats
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st.Writes
}
