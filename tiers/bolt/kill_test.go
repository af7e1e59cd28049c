package bolt

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

const (
	killEnvPath  = "FLECHEFS_BOLT_KILL_PATH"
	killEnvRound = "FLECHEFS_BOLT_KILL_ROUND"
	killEnvPause = "FLECHEFS_BOLT_KILL_PAUSE"
	// The child stages 1 MiB (16 chunks of 64 KiB) per transaction, so
	// that a value of killBig bytes takes three staging transactions and a
	// publishing one without generating tens of MiB under the race detector.
	killChunk = 64 << 10
	killStage = 1 << 20
	killBig   = 3*killStage + 123
)

// killSizes is the cycle of value sizes the child puts.
var killSizes = []int64{1000, 70_000, killBig, 300_000, 0, 700_000, 16 << 10}

func killKey(round, i int) digest.Key { return tiertest.Key(fmt.Sprintf("kill-%d-%d", round, i)) }

func killData(round, i int) []byte {
	return tiertest.Data(uint64(round<<20|i), killSizes[i%len(killSizes)])
}

// TestKillChild is the process TestKillAndReopen kills: it puts values in a
// loop and reports on stdout when each starts, stages and ends.
func TestKillChild(t *testing.T) {
	path := os.Getenv(killEnvPath)
	if path == "" {
		t.Skip("helper process of TestKillAndReopen")
	}
	round, _ := strconv.Atoi(os.Getenv(killEnvRound))
	tr, err := Open(path, Options{Limit: 1 << 30, ChunkSize: killChunk})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	tr.stage = killStage
	pause, current := os.Getenv(killEnvPause), 0
	testHookStaged = func(id uint64, chunks uint32) {
		fmt.Println("staged", id, chunks)
		if current >= len(killSizes) && fmt.Sprint(chunks) == pause {
			time.Sleep(5 * time.Second) // killed meanwhile
		}
	}
	for i := 0; i < 1000; i++ {
		current = i
		b := killData(round, i)
		fmt.Println("begin", i, len(b))
		if err := put(t, tr, killKey(round, i), b, i%2 == 0); err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		fmt.Println("done", i)
	}
	os.Exit(3) // not killed: the parent fails
}

// TestKillAndReopen kills a process that is putting values with SIGKILL, at
// several points, and checks what a new Open finds: a consistent database,
// every completed put (with the right content), no half put, no staged
// chunks left behind.
func TestKillAndReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kill.db")
	done := map[digest.Key]bool{}
	// When to kill, once the second big put has begun: after its first staging
	// transaction (16 chunks), after its last (48: only the publishing
	// transaction is left), or after a delay. The child pauses after the
	// staging transaction it is to be killed at.
	whens := []string{"16", "48", "delay"}
	for round, when := range whens {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKillChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), killEnvPath+"="+path, killEnvRound+"="+strconv.Itoa(round), killEnvPause+"="+when)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		timer := time.AfterFunc(60*time.Second, func() { cmd.Process.Kill() })
		var bigs int
		var killed bool
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 0 || killed {
				continue
			}
			switch f[0] {
			case "begin":
				if n, _ := strconv.Atoi(f[2]); n == killBig {
					bigs++
					if bigs == 2 && when == "delay" {
						time.AfterFunc(20*time.Millisecond, func() { cmd.Process.Kill() })
						killed = true
					}
				}
			case "staged":
				if bigs == 2 && f[2] == when {
					cmd.Process.Kill()
					killed = true
				}
			case "done":
				i, _ := strconv.Atoi(f[1])
				done[killKey(round, i)] = true
			case "error":
				t.Fatalf("child: %s", sc.Text())
			}
		}
		err = cmd.Wait()
		timer.Stop()
		if !killed {
			t.Fatalf("round %d: child ended before it was killed: %v", round, err)
		}
		t.Logf("round %d (kill at %s): %v, %d puts done so far", round, when, err, len(done))
		if when == "16" {
			if n := countStaging(t, path); n == 0 {
				t.Fatalf("round %d: no staged put in the database the child left", round)
			}
		}
	}

	tr, err := Open(path, Options{Limit: 1 << 30, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.Check(); err != nil {
		t.Fatal(err)
	}
	if n := stagingRecords(tr.db); n != 0 {
		t.Fatalf("%d staged puts left after open", n)
	}
	// Every entry is one the child put, with the right content.
	want := map[digest.Key][]byte{}
	for round := range whens {
		for i := range 100 {
			want[killKey(round, i)] = nil
		}
	}
	found := map[digest.Key]bool{}
	var infos []tiers.Info
	if err := tr.List(ctx, func(in tiers.Info) error { infos = append(infos, in); return nil }); err != nil {
		t.Fatal(err)
	}
	for _, in := range infos {
		if _, ok := want[in.Key]; !ok {
			t.Fatalf("unknown entry %s", in.Key)
		}
		got := tiertest.Get(t, tr, in.Key)
		if digest.Of(got) != in.Sum {
			t.Fatalf("entry %s: content sha256 %s, recorded %s", in.Key, digest.Of(got), in.Sum)
		}
		found[in.Key] = true
	}
	for round := range whens {
		for i := range 100 {
			k := killKey(round, i)
			if !found[k] {
				continue
			}
			if b := killData(round, i); digest.Of(b) != func() digest.Sum { s, _ := tr.Stat(ctx, k); return s.Sum }() {
				t.Fatalf("entry %d of round %d has other content", i, round)
			}
			if tr.IsPending(k) != (i%2 == 0) {
				t.Fatalf("entry %d of round %d: pending %v", i, round, tr.IsPending(k))
			}
		}
	}
	for k := range done {
		if !found[k] {
			t.Fatalf("completed put %s is missing", k)
		}
	}
	checkUsage(t, tr)
	t.Logf("%d entries after %d kills (%d puts had returned): %+v", len(found), len(whens), len(done), tr.Usage())
}

// countStaging opens the (closed) database with bbolt and counts staging records.
func countStaging(t *testing.T, path string) int {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	return stagingRecords(db)
}

func stagingRecords(db *bolt.DB) int {
	n := 0
	db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketStaging); b != nil {
			n = b.Stats().KeyN
		}
		return nil
	})
	return n
}
