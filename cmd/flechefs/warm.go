package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/sys/unix"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/config"
)

var warmCommand = &command{
	name:    "warm",
	summary: "fetch entries from the remote into the local tiers ahead of use",
	usage: `
Usage: flechefs warm [--jobs N] [--timeout DURATION] MOUNTPOINT [KEY...]

Fetches the named entries from the mount's remote tiers into its local
tiers, many at once, so that the reads that follow are local: before a job
that reads a known set of results, or before a machine leaves the network.
Keys are the entries' names (a path's last element is taken); with none on
the command line they are read from the standard input, one per line.
Progress shows as a bar when the standard error is a terminal, a line a
second otherwise.

An entry already in a local tier costs one lookup. Each other entry is
read through the mount, verified against its SHA-256 as every read is,
and copied into the first (RAM) tier at once and into the slower local
tiers when reads pause, as any read from the remote is.

Exit status 0 when every entry is local; 1 when some are missing (held by
no tier), failed, or are not local by --timeout: each is named on the
standard error.

Examples:
  flechefs warm /mnt/cache 3f5a...e1 9c2b...07
  ls /archive/run-42 | flechefs warm /mnt/cache
  flechefs warm --jobs 64 /mnt/cache < keys.txt
`,
	interspersed: true,
	setup: func(fs *flagSet) func(c *cli, args []string) int {
		jobs := fs.intFlag("jobs", 32, "entries fetched at once")
		timeout := fs.durationFlag("timeout", time.Hour, "give up on the entries not local after this long")
		quiet := fs.boolFlag("quiet", "print nothing but errors")
		return func(c *cli, args []string) int {
			if len(args) < 1 {
				return c.usageError("want a MOUNTPOINT")
			}
			if *jobs < 1 || *jobs > 1024 {
				return c.usageError("--jobs must be 1 to 1024, got %d", *jobs)
			}
			if *timeout <= 0 {
				return c.usageError("--timeout must be positive")
			}
			names := args[1:]
			if len(names) == 0 {
				var err error
				if names, err = readLines(c.stdin); err != nil {
					return c.fail("reading keys from the standard input: %v", err)
				}
			}
			var out io.Writer = c.stderr
			if *quiet {
				out = io.Discard
			}
			w := &warmer{mountpoint: args[0], jobs: *jobs, timeout: *timeout, out: out, tty: !*quiet && isTerminal(c.stderr)}
			res, err := w.run(names)
			if err != nil {
				return c.fail("%v", err)
			}
			for _, f := range res.failed {
				fmt.Fprintf(c.stderr, "flechefs warm: %s\n", f)
			}
			if len(res.failed) > 0 {
				return c.fail("%d of %d entries are not local", len(res.failed), res.total)
			}
			return exitOK
		}
	},
}

// readLines returns the non-empty lines of r, trimmed.
func readLines(r io.Reader) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out, sc.Err()
}

// warmer reads entries through a mount until they are in a local tier.
type warmer struct {
	mountpoint string
	jobs       int
	timeout    time.Duration
	out        io.Writer
	tty        bool
}

type warmResult struct {
	total, local, fetched int
	bytes                 int64
	failed                []string // "KEY: why", sorted
}

