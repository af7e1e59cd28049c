package integration

// The matrix of issue 15, "a result is published whole when its last writer
// closes it": real programs (shells, Perl, Python, numpy, Node, rsync, cp,
// tar...) write a key in the mount the way their users do, and for each one
//
//	(a) the program exits 0 (or, for the failure cases, not 0),
//	(b) right after it returns, os.ReadFile of the name gives exactly the
//	    intended bytes (failure cases: the name is absent),
//	(c) a reader polling the name the whole time never sees anything but
//	    ENOENT or the complete intended bytes (and never ENOENT again after
//	    it saw them),
//	(d) the listing gains exactly the intended names (no scratch or
//	    temporary name is left listed),
//	(e) .flechefs/stats "writes" counts the publish, or the drop and its
//	    reason.
//
// One mount per test function, one fresh key per subtest, subtests in
// sequence (the listing and counter checks compare before and after).

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// patPkg names the Debian package of each program the matrix runs.
var patPkg = map[string]string{
	"bash": "bash", "dash": "dash", "zsh": "zsh", "busybox": "busybox", "sh": "dash",
	"perl": "perl", "rsync": "rsync", "/usr/bin/python3": "python3 python3-numpy",
	"node": "nodejs", "tar": "tar", "cp": "coreutils", "install": "coreutils",
	"dd": "coreutils", "mv": "coreutils", "seq": "coreutils", "timeout": "coreutils",
	"sort": "coreutils", "touch": "coreutils", "truncate": "coreutils", "tee": "coreutils", "sleep": "coreutils", "cat": "coreutils",
	"xargs": "findutils", "awk": "gawk",
}

// patWFA is where scripts/deps.sh installs the npm package write-file-atomic.
const patWFA = "/opt/flechefs-testdeps/node_modules/write-file-atomic"

// patNeed fails the test, naming the package, when a program is missing.
func patNeed(t *testing.T, progs ...string) {
	t.Helper()
	var missing, pkgs []string
	for _, p := range progs {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
			pkgs = append(pkgs, patPkg[p])
		}
	}
	if len(missing) > 0 {
		t.Fatalf("programs needed by this test are missing: %s (apt-get install %s; or scripts/deps.sh test)",
			strings.Join(missing, " "), strings.Join(pkgs, " "))
	}
}

// patEnv is what one subtest's command works with.
type patEnv struct {
	t    *testing.T // the subtest
	n    *node
	key  string // a fresh key
	path string // n.path(key)
	dir  string // a private folder outside the mount, the command's cwd
	src  string // dir/src.bin: random bytes, outside the mount
	data []byte // the bytes of src
}

// patCase is one pattern.
type patCase struct {
	name string
	// cmd builds the command; it runs with Dir = e.dir.
	cmd func(e *patEnv) *exec.Cmd
	// want is the value the target must have; nil means a failure case:
	// nothing may be published, and the program must exit non-zero.
	want func(e *patEnv) []byte
	// target is the name polled and checked (default e.key).
	target func(e *patEnv) string
	// more names (besides target) that must appear, with their bytes.
	more func(e *patEnv) map[string][]byte
	// gone names must not exist afterwards (neither stat nor listing).
	gone func(e *patEnv) []string
	// stdout, when set, is the command's expected standard output.
	stdout func(e *patEnv) string
	// code is the exit status a case with a want must have (default 0).
	code int
	// drop is the writes.dropped counter a failure case must raise.
	drop string
	// after runs once the checks passed (reruns, more assertions).
	after func(t *testing.T, e *patEnv)
}

func patLit(s string) func(*patEnv) []byte { return func(*patEnv) []byte { return []byte(s) } }
func patSrc(e *patEnv) []byte              { return e.data }

// patSh is a case running script with shell argv; "$1" is the key's path.
func patSh(argv []string, script string) func(e *patEnv) *exec.Cmd {
	return func(e *patEnv) *exec.Cmd {
		args := append(append([]string{}, argv[1:]...), "-c", `f="$1"`+"\n"+script, "sh", e.path)
		return exec.Command(argv[0], args...)
	}
}

// patPy runs a /usr/bin/python3 script with mnt, key, dir in sys.argv[1:4]
// and p = the key's path.
func patPy(script string) func(e *patEnv) *exec.Cmd {
	return func(e *patEnv) *exec.Cmd {
		pre := "import os, sys, shutil, subprocess, tempfile\nmnt, key, d = sys.argv[1:4]\np = os.path.join(mnt, key)\n"
		return exec.Command("/usr/bin/python3", "-c", pre+script, e.n.mnt, e.key, e.dir)
	}
}

// patWatcher reads one name in a loop until stopped, and a little after,
// remembering what it saw.
type patWatcher struct {
	path string
	stop chan struct{}
	done chan struct{}

	mu       sync.Mutex
	reads    int
	values   map[string]int // sha256 -> times seen
	sizes    map[string]string
	errs     map[string]int // errors other than ENOENT
	seenVal  bool
	vanished int // ENOENT after a value was seen
}

func patWatch(path string) *patWatcher {
	w := &patWatcher{path: path, stop: make(chan struct{}), done: make(chan struct{}),
		values: map[string]int{}, sizes: map[string]string{}, errs: map[string]int{}}
	go w.loop()
	return w
}

