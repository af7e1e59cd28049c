package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/flechefs/flechefs/fs"
	"github.com/flechefs/flechefs/tiers"
)

// metrics serves a mount's Prometheus metrics (the metrics config key):
// latency histograms fed as requests happen (the tiers' operations and the
// FUSE requests), and every count of .flechefs/stats read at each scrape.
type metrics struct {
	reg     *prometheus.Registry
	tierOps *prometheus.HistogramVec
	fuseOps *prometheus.HistogramVec
	ln      net.Listener
	srv     *http.Server
	stats   func() fs.MountStats // set once mounted
}

// latencyBuckets span a page-cache hit (tens of µs) to a slow remote
// transfer (a minute).
var latencyBuckets = prometheus.ExponentialBuckets(25e-6, 4, 12)

// newMetrics listens on addr (so that a taken port fails the mount before
// it starts) and prepares the collectors; serve starts answering.
func newMetrics(addr string) (*metrics, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	m := &metrics{reg: prometheus.NewRegistry(), ln: ln}
	m.tierOps = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "flechefs_tier_operation_duration_seconds",
		Help:    "Time of tier operations: stat and open (local tiers), lookup, fetch and upload (remote tiers); result is ok, miss or error.",
		Buckets: latencyBuckets,
	}, []string{"tier", "op", "result"})
	m.fuseOps = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "flechefs_fuse_request_duration_seconds",
		Help:    "Time the daemon took to answer FUSE requests, by request and errno (0: success, 2: ENOENT).",
		Buckets: latencyBuckets,
	}, []string{"op", "errno"})
	m.reg.MustRegister(m.tierOps, m.fuseOps, statsCollector{m},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m, nil
}

// observeTier is tiers.StackOptions.Observe.
func (m *metrics) observeTier(tier, op string, took time.Duration, err error) {
	result := "ok"
	switch {
	case errors.Is(err, tiers.ErrNotFound):
		result = "miss"
	case err != nil:
		result = "error"
	}
	m.tierOps.WithLabelValues(tier, op, result).Observe(took.Seconds())
}

// observeFUSE is fs.Options.Observe.
func (m *metrics) observeFUSE(op string, took time.Duration, errno uintptr) {
	m.fuseOps.WithLabelValues(op, strconv.FormatUint(uint64(errno), 10)).Observe(took.Seconds())
}

// serve answers /metrics with stats' counts until shutdown.
func (m *metrics) serve(stats func() fs.MountStats, log *slog.Logger) {
	m.stats = stats
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	m.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := m.srv.Serve(m.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("flechefs: metrics endpoint stopped", "err", err)
		}
	}()
	log.Info("flechefs: serving metrics", "url", "http://"+m.ln.Addr().String()+"/metrics")
}

