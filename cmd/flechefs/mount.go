package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/flechefs/flechefs/fs"
	"github.com/flechefs/flechefs/internal/config"
	"github.com/flechefs/flechefs/internal/mountinfo"
	"github.com/flechefs/flechefs/internal/pagemem"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/bolt"
	"github.com/flechefs/flechefs/tiers/memory"
	"github.com/flechefs/flechefs/tiers/s3"
	"github.com/flechefs/flechefs/tiers/sftp"
)

var mountCommand = &command{
	name:    "mount",
	summary: "mount a cache on a directory (in the foreground, or --background)",
	usage: `
Usage: flechefs mount [--config FILE] [flags] MOUNTPOINT

Mounts the tiered cache on MOUNTPOINT and serves it until it is unmounted
(flechefs umount, fusermount3 -u) or the process gets SIGINT, SIGTERM or
SIGHUP.
It runs in the foreground and logs to the standard error (--log-file,
--syslog); when the mount is ready it prints one line:

  flechefs: mounted MOUNTPOINT (tiers: ram 256MiB, bolt 10GiB, ...)

and, under systemd (Type=notify), says READY=1. With --background it
returns once the mount is live and the daemon runs on, logging to a file
(or syslog) and writing a pid file; if the daemon fails first, the command
fails with its message. mount(8) runs flechefs as a mount helper ("mount
-t fuse.flechefs CONFIG|none MOUNTPOINT -o OPTIONS", or a line of
/etc/fstab): a background mount whose options are these flags with _ for
-, e.g. -o ram=1GiB,allow_other,log_file=/var/log/flechefs.log.

The tiers come from the configuration (--config FILE, else
$XDG_CONFIG_HOME/flechefs/config.toml if it exists, else a RAM tier of
256MiB over a bbolt file of 10GiB in $XDG_CACHE_HOME/flechefs; see
'flechefs config --default'); the flags below override it. A remote tier
connects when first needed: if it is down, the mount works from the local
tiers and new entries wait in the upload queue.

On a signal it unmounts (waiting up to 5s for a busy mount, then
detaching it lazily), finishes writing new entries to the local tiers,
closes the database and exits 0. Entries not yet uploaded are uploaded at
the next mount; run 'flechefs sync' first to upload them now. A second
signal exits at once.

Examples:
  flechefs mount /mnt/cache
  flechefs mount --remote sftp://me@nas.example.org/srv/flechefs /mnt/cache
  AWS_ENDPOINT_URL=https://s3.example.org flechefs mount --remote s3://my-bucket/cache /mnt/cache
  flechefs mount --ram 1GiB --bolt /scratch/cache.db --bolt-size 200GiB /mnt/cache
  flechefs mount --config ./ci.toml --debug /mnt/cache
  flechefs mount --background /mnt/cache
  mount -t fuse.flechefs /etc/flechefs/config.toml /mnt/cache -o allow_other
`,
	interspersed: true,
	setup: func(fs *flagSet) func(c *cli, args []string) int {
		cf := addConfigFlags(fs)
		debug := fs.boolFlag("debug", "log at debug level")
		debugFUSE := fs.boolFlag("debug-fuse", "log every FUSE request and reply (very verbose)")
		logJSON := fs.boolFlag("log-json", "log JSON lines instead of text")
		bg := fs.boolFlag("background", "detach once the mount is live: the daemon runs on in a session of its own, logs to --log-file (or --syslog) and writes --pid-file; exits non-zero with the daemon's error if it fails first")
		logFile := fs.stringFlag("log-file", "FILE", "", "log to FILE instead of the standard error (with --background: default $XDG_STATE_HOME/flechefs/mnt-cache.log for /mnt/cache, in ~/.local/state when XDG_STATE_HOME is unset)")
		useSyslog := fs.boolFlag("syslog", "log to the system log (syslog, or the journal through /dev/log)")
		pidPath := fs.stringFlag("pid-file", "FILE", "", "write the daemon's pid to FILE while it runs (with --background: default next to the log, mnt-cache.pid)")
		// Hidden (not in --help): a CPU profile of the whole mount, for
		// the benchmark (bench/README.md).
		cpuProfile := fs.String("cpuprofile", "", "")
		return func(c *cli, args []string) int {
			if len(args) != 1 {
				return c.usageError("want one MOUNTPOINT, got %d arguments", len(args))
			}
			cfg, code := cf.load(c)
			if cfg == nil {
				return code
			}
			if *bg {
				return startBackground(c, args[0], &background{logFile: *logFile, syslog: *useSyslog, pidFile: *pidPath})
			}
			logTo := c.stderr
			switch {
			case *useSyslog:
				w, err := syslogWriter()
				if err != nil {
					return c.fail("--syslog: %v", err)
				}
				logTo = w
			case *logFile != "":
				f, err := os.OpenFile(*logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
				if err != nil {
					return c.fail("--log-file: %v", err)
				}
				defer f.Close()
				logTo = f
			}
			level := slog.LevelInfo
			if *debug || *debugFUSE {
				level = slog.LevelDebug
			}
			hopt := &slog.HandlerOptions{Level: level}
			var h slog.Handler = slog.NewTextHandler(logTo, hopt)
			if *logJSON {
				h = slog.NewJSONHandler(logTo, hopt)
			}
			m := &mounter{cli: c, cfg: cfg, log: slog.New(h), debugFUSE: *debugFUSE, pidFile: pidFile(*pidPath),
				logElsewhere: *useSyslog || *logFile != ""}
			if *cpuProfile != "" {
				f, err := os.Create(*cpuProfile)
				if err != nil {
					return m.fail("--cpuprofile: %v", err)
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					f.Close()
					return m.fail("--cpuprofile: %v", err)
				}
				defer f.Close()
				defer pprof.StopCPUProfile()
			}
			return m.run(args[0])
		}
	},
}

// mounter runs one mount.
type mounter struct {
	*cli
	cfg       *config.Config
	log       *slog.Logger
	debugFUSE bool
	metrics   *metrics // nil: no metrics endpoint
	pidFile   pidFile  // "": none
	retainer  retainer // retention passes of the bounded remotes
	// logElsewhere: the log goes to a file or syslog, not with the
	// lines printed on the standard error.
	logElsewhere bool
}

// observeTier is the stack's Observe: the metrics', or none.
func (m *mounter) observeTier() func(tier, op string, took time.Duration, err error) {
	if m.metrics == nil {
		return nil
	}
	return m.metrics.observeTier
}

func (m *mounter) run(dir string) int {
	mnt, err := filepath.Abs(dir)
	if err != nil {
		return m.fail("%v", err)
	}
	if err := checkMountpoint(mnt); err != nil {
		return m.fail("%v", err)
	}
	if err := m.pidFile.write(); err != nil {
		return m.fail("%v", err)
	}
	defer m.pidFile.remove()
	// From now on a signal stops the mount cleanly: one that arrives
	// while the tiers open is handled once the mount is up.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	m.log.Info("flechefs: starting", "version", versionString(), "config", m.cfg.File, "mountpoint", mnt)
	for _, w := range m.cfg.Warnings {
		m.log.Warn("flechefs: config: " + w)
	}

	m.limitMemory()
	m.adviseHeap()
	if m.cfg.Metrics != "" {
		mt, err := newMetrics(m.cfg.Metrics)
		if err != nil {
			return m.fail("%v", err)
		}
		m.metrics = mt
		defer mt.shutdown()
	}
	st, remotes, err := m.openStack()
	if err != nil {
		return m.fail("%v", err)
	}
	srv, err := fs.Mount(mnt, st, m.fsOptions())
	if err != nil {
		m.closeStack(st)
		return m.fail("%v", err)
	}
	if m.metrics != nil {
		m.metrics.serve(srv.Stats, m.log)
	}
	fmt.Fprintf(m.stderr, "flechefs: mounted %s (tiers: %s)\n", mnt, m.cfg.Describe())
	if m.logElsewhere {
		m.log.Info("flechefs: mounted", "mountpoint", mnt, "tiers", m.cfg.Describe())
	}
	notifyReady()
	for _, r := range remotes {
		go m.probe(r)
	}
	retainCtx, stopRetain := context.WithCancel(context.Background())
	defer stopRetain()
	m.retainer.log = m.log
	m.retainer.start(retainCtx)

	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()

	select {
	case <-done:
		m.log.Info("flechefs: unmounted from outside", "mountpoint", mnt)
	case sig := <-sigs:
		m.log.Info("flechefs: unmounting", "signal", sig.String(), "mountpoint", mnt)
		if !m.unmount(srv, mnt, done, sigs) {
			return exitFail
		}
	}
	stopRetain() // a pass under way ends with its next request
	notifyStopping()
	closed := make(chan error, 1)
	go func() { closed <- m.closeStack(st) }()
	slow := time.AfterFunc(2*time.Second, func() {
		m.log.Info("flechefs: finishing writes to the local tiers (signal again to exit now)")
	})
	defer slow.Stop()
	select {
	case err := <-closed:
		if err != nil {
			return exitFail
		}
	case sig := <-sigs:
		m.log.Error("flechefs: second signal: exiting before the tiers are closed; new entries may not be on disk", "signal", sig.String())
		return exitFail
	}
	fmt.Fprintf(m.stderr, "flechefs: unmounted %s\n", mnt)
	return exitOK
}

// memoryHeadroom is what the daemon may use besides its memory tiers
// before the garbage collector works harder: FUSE buffers, in-memory
// spools, copies between tiers. The resident set peaks about 20 MiB above
// the limit (the binary's pages, memory the collector has not returned
// yet): with 40 MiB, a daemon with a full 64 MiB RAM tier that writes and
// reads a 512 MiB entry peaks at about 64 + 60 MiB (bench/README.md).
const memoryHeadroom = 40 << 20

// limitMemory sets a soft memory limit of the memory tiers' sizes plus
// memoryHeadroom, unless GOMEMLIMIT is set. Without it the collector lets
// the heap grow to twice what is live, and a full RAM tier of 128 MiB made
// a daemon of 350 MiB.
func (m *mounter) limitMemory() {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	if heap := m.heapBytes(); heap < math.MaxInt64 {
		debug.SetMemoryLimit(heap)
		m.log.Debug("flechefs: soft memory limit", "bytes", heap)
	}
}

// heapBytes is what the heap may hold: the memory tiers' sizes plus
// memoryHeadroom (math.MaxInt64 when that overflows).
func (m *mounter) heapBytes() int64 {
	heap := int64(memoryHeadroom)
	for _, t := range m.cfg.Tiers {
		if t.Kind == config.Memory {
			if t.Size > math.MaxInt64-heap {
				return math.MaxInt64
			}
			heap += t.Size
		}
	}
	return heap
}

// adviseHeap asks for huge pages over as much heap address space as the
// memory tiers and the headroom fill (internal/pagemem: the heap's growth
// then takes one fault per 2 MiB instead of one per 4 KiB).
func (m *mounter) adviseHeap() {
	m.log.Debug("flechefs: huge pages advised for the heap", "bytes", pagemem.AdviseHeap(m.heapBytes()))
}

// checkMountpoint fails early, with a clear message, on a mount point that
// cannot be mounted on.
func checkMountpoint(mnt string) error {
	fi, err := os.Stat(mnt)
	switch {
	case errors.Is(err, syscall.ENOTCONN):
		return fmt.Errorf("%s is a FUSE mount whose process has died: unmount it first (flechefs umount %s)", mnt, mnt)
	case err != nil:
		return err
	case !fi.IsDir():
		return fmt.Errorf("%s is not a directory", mnt)
	}
	if e, ok, err := mountinfo.Find(mnt); err == nil && ok && e.FSType == flechefsFSType {
		return fmt.Errorf("%s is already a flechefs mount", mnt)
	}
	return nil
}

func (m *mounter) fsOptions() fs.Options {
	neg := m.cfg.NegativeTTL
	if neg == 0 {
		neg = -1 // fs: negative disables, 0 is the default
	}
	o := fs.Options{
		SpoolDir:      m.cfg.SpoolDir,
		NegativeTTL:   neg,
		AllowOther:    m.cfg.AllowOther,
		PublishFailed: m.cfg.PublishFailed,
		Debug:         m.debugFUSE,
		Logger:        m.log,
	}
	if m.metrics != nil {
		o.Observe = m.metrics.observeFUSE
	}
	if len(m.retainer.tiers) > 0 {
		o.Ctl = m.retainer.ctl()
	}
	return o
}

// openStack opens the tiers and builds the stack. It returns the remote
// tiers to probe.
func (m *mounter) openStack() (*tiers.Stack, []tiers.Tier, error) {
	cfg := m.cfg
	if err := os.MkdirAll(cfg.SpoolDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("spool_dir: %w", err)
	}
	var layers []tiers.Layer
	var remotes []tiers.Tier
	closeAll := func() {
		for _, l := range layers {
			l.Tier.Close()
		}
	}
	for i, t := range cfg.Tiers {
		tr, err := m.openTier(t)
		if err != nil {
			closeAll()
			where := ""
			if cfg.File != config.DefaultName {
				where = ", " + t.At
			}
			return nil, nil, fmt.Errorf("tier %d (%s%s): %w", i+1, t.Kind, where, err)
		}
		layers = append(layers, tiers.Layer{Tier: tr, ReadOnly: t.ReadOnly, Remote: t.Kind.Remote()})
		if t.Kind.Remote() {
			remotes = append(remotes, tr)
		}
	}
	st, err := tiers.NewStack(layers, tiers.StackOptions{
		Promote:            tiers.Promote(cfg.Promote),
		WriteThrough:       cfg.WriteThrough,
		KeepRemoteOnDelete: !cfg.DeleteRemote,
		RemoteTimeout:      cfg.RemoteTimeout,
		ListTTL:            cfg.ListTTL,
		ListingTTL:         cfg.NegativeTTL, // a miss answered from a listing is no staler than a cached one
		SpoolDir:           cfg.SpoolDir,
		UploadWorkers:      cfg.UploadWorkers,
		Logger:             m.log,
		Observe:            m.observeTier(),
	})
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	return st, remotes, nil
}

func (m *mounter) openTier(t config.Tier) (tiers.Tier, error) {
	switch t.Kind {
	case config.Memory:
		return memory.New(memory.Options{Name: t.Name, Limit: t.Size, MaxEntry: t.MaxEntry, ReadOnly: t.ReadOnly})
	case config.Bolt:
		if !t.ReadOnly {
			if err := os.MkdirAll(filepath.Dir(t.Path), 0o700); err != nil {
				return nil, err
			}
		}
		bt, err := bolt.Open(t.Path, bolt.Options{Name: t.Name, Limit: t.Size, ReadOnly: t.ReadOnly, Logger: m.log})
		if errors.Is(err, bolt.ErrLocked) {
			return nil, fmt.Errorf("%w; a second mount needs a database of its own: --bolt PATH, or path in its config's bolt tier", err)
		}
		if err != nil {
			return nil, err
		}
		if a := bt.MovedAside(); a != nil {
			// One line whatever the log level: the user's cache was replaced.
			fmt.Fprintf(m.stderr, "flechefs mount: %v; moved aside to %s, started a fresh database (%d queued uploads salvaged, %d lost)\n",
				a.Reason, a.Path, a.Requeued, a.Lost)
		}
		return bt, nil
	case config.SFTP:
		tr, err := sftp.Open(context.Background(), sftp.Options{
			Name: t.Name, URL: t.URL, IdentityFiles: t.Identity, KnownHosts: t.KnownHosts,
			UseAgent: t.Agent, Timeout: t.Timeout, ReadOnly: t.ReadOnly, Mode: os.FileMode(t.Mode),
			Concurrency: t.Concurrency, Channels: t.Channels, Ciphers: t.Ciphers, Logger: m.log, Lazy: true,
			Foreign: sftp.Foreign(t.Foreign), Transport: sftp.Transport(t.Transport), SSHConfig: t.SSHConfig,
			Retention: retention(t),
		})
		if err == nil && retention(t).On() {
			m.retainer.add(t, tr)
		}
		return tr, err
	case config.S3:
		tr, err := s3.Open(s3.Options{
			Name: t.Name, Endpoint: t.Endpoint, Bucket: t.Bucket, Prefix: t.Prefix, Region: t.Region,
			PathStyle: t.PathStyle, Profile: t.Profile, Timeout: t.Timeout, SpoolDir: m.cfg.SpoolDir, Logger: m.log,
			Retention: retention(t),
		})
		if err == nil && retention(t).On() {
			m.retainer.add(t, tr)
		}
		return tr, err
	}
	return nil, fmt.Errorf("unknown kind %q", t.Kind)
}

// probe connects a lazy remote tier once after mounting, so that the log
// says at once whether it is reachable rather than at the first miss.
func (m *mounter) probe(t tiers.Tier) {
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.RemoteTimeout+time.Second)
	defer cancel()
	_, err := t.Stat(ctx, tiers.ProbeKey)
	switch {
	case err == nil || errors.Is(err, tiers.ErrNotFound):
		m.log.Info("flechefs: remote tier connected", "tier", t.Name())
	case errors.Is(err, tiers.ErrClosed), errors.Is(err, context.Canceled):
	default:
		m.log.Warn("flechefs: remote tier unavailable: serving from the local tiers, uploads wait in the queue", "tier", t.Name(), "err", err)
	}
}

