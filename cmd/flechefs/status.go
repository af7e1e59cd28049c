package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	flfs "github.com/flechefs/flechefs/fs"
	"github.com/flechefs/flechefs/internal/config"
	"github.com/flechefs/flechefs/tiers"
)

// statsFile is the control file a mount serves its counters in.
const statsFile = ".flechefs/stats"

var statusCommand = &command{
	name:    "status",
	summary: "show the tiers, hit rates and upload queue of a mount",
	usage: `
Usage: flechefs status [--json] MOUNTPOINT

Shows, for each tier of the mount: the entries and bytes it holds against
its limit, hits, misses and hit rate, promotions into it, evictions,
corrupt copies found, errors and whether it is available; then the upload
queue: entries waiting, entries uploaded and the last upload error. The
numbers come from MOUNTPOINT/.flechefs/stats and count since the mount.

Examples:
  flechefs status /mnt/cache
  flechefs status --json /mnt/cache | jq .queue
`,
	interspersed: true,
	setup: func(fs *flagSet) func(c *cli, args []string) int {
		asJSON := fs.boolFlag("json", "print the raw JSON of .flechefs/stats")
		return func(c *cli, args []string) int {
			if len(args) != 1 {
				return c.usageError("want one MOUNTPOINT, got %d arguments", len(args))
			}
			raw, st, w, err := readMountStats(args[0])
			if err != nil {
				return c.fail("%v", err)
			}
			if *asJSON {
				c.stdout.Write(raw)
				if len(raw) > 0 && raw[len(raw)-1] != '\n' {
					fmt.Fprintln(c.stdout)
				}
				return exitOK
			}
			printStatus(c.stdout, st)
			printWrites(c.stdout, w)
			printRetention(c.stdout, args[0])
			return exitOK
		}
	},
}

// readStats reads and decodes the stack's part of MOUNTPOINT/.flechefs/stats.
func readStats(mountpoint string) ([]byte, *tiers.Stats, error) {
	raw, st, _, err := readMountStats(mountpoint)
	return raw, st, err
}

// readMountStats reads and decodes MOUNTPOINT/.flechefs/stats.
func readMountStats(mountpoint string) ([]byte, *tiers.Stats, *flfs.WriteStats, error) {
	p := filepath.Join(mountpoint, statsFile)
	raw, err := os.ReadFile(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if _, statErr := os.Stat(mountpoint); statErr != nil {
				return nil, nil, nil, statErr
			}
			return nil, nil, nil, fmt.Errorf("%s is not a flechefs mount (it has no %s)", mountpoint, statsFile)
		}
		return nil, nil, nil, err
	}
	var st flfs.MountStats
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %v", p, err)
	}
	return raw, &st.Stats, &st.Writes, nil
}

// printWrites shows what became of the values written through the mount.
func printWrites(w io.Writer, ws *flfs.WriteStats) {
	d := ws.Dropped
	fmt.Fprintf(w, "written:          %d published, %d scratch files\n", ws.Published, ws.Scratch)
	if n := d.Killed + d.FailedExit + d.WriteError + d.Exists + d.PublishError; n > 0 {
		fmt.Fprintf(w, "dropped values:   %d (%d killed writers, %d failed exits, %d failed writes, %d keys that existed, %d failed publishes)\n",
			n, d.Killed, d.FailedExit, d.WriteError, d.Exists, d.PublishError)
	}
}

