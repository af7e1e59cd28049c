package bolt

import (
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

func TestConformance(t *testing.T) {
	tiertest.Run(t, func(t *testing.T) tiers.Tier {
		return newTier(t, Options{Limit: 512 << 20})
	}, tiertest.Options{
		Reopen: func(t *testing.T, tr tiers.Tier) tiers.Tier {
			old := tr.(*Tier)
			if err := old.Close(); err != nil {
				t.Fatal(err)
			}
			again, err := Open(old.Path(), Options{Limit: old.limit, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			// Closed before newTier's cleanup checks the file.
			t.Cleanup(func() { again.Close() })
			return again
		},
		NewBounded: func(t *testing.T, limit int64) tiers.Tier {
			return newTier(t, Options{Limit: limit})
		},
	})
}

// newTier opens a tier in a new directory. Cleanup closes it (a second
// Close is harmless), reopens the file and runs Check.
func newTier(t testing.TB, opt Options) *Tier {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sub", "cache.db")
	if opt.Logger == nil {
		opt.Logger = testLogger(t)
	}
	tr, err := Open(path, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		tr.Close()
		checkFile(t, path, opt)
	})
	return tr
}

// checkFile opens the database at path and runs Check.
func checkFile(t testing.TB, path string, opt Options) {
	t.Helper()
	tr, err := Open(path, opt)
	if err != nil {
		t.Errorf("reopen for check: %v", err)
		return
	}
	defer tr.Close()
	if err := tr.Check(); err != nil {
		t.Errorf("check: %v", err)
	}
}

// testLogger logs through t.Log, shown with -v or when the test fails.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
