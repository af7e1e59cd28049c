package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/flechefs/flechefs/internal/config"
	"github.com/flechefs/flechefs/tiers"
)

var syncCommand = &command{
	name:    "sync",
	summary: "wait until every entry of a mount is uploaded",
	usage: `
Usage: flechefs sync [--timeout DURATION] [--give-up DURATION] MOUNTPOINT

Waits until every entry published on the mount is in its persistent local
tier and uploaded to its remote tiers (the upload queue is empty), and every
delete made while a remote was unreachable is done there, showing
progress: a bar when the standard error is a terminal, a line a second
otherwise. Run it before switching a machine off, or in a job script after
the results are written.

Fails (exit status 1) after --timeout, or when uploads keep failing: no
entry uploaded for --give-up while attempts fail or a remote tier is
unavailable; it then shows the last upload error. Uploads go on in the
background either way.

Examples:
  flechefs sync /mnt/cache
  flechefs sync --timeout 1h /mnt/cache && shutdown -h now
`,
	interspersed: true,
	setup: func(fs *flagSet) func(c *cli, args []string) int {
		timeout := fs.durationFlag("timeout", 10*time.Minute, "fail when the queue is not empty after this long")
		giveUp := fs.durationFlag("give-up", time.Minute, "fail when no upload succeeds for this long while uploads fail or a remote is unavailable")
		quiet := fs.boolFlag("quiet", "print nothing but errors")
		return func(c *cli, args []string) int {
			if len(args) != 1 {
				return c.usageError("want one MOUNTPOINT, got %d arguments", len(args))
			}
			if *timeout <= 0 || *giveUp <= 0 {
				return c.usageError("--timeout and --give-up must be positive")
			}
			var out io.Writer = c.stderr
			if *quiet {
				out = io.Discard
			}
			s := &syncer{
				mountpoint: args[0], timeout: *timeout, giveUp: *giveUp,
				out: out, tty: !*quiet && isTerminal(c.stderr), interval: 200 * time.Millisecond,
				now: time.Now, sleep: time.Sleep,
			}
			if err := s.run(); err != nil {
				return c.fail("%v", err)
			}
			return exitOK
		}
	},
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// syncer polls a mount's stats until nothing is left to upload.
type syncer struct {
	mountpoint      string
	timeout, giveUp time.Duration
	out             io.Writer
	tty             bool
	interval        time.Duration
	now             func() time.Time
	sleep           func(time.Duration)
}

// left is what sync waits for.
func left(st *tiers.Stats) int64 { return st.Queue + st.Unpersisted + st.Deletes }

func (s *syncer) run() error {
	start := s.now()
	_, st, err := readStats(s.mountpoint)
	if err != nil {
		return err
	}
	if left(st) == 0 {
		fmt.Fprintf(s.out, "flechefs sync: %s: nothing to upload\n", s.mountpoint)
		return nil
	}
	total := left(st)
	var bar *progressbar.ProgressBar
	if s.tty {
		bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(s.out),
			progressbar.OptionSetDescription("uploading"),
			progressbar.OptionShowCount(),
			progressbar.OptionSetItsString("entries"),
			progressbar.OptionShowIts(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionFullWidth(),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(s.out) }),
		)
	}
	// Progress is an upload done or the queue shrinking; a stall is no
	// progress while uploads fail or a remote is down.
	lastProgress, lastLine := start, time.Time{}
	best, uploaded, errorsAt := left(st), st.Uploaded, st.UploadErrors
	for {
		n := left(st)
		now := s.now()
		if n < best || st.Uploaded > uploaded {
			best, uploaded, errorsAt, lastProgress = min(n, best), st.Uploaded, st.UploadErrors, now
		}
		if bar != nil {
			if n > total {
				total = n
				bar.ChangeMax64(total)
			}
			bar.Describe(describeSync(st))
			bar.Set64(total - n)
		} else if now.Sub(lastLine) >= time.Second || n == 0 {
			fmt.Fprintf(s.out, "flechefs sync: %s\n", describeSync(st))
			lastLine = now
		}
		if n == 0 {
			if bar != nil {
				bar.Finish()
			}
			fmt.Fprintf(s.out, "flechefs sync: %s: all uploaded (%s)\n", s.mountpoint, since(start, now))
			return nil
		}
		down := unavailable(st)
		if now.Sub(lastProgress) >= s.giveUp && (st.UploadErrors > errorsAt || down != "") {
			if bar != nil {
				bar.Exit()
				fmt.Fprintln(s.out)
			}
			reason := "uploads keep failing"
			if down != "" {
				reason = "remote tier " + down + " is unavailable"
			}
			msg := fmt.Sprintf("%s: nothing uploaded for %s: %d entries still waiting", reason, since(lastProgress, now), n)
			if st.LastUploadError != "" {
				msg += "; last upload error: " + oneLine(st.LastUploadError)
			}
			return fmt.Errorf("%s (uploads go on in the background)", msg)
		}
		if now.Sub(start) >= s.timeout {
			if bar != nil {
				bar.Exit()
				fmt.Fprintln(s.out)
			}
			msg := fmt.Sprintf("timed out after %s: %d entries still waiting", since(start, now), n)
			if st.LastUploadError != "" {
				msg += "; last upload error: " + oneLine(st.LastUploadError)
			}
			return fmt.Errorf("%s (uploads go on in the background)", msg)
		}
		s.sleep(s.interval)
		if _, st, err = readStats(s.mountpoint); err != nil {
			if bar != nil {
				bar.Exit()
				fmt.Fprintln(s.out)
			}
			return err
		}
	}
}

// describeSync is one line of progress.
func describeSync(st *tiers.Stats) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d waiting", st.Queue)
	if st.Unpersisted > 0 {
		fmt.Fprintf(&b, " (%d not yet on disk)", st.Unpersisted)
	}
	if st.Deletes > 0 {
		fmt.Fprintf(&b, ", %d remote deletes queued", st.Deletes)
	}
	fmt.Fprintf(&b, ", %d uploaded (%s)", st.Uploaded, config.FormatSize(st.UploadedBytes))
	if st.UploadErrors > 0 {
		fmt.Fprintf(&b, ", %d failed attempts", st.UploadErrors)
	}
	if down := unavailable(st); down != "" {
		fmt.Fprintf(&b, ", %s unavailable", down)
	}
	return b.String()
}

// unavailable names the writable remote tiers that are down.
func unavailable(st *tiers.Stats) string {
	var names []string
	for _, t := range st.Tiers {
		if t.Remote && !t.ReadOnly && !t.Available {
			names = append(names, t.Name)
		}
	}
	return strings.Join(names, ", ")
}

func since(a, b time.Time) string {
	return config.FormatDuration(b.Sub(a).Round(100 * time.Millisecond))
}