func printStatus(w io.Writer, st *tiers.Stats) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIER\tWHERE\tENTRIES\tUSED\tLIMIT\tFILL\tHITS\tMISSES\tHIT RATE\tPROMOTED\tEVICTED\tCORRUPT\tERRORS\tSTATE")
	for _, t := range st.Tiers {
		where := "local"
		if t.Remote {
			where = "remote"
		}
		if t.ReadOnly {
			where += ",ro"
		}
		limit, fill := "-", "-"
		if t.Limit > 0 {
			limit = config.FormatSize(t.Limit)
			fill = percent(t.Bytes, t.Limit)
		}
		used := config.FormatSize(t.Bytes)
		entries := strconv.FormatInt(t.Entries, 10)
		if t.Remote && t.Entries == 0 && t.Bytes == 0 {
			used, entries = "-", "-" // not counted for remote tiers
		}
		state := "ok"
		if !t.Available {
			state = "UNAVAILABLE"
		}
		if t.Failed != "" {
			state = "FAILED"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%d\t%d\t%d\t%d\t%s\n",
			t.Name, where, entries, used, limit, fill, t.Hits, t.Misses,
			percent(t.Hits, t.Hits+t.Misses), t.Promotions, t.Evictions, t.Corruptions, t.Errors, state)
	}
	tw.Flush()
	for _, t := range st.Tiers {
		switch {
		case t.Failed != "":
			fmt.Fprintf(w, "tier %s FAILED: %s\n", t.Name, oneLine(t.Failed))
		case !t.Available && t.LastError != "":
			fmt.Fprintf(w, "tier %s UNAVAILABLE: %s\n", t.Name, oneLine(t.LastError))
		}
	}

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	fmt.Fprintf(tw, "upload queue:\t%d waiting", st.Queue)
	if st.Unpersisted > 0 {
		fmt.Fprintf(tw, ", %d not yet on local disk", st.Unpersisted)
	}
	fmt.Fprintln(tw)
	if st.Deletes > 0 {
		fmt.Fprintf(tw, "queued deletes:\t%d removed here, to remove from the remote when it is reachable\n", st.Deletes)
	}
	fmt.Fprintf(tw, "uploaded:\t%d (%s), %d failed attempts, %d conflicts\n",
		st.Uploaded, config.FormatSize(st.UploadedBytes), st.UploadErrors, st.Conflicts)
	// A line of its own, even at 0: a value this mount wrote and the
	// remote refused is one that this mount no longer serves.
	fmt.Fprintf(tw, "conflicts:\t%d (the remote held another value of a key written here; this mount dropped its own and reads the remote's)\n", st.Conflicts)
	if st.LastUploadError != "" {
		fmt.Fprintf(tw, "last upload error:\t%s\n", oneLine(st.LastUploadError))
	}
	if st.DroppedPublishes > 0 {
		fmt.Fprintf(tw, "dropped publishes:\t%d (the key existed: first writer wins)\n", st.DroppedPublishes)
	}
	if st.Fetching > 0 {
		fmt.Fprintf(tw, "fetching:\t%d from remote tiers\n", st.Fetching)
	}
	if st.Deferred > 0 {
		fmt.Fprintf(tw, "deferred copies:\t%d fetched values wait for a pause in reads to be copied into the local tiers\n", st.Deferred)
	}
	for _, t := range st.Tiers {
		if t.Quarantined > 0 || t.Unquarantined > 0 {
			fmt.Fprintf(tw, "quarantined:\t%d damaged copies in %s moved to .flechefs/quarantine, %d left in place unserved\n",
				t.Quarantined, t.Name, t.Unquarantined)
		}
	}
	for _, t := range st.Tiers {
		if t.Listings > 0 {
			fmt.Fprintf(tw, "listed misses:\t%d in %s without a round trip (%d listings)\n", t.ListedMisses, t.Name, t.Listings)
		}
	}
	tw.Flush()
}

// percent formats n/d as "12.5%", or "-" when d is 0.
func percent(n, d int64) string {
	if d <= 0 {
		return "-"
	}
	return strconv.FormatFloat(100*float64(n)/float64(d), 'f', 1, 64) + "%"
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// printRetention shows each bounded remote's bound and last pass, when
// the mount has one (.flechefs/retention).
func printRetention(w io.Writer, mountpoint string) {
	raw, err := os.ReadFile(filepath.Join(mountpoint, retentionFile))
	if err != nil {
		return
	}
	var res []pruneResult
	if json.Unmarshal(raw, &res) != nil {
		return
	}
	for _, r := range res {
		fmt.Fprintf(w, "retention:        %s (%s): ", r.Tier, describeBound(r))
		switch {
		case r.At.IsZero():
			fmt.Fprintln(w, "no pass yet")
		case r.Error != "":
			fmt.Fprintf(w, "last pass %s failed: %s\n", r.At.Format(time.DateTime), r.Error)
		default:
			rep := r.Report
			fmt.Fprintf(w, "%s of values in %d entries at the last pass (%s), which removed %d (%s)\n",
				config.FormatSize(rep.Bytes-rep.RemovedBytes), rep.Entries-len(rep.Removed), r.At.Format(time.DateTime),
				len(rep.Removed), config.FormatSize(rep.RemovedBytes))
		}
	}
}
