package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/flechefs/flechefs/internal/config"
	"github.com/flechefs/flechefs/tiers"
)

// A mount's retention: the passes over its bounded remotes (max_size,
// max_age), every prune_every and on demand (flechefs prune), and what the
// last pass of each found, for flechefs status. The control files
// .flechefs/prune, .flechefs/prune-dry-run and .flechefs/retention serve
// them to the commands.

const (
	pruneFile     = ".flechefs/prune"
	pruneDryFile  = ".flechefs/prune-dry-run"
	retentionFile = ".flechefs/retention"
)

// retained is one bounded remote tier of a mount.
type retained struct {
	name  string
	tier  tiers.Pruner
	bound tiers.Bound
	every time.Duration
}

// pruneResult is one tier's pass, as the control files say it.
type pruneResult struct {
	Tier     string            `json:"tier"`
	MaxBytes int64             `json:"max_bytes,omitempty"`
	MaxAge   string            `json:"max_age,omitempty"`
	At       time.Time         `json:"at"`
	Report   tiers.PruneReport `json:"report"`
	Error    string            `json:"error,omitempty"`
}

// retainer runs the passes of a mount.
type retainer struct {
	log   *slog.Logger
	tiers []retained
	mu    sync.Mutex
	last  map[string]pruneResult // under mu
}

func (r *retainer) add(t config.Tier, tr tiers.Pruner) {
	r.tiers = append(r.tiers, retained{name: t.Name, tier: tr, bound: retention(t), every: t.PruneEvery})
}

// retention is t's bound (off when it sets neither max_size nor max_age).
func retention(t config.Tier) tiers.Bound {
	return tiers.Bound{MaxBytes: t.MaxSize, MaxAge: t.MaxAge, Grace: t.PruneGrace}
}

// start runs each tier's passes every prune_every until ctx ends.
func (r *retainer) start(ctx context.Context) {
	for _, t := range r.tiers {
		go func() {
			tick := time.NewTicker(t.every)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				res := r.pass(ctx, t, false)
				if res.Error != "" && ctx.Err() == nil {
					r.log.Warn("flechefs: retention pass failed", "tier", t.name, "err", res.Error)
				}
			}
		}()
	}
}

// pass runs one tier's pass and remembers it (not a dry run's).
func (r *retainer) pass(ctx context.Context, t retained, dry bool) pruneResult {
	res := pruneResult{Tier: t.name, MaxBytes: t.bound.MaxBytes, At: time.Now()}
	if t.bound.MaxAge > 0 {
		res.MaxAge = t.bound.MaxAge.String()
	}
	rep, err := t.tier.Prune(ctx, t.bound, dry)
	res.Report = rep
	if err != nil {
		res.Error = err.Error()
	}
	if !dry && !errors.Is(err, tiers.ErrLeaseHeld) {
		r.mu.Lock()
		if r.last == nil {
			r.last = map[string]pruneResult{}
		}
		r.last[t.name] = res
		r.mu.Unlock()
	}
	return res
}

// ctl returns the control files: a pass now (dry or not) over every
// bounded tier, and the last passes.
func (r *retainer) ctl() map[string]func() ([]byte, error) {
	now := func(dry bool) func() ([]byte, error) {
		return func() ([]byte, error) {
			var out []pruneResult
			for _, t := range r.tiers {
				out = append(out, r.pass(context.Background(), t, dry))
			}
			return json.MarshalIndent(out, "", "  ")
		}
	}
	return map[string]func() ([]byte, error){
		"prune":         now(false),
		"prune-dry-run": now(true),
		"retention": func() ([]byte, error) {
			r.mu.Lock()
			defer r.mu.Unlock()
			out := []pruneResult{}
			for _, t := range r.tiers {
				if res, ok := r.last[t.name]; ok {
					out = append(out, res)
				} else {
					out = append(out, pruneResult{Tier: t.name, MaxBytes: t.bound.MaxBytes, MaxAge: durString(t.bound.MaxAge)})
				}
			}
			return json.MarshalIndent(out, "", "  ")
		},
	}
}