// unmount unmounts after a signal: it retries a busy mount for 5s, then
// detaches it lazily and waits for the last file to be closed. A second
// signal gives up. It reports whether the stack may be closed.
func (m *mounter) unmount(srv *fs.Server, mnt string, done <-chan struct{}, sigs <-chan os.Signal) bool {
	deadline := time.Now().Add(5 * time.Second)
	busyLogged := false
	for {
		err := srv.Unmount()
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EBUSY) && !isBusy(err) {
			m.log.Error("flechefs: unmount failed; detaching lazily", "mountpoint", mnt, "err", err)
			if m.detach(mnt) {
				m.log.Warn("flechefs: detached lazily; flechefs exits when the last file is closed (signal again to exit now)", "mountpoint", mnt)
			}
			break
		}
		if !busyLogged {
			m.log.Warn("flechefs: mount point busy: a process has a file open or its working directory inside; retrying for 5s", "mountpoint", mnt)
			busyLogged = true
		}
		if time.Now().After(deadline) {
			if m.detach(mnt) {
				m.log.Warn("flechefs: still busy: detached lazily; flechefs exits when the last file is closed (signal again to exit now)", "mountpoint", mnt)
			}
			break
		}
		select {
		case <-done:
			return true
		case sig := <-sigs:
			m.log.Error("flechefs: second signal: detaching and exiting now; open files in the mount fail from now on", "signal", sig.String(), "mountpoint", mnt)
			m.detach(mnt)
			return false
		case <-time.After(250 * time.Millisecond):
		}
	}
	select {
	case <-done:
		return true
	case sig := <-sigs:
		m.log.Error("flechefs: second signal: exiting before the last file was closed; new entries may not be on disk", "signal", sig.String(), "mountpoint", mnt)
		return false
	}
}

// isBusy recognizes fusermount3's "Device or resource busy" when the
// error does not wrap EBUSY.
func isBusy(err error) bool {
	return err != nil && strings.Contains(strings.ToLower(err.Error()), "busy")
}

// detach unmounts lazily: the mount disappears from the namespace now,
// and the kernel ends the session when the last file is closed.
func (m *mounter) detach(mnt string) bool {
	var err error
	if os.Geteuid() == 0 {
		err = syscall.Unmount(mnt, syscall.MNT_DETACH)
	} else {
		err = fusermountUnmount(mnt, mnt, true)
	}
	if err != nil {
		m.log.Error("flechefs: lazy unmount failed; still mounted, waiting for an unmount (signal again to exit now)", "mountpoint", mnt, "err", err)
		return false
	}
	return true
}

// closeStack finishes in-flight writes and closes the tiers.
func (m *mounter) closeStack(st *tiers.Stack) error {
	start := time.Now()
	err := st.Close()
	if err != nil {
		m.log.Error("flechefs: closing the tiers", "err", err)
		return err
	}
	m.log.Debug("flechefs: tiers closed", "took", time.Since(start))
	return nil
}