func (m *metrics) shutdown() {
	if m.srv == nil {
		m.ln.Close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	m.srv.Shutdown(ctx)
}

// statsCollector turns .flechefs/stats into metrics at each scrape.
type statsCollector struct{ m *metrics }

type metricDesc struct {
	d    *prometheus.Desc
	kind prometheus.ValueType
}

func newDesc(name, help string, kind prometheus.ValueType, labels ...string) metricDesc {
	return metricDesc{prometheus.NewDesc(name, help, labels, nil), kind}
}

var (
	tierLabel = "tier"
	mTierHits = newDesc("flechefs_tier_hits_total", "Opens served by the tier.", prometheus.CounterValue, tierLabel)
	mTierMiss = newDesc("flechefs_tier_misses_total", "Opens that found no copy in the tier and went on to a slower one, and lookups of keys no tier holds.", prometheus.CounterValue, tierLabel)
	mTierRead = newDesc("flechefs_tier_read_bytes_total", "Bytes read from the tier.", prometheus.CounterValue, tierLabel)
	mTierWrit = newDesc("flechefs_tier_written_bytes_total", "Bytes written into the tier (publishes, promotions, uploads).", prometheus.CounterValue, tierLabel)
	mTierProm = newDesc("flechefs_tier_promotions_total", "Values copied into the tier from a slower one.", prometheus.CounterValue, tierLabel)
	mTierEvic = newDesc("flechefs_tier_evictions_total", "Values the tier evicted to stay within its size.", prometheus.CounterValue, tierLabel)
	mTierCorr = newDesc("flechefs_tier_corruptions_total", "Damaged copies found in the tier (never served).", prometheus.CounterValue, tierLabel)
	mTierQuar = newDesc("flechefs_tier_quarantined_total", "Damaged remote copies moved to the tier's quarantine.", prometheus.CounterValue, tierLabel)
	mTierErrs = newDesc("flechefs_tier_errors_total", "Unexpected errors of the tier (not misses).", prometheus.CounterValue, tierLabel)
	mTierEnts = newDesc("flechefs_tier_entries", "Entries the tier holds (local tiers).", prometheus.GaugeValue, tierLabel)
	mTierUsed = newDesc("flechefs_tier_used_bytes", "Bytes of values the tier holds (local tiers).", prometheus.GaugeValue, tierLabel)
	mTierLim  = newDesc("flechefs_tier_limit_bytes", "The tier's configured size.", prometheus.GaugeValue, tierLabel)
	mTierUp   = newDesc("flechefs_tier_up", "1 when the tier is available, 0 when it is unreachable or failed.", prometheus.GaugeValue, tierLabel)

	mQueue     = newDesc("flechefs_upload_queue_entries", "Entries waiting to be uploaded to the remote tiers.", prometheus.GaugeValue)
	mQueueAge  = newDesc("flechefs_upload_queue_oldest_age_seconds", "How long the entry waiting longest has waited (0 when the queue is empty).", prometheus.GaugeValue)
	mUploads   = newDesc("flechefs_uploads_total", "Entries uploaded to the remote tiers.", prometheus.CounterValue)
	mUpBytes   = newDesc("flechefs_uploaded_bytes_total", "Bytes uploaded to the remote tiers.", prometheus.CounterValue)
	mUpFails   = newDesc("flechefs_upload_failures_total", "Failed upload attempts (each is retried).", prometheus.CounterValue)
	mConflicts = newDesc("flechefs_conflicts_total", "Keys whose upload found another value on the remote (this mount dropped its own).", prometheus.CounterValue)
	mUnpersist = newDesc("flechefs_unpersisted_entries", "Published entries not yet in the persistent local tier.", prometheus.GaugeValue)
	mDeletes   = newDesc("flechefs_queued_deletes", "Deletes waiting for the remote.", prometheus.GaugeValue)
	mFetching  = newDesc("flechefs_fetches_in_progress", "Remote fetches running.", prometheus.GaugeValue)
	mPublished = newDesc("flechefs_published_total", "Values written through the mount and published.", prometheus.CounterValue)
	mDropped   = newDesc("flechefs_dropped_values_total", "Values written and not published, by reason.", prometheus.CounterValue, "reason")
)

var allDescs = []metricDesc{mTierHits, mTierMiss, mTierRead, mTierWrit, mTierProm, mTierEvic, mTierCorr, mTierQuar,
	mTierErrs, mTierEnts, mTierUsed, mTierLim, mTierUp, mQueue, mQueueAge, mUploads, mUpBytes, mUpFails, mConflicts,
	mUnpersist, mDeletes, mFetching, mPublished, mDropped}

func (c statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d.d
	}
}

func (c statsCollector) Collect(ch chan<- prometheus.Metric) {
	if c.m.stats == nil {
		return // not mounted yet
	}
	st := c.m.stats()
	put := func(d metricDesc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d.d, d.kind, v, labels...)
	}
	for _, t := range st.Tiers {
		put(mTierHits, float64(t.Hits), t.Name)
		put(mTierMiss, float64(t.Misses), t.Name)
		put(mTierRead, float64(t.BytesOut), t.Name)
		put(mTierWrit, float64(t.BytesIn), t.Name)
		put(mTierProm, float64(t.Promotions), t.Name)
		put(mTierEvic, float64(t.Evictions), t.Name)
		put(mTierCorr, float64(t.Corruptions), t.Name)
		put(mTierQuar, float64(t.Quarantined), t.Name)
		put(mTierErrs, float64(t.Errors), t.Name)
		if !t.Remote {
			put(mTierEnts, float64(t.Entries), t.Name)
			put(mTierUsed, float64(t.Bytes), t.Name)
		}
		if t.Limit > 0 {
			put(mTierLim, float64(t.Limit), t.Name)
		}
		up := 0.0
		if t.Available && t.Failed == "" {
			up = 1
		}
		put(mTierUp, up, t.Name)
	}
	age := 0.0
	if !st.QueueOldest.IsZero() {
		age = time.Since(st.QueueOldest).Seconds()
	}
	put(mQueue, float64(st.Queue))
	put(mQueueAge, age)
	put(mUploads, float64(st.Uploaded))
	put(mUpBytes, float64(st.UploadedBytes))
	put(mUpFails, float64(st.UploadErrors))
	put(mConflicts, float64(st.Conflicts))
	put(mUnpersist, float64(st.Unpersisted))
	put(mDeletes, float64(st.Deletes))
	put(mFetching, float64(st.Fetching))
	put(mPublished, float64(st.Writes.Published))
	d := st.Writes.Dropped
	for reason, n := range map[string]int64{"killed": d.Killed, "failed_exit": d.FailedExit, "write_error": d.WriteError,
		"exists": d.Exists, "publish_error": d.PublishError} {
		put(mDropped, float64(n), reason)
	}
}