func (w *warmer) run(names []string) (*warmResult, error) {
	start := time.Now()
	if _, _, err := readStats(w.mountpoint); err != nil {
		return nil, err // not a flechefs mount
	}
	res := &warmResult{}
	var keys []string
	seen := map[string]bool{}
	for _, n := range names {
		k := filepath.Base(n)
		if _, err := digest.Parse(k); err != nil {
			res.failed = append(res.failed, fmt.Sprintf("%s: not a key: %v", n, err))
			continue
		}
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	res.total = len(keys) + len(res.failed)

	var bar *progressbar.ProgressBar
	if w.tty && len(keys) > 0 {
		bar = progressbar.NewOptions(len(keys),
			progressbar.OptionSetWriter(w.out),
			progressbar.OptionSetDescription("warming"),
			progressbar.OptionShowCount(),
			progressbar.OptionSetItsString("entries"),
			progressbar.OptionShowIts(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionFullWidth(),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(w.out) }),
		)
	}
	deadline := start.Add(w.timeout)
	var (
		mu            sync.Mutex
		done, fetched atomic.Int64
		bytes         atomic.Int64
		next          atomic.Int64
		wg            sync.WaitGroup
	)
	stopLines := make(chan struct{})
	linesDone := make(chan struct{})
	go func() { // a line a second without a terminal
		defer close(linesDone)
		if bar != nil || len(keys) == 0 {
			return
		}
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stopLines:
				return
			case <-t.C:
				fmt.Fprintf(w.out, "flechefs warm: %d of %d entries local, %d fetched (%s)\n",
					done.Load(), len(keys), fetched.Load(), config.FormatSize(bytes.Load()))
			}
		}
	}()
	for range min(w.jobs, len(keys)) {
		wg.Go(func() {
			buf := make([]byte, 1<<20)
			for {
				i := int(next.Add(1)) - 1
				if i >= len(keys) {
					return
				}
				k := keys[i]
				n, wasLocal, err := w.warmOne(k, buf, deadline)
				switch {
				case err != nil:
					mu.Lock()
					res.failed = append(res.failed, fmt.Sprintf("%s: %v", k, err))
					mu.Unlock()
				case !wasLocal:
					fetched.Add(1)
					bytes.Add(n)
				}
				done.Add(1)
				if bar != nil {
					bar.Add(1)
				}
			}
		})
	}
	wg.Wait()
	close(stopLines)
	<-linesDone
	if bar != nil {
		bar.Finish()
	}
	slices.Sort(res.failed)
	res.fetched, res.bytes = int(fetched.Load()), bytes.Load()
	res.local = len(keys) - (len(res.failed) - (res.total - len(keys)))
	fmt.Fprintf(w.out, "flechefs warm: %s: %d of %d entries local, %d fetched (%s) in %s\n",
		w.mountpoint, res.local, res.total, res.fetched, config.FormatSize(res.bytes), since(start, time.Now()))
	return res, nil
}

// warmOne makes entry k local: a lookup, and unless a local tier holds it
// already, a read through the mount; then it waits, until deadline, for a
// local tier to hold it (the copy into the first tier follows the read).
// It reports the bytes read and whether k was local before. Locality is
// user.flechefs.local, which asks no remote.
func (w *warmer) warmOne(k string, buf []byte, deadline time.Time) (int64, bool, error) {
	p := filepath.Join(w.mountpoint, k)
	isLocal := func() (bool, error) {
		v, err := getxattr(p, "user.flechefs.local")
		return v == "yes", err
	}
	// The lookup of a name only the remote holds opens it there, and a
	// value of at most 1 MiB is fetched at once: the read below joins it.
	ok, err := isLocal()
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, errors.New("missing: no tier holds it")
	}
	if err != nil {
		return 0, false, err
	}
	if ok {
		return 0, true, nil
	}
	f, err := os.Open(p)
	if err != nil {
		return 0, false, err
	}
	n, err := io.CopyBuffer(io.Discard, f, buf)
	f.Close()
	if err != nil {
		return n, false, err
	}
	for wait := time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		if ok, err := isLocal(); err != nil || ok {
			return n, false, err
		}
		if time.Now().After(deadline) {
			return n, false, errors.New("read, but not in a local tier by --timeout")
		}
		time.Sleep(wait)
	}
}

// getxattr reads the extended attribute name of path as a string.
func getxattr(path, name string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Getxattr(path, name, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, 2*len(buf))
			continue
		}
		if err != nil {
			return "", &os.PathError{Op: "getxattr", Path: path, Err: err}
		}
		return string(buf[:n]), nil
	}
}
