package integration

// Publishing at the last close: a value becomes its key's when
// the last descriptor of its open file is gone, never at the close of one
// descriptor; a writer killed by a signal, or (unless publish_failed) one
// exiting with a failure status, publishes nothing; once the last close
// returned every process sees the whole value; fsync publishes at once;
// racing writers of one key: the first wins, the others' opens succeed and
// their values are dropped. fs/doc.go states the rules.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flechefs/flechefs/internal/delayproxy"
	"github.com/flechefs/flechefs/internal/mounttest"
	"github.com/flechefs/flechefs/internal/sshdtest"
)

// writeCounts is the "writes" object of .flechefs/stats.
type writeCounts struct {
	Published int64            `json:"published"`
	Scratch   int64            `json:"scratch"`
	Dropped   map[string]int64 `json:"dropped"`
}

// writesE reads the "writes" object of the node's stats.
func writesE(n *node) (writeCounts, error) {
	b, err := os.ReadFile(filepath.Join(n.mnt, ".flechefs", "stats"))
	if err != nil {
		return writeCounts{}, err
	}
	var st struct {
		Writes *writeCounts `json:"writes"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return writeCounts{}, fmt.Errorf("stats JSON: %v\n%s", err, b)
	}
	if st.Writes == nil || st.Writes.Dropped == nil {
		return writeCounts{}, fmt.Errorf(`stats have no "writes" object with "dropped":\n%s`, b)
	}
	return *st.Writes, nil
}

func writes(t *testing.T, n *node) writeCounts {
	t.Helper()
	w, err := writesE(n)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// dropRose waits until the drop counter reason is above before (the drop
// may be counted at RELEASE, which the kernel sends after close returned).
func dropRose(t *testing.T, n *node, reason string, before int64, what string) {
	t.Helper()
	var last writeCounts
	deadline := time.Now().Add(10 * time.Second)
	for {
		last = writes(t, n)
		if last.Dropped[reason] > before {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the %q drop counter stayed at %d (writes %+v)\ndaemon:\n%s", what, reason, before, last, n.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// absent fails unless stat of path says ENOENT.
func absent(t *testing.T, path, what string) {
	t.Helper()
	st, err := os.Stat(path)
	if !errors.Is(err, syscall.ENOENT) {
		b, _ := os.ReadFile(path)
		t.Errorf("%s: stat of %s: %v, want ENOENT (size %d, read %q)", what, filepath.Base(path)[:12], err, size(st), trunc(b))
	}
}

func size(st os.FileInfo) int64 {
	if st == nil {
		return -1
	}
	return st.Size()
}

func trunc(b []byte) string {
	if len(b) > 60 {
		return string(b[:60]) + "..."
	}
	return string(b)
}

// listed reports whether readdir of the mount lists name.
func listed(t *testing.T, n *node, name string) bool {
	t.Helper()
	ents, err := os.ReadDir(n.mnt)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == name {
			return true
		}
	}
	return false
}

// python3 runs a Python script with args under a liveness deadline and
// returns its stdout; it fails the test on a non-zero exit.
func python3(t *testing.T, n *node, script string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "python3", append([]string{"-c", script}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python: %v\nstdout:\n%s\nstderr:\n%s\ndaemon:\n%s", err, out, stderr.String(), n.stderr)
	}
	return string(out)
}

// childOf returns the pid of a child of ppid whose command name is comm,
// waiting for it to appear.
func childOf(t *testing.T, ppid int, comm string) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		stats, _ := filepath.Glob("/proc/[0-9]*/stat")
		for _, p := range stats {
			b, err := os.ReadFile(p)
			if err != nil {
				continue
			}
			// pid (comm) state ppid ...
			open, close := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
			if open < 0 || close < open {
				continue
			}
			f := strings.Fields(string(b[close+1:]))
			if len(f) < 2 || string(b[open+1:close]) != comm || f[1] != strconv.Itoa(ppid) {
				continue
			}
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b[:open])))
			return pid
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no child %q of %d after 30s", comm, ppid)
	return 0
}

// shWriter starts `sh -c script sh path` with the script's output going to
// stderrBuf, and a deadline for liveness.
func shWriter(t *testing.T, script string, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command("sh", append([]string{"-c", script, "sh"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	return cmd, &out
}

// waitCmd waits for cmd, at most 60 s, and returns its error.
func waitCmd(t *testing.T, cmd *exec.Cmd) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%v still running after 60s", cmd.Args)
		return nil
	}
}

// A writer group whose member is killed by a signal while it holds the
// descriptor publishes nothing, even though the group goes on writing and
// ends normally: the name is absent once the group has ended, stays absent,
// and the drop is counted as "killed". The same group unharmed publishes
// its whole output.
func TestCloseKilledWriterGroup(t *testing.T) {
	n := newNode(t, "killed", nil, nodeOpts{})

	// Unharmed, the group publishes everything it wrote, by the time the
	// shell has exited.
	ok := key("group unharmed")
	cmd, out := shWriter(t, `{ echo a; sleep 0.2; echo b; } > "$1"`, n.path(ok))
	if err := waitCmd(t, cmd); err != nil {
		t.Fatalf("unharmed group: %v %s", err, out)
	}
	if got, err := os.ReadFile(n.path(ok)); err != nil || string(got) != "a\nb\n" {
		t.Fatalf("unharmed group: read %q, %v; want \"a\\nb\\n\"\ndaemon:\n%s", got, err, n.stderr)
	}

	cases := []struct {
		name   string
		script string
		kill   syscall.Signal // sent to the group's sleep, 0 for none
	}{
		{"sleep SIGKILLed", `{ echo a; sleep 5; echo b; } > "$1"`, syscall.SIGKILL},
		{"sleep SIGTERMed", `{ echo a; sleep 5; echo b; } > "$1"`, syscall.SIGTERM},
		{"timeout 0.3 sleep 5", `{ echo a; timeout 0.3 sleep 5; echo b; } > "$1"`, 0},
		{"subshell, sleep SIGKILLed", `( echo a; sleep 5; echo b ) > "$1"`, syscall.SIGKILL},
	}
	var names []string
	for _, c := range cases {
		k := key("killed group " + c.name)
		names = append(names, k)
		before := writes(t, n).Dropped["killed"]
		cmd, out := shWriter(t, c.script, n.path(k))
		if c.kill != 0 {
			parent := cmd.Process.Pid
			if strings.HasPrefix(c.script, "(") {
				parent = childOf(t, parent, "sh") // the subshell
			}
			syscall.Kill(childOf(t, parent, "sleep"), c.kill)
		}
		err := waitCmd(t, cmd)
		t.Logf("%s: the group exited with %v, output %q", c.name, err, out)
		absent(t, n.path(k), c.name+", after the group ended")
		dropRose(t, n, "killed", before, c.name)
	}
	// Still absent once every wait bound and the negative TTL (1 s) have
	// passed, and not listed.
	time.Sleep(1500 * time.Millisecond)
	for i, k := range names {
		absent(t, n.path(k), cases[i].name+", 1.5 s later")
		if listed(t, n, k) {
			t.Errorf("%s: readdir lists the name", cases[i].name)
		}
	}
}

// A writer exiting with a failure status drops its value (failed_exit),
// unless the config says publish_failed = true.
func TestCloseFailedExit(t *testing.T) {
	const script = `sh -c 'echo partial; exit 3' > "$1"`
	n := newNode(t, "failed", nil, nodeOpts{})
	k := key("failed exit")
	before := writes(t, n).Dropped["failed_exit"]
	cmd, out := shWriter(t, script, n.path(k))
	err := waitCmd(t, cmd)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Fatalf("the writer exited with %v, want status 3: %s", err, out)
	}
	absent(t, n.path(k), "failed exit")
	dropRose(t, n, "failed_exit", before, "failed exit")
	time.Sleep(1500 * time.Millisecond)
	absent(t, n.path(k), "failed exit, 1.5 s later")

	// An exit with status 0 from the same kind of writer publishes.
	k0 := key("exit 0")
	cmd, out = shWriter(t, `sh -c 'echo whole; exit 0' > "$1"`, n.path(k0))
	if err := waitCmd(t, cmd); err != nil {
		t.Fatalf("exit 0 writer: %v %s", err, out)
	}
	if got, err := os.ReadFile(n.path(k0)); err != nil || string(got) != "whole\n" {
		t.Fatalf("exit 0 writer: read %q, %v", got, err)
	}

	p := newNode(t, "publish-failed", nil, nodeOpts{extra: "publish_failed = true"})
	pub := writes(t, p)
	cmd, out = shWriter(t, script, p.path(k))
	err = waitCmd(t, cmd)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Fatalf("publish_failed: the writer exited with %v, want status 3: %s", err, out)
	}
	if got, err := os.ReadFile(p.path(k)); err != nil || string(got) != "partial\n" {
		t.Fatalf("publish_failed = true: read %q, %v; want \"partial\\n\"\ndaemon:\n%s", got, err, p.stderr)
	}
	if w := writes(t, p); w.Dropped["failed_exit"] != pub.Dropped["failed_exit"] || w.Published <= pub.Published {
		t.Fatalf("publish_failed = true: writes before %+v, after %+v", pub, w)
	}
}

// pyHolder writes to a name and keeps its descriptor open: mode "fsync"
// writes the value in two writes, fsyncs, tries one more write (printing
// its errno) and prints "synced"; "whole" writes the value and prints
// "written"; "half" writes half of it and prints "written".
const pyHolder = `
import errno, os, sys, time
path, src, mode = sys.argv[1], sys.argv[2], sys.argv[3]
with open(src, "rb") as f:
    v = f.read()
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
h = len(v) // 2
os.write(fd, v[:h])
if mode != "half":
    os.write(fd, v[h:])
if mode == "fsync":
    os.fsync(fd)
    try:
        os.write(fd, b"more")
        print("write after fsync: ok", flush=True)
    except OSError as e:
        print("write after fsync:", errno.errorcode[e.errno], flush=True)
    print("synced", flush=True)
else:
    print("written", flush=True)
time.sleep(600)
`

// startHolder starts pyHolder and waits for its line want.
func startHolder(t *testing.T, n *node, k, src, mode, want string) (*exec.Cmd, []string) {
	t.Helper()
	cmd := exec.Command("python3", "-c", pyHolder, n.path(k), src, mode)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var got []string
	timeout := time.After(60 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				cmd.Wait()
				t.Fatalf("%s writer exited: %q\n%s\ndaemon:\n%s", mode, got, stderr.String(), n.stderr)
			}
			got = append(got, l)
			if l == want {
				go func() {
					for range lines {
					}
				}()
				return cmd, got
			}
		case <-timeout:
			t.Fatalf("%s writer: no %q after 60s: %q\n%s", mode, want, got, stderr.String())
		}
	}
}

// absentOrWhole fails when name holds anything but want.
func absentOrWhole(path string, want []byte) (present bool, err error) {
	got, err := os.ReadFile(path)
	if errors.Is(err, syscall.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !bytes.Equal(got, want) {
		return true, fmt.Errorf("holds %d bytes %q, want %d bytes %q", len(got), trunc(got), len(want), trunc(want))
	}
	return true, nil
}

// The daemon killed (SIGKILL) while writers hold their descriptors: an
// fsync'ed value is there after the restart, whole; a value written
// without fsync and never closed is absent (or whole), never partial. Then
// trials killing the daemon at random moments under shells writing small
// files: after each restart every name holds exactly its bytes or is
// absent.
func TestCloseDaemonKilled(t *testing.T) {
	n := newNode(t, "crash", nil, nodeOpts{})
	dir := t.TempDir()
	vals := map[string][]byte{}
	src := map[string]string{}
	for _, mode := range []string{"fsync", "whole", "half"} {
		v := make([]byte, 300<<10+7)
		(&patternReader{off: int64(len(mode)) << 20, size: 1 << 40}).Read(v)
		copy(v, mode)
		vals[mode] = v
		src[mode] = filepath.Join(dir, mode)
		if err := os.WriteFile(src[mode], v, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	kf, kw, kh := key("crash fsync"), key("crash whole"), key("crash half")
	cf, lf := startHolder(t, n, kf, src["fsync"], "fsync", "synced")
	if len(lf) < 2 || lf[0] != "write after fsync: EIO" {
		t.Errorf("fsync writer: %q, want a write after fsync to fail with EIO", lf)
	}
	// fsync published it: every process sees it now.
	if got, err := os.ReadFile(n.path(kf)); err != nil || !bytes.Equal(got, vals["fsync"]) {
		t.Fatalf("after fsync, before close: read %d bytes, %v; want the whole value\ndaemon:\n%s", len(got), err, n.stderr)
	}
	cw, _ := startHolder(t, n, kw, src["whole"], "whole", "written")
	ch, _ := startHolder(t, n, kh, src["half"], "half", "written")
	absent(t, n.path(kw), "written, not closed")
	absent(t, n.path(kh), "half written, not closed")

	n.kill()
	for _, c := range []*exec.Cmd{cf, cw, ch} {
		c.Process.Kill()
		c.Wait()
	}
	n.start()
	if got, err := os.ReadFile(n.path(kf)); err != nil || !bytes.Equal(got, vals["fsync"]) {
		t.Fatalf("fsync'ed value after the crash: read %d bytes, %v; want %d\ndaemon:\n%s", len(got), err, len(vals["fsync"]), n.stderr)
	}
	for _, c := range []struct{ k, mode string }{{kw, "whole"}, {kh, "half"}} {
		present, err := absentOrWhole(n.path(c.k), vals[c.mode])
		if err != nil {
			t.Errorf("%s writer's name after the crash: %v", c.mode, err)
		}
		if present && c.mode == "half" {
			t.Errorf("the half writer's name is present after the crash")
		}
		t.Logf("%s writer, never closed: present after the crash: %v", c.mode, present)
	}

	// Crashes at random moments while shells write: each line of a shell's
	// input is "KEY PART1 PART2", written as { printf PART1; printf PART2; } > KEY.
	// The shells work in the mount (cwd), so after the crash they hit the
	// dead mount, not the directory under it.
	const shells, perShell, trials = 3, 400, 4
	want := map[string][]byte{}
	for trial := range trials {
		var cmds []*exec.Cmd
		for s := range shells {
			var list bytes.Buffer
			for i := range perShell {
				tag := fmt.Sprintf("t%d-s%d-i%d", trial, s, i)
				p1 := tag + "-first-" + strings.Repeat("x", 100+i%300)
				p2 := tag + "-second-" + strings.Repeat("y", 50+i%200)
				k := key("crash trial " + tag)
				want[k] = []byte(p1 + p2)
				fmt.Fprintf(&list, "%s %s %s\n", k, p1, p2)
			}
			cmd := exec.Command("sh", "-c", `while read k a b; do { printf '%s' "$a"; printf '%s' "$b"; } > "$k" 2>/dev/null; done`)
			cmd.Dir = n.mnt
			cmd.Stdin = bytes.NewReader(list.Bytes())
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			cmds = append(cmds, cmd)
		}
		time.Sleep(time.Duration(50+rand.IntN(450)) * time.Millisecond)
		n.kill()
		for _, c := range cmds {
			c.Process.Kill()
			c.Wait()
		}
		n.start()
		present := 0
		for k, v := range want {
			ok, err := absentOrWhole(n.path(k), v)
			if err != nil {
				t.Errorf("trial %d: %s: %v", trial, k[:12], err)
			}
			if ok {
				present++
			}
		}
		ents, err := os.ReadDir(n.mnt)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if _, ok := want[e.Name()]; !ok && e.Name() != ".flechefs" && e.Name() != kf && e.Name() != kw {
				t.Errorf("trial %d: readdir lists %q, never written", trial, e.Name())
			}
		}
		t.Logf("trial %d: %d of %d names written so far present after the crash", trial, present, len(want))
		if t.Failed() {
			t.Fatalf("daemon:\n%s", n.stderr)
		}
	}
}

// pyReadAfterClose writes fresh keys, each from a process that then exits,
// or closes, and checks right after (waitpid returned, or close returned)
// that stat and read give the whole value. Modes per iteration: a forked
// child closes and exits; a forked child exits without closing; this
// process writes and closes.
const pyReadAfterClose = `
import hashlib, os, sys
root, n, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
misses = []
for i in range(n):
    k = hashlib.sha256(("%s %d" % (tag, i)).encode()).hexdigest()
    p = os.path.join(root, k)
    v = ("value %s %d\n" % (tag, i)).encode() * (1 + i % 50)
    mode = i % 3
    if mode < 2:
        pid = os.fork()
        if pid == 0:
            try:
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.write(fd, v)
                if mode == 0:
                    os.close(fd)
            except BaseException as e:
                os.write(2, ("child %d: %r\n" % (i, e)).encode())
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            misses.append("%d: writer exited %d" % (i, status))
            continue
    else:
        with open(p, "wb") as f:
            f.write(v)
    try:
        st = os.stat(p)
        with open(p, "rb") as f:
            got = f.read()
        if st.st_size != len(v) or got != v:
            misses.append("%d (mode %d): size %d, read %d bytes" % (i, mode, st.st_size, len(got)))
    except OSError as e:
        misses.append("%d (mode %d): %r" % (i, mode, e))
print(len(misses))
for m in misses[:20]:
    print(m)
`

// shReadAfterClose writes each key of its input with a builtin printf (the
// shell's own close) or an external one (a process that exits, then the
// shell's close), and reads it back with cat, another process.
const shReadAfterClose = `i=0
while read k; do
  i=$((i+1))
  if [ $((i % 2)) = 0 ]; then printf '%s' "$k" > "$k"; else env printf '%s' "$k" > "$k"; fi
  [ "$(cat "$k" 2>&1)" = "$k" ] || echo "miss $i $k"
done`

// Once the last close has returned (or the last holder has exited and
// waitpid returned), every process sees the whole value at once: 0 misses
// in thousands of tries, while slow remote reads keep the kernel's
// background queue (where RELEASE waits) busy.
func TestCloseReadAfterClose(t *testing.T) {
	const (
		delay     = 10 * time.Millisecond // each way: a 20 ms round trip
		nreaders  = 16                    // more than the kernel's 12 background slots
		drivers   = 8                     // Python processes
		perDriver = 250
		shLoops   = 4 // sh processes
		shN       = 200
	)
	srv := sshdtest.Start(t)
	// A slow remote: every byte held 10 ms each way, behind a proxy whose
	// port the known_hosts file must name too.
	px, err := delayproxy.Start(srv.Addr, delay)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(px.Close)
	kh, err := os.ReadFile(srv.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	_, hostKey, _ := strings.Cut(strings.TrimSpace(string(kh)), " ")
	f, err := os.OpenFile(srv.KnownHosts, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "[127.0.0.1]:%d %s\n", px.Port(), hostKey)
	f.Close()

	// Remote-only values larger than the RAM tier admits (2 MiB / 4), with
	// promote = "base": every read of them is a fetch over the slow link.
	const nvals, valSize = 6, 1 << 20
	var remote []string
	for i := range nvals {
		k := key(fmt.Sprintf("remote-only %d", i))
		putRemote(t, srv, k, &patternReader{off: int64(i) << 24, size: int64(i)<<24 + valSize}, valSize)
		remote = append(remote, k)
	}
	n := loadedNode(t, srv, px)

	// The load: readers going through the remote-only values, dropping
	// their pages after each read so the next read goes to FUSE again, and
	// pausing between reads so that they do not take every CPU.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var loadReads, loadErrs atomic.Int64
	var firstErr atomic.Value
	for r := range nreaders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 256<<10)
			for i := r; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				f, err := os.Open(n.path(remote[i%nvals]))
				if err == nil {
					_, err = io.CopyBuffer(io.Discard, f, buf)
					fadviseDontNeed(f)
					f.Close()
				}
				if err != nil {
					loadErrs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					time.Sleep(50 * time.Millisecond)
					continue
				}
				loadReads.Add(1)
				select {
				case <-stop:
					return
				case <-time.After(300 * time.Millisecond):
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	// Let the load build up: the first reads have come through.
	eventually(t, "the first remote reads", 60*time.Second, func() bool { return loadReads.Load() >= 4 })
	before := n.tierStats("sftp").BytesOut
	reads0 := loadReads.Load()
	t0 := time.Now()
	type result struct {
		what string
		out  []string
		err  error
	}
	results := make(chan result)
	for d := range drivers {
		go func() {
			cmd := exec.Command("python3", "-c", pyReadAfterClose, n.mnt, strconv.Itoa(perDriver), fmt.Sprintf("py%d", d))
			out, err := cmd.CombinedOutput()
			results <- result{fmt.Sprintf("python %d", d), lines(string(out)), err}
		}()
	}
	for l := range shLoops {
		go func() {
			var shList bytes.Buffer
			for i := range shN / shLoops {
				fmt.Fprintln(&shList, key(fmt.Sprintf("sh read-after-close %d %d", l, i)))
			}
			sh := exec.Command("sh", "-c", shReadAfterClose)
			sh.Dir = n.mnt
			sh.Stdin = &shList
			out, err := sh.CombinedOutput()
			l := lines(string(out))
			results <- result{"sh", append([]string{strconv.Itoa(len(l))}, l...), err}
		}()
	}
	misses := 0
	var report []string
	for range drivers + shLoops {
		r := <-results
		if r.err != nil || len(r.out) == 0 {
			t.Errorf("%s: %v\n%s", r.what, r.err, strings.Join(r.out, "\n"))
			continue
		}
		m, err := strconv.Atoi(r.out[0])
		if err != nil {
			t.Errorf("%s: %s", r.what, strings.Join(r.out, "\n"))
			continue
		}
		misses += m
		if m > 0 {
			report = append(report, fmt.Sprintf("%s: %d misses:\n  %s", r.what, m, strings.Join(r.out[1:], "\n  ")))
		}
	}
	fetched := n.tierStats("sftp").BytesOut - before
	t.Logf("%d writes in %v; load: %d remote reads of %d MiB during the writes, %d errors (%v); %d MiB fetched",
		drivers*perDriver+shN, time.Since(t0).Round(time.Millisecond), loadReads.Load()-reads0, valSize>>20, loadErrs.Load(), firstErr.Load(), fetched>>20)
	if misses > 0 {
		t.Fatalf("read after close: %d misses in %d tries\n%s\ndaemon:\n%s", misses, drivers*perDriver+shN, strings.Join(report, "\n"), n.stderr)
	}
	if fetched == 0 {
		t.Errorf("no remote reads during the writes: no load")
	}
}

// loadedNode is a node whose remote is reached through the proxy px,
// with promote = "base", a 2 MiB RAM tier and a read-only remote.
func loadedNode(t *testing.T, srv *sshdtest.Server, px *delayproxy.Proxy) *node {
	t.Helper()
	m := mounttest.NewNode(t, "loaded", srv, mounttest.Opts{
		RAM:        "2MiB",
		Extra:      `promote = "base"`,
		RemoteURL:  fmt.Sprintf("sftp://%s@127.0.0.1:%d%s", srv.User, px.Port(), srv.Dir),
		RemoteTier: "read_only = true", // the values written here stay local: no uploads
	})
	return &node{Node: m, t: t, name: m.Name, dir: m.Dir, mnt: m.Mnt, config: m.Config, stderr: daemonLog{m}}
}

// fadviseDontNeed drops f's pages from the page cache.
func fadviseDontNeed(f *os.File) {
	const fadvDontNeed = 4
	syscall.Syscall6(syscall.SYS_FADVISE64, f.Fd(), 0, 0, fadvDontNeed, 0, 0)
}

// pyRacer is one of several processes writing the same keys: for each of
// its calls, if the name does not exist it writes its own value in a few
// writes over several ms; then it reads the name back, which must hold a
// whole value of one of the writers. Every exception is reported.
const pyRacer = `
import hashlib, os, random, sys, time
root, w, keys = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
go = sys.argv[4]

def value(w, k):
    head = ("writer %d key %s\n" % (w, k)).encode()
    return head + hashlib.sha256(head).digest() * 1024 + b"\nend\n"

def whole(k, got):
    try:
        w = int(got.split(b" ", 2)[1])
    except Exception:
        return False
    return got == value(w, k)

rnd = random.Random(w)
order = keys[:]
rnd.shuffle(order)
order += [rnd.choice(keys) for _ in range(20)]
while not os.path.exists(go):
    time.sleep(0.001)
errors, wrote = [], 0
for k in order:
    p = os.path.join(root, k)
    try:
        if not os.path.exists(p):
            v = value(w, k)
            with open(p, "wb") as f:
                for i in range(0, len(v), 8192):
                    f.write(v[i:i + 8192])
                    f.flush()
                    time.sleep(0.0005)
            wrote += 1
        with open(p, "rb") as f:
            got = f.read()
        if not whole(k, got):
            errors.append("%s: read back %d bytes %r" % (k[:12], len(got), got[:40]))
    except Exception as e:
        errors.append("%s: %r" % (k[:12], e))
print(wrote)
for e in errors:
    print(e)
`

// pyWatcher reads names while they are written, until the file stop
// exists: whenever a name exists (os.path.exists, os.access, or readdir
// lists it) it must open and read whole. With check = "racer" a whole
// value is one of pyRacer's; otherwise it is the content of the file
// named like the key in the directory wantDir.
const pyWatcher = `
import hashlib, os, sys
root, stop, check, keys = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")

def value(w, k):
    head = ("writer %d key %s\n" % (w, k)).encode()
    return head + hashlib.sha256(head).digest() * 1024 + b"\nend\n"

want = {}
if check != "racer":
    for k in keys:
        with open(os.path.join(check, k), "rb") as f:
            want[k] = f.read()

def whole(k, got):
    if check != "racer":
        return got == want[k]
    try:
        w = int(got.split(b" ", 2)[1])
    except Exception:
        return False
    return got == value(w, k)

bad, seen, rounds = [], set(), 0
while True:
    last = os.path.exists(stop)
    rounds += 1
    names = set(os.listdir(root))
    for k in keys:
        p = os.path.join(root, k)
        how = [h for h, ok in (("exists", os.path.exists(p)), ("access", os.access(p, os.R_OK)), ("listed", k in names)) if ok]
        if not how:
            if last:
                bad.append("%s: absent after its writer ended" % k[:12])
            continue
        seen.add(k)
        try:
            with open(p, "rb") as f:
                got = f.read()
        except OSError as e:
            bad.append("%s: %s, then %r" % (k[:12], "+".join(how), e))
            continue
        if not whole(k, got):
            bad.append("%s: %s, then read %d bytes %r" % (k[:12], "+".join(how), len(got), got[:30]))
    if last:
        break
print("rounds %d seen %d" % (rounds, len(seen)))
for b in bad[:30]:
    print(b)
`

// Racing writers of the same keys: every open succeeds (a loser's value is
// dropped at its close, counted as "exists"), every key ends with one
// whole value of one writer, and no reader ever sees part of one. Then the
// errnos: O_EXCL of an entry EEXIST, O_WRONLY without O_CREAT EACCES, and
// open(p, "wb") succeeds and leaves the entry as it was.
func TestCloseRacingWriters(t *testing.T) {
	n := newNode(t, "racers", nil, nodeOpts{})
	const writers, nkeys = 8, 40
	var keys []string
	for i := range nkeys {
		keys = append(keys, key(fmt.Sprintf("racing %d", i)))
	}
	dir := t.TempDir()
	goFile, stopFile := filepath.Join(dir, "go"), filepath.Join(dir, "stop")
	before := writes(t, n)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	watcher := exec.CommandContext(ctx, "python3", "-c", pyWatcher, n.mnt, stopFile, "racer", strings.Join(keys, ","))
	var watchOut bytes.Buffer
	watcher.Stdout, watcher.Stderr = &watchOut, &watchOut
	if err := watcher.Start(); err != nil {
		t.Fatal(err)
	}
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for w := range writers {
		c := exec.CommandContext(ctx, "python3", "-c", pyRacer, n.mnt, strconv.Itoa(w), strings.Join(keys, ","), goFile)
		var out bytes.Buffer
		c.Stdout, c.Stderr = &out, &out
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, c), append(outs, &out)
	}
	os.WriteFile(goFile, nil, 0o644)
	wrote := 0
	for w, c := range cmds {
		err := c.Wait()
		l := lines(outs[w].String())
		if err != nil || len(l) != 1 {
			t.Errorf("writer %d: %v\n%s", w, err, outs[w])
			continue
		}
		m, _ := strconv.Atoi(l[0])
		wrote += m
	}
	stopWatcher(t, stopFile, watcher, &watchOut)

	for _, k := range keys {
		got, err := os.ReadFile(n.path(k))
		if err != nil {
			t.Errorf("%s: %v", k[:12], err)
			continue
		}
		if !racerWhole(k, got) {
			t.Errorf("%s: %d bytes %q, not a writer's whole value", k[:12], len(got), trunc(got))
		}
	}
	after := writes(t, n)
	t.Logf("%d values written for %d keys; writes before %+v, after %+v", wrote, nkeys, before, after)
	if d := after.Published - before.Published; d != nkeys {
		t.Errorf("%d values published for %d keys", d, nkeys)
	}
	if t.Failed() {
		t.Fatalf("daemon:\n%s", n.stderr)
	}

	// The errnos on an entry.
	p := n.path(keys[0])
	old, _ := os.ReadFile(p)
	if _, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644); !errors.Is(err, syscall.EEXIST) {
		t.Errorf("O_WRONLY|O_CREAT|O_EXCL of an entry: %v, want EEXIST", err)
	}
	if _, err := os.OpenFile(p, os.O_WRONLY, 0); !errors.Is(err, syscall.EACCES) {
		t.Errorf("O_WRONLY of an entry: %v, want EACCES", err)
	}
	exists := writes(t, n).Dropped["exists"]
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatalf(`open(p, "wb") of an entry: %v, want success`, err)
	}
	if _, err := f.Write([]byte("another value")); err != nil {
		t.Errorf("write through open(p, \"wb\") of an entry: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("close after open(p, \"wb\") of an entry: %v", err)
	}
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, old) {
		t.Errorf("the entry after open(p, \"wb\"), write, close: %d bytes %q, %v; want its old value", len(got), trunc(got), err)
	}
	dropRose(t, n, "exists", exists, `open(p, "wb") of an entry`)
}

// racerWhole reports whether got is one of pyRacer's values for k.
func racerWhole(k string, got []byte) bool {
	f := bytes.SplitN(got, []byte(" "), 3)
	if len(f) < 3 {
		return false
	}
	w, err := strconv.Atoi(string(f[1]))
	if err != nil {
		return false
	}
	head := fmt.Sprintf("writer %d key %s\n", w, k)
	sum := sha256.Sum256([]byte(head))
	want := append([]byte(head), bytes.Repeat(sum[:], 1024)...)
	want = append(want, "\nend\n"...)
	return bytes.Equal(got, want)
}

// pySlowWriter writes the file src to path in 64 writes over about a
// second; with "subprocess" a child writes the first part (its exit is a
// close after a write) and the parent the rest.
const pySlowWriter = `
import os, subprocess, sys, time
path, src, how = sys.argv[1], sys.argv[2], sys.argv[3]
with open(src, "rb") as f:
    v = f.read()
with open(path, "wb", buffering=0) as f:
    start = 0
    if how == "subprocess":
        start = len(v) // 4
        subprocess.run(["head", "-c", str(start), src], stdout=f, check=True)
    step = max(1, (len(v) - start) // 64)
    for i in range(start, len(v), step):
        f.write(v[i:i + step])
        time.sleep(1 / 64)
`

// While writers take their time, another process polling the names never
// sees one exist and then fails to read it, nor reads part of a value; and
// once the writers have exited it sees every name, whole.
func TestCloseVisibility(t *testing.T) {
	n := newNode(t, "visibility", nil, nodeOpts{})
	dir := t.TempDir()
	stopFile := filepath.Join(dir, "stop")
	type writer struct {
		name string
		k    string
		v    []byte
		cmd  func(path, src string) *exec.Cmd
	}
	ws := []writer{
		{name: "python", cmd: func(path, src string) *exec.Cmd {
			return exec.Command("python3", "-c", pySlowWriter, path, src, "plain")
		}},
		{name: "python with a child writing first", cmd: func(path, src string) *exec.Cmd {
			return exec.Command("python3", "-c", pySlowWriter, path, src, "subprocess")
		}},
		// A brace group: printf is dash's builtin, sleep an external
		// command whose exit closes its copy of the descriptor.
		{name: "sh group", cmd: func(path, src string) *exec.Cmd {
			return exec.Command("sh", "-c", `{ printf 'part1-'; sleep 0.3; printf 'part2-'; sleep 0.3; printf 'part3-'; sleep 0.3; head -c 5000 "$2"; } > "$1"`, "sh", path, src)
		}},
		{name: "sh exec 3>", cmd: func(path, src string) *exec.Cmd {
			return exec.Command("sh", "-c", `exec 3> "$1"; printf 'a-' >&3; sleep 0.3; head -c 3000 "$2" >&3; sleep 0.3; printf -- '-z' >&3; exec 3>&-`, "sh", path, src)
		}},
	}
	var keys []string
	for i := range ws {
		w := &ws[i]
		w.k = key("visibility " + w.name)
		v := make([]byte, 200<<10+i)
		(&patternReader{off: int64(i) << 20, size: 1 << 40}).Read(v)
		switch w.name {
		case "sh group":
			v = append([]byte("part1-part2-part3-"), v[:5000]...)
		case "sh exec 3>":
			v = append(append([]byte("a-"), v[:3000]...), "-z"...)
		}
		src := v
		if strings.HasPrefix(w.name, "sh") {
			src = make([]byte, 200<<10+i)
			(&patternReader{off: int64(i) << 20, size: 1 << 40}).Read(src)
		}
		w.v = v
		if err := os.WriteFile(filepath.Join(dir, w.k), v, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, w.k+".src"), src, 0o644); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, w.k)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	watcher := exec.CommandContext(ctx, "python3", "-c", pyWatcher, n.mnt, stopFile, dir, strings.Join(keys, ","))
	var watchOut bytes.Buffer
	watcher.Stdout, watcher.Stderr = &watchOut, &watchOut
	if err := watcher.Start(); err != nil {
		t.Fatal(err)
	}
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for _, w := range ws {
		c := w.cmd(n.path(w.k), filepath.Join(dir, w.k+".src"))
		var out bytes.Buffer
		c.Stdout, c.Stderr = &out, &out
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill() })
		cmds, outs = append(cmds, c), append(outs, &out)
	}
	for i, c := range cmds {
		if err := waitCmd(t, c); err != nil {
			t.Errorf("%s writer: %v\n%s", ws[i].name, err, outs[i])
		}
	}
	// Every writer has exited: their values are visible, whole, to this
	// process too.
	for _, w := range ws {
		if got, err := os.ReadFile(n.path(w.k)); err != nil || !bytes.Equal(got, w.v) {
			t.Errorf("%s: after the writer exited: %d bytes %q, %v; want %d bytes", w.name, len(got), trunc(got), err, len(w.v))
		}
	}
	stopWatcher(t, stopFile, watcher, &watchOut)
}

// stopWatcher tells the watcher script to stop (its stop file), waits for
// it and fails the test unless its one line of output says it saw no
// missing, failing or partial value.
func stopWatcher(t *testing.T, stopFile string, watcher *exec.Cmd, out *bytes.Buffer) {
	t.Helper()
	os.WriteFile(stopFile, nil, 0o644)
	if err := watcher.Wait(); err != nil {
		t.Errorf("watcher: %v\n%s", err, out.String())
	}
	if l := lines(out.String()); len(l) != 1 {
		t.Errorf("the watcher saw names exist then fail, or partial values:\n%s", out.String())
	} else {
		t.Logf("watcher: %s", l[0])
	}
}
