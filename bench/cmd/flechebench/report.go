package main

import (
	"encoding/csv"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

type sample struct {
	unit string
	vals []float64
}

type results struct {
	order []string // "client\x00metric", in first-seen order
	m     map[string]*sample
}

func newResults() *results { return &results{m: map[string]*sample{}} }

func (r *results) add(client, metric, unit string, v float64) {
	k := client + "\x00" + metric
	s, ok := r.m[k]
	if !ok {
		s = &sample{unit: unit}
		r.m[k] = s
		r.order = append(r.order, k)
	}
	s.vals = append(s.vals, v)
}

func (r *results) get(client, metric string) (*sample, bool) {
	s, ok := r.m[client+"\x00"+metric]
	return s, ok && len(s.vals) > 0
}

func (s *sample) median() float64 {
	v := slices.Clone(s.vals)
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

func (s *sample) min() float64 { return slices.Min(s.vals) }
func (s *sample) max() float64 { return slices.Max(s.vals) }

func num(v float64) string {
	switch a := max(v, -v); {
	case a >= 1000:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'f', 3, 64)
	}
}

func (s *sample) String() string {
	if len(s.vals) == 1 {
		return num(s.vals[0])
	}
	return fmt.Sprintf("%s [%s–%s]", num(s.median()), num(s.min()), num(s.max()))
}

// target is one line of the table: ours versus a peer, or an
// absolute bound.
type target struct {
	what     string
	metric   string
	peer     string // "" for an absolute bound; "client:metric" for another metric of the peer
	need     float64
	lowerBad bool // the metric is a time or a size: the ratio is peer/ours
	// absolute: ours must be ≤ need (lowerBad) or ≥ need.
}

var targets = []target{
	{"warm read, large, vs go-fuse RAM ceiling", "warm.large", "memfs", 0.9, false},
	{"warm read, small files, vs sshfs", "warm.small", "sshfs", 5, false},
	{"warm read, small files, vs rclone", "warm.small", "rclone", 5, false},
	{"cold read, large, vs sftp get", "cold.large", "sftp", 0.9, false},
	{"cold read, large, vs sshfs", "cold.large", "sshfs", 1.7, false},
	{"cold read, small files, vs sshfs", "cold.small", "sshfs", 1.0, false},
	{"remount read, small files, vs rclone cache hits", "remount.small", "rclone", 3, false},
	{"remount read, large, vs rclone cache hits", "remount.large", "rclone", 3, false},
	{"stat of existing names vs rclone", "stat.existing", "rclone", 1.5, false},
	{"stat of missing names vs sshfs", "stat.missing", "sshfs", 1.0, false},
	{"write 2000 small, closed, vs sshfs", "write.small.close", "sshfs", 5, true},
	{"write 2000 small, closed, vs rclone", "write.small.close", "rclone", 5, true},
	{"write 2000 small, on the remote, vs sshfs", "write.small.remote", "sshfs", 1.5, true},
	{"write 512 MiB, closed, vs sshfs", "write.large.close", "sshfs", 2, true},
	{"write 512 MiB, on the remote, vs sftp put (within 1.3×)", "write.large.remote", "sftp", 1 / 1.3, true},
	{"peak RSS writing and reading 512 MiB, 64 MiB RAM tier (MiB)", "memory.hwm", "", 128, true},
	{"mount of a 1M-entry bbolt tier (s)", "scale.mount", "", 1, true},
	{"lookup of a hit, 1M entries, p99 (ms)", "scale.stat.p99", "", 1, true},
	{"slow link (20 ms each way): cold read, large, vs sshfs", "slow.cold.large", "sshfs", 3, false},
	{"slow link: cold read, small files one after another, vs sshfs", "slow.cold.small", "sshfs", 3, false},
	{"slow link: flechefs warm, then read, small files, vs sshfs cold", "slow.warmread.small", "sshfs:slow.cold.small", 20, false},
	{"S3 (SeaweedFS): cold read, large, vs rclone (S3 backend)", "s3.cold.large", "rclone", 1.5, false},
	{"S3 (SeaweedFS): write 2000 small, on the store, vs rclone", "s3.write.small.store", "rclone", 2, true},
}

func (b *bench) report() error {
	r := b.res
	var out strings.Builder
	w := io.MultiWriter(os.Stdout, &out)
	clients := []string{}
	metrics := []string{}
	units := map[string]string{}
	for _, k := range r.order {
		c, m, _ := strings.Cut(k, "\x00")
		if !slices.Contains(clients, c) {
			clients = append(clients, c)
		}
		if !slices.Contains(metrics, m) {
			metrics = append(metrics, m)
		}
		units[m] = r.m[k].unit
	}
	fmt.Fprintf(w, "\n## Figures (median [min–max] of %d runs; %s, %s)\n\n", b.opt.repeats, time.Now().Format("2006-01-02 15:04"), kernel())
	fmt.Fprintf(w, "| scenario | unit | %s |\n|---|---|%s\n", strings.Join(clients, " | "), strings.Repeat("---|", len(clients)))
	for _, m := range metrics {
		fmt.Fprintf(w, "| %s | %s |", m, units[m])
		for _, c := range clients {
			if s, ok := r.get(c, m); ok {
				fmt.Fprintf(w, " %s |", s)
			} else {
				fmt.Fprint(w, " – |")
			}
		}
		fmt.Fprintln(w)
	}

	// Ratios of flechefs to every peer, for every shared metric.
	fmt.Fprintf(w, "\n## flechefs ÷ each peer (medians; > 1 means flechefs is better; times and sizes inverted)\n\n")
	peers := slices.DeleteFunc(slices.Clone(clients), func(c string) bool { return c == "flechefs" })
	fmt.Fprintf(w, "| scenario | %s |\n|---|%s\n", strings.Join(peers, " | "), strings.Repeat("---|", len(peers)))
	for _, m := range metrics {
		ours, ok := r.get("flechefs", m)
		if !ok || strings.Contains(m, "machine.") { // the machine's state, not a client's speed
			continue
		}
		fmt.Fprintf(w, "| %s |", m)
		for _, p := range peers {
			if ps, ok := r.get(p, m); ok {
				fmt.Fprintf(w, " %s× |", num(ratio(ours.median(), ps.median(), units[m] == "s" || units[m] == "ms" || units[m] == "MiB")))
			} else {
				fmt.Fprint(w, " – |")
			}
		}
		fmt.Fprintln(w)
	}

	fmt.Fprintf(w, "\n## Targets\n\n| target | flechefs | peer | ratio | needed | met |\n|---|---|---|---|---|---|\n")
	for _, t := range targets {
		ours, ok := r.get("flechefs", t.metric)
		if !ok {
			continue
		}
		if t.peer == "" {
			met := ours.median() >= t.need
			rel := "≥"
			if t.lowerBad {
				met, rel = ours.median() <= t.need, "≤"
			}
			fmt.Fprintf(w, "| %s | %s | | | %s %s | %s |\n", t.what, ours, rel, num(t.need), r.verdict(met, t.steal(), "flechefs"))
			continue
		}
		// "client:metric" compares with another metric of the peer.
		peerName, peerMetric, other := strings.Cut(t.peer, ":")
		if !other {
			peerMetric = t.metric
		}
		peer, ok := r.get(peerName, peerMetric)
		if !ok {
			continue
		}
		q := ratio(ours.median(), peer.median(), t.lowerBad)
		fmt.Fprintf(w, "| %s | %s %s | %s | %s× | ≥ %s× | %s |\n", t.what, ours, ours.unit, peer, num(q), num(t.need), r.verdict(q >= t.need, t.steal(), "flechefs", peerName))
	}
	if err := os.MkdirAll(b.opt.out, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(b.opt.out, "latest.md"), []byte(out.String()), 0o644); err != nil {
		return err
	}
	return b.writeCSV(filepath.Join(b.opt.out, "latest.csv"))
}

// steal is the metric of the steal while t's clients were measured: the
// s3 phase records its own.
func (t target) steal() string {
	if strings.HasPrefix(t.metric, "s3.") {
		return "s3.machine.steal"
	}
	return "machine.steal"
}

// ratio is ours/peer, or peer/ours when lower is better.
func ratio(ours, peer float64, lowerBetter bool) float64 {
	if lowerBetter {
		return peer / ours
	}
	return ours / peer
}

// maxSteal is the most steal (the share of CPU time the hypervisor gave to
// other VMs) under which a run of a client counts as measured on a quiet
// host.
const maxSteal = 5.0

// verdict says whether a target is met, or "host too busy" when a run of
// one of the clients compared had more than maxSteal percent steal: a
// ratio is then a measure of the host as much as of the clients.
func (r *results) verdict(met bool, steal string, clients ...string) string {
	for _, c := range clients {
		if st, ok := r.get(c, steal); ok && slices.Max(st.vals) > maxSteal {
			return fmt.Sprintf("host too busy (%s: %.0f%% steal)", c, slices.Max(st.vals))
		}
	}
	return yes(met)
}

func yes(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

func (b *bench) writeCSV(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	w.Write([]string{"client", "scenario", "unit", "runs", "median", "min", "max", "samples"})
	for _, k := range b.res.order {
		c, m, _ := strings.Cut(k, "\x00")
		s := b.res.m[k]
		var vals []string
		for _, v := range s.vals {
			vals = append(vals, strconv.FormatFloat(v, 'g', 6, 64))
		}
		w.Write([]string{c, m, s.unit, strconv.Itoa(len(s.vals)),
			strconv.FormatFloat(s.median(), 'g', 6, 64), strconv.FormatFloat(s.min(), 'g', 6, 64),
			strconv.FormatFloat(s.max(), 'g', 6, 64), strings.Join(vals, " ")})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	b.logf("results: %s and %s", path, filepath.Join(filepath.Dir(path), "latest.md"))
	return f.Close()
}