func (w *patWatcher) loop() {
	defer close(w.done)
	var stopAt time.Time
	after := 0
	for {
		b, err := os.ReadFile(w.path)
		w.mu.Lock()
		w.reads++
		switch {
		case err == nil:
			s := fmt.Sprintf("%x", sha256.Sum256(b))
			w.values[s]++
			if _, ok := w.sizes[s]; !ok {
				w.sizes[s] = fmt.Sprintf("%d bytes %q", len(b), patHead(b))
			}
			w.seenVal = true
		case errors.Is(err, os.ErrNotExist):
			if w.seenVal {
				w.vanished++
			}
		default:
			w.errs[err.Error()]++
		}
		w.mu.Unlock()
		if stopAt.IsZero() {
			select {
			case <-w.stop:
				stopAt = time.Now().Add(100 * time.Millisecond)
			default:
			}
		} else if after++; after >= 5 && time.Now().After(stopAt) {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// finish stops the loop and waits for it.
func (w *patWatcher) finish() {
	close(w.stop)
	<-w.done
}

// check reports what the reader saw besides ENOENT and allowed (nil:
// nothing but ENOENT was allowed).
func (w *patWatcher) check(t *testing.T, allowed []byte) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	want := ""
	if allowed != nil {
		want = fmt.Sprintf("%x", sha256.Sum256(allowed))
	}
	for s, c := range w.values {
		if s != want {
			t.Errorf("the concurrent reader saw a value that is not the intended one (%d times): %s", c, w.sizes[s])
		}
	}
	for e, c := range w.errs {
		t.Errorf("the concurrent reader got an error other than ENOENT (%d times): %s", c, e)
	}
	if w.vanished > 0 {
		t.Errorf("the concurrent reader got ENOENT %d times after it had read the value", w.vanished)
	}
}

func patHead(b []byte) []byte {
	if len(b) > 24 {
		return b[:24]
	}
	return b
}

// patWrites is the "writes" object of .flechefs/stats.
type patWrites struct {
	Published int64            `json:"published"`
	Scratch   int64            `json:"scratch"`
	Dropped   map[string]int64 `json:"dropped"`
}

var patDropNames = []string{"killed", "failed_exit", "write_error", "exists", "publish_error"}

// patStats reads .flechefs/stats as a file and returns its "writes"; an
// error says what is missing.
func patStats(n *node) (patWrites, error) {
	var w patWrites
	b, err := os.ReadFile(filepath.Join(n.mnt, ".flechefs", "stats"))
	if err != nil {
		return w, err
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		return w, fmt.Errorf("stats JSON: %v", err)
	}
	raw, ok := top["writes"]
	if !ok {
		return w, fmt.Errorf(`.flechefs/stats has no "writes" object: %s`, b)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return w, fmt.Errorf(`stats "writes": %v: %s`, err, raw)
	}
	for _, f := range []string{"published", "scratch", "dropped"} {
		if _, ok := fields[f]; !ok {
			return w, fmt.Errorf(`stats "writes" has no %q: %s`, f, raw)
		}
	}
	if err := json.Unmarshal(raw, &w); err != nil {
		return w, fmt.Errorf(`stats "writes": %v: %s`, err, raw)
	}
	for _, d := range patDropNames {
		if _, ok := w.Dropped[d]; !ok {
			return w, fmt.Errorf(`stats "writes.dropped" has no %q: %s`, d, raw)
		}
	}
	return w, nil
}

// patCounterRose waits (up to 5 s: counters may be bumped at the RELEASE
// that follows the program's exit) for get(stats) to exceed before.
func patCounterRose(t *testing.T, n *node, what string, before int64, get func(patWrites) int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		w, err := patStats(n)
		if err != nil {
			t.Errorf("%v", err)
			return
		}
		if get(w) > before {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("stats writes.%s stayed %d (want it to rise): %+v", what, get(w), w)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// patList is the set of names readdir gives at the mount's root.
func patList(t *testing.T, n *node) map[string]bool {
	t.Helper()
	ents, err := os.ReadDir(n.mnt)
	if err != nil {
		t.Fatalf("readdir of the mount: %v", err)
	}
	out := map[string]bool{}
	for _, e := range ents {
		out[e.Name()] = true
	}
	return out
}

func patDaemonTail(n *node) string {
	s := n.stderr.String()
	if len(s) > 3000 {
		s = "..." + s[len(s)-3000:]
	}
	return s
}

// patExec runs cmd (in e.dir, 60 s at most) and returns its stdout, stderr
// and exit code (-1 for a signal or a start error).
func patExec(t *testing.T, e *patEnv, cmd *exec.Cmd) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	c.Env = cmd.Env
	c.Dir = e.dir
	if cmd.Dir != "" {
		c.Dir = cmd.Dir
	}
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	c.WaitDelay = 5 * time.Second
	err := c.Run()
	if ctx.Err() != nil {
		t.Errorf("%v: still running after 60 s, killed\ndaemon:\n%s", cmd.Args, patDaemonTail(e.n))
	}
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else {
			t.Errorf("%v: %v", cmd.Args, err)
			code = -1
		}
	}
	return stdout.String(), stderr.String(), code
}

// patSetup makes a subtest's environment: a fresh key, a private folder and
// a source file of size bytes.
func patSetup(t *testing.T, n *node, size int) *patEnv {
	t.Helper()
	k := key(t.Name())
	e := &patEnv{t: t, n: n, key: k, path: n.path(k), dir: t.TempDir()}
	e.data = make([]byte, size)
	rand.Read(e.data)
	e.src = filepath.Join(e.dir, "src.bin")
	if err := os.WriteFile(e.src, e.data, 0o640); err != nil {
		t.Fatal(err)
	}
	return e
}

// patRun runs one case on its own key and checks (a) to (e).
func patRun(t *testing.T, n *node, c patCase) {
	t.Helper()
	t.Run(c.name, func(t *testing.T) {
		e := patSetup(t, n, 300_000)
		target := e.key
		if c.target != nil {
			target = c.target(e)
		}
		tpath := n.path(target)
		before := patList(t, n)
		st0, stErr := patStats(n)
		if stErr != nil {
			t.Errorf("%v", stErr)
		}

		w := patWatch(tpath)
		cmd := c.cmd(e)
		stdout, stderr, code := patExec(t, e, cmd)
		got, readErr := os.ReadFile(tpath) // at once: no sleep
		w.finish()

		fail := c.want == nil
		prog := strings.Join(cmd.Args, " ")
		if len(prog) > 200 {
			prog = prog[:200] + "..."
		}
		if fail {
			if code == 0 {
				t.Errorf("the program exited 0; this failure case must exit non-zero: %s", prog)
			}
			if readErr == nil {
				t.Errorf("a failed write was published: %d bytes %q", len(got), patHead(got))
			} else if !errors.Is(readErr, os.ErrNotExist) {
				t.Errorf("reading the name after the failed write: %v (want ENOENT)", readErr)
			}
			if _, err := os.Stat(tpath); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("stat after the failed write: %v (want ENOENT)", err)
			}
			w.check(t, nil)
		} else {
			want := c.want(e)
			if code != c.code {
				t.Errorf("exit status %d, want %d: %s\nstdout: %s\nstderr: %s", code, c.code, prog, stdout, stderr)
			}
			if readErr != nil {
				t.Errorf("reading %s right after the program returned: %v", target, readErr)
			} else if !bytes.Equal(got, want) {
				t.Errorf("published value: %d bytes %q, want %d bytes %q", len(got), patHead(got), len(want), patHead(want))
			}
			w.check(t, want)
			if code != c.code {
				// The rest (more names, the listing) would only repeat
				// the failure.
				t.Logf("program: %s\nexit %d\nstdout: %.500s\nstderr: %.2000s\ndaemon (tail):\n%s", prog, code, stdout, stderr, patDaemonTail(n))
				return
			}
			for name, mb := range c.moreNames(e) {
				b, err := os.ReadFile(n.path(name))
				if err != nil || !bytes.Equal(b, mb) {
					t.Errorf("%s: %v, %d bytes %q, want %d bytes", name, err, len(b), patHead(b), len(mb))
				}
			}
		}
		if c.stdout != nil {
			if want := c.stdout(e); stdout != want {
				t.Errorf("stdout %q, want %q (stderr %q)", stdout, want, stderr)
			}
		}

		// (d) the listing gains exactly the intended names.
		after := patList(t, n)
		wantNew := map[string]bool{}
		if !fail {
			wantNew[target] = true
			for name := range c.moreNames(e) {
				wantNew[name] = true
			}
		}
		var extra, lacking []string
		for name := range after {
			if !before[name] && !wantNew[name] {
				extra = append(extra, name)
			}
		}
		for name := range wantNew {
			if !after[name] {
				lacking = append(lacking, name)
			}
		}
		sort.Strings(extra)
		sort.Strings(lacking)
		if len(extra) > 0 {
			t.Errorf("the listing gained names it should not: %q", extra)
		}
		if len(lacking) > 0 {
			t.Errorf("the listing lacks published names: %q", lacking)
		}
		if c.gone != nil {
			for _, name := range c.gone(e) {
				if _, err := os.Lstat(n.path(name)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s should be gone: stat gives %v", name, err)
				}
			}
		}

		// (e) the counters.
		if stErr == nil {
			if fail {
				if c.drop != "" {
					patCounterRose(t, n, "dropped."+c.drop, st0.Dropped[c.drop], func(w patWrites) int64 { return w.Dropped[c.drop] })
				}
			} else {
				patCounterRose(t, n, "published", st0.Published, func(w patWrites) int64 { return w.Published })
			}
		}
		if t.Failed() {
			t.Logf("program: %s\nexit %d\nstdout: %.500s\nstderr: %.2000s\ndaemon (tail):\n%s", prog, code, stdout, stderr, patDaemonTail(n))
			return
		}
		if c.after != nil {
			c.after(t, e)
		}
	})
}

func (c patCase) moreNames(e *patEnv) map[string][]byte {
	if c.more == nil {
		return nil
	}
	return c.more(e)
}

// patShells are the shells of the matrix.
var patShells = []struct {
	name string
	argv []string
}{
	{"bash", []string{"bash"}},
	{"dash", []string{"dash"}},
	{"zsh", []string{"zsh"}},
	{"busybox", []string{"busybox", "sh"}},
}

// The shell idioms, in each shell.
func TestPatternsShell(t *testing.T) {
	patNeed(t, "bash", "dash", "zsh", "busybox", "seq", "awk", "xargs", "tee", "sleep", "cat")
	n := newNode(t, "patterns-shell", nil, nodeOpts{})
	simulate := "#!/bin/sh\necho computing >&2\necho result\nseq 3 | awk '{ s += $1 } END { print s }'\n"
	for _, sh := range patShells {
		t.Run(sh.name, func(t *testing.T) {
			cases := []patCase{
				{name: "group", cmd: patSh(sh.argv, `{ /bin/echo a; /bin/echo b; } > "$f"`), want: patLit("a\nb\n")},
				{name: "subshell", cmd: patSh(sh.argv, `( /bin/echo a; /bin/echo b ) > "$f"`), want: patLit("a\nb\n")},
				{name: "bash-c", cmd: patSh(sh.argv, `bash -c 'echo start; seq 3; echo end' > "$f"`), want: patLit("start\n1\n2\n3\nend\n")},
				{name: "sleep-between", cmd: patSh(sh.argv, `{ echo a; sleep 0.2; echo b; } > "$f"`), want: patLit("a\nb\n")},
				{name: "exec-fd", cmd: patSh(sh.argv, `exec 3> "$f"; /bin/echo a >&3; /bin/echo b >&3; exec 3>&-; cat "$f"`),
					want: patLit("a\nb\n"), stdout: func(*patEnv) string { return "a\nb\n" }},
				{name: "xargs", cmd: patSh(sh.argv, `printf 'a\nb\n' | xargs -n1 /bin/echo > "$f"`), want: patLit("a\nb\n")},
				{name: "tee", cmd: patSh(sh.argv, `seq 3 | tee "$f" > /dev/null`), want: patLit("1\n2\n3\n")},
				{name: "heredoc", cmd: patSh(sh.argv, "cat > \"$f\" <<EOF\nx\ny\nEOF"), want: patLit("x\ny\n")},
				{name: "noclobber", cmd: patSh(sh.argv, `set -C; echo a > "$f"`), want: patLit("a\n")},
				{name: "empty", cmd: patSh(sh.argv, `: > "$f"`), want: patLit("")},
				{name: "cat-big", cmd: patSh(sh.argv, `cat src.bin > "$f"`), want: patSrc},
				{name: "background-wait", cmd: patSh(sh.argv, `( sleep 0.1; /bin/echo a ) > "$f" & wait`), want: patLit("a\n")},
				{name: "simulate-or-cat",
					cmd: func(e *patEnv) *exec.Cmd {
						if err := os.WriteFile(filepath.Join(e.dir, "simulate"), []byte(simulate), 0o755); err != nil {
							e.t.Fatal(err)
						}
						return patSh(sh.argv, `[ -e "$f" ] || ./simulate > "$f"; cat "$f"`)(e)
					},
					want:   patLit("result\n6\n"),
					stdout: func(*patEnv) string { return "result\n6\n" },
					after: func(t *testing.T, e *patEnv) {
						// The second run finds the result and does not recompute.
						stdout, stderr, code := patExec(t, e, patSh(sh.argv, `[ -e "$f" ] || ./simulate > "$f"; cat "$f"`)(e))
						if code != 0 || stdout != "result\n6\n" || strings.Contains(stderr, "computing") {
							t.Errorf("second run: exit %d, stdout %q, stderr %q", code, stdout, stderr)
						}
					}},
			}
			for _, c := range cases {
				patRun(t, n, c)
			}
		})
	}
}

// Writers that fail or die while holding the file publish nothing, the
// drop is counted, and the name can be written again afterwards.
func TestPatternsFailures(t *testing.T) {
	patNeed(t, "bash", "dash", "zsh", "busybox", "sh", "timeout", "perl", "/usr/bin/python3", "sleep")
	n := newNode(t, "patterns-failures", nil, nodeOpts{})
	rewrite := func(t *testing.T, e *patEnv) {
		// The dropped write does not block the name: a new write publishes.
		_, stderr, code := patExec(t, e, exec.Command("sh", "-c", `printf 'ok\n' > "$1"`, "sh", e.path))
		if code != 0 {
			t.Fatalf("writing again after the failure: exit %d %s", code, stderr)
		}
		if b, err := os.ReadFile(e.path); err != nil || string(b) != "ok\n" {
			t.Errorf("after the failure, a new write reads %q, %v; want \"ok\\n\"", b, err)
		}
	}
	for _, sh := range patShells {
		t.Run(sh.name, func(t *testing.T) {
			for _, c := range []patCase{
				{name: "exit-3", cmd: patSh(sh.argv, `sh -c 'echo partial; exit 3' > "$f"`), drop: "failed_exit"},
				{name: "kill-9", cmd: patSh(sh.argv, `sh -c 'echo partial; kill -9 $$' > "$f"`), drop: "killed"},
				{name: "kill-TERM", cmd: patSh(sh.argv, `sh -c 'echo partial; kill -TERM $$' > "$f"`), drop: "killed"},
				{name: "timeout", cmd: patSh(sh.argv, `timeout 0.3 sh -c 'echo partial; sleep 5' > "$f"`), drop: "killed"},
				// A child killed while it holds an inherited copy poisons
				// the file: the parent's next write fails (EIO) and
				// nothing is published at its close.
				{name: "child-killed", cmd: patSh(sh.argv, `{ /bin/echo a; sh -c 'kill -9 $$'; /bin/echo b; } > "$f"`), drop: "killed"},
			} {
				c.after = rewrite
				patRun(t, n, c)
			}
		})
	}
	// zsh exits 3 with its group's file still on fd 1: the FLUSH comes from
	// the exiting process. (bash, dash and busybox sh restore fd 1, closing
	// the file, before exit_group(3): that close is an ordinary one and the
	// spec publishes "partial"; so does Perl's close of a lexical handle
	// at die, and Python's `with open(...)` left by an exception.)
	c := patCase{name: "zsh-group-exit-3", cmd: patSh([]string{"zsh"}, `{ echo partial; exit 3; } > "$f"`), drop: "failed_exit", after: rewrite}
	patRun(t, n, c)
	for _, c := range []patCase{
		{name: "perl-exit-3", cmd: patSh([]string{"sh"}, `perl -e 'print "partial\n"; exit 3' > "$f"`), drop: "failed_exit"},
		{name: "perl-die", cmd: patSh([]string{"sh"}, `perl -e 'print "partial\n"; die "boom\n"' > "$f"`), drop: "failed_exit"},
		{name: "python-exit-3", cmd: patSh([]string{"sh"}, `/usr/bin/python3 -c 'print("partial"); raise SystemExit(3)' > "$f"`), drop: "failed_exit"},
		{name: "python-sigkill", cmd: patPy(`f = open(p, "wb"); f.write(b"partial" * 1000); f.flush(); os.kill(os.getpid(), 9)`), drop: "killed"},
	} {
		c.after = rewrite
		patRun(t, n, c)
	}
}

// publish_failed = true: a process exiting non-zero publishes what it
// wrote; one killed by a signal still does not.
func TestPatternsPublishFailed(t *testing.T) {
	patNeed(t, "sh")
	n := newNode(t, "patterns-publish-failed", nil, nodeOpts{extra: "publish_failed = true"})
	patRun(t, n, patCase{name: "exit-3", cmd: patSh([]string{"sh"}, `sh -c 'echo partial; exit 3' > "$f"`),
		want: patLit("partial\n"), code: 3})
	patRun(t, n, patCase{name: "kill-9", cmd: patSh([]string{"sh"}, `sh -c 'echo partial; kill -9 $$' > "$f"`), drop: "killed"})
}

// Perl, Python (with numpy) and Node.js writing results.
func TestPatternsLanguages(t *testing.T) {
	patNeed(t, "perl", "/usr/bin/python3", "node")
	if out, err := exec.Command("/usr/bin/python3", "-c", "import numpy").CombinedOutput(); err != nil {
		t.Fatalf("numpy for /usr/bin/python3 is missing (apt-get install python3-numpy): %v %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(patWFA, "package.json")); err != nil {
		t.Fatalf("the npm package write-file-atomic is missing (scripts/deps.sh test installs it into %s): %v", filepath.Dir(patWFA), err)
	}
	n := newNode(t, "patterns-languages", nil, nodeOpts{})
	ab := patLit("a\nb\n")
	tmpGone := func(e *patEnv) []string { return []string{e.key + ".tmp"} }
	node := func(script string) func(e *patEnv) *exec.Cmd {
		return func(e *patEnv) *exec.Cmd {
			c := exec.Command("node", "-e", "const fs = require('fs'); const wfa = require(process.env.FLECHEFS_WFA); const [p, src] = process.argv.slice(1);\n"+script, e.path, e.src)
			c.Env = append(os.Environ(), "FLECHEFS_WFA="+patWFA)
			return c
		}
	}
	for _, c := range []patCase{
		// Perl.
		{name: "perl-stdout-system", cmd: func(e *patEnv) *exec.Cmd {
			return exec.Command("perl", "-e", `open(STDOUT, ">", $ARGV[0]) or die "$!"; print "a\n"; system("/bin/echo", "b") == 0 or die "echo";`, e.path)
		}, want: ab},
		{name: "perl-open-print-close", cmd: func(e *patEnv) *exec.Cmd {
			return exec.Command("perl", "-e", `open(my $fh, ">", $ARGV[0]) or die "$!"; print $fh "x" x 100000; close($fh) or die "$!";`, e.path)
		}, want: patLit(strings.Repeat("x", 100000))},
		{name: "perl-scratch-rename", cmd: func(e *patEnv) *exec.Cmd {
			return exec.Command("perl", "-e", `my $t = "$ARGV[0].tmp.$$"; open(my $fh, ">", $t) or die "$t: $!"; print $fh "a\nb\n"; close($fh) or die "$!"; rename($t, $ARGV[0]) or die "rename: $!";`, e.path)
		}, want: ab},

		// Python.
		{name: "python-subprocess-into-file", cmd: patPy(`
with open(p, "wb") as fh:
    subprocess.run(["/bin/echo", "a"], stdout=fh, check=True)
    fh.write(b"b\n")
`), want: ab},
		{name: "python-mkstemp-replace", cmd: patPy(`
fd, tmp = tempfile.mkstemp(dir=mnt)
with open(os.path.join(d, "src.bin"), "rb") as s:
    os.write(fd, s.read())
os.close(fd)
os.replace(tmp, p)
assert not os.path.exists(tmp), tmp
assert os.path.basename(tmp) not in os.listdir(mnt)
`), want: patSrc},
		{name: "python-mkstemp-fsync-replace", cmd: patPy(`
fd, tmp = tempfile.mkstemp(dir=mnt, prefix="." + key + ".")
with open(os.path.join(d, "src.bin"), "rb") as s:
    data = s.read()
with os.fdopen(fd, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
os.chmod(tmp, 0o644)
with open(tmp, "rb") as f:
    assert f.read() == data, "scratch file read back"
assert os.path.basename(tmp) not in os.listdir(mnt)
os.replace(tmp, p)
`), want: patSrc},
		{name: "python-namedtemporaryfile-replace", cmd: patPy(`
with open(os.path.join(d, "src.bin"), "rb") as s:
    data = s.read()
with tempfile.NamedTemporaryFile(dir=mnt, delete=False) as f:
    f.write(data)
os.replace(f.name, p)
`), want: patSrc},
		// fsync publishes at once; a later write through the descriptor
		// fails with EIO, and the value stays the fsynced one.
		{name: "python-fsync-then-write", cmd: patPy(`
import errno
f = open(p, "wb")
f.write(b"a\nb\n")
f.flush()
os.fsync(f.fileno())
out = subprocess.run(["cat", p], capture_output=True)
assert out.stdout == b"a\nb\n", ("another process after the fsync", out)
try:
    f.write(b"more\n")
    f.flush()
    raise SystemExit("a write after fsync succeeded")
except OSError as e:
    assert e.errno == errno.EIO, e
try:
    f.close()
except OSError:
    pass
`), want: ab},
		{name: "python-key.tmp-replace", cmd: patPy(`
with open(p + ".tmp", "wb") as f:
    f.write(b"a\nb\n")
os.replace(p + ".tmp", p)
with open(p, "rb") as f:
    assert f.read() == b"a\nb\n", "read right after os.replace"
assert key + ".tmp" not in os.listdir(mnt)
`), want: ab, gone: tmpGone},
		// rename(entry, absent KEY) then, at once, open(KEY): 20 times.
		{name: "python-rename-entry-read-at-once", cmd: patPy(`
import hashlib
for i in range(21):
    k = hashlib.sha256(f"{key}/{i}".encode()).hexdigest() if i < 20 else key
    t = os.path.join(mnt, k + ".1610748134")
    fd = os.open(t, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.write(fd, b"a\nb\n")
    os.close(fd)
    os.rename(t, os.path.join(mnt, k))
    try:
        with open(os.path.join(mnt, k), "rb") as f:
            assert f.read() == b"a\nb\n", i
    except FileNotFoundError:
        raise SystemExit(f"open right after rename({k[:8]}.1610748134, {k[:8]}) gave ENOENT (round {i})")
`), want: ab, more: func(e *patEnv) map[string][]byte {
			m := map[string][]byte{}
			for i := range 20 {
				m[key(fmt.Sprintf("%s/%d", e.key, i))] = []byte("a\nb\n")
			}
			return m
		}},
		{name: "python-shutil.copy", cmd: patPy(`shutil.copy(os.path.join(d, "src.bin"), p)`), want: patSrc},
		{name: "python-shutil.copy2", cmd: patPy(`shutil.copy2(os.path.join(d, "src.bin"), p)`), want: patSrc},
		{name: "python-shutil.copyfile", cmd: patPy(`shutil.copyfile(os.path.join(d, "src.bin"), p)`), want: patSrc},
		{name: "python-shutil.move", cmd: patPy(`
s = os.path.join(d, "moved.bin")
shutil.copy(os.path.join(d, "src.bin"), s)
shutil.move(s, p)
assert not os.path.exists(s)
`), want: patSrc},
		{name: "numpy-save-load", target: func(e *patEnv) string { return e.key + ".npy" }, cmd: patPy(`
import numpy as np
a = np.arange(20000, dtype=np.float64).reshape(100, 200) * 0.5
np.save(os.path.join(d, "ref.npy"), a)
np.save(p + ".npy", a)
b = np.load(p + ".npy", mmap_mode="r")
assert b.shape == a.shape and (b == a).all()
`), want: func(e *patEnv) []byte { b, _ := os.ReadFile(filepath.Join(e.dir, "ref.npy")); return b }},
		// savez writes a zip: a local header, the data, then a seek back to
		// rewrite the header (sizes, CRC).
		{name: "numpy-savez", target: func(e *patEnv) string { return e.key + ".npz" }, cmd: patPy(`
import numpy as np
a = np.arange(20000, dtype=np.int32)
np.savez(os.path.join(d, "ref.npz"), a=a, b=a * 2)
np.savez(p + ".npz", a=a, b=a * 2)
with np.load(p + ".npz") as z:
    assert (z["a"] == a).all() and (z["b"] == a * 2).all()
`), want: func(e *patEnv) []byte { b, _ := os.ReadFile(filepath.Join(e.dir, "ref.npz")); return b }},

		// Node.js.
		{name: "node-writeFileSync", cmd: node(`fs.writeFileSync(p, fs.readFileSync(src));`), want: patSrc},
		{name: "node-stream", cmd: node(`fs.createReadStream(src).pipe(fs.createWriteStream(p)).on("error", e => { console.error(e); process.exit(1); });`), want: patSrc},
		{name: "write-file-atomic-sync", cmd: node(`wfa.sync(p, fs.readFileSync(src));`), want: patSrc},
		{name: "write-file-atomic-async", cmd: node(`wfa(p, fs.readFileSync(src)).catch(e => { console.error(e); process.exit(1); });`), want: patSrc},
		{name: "write-file-atomic-async-mode", cmd: node(`wfa(p, "a\nb\n", { mode: 0o644 }).catch(e => { console.error(e); process.exit(1); });`), want: ab},
	} {
		patRun(t, n, c)
	}
}

// Copiers and archivers: rsync, cp, install, dd, tar, mv, sort.
func TestPatternsTools(t *testing.T) {
	patNeed(t, "rsync", "cp", "install", "dd", "tar", "mv", "sort", "touch", "truncate", "sh")
	n := newNode(t, "patterns-tools", nil, nodeOpts{})
	// A folder of key-named files outside the mount, for cp -a and tar.
	treeKeys := func(e *patEnv) (string, string) { return key(e.key + "/tree1"), key(e.key + "/tree2") }
	tree := func(e *patEnv) map[string][]byte {
		k1, k2 := treeKeys(e)
		return map[string][]byte{k1: []byte("tree one\n"), k2: e.data}
	}
	mkTree := func(e *patEnv) string {
		t := e.t
		dir := filepath.Join(e.dir, "tree")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, b := range tree(e) {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		// The root entry is e.key itself, so the target is polled.
		if err := os.WriteFile(filepath.Join(dir, e.key), []byte("tree root\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	rsyncAgain := func(args ...string) func(t *testing.T, e *patEnv) {
		return func(t *testing.T, e *patEnv) {
			_, stderr, code := patExec(t, e, exec.Command("rsync", append(args, e.src, e.path)...))
			if code != 0 {
				t.Errorf("rsync %v rerun: exit %d: %s", args, code, stderr)
			}
			if b, err := os.ReadFile(e.path); err != nil || !bytes.Equal(b, e.data) {
				t.Errorf("after the rerun: %v, %d bytes", err, len(b))
			}
		}
	}
	sortedLines := "alpha\nbeta\ngamma\n"
	for _, c := range []patCase{
		{name: "rsync", cmd: func(e *patEnv) *exec.Cmd { return exec.Command("rsync", e.src, e.path) }, want: patSrc,
			after: rsyncAgain()},
		{name: "rsync-inplace", cmd: func(e *patEnv) *exec.Cmd { return exec.Command("rsync", "--inplace", e.src, e.path) }, want: patSrc,
			after: rsyncAgain("--inplace")},
		{name: "rsync-a-tree", cmd: func(e *patEnv) *exec.Cmd {
			return exec.Command("rsync", "-a", mkTree(e)+"/", e.n.mnt+"/")
		}, want: patLit("tree root\n"), more: tree},
		{name: "cp", cmd: func(e *patEnv) *exec.Cmd { return exec.Command("cp", e.src, e.path) }, want: patSrc},
		{name: "cp-p", cmd: func(e *patEnv) *exec.Cmd { return exec.Command("cp", "-p", e.src, e.path) }, want: patSrc},
		{name: "cp-a-tree", cmd: func(e *patEnv) *exec.Cmd {
			return exec.Command("cp", "-a", mkTree(e)+"/.", e.n.mnt+"/")
		}, want: patLit("tree root\n"), more: tree},
		{name: "install", cmd: func(e *patEnv) *exec.Cmd { return exec.Command("install", "-m", "0644", e.src, e.path) }, want: patSrc},
		{name: "dd", cmd: func(e *patEnv) *exec.Cmd {
			return exec.Command("dd", "if="+e.src, "of="+e.path, "bs=4k", "status=none")
		}, want: patSrc},
		{name: "tar-x", cmd: func(e *patEnv) *exec.Cmd {
			dir := mkTree(e)
			arch := filepath.Join(e.dir, "tree.tar")
			if out, err := exec.Command("tar", "-C", dir, "-cf", arch, ".").CombinedOutput(); err != nil {
				e.t.Fatalf("tar -c: %v %s", err, out)
			}
			return exec.Command("tar", "-C", e.n.mnt, "-xf", arch)
		}, want: patLit("tree root\n"), more: tree},
		{name: "mv-from-other-fs", cmd: func(e *patEnv) *exec.Cmd {
			return exec.Command("sh", "-c", `cp "$1" "$1.moving" && mv "$1.moving" "$2" && ! test -e "$1.moving"`, "sh", e.src, e.path)
		}, want: patSrc},
		{name: "mv-within-mount", cmd: func(e *patEnv) *exec.Cmd {
			return exec.Command("sh", "-c", `cat "$1" > "$2" && mv "$2" "$3" && cat "$3"`, "sh", e.src, e.n.path(key(e.key+"/first")), e.path)
		}, want: patSrc, stdout: func(e *patEnv) string { return string(e.data) }, gone: func(e *patEnv) []string { return []string{key(e.key + "/first")} }},
		{name: "dd-conv-fsync", cmd: func(e *patEnv) *exec.Cmd {
			return exec.Command("dd", "if="+e.src, "of="+e.path, "bs=4k", "conv=fsync", "status=none")
		}, want: patSrc},
		// O_DSYNC: the kernel sends a FUSE FSYNC after each write, which is
		// no fsync(2): the value is still published whole at the close.
		{name: "dd-oflag-dsync", cmd: func(e *patEnv) *exec.Cmd {
			return exec.Command("dd", "if="+e.src, "of="+e.path, "bs=64k", "oflag=dsync", "status=none")
		}, want: patSrc},
		{name: "touch", cmd: func(e *patEnv) *exec.Cmd { return exec.Command("touch", e.path) }, want: patLit("")},
		{name: "truncate", cmd: func(e *patEnv) *exec.Cmd { return exec.Command("truncate", "-s", "1000", e.path) },
			want: patLit(string(make([]byte, 1000)))},
		{name: "sort-o", cmd: func(e *patEnv) *exec.Cmd {
			in := filepath.Join(e.dir, "words")
			if err := os.WriteFile(in, []byte("gamma\nalpha\nbeta\n"), 0o644); err != nil {
				e.t.Fatal(err)
			}
			c := exec.Command("sort", "-o", e.path, in)
			c.Env = append(os.Environ(), "LC_ALL=C")
			return c
		}, want: patLit(sortedLines)},
	} {
		patRun(t, n, c)
	}
}

// Writers racing for one key, and writes to a key that already has a value.
func TestPatternsRacing(t *testing.T) {
	patNeed(t, "bash", "dash", "sleep", "/usr/bin/python3")
	n := newNode(t, "patterns-racing", nil, nodeOpts{})

	for round := range 3 {
		t.Run(fmt.Sprintf("two-shells-%d", round), func(t *testing.T) {
			e := patSetup(t, n, 0)
			st0, stErr := patStats(n)
			if stErr != nil {
				t.Errorf("%v", stErr)
			}
			script := `f="$1"; v="$2"
[ -e "$f" ] || { echo took >&2; echo "A$v"; sleep 0.1; echo "B$v"; } > "$f"`
			w := patWatch(e.path)
			type res struct {
				stderr string
				code   int
			}
			results := make([]res, 2)
			var wg sync.WaitGroup
			for i, shell := range []string{"bash", "dash"} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c := exec.Command(shell, "-c", script, "sh", e.path, fmt.Sprint(i+1))
					c.Dir = e.dir
					var stderr bytes.Buffer
					c.Stderr = &stderr
					err := c.Run()
					code := 0
					var ee *exec.ExitError
					if errors.As(err, &ee) {
						code = ee.ExitCode()
					} else if err != nil {
						code = -1
						stderr.WriteString(err.Error())
					}
					results[i] = res{stderr.String(), code}
				}()
			}
			wg.Wait()
			got, err := os.ReadFile(e.path)
			w.finish()
			for i, r := range results {
				if r.code != 0 {
					t.Errorf("writer %d exited %d: %s", i+1, r.code, r.stderr)
				}
			}
			if err != nil {
				t.Fatalf("after both writers: %v\ndaemon:\n%s", err, patDaemonTail(n))
			}
			if s := string(got); s != "A1\nB1\n" && s != "A2\nB2\n" {
				t.Errorf("published %q, want one writer's whole value", s)
			}
			w.check(t, got)
			took := 0
			for _, r := range results {
				if strings.Contains(r.stderr, "took") {
					took++
				}
			}
			t.Logf("%d of 2 writers opened the file", took)
			if took == 2 && stErr == nil {
				patCounterRose(t, n, "dropped.exists", st0.Dropped["exists"], func(w patWrites) int64 { return w.Dropped["exists"] })
			}
		})
	}

	t.Run("rewrite-existing", func(t *testing.T) {
		e := patSetup(t, n, 0)
		st0, stErr := patStats(n)
		if stErr != nil {
			t.Errorf("%v", stErr)
		}
		stdout, stderr, code := patExec(t, e, exec.Command("sh", "-c", `printf 'first\n' > "$1"; printf 'second\n' > "$1"; cat "$1"`, "sh", e.path))
		if code != 0 || stdout != "first\n" {
			t.Errorf("exit %d, stdout %q (want 0, \"first\\n\"), stderr %q", code, stdout, stderr)
		}
		if b, err := os.ReadFile(e.path); err != nil || string(b) != "first\n" {
			t.Errorf("value %q, %v; want the first writer's", b, err)
		}
		if stErr == nil {
			patCounterRose(t, n, "dropped.exists", st0.Dropped["exists"], func(w patWrites) int64 { return w.Dropped["exists"] })
		}
	})

	t.Run("open-modes-on-existing", func(t *testing.T) {
		e := patSetup(t, n, 0)
		_, stderr, code := patExec(t, e, patPy(`
import errno
with open(p, "wb") as f:
    f.write(b"first\n")
try:
    os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    raise SystemExit("O_EXCL on an existing entry succeeded")
except FileExistsError:
    pass
try:
    os.close(os.open(p, os.O_WRONLY))
    raise SystemExit("O_WRONLY without O_CREAT on an existing entry succeeded")
except PermissionError:
    pass
with open(p, "wb") as f:  # O_CREAT|O_TRUNC: succeeds, dropped at close
    f.write(b"second\n")
with open(p, "rb") as f:
    assert f.read() == b"first\n", "the first value must stay"
# A scratch file renamed onto the existing key: succeeds, the value stays.
fd, tmp = tempfile.mkstemp(dir=mnt)
os.write(fd, b"third\n")
os.close(fd)
os.replace(tmp, p)
assert not os.path.exists(tmp)
with open(p, "rb") as f:
    assert f.read() == b"first\n", "the first value must stay after a rename onto it"
`)(e))
		if code != 0 {
			t.Errorf("python: exit %d: %s", code, stderr)
		}
		if b, err := os.ReadFile(e.path); err != nil || string(b) != "first\n" {
			t.Errorf("value %q, %v; want the first writer's", b, err)
		}
	})
}
