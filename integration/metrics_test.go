package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flechefs/flechefs/internal/sshdtest"
)

// scrape reads the mount's /metrics and returns each sample's value by its
// name and labels as printed ("flechefs_tier_hits_total{tier=\"ram\"}").
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape: %s\n%s", resp.Status, b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("scrape: bad line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestMetrics scrapes a live mount with a remote and checks that the
// values move as a user's reads and writes happen: a write publishes and
// uploads, a lookup of an absent name is a miss of every tier, a read
// after a restart is a hit of the bbolt tier, the latency histograms
// count the FUSE requests and the tiers' operations.
func TestMetrics(t *testing.T) {
	srv := sshdtest.Start(t)
	addr := freePort(t)
	n := newNode(t, "metrics", srv, nodeOpts{extra: fmt.Sprintf("metrics = %q", addr)})
	before := scrape(t, addr)
	for _, name := range []string{
		`flechefs_tier_up{tier="ram"}`, `flechefs_tier_up{tier="bolt"}`, `flechefs_tier_up{tier="sftp"}`,
		`flechefs_upload_queue_entries`, `flechefs_tier_limit_bytes{tier="ram"}`, `go_goroutines`,
	} {
		if _, ok := before[name]; !ok {
			t.Errorf("no %s in the first scrape", name)
		}
	}
	if v := before[`flechefs_tier_up{tier="sftp"}`]; v != 1 {
		t.Errorf("sftp up = %v, want 1", v)
	}

	k := key("metrics")
	if err := os.WriteFile(n.path(k), []byte("a value\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		os.Stat(n.path(key(fmt.Sprint("absent ", i))))
	}
	n.sync(30 * time.Second)
	after := scrape(t, addr)
	moved := func(name string, by float64) {
		t.Helper()
		if d := after[name] - before[name]; d < by {
			t.Errorf("%s moved by %v, want at least %v (before %v, after %v)", name, d, by, before[name], after[name])
		}
	}
	moved(`flechefs_published_total`, 1)
	moved(`flechefs_uploads_total`, 1)
	moved(`flechefs_uploaded_bytes_total`, 8)
	moved(`flechefs_tier_misses_total{tier="ram"}`, 3)
	moved(`flechefs_tier_misses_total{tier="sftp"}`, 3)
	moved(`flechefs_fuse_request_duration_seconds_count{errno="0",op="create"}`, 1)
	moved(`flechefs_fuse_request_duration_seconds_count{errno="2",op="lookup"}`, 3)
	moved(`flechefs_tier_operation_duration_seconds_count{op="upload",result="ok",tier="sftp"}`, 1)
	if v := after[`flechefs_upload_queue_entries`]; v != 0 {
		t.Errorf("queue after sync: %v", v)
	}

	// After a restart the value comes from bbolt: a miss of RAM, a hit of bolt.
	n.restart()
	before = scrape(t, addr)
	if b, err := os.ReadFile(n.path(k)); err != nil || string(b) != "a value\n" {
		t.Fatalf("read after restart: %q %v", b, err)
	}
	after = scrape(t, addr)
	moved(`flechefs_tier_hits_total{tier="bolt"}`, 1)
	moved(`flechefs_tier_misses_total{tier="ram"}`, 1)
	moved(`flechefs_tier_operation_duration_seconds_count{op="open",result="ok",tier="bolt"}`, 1)
	moved(`flechefs_fuse_request_duration_seconds_count{errno="0",op="read"}`, 1)
}