func durString(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return d.String()
}

var pruneCommand = &command{
	name:    "prune",
	summary: "remove the least recently used entries of a bounded remote now",
	usage: `
Usage: flechefs prune [--dry-run] [--json] MOUNTPOINT

Runs a retention pass now over every remote tier of the mount that has a
bound (max_size, max_age): the least recently used entries are removed
until the remote is under its bound. It never removes a file flechefs did
not write (adopted by a read or not), a key whose fleche <key>.lock exists,
an upload in progress, or an entry used less than prune_grace ago. One mount at a time
prunes a remote: if another holds the lease, this one says so and removes
nothing. The mount also runs a pass every prune_every by itself.

With --dry-run nothing is removed, and the entries a pass would remove are
listed, least recently used first.

Examples:
  flechefs prune --dry-run /mnt/cache
  flechefs prune /mnt/cache
`,
	interspersed: true,
	setup: func(fs *flagSet) func(c *cli, args []string) int {
		dry := fs.boolFlag("dry-run", "remove nothing; list what a pass would remove")
		asJSON := fs.boolFlag("json", "print the passes as JSON")
		return func(c *cli, args []string) int {
			if len(args) != 1 {
				return c.usageError("want one MOUNTPOINT, got %d arguments", len(args))
			}
			if _, _, err := readStats(args[0]); err != nil {
				return c.fail("%v", err)
			}
			file := pruneFile
			if *dry {
				file = pruneDryFile
			}
			raw, err := os.ReadFile(filepath.Join(args[0], file))
			if errors.Is(err, os.ErrNotExist) {
				return c.fail("%s has no remote tier with max_size or max_age: nothing to prune", args[0])
			}
			if err != nil {
				return c.fail("%v", err)
			}
			if *asJSON {
				c.stdout.Write(append(raw, '\n'))
				return exitOK
			}
			var res []pruneResult
			if err := json.Unmarshal(raw, &res); err != nil {
				return c.fail("%s: %v", file, err)
			}
			code := exitOK
			for _, r := range res {
				if !printPrune(c.stdout, r, *dry) {
					code = exitFail
				}
			}
			return code
		}
	},
}

// printPrune says what one pass did; false when it failed.
func printPrune(w io.Writer, r pruneResult, dry bool) bool {
	bound := describeBound(r)
	if r.Error != "" {
		fmt.Fprintf(w, "%s (%s): %s\n", r.Tier, bound, r.Error)
		// Another mount pruning is not a failure: the remote is being
		// brought under its bound.
		return strings.Contains(r.Error, tiers.ErrLeaseHeld.Error())
	}
	rep := r.Report
	verb := "removed"
	if dry {
		verb = "would remove"
	}
	fmt.Fprintf(w, "%s (%s): %d entries, %s of values; %s %d entries (%s), leaving %s; %d kept by prune_grace, %d not written by flechefs (%v)\n",
		r.Tier, bound, rep.Entries, config.FormatSize(rep.Bytes), verb, len(rep.Removed), config.FormatSize(rep.RemovedBytes),
		config.FormatSize(rep.Bytes-rep.RemovedBytes), rep.Kept, rep.Adopted, rep.Took.Round(time.Millisecond))
	if dry {
		for _, k := range rep.Removed {
			fmt.Fprintf(w, "  %s\n", k)
		}
	}
	return true
}

func describeBound(r pruneResult) string {
	var parts []string
	if r.MaxBytes > 0 {
		parts = append(parts, "max_size "+config.FormatSize(r.MaxBytes))
	}
	if r.MaxAge != "" {
		parts = append(parts, "max_age "+r.MaxAge)
	}
	if len(parts) == 0 {
		return "no bound"
	}
	return strings.Join(parts, ", ")
}
