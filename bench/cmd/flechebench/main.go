// Command flechebench is the benchmark of flechefs against sshfs, rclone
// mount and the ceilings (native reads, OpenSSH sftp, a go-fuse RAM
// filesystem), and, with an S3 store (a local SeaweedFS), against rclone
// mount's S3 backend. bench/run.sh builds it and runs it; bench/README.md says what
// each scenario measures.
//
//	flechebench -flechefs bin/flechefs -memfs bin/memfs [-repeats 3] [-out bench/results]
//
// It must run as root: it mounts, raises read_ahead_kb and drops caches.
package main

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/flechefs/flechefs/internal/config"
	"github.com/flechefs/flechefs/internal/sshdtest"
)

// cipher is the one SSH cipher every client uses: sshd offers only it, and
// every client asks for it.
const cipher = "aes128-gcm@openssh.com"

type options struct {
	flechefs, memfs string
	work            string
	out             string
	repeats         int
	only            string // comma-separated phases: main,memory,scale,slow,s3
	clients         string // comma-separated clients of the main phase
	scenarios       string // comma-separated scenarios of the main phase
	scaleN          int
	slowSize        int64
	slowDelay       time.Duration
	slowSmall       int
	keep            bool
	cpuprofile      bool
	channels        int
	uploadWorkers   int
	debug           bool
	largeSize       int64
}

type bench struct {
	opt   options
	srv   *sshdtest.Server
	ds    *dataset
	res   *results
	log   io.Writer
	start time.Time
	// cleanups run at exit, last first.
	cleanups []func()
}

func main() {
	var o options
	flag.StringVar(&o.flechefs, "flechefs", "bin/flechefs", "the flechefs binary (build it without -race)")
	flag.StringVar(&o.memfs, "memfs", "bin/memfs", "the go-fuse RAM filesystem binary (bench/memfs)")
	flag.StringVar(&o.work, "work", "/var/tmp/flechebench", "work directory (wiped at start; the 1M-entry database is kept in WORK-cache)")
	flag.StringVar(&o.out, "out", "bench/results", "directory of the CSV results")
	flag.IntVar(&o.repeats, "repeats", 3, "runs of every scenario; medians, min and max are printed")
	flag.StringVar(&o.only, "only", "main,memory,scale,slow,s3", "phases to run")
	flag.StringVar(&o.clients, "clients", "flechefs,sshfs,rclone,memfs,native,sftp", "clients of the main phase")
	flag.StringVar(&o.scenarios, "scenarios", "cold,warm,stat,remount,write", "scenarios of the main phase (cold and warm read, stat, remount read, write)")
	flag.IntVar(&o.scaleN, "scale-entries", 1_000_000, "entries of the bbolt tier of the scale phase")
	flag.Int64Var(&o.slowSize, "slow-size", 64<<20, "size of the file read cold over the slow link")
	flag.DurationVar(&o.slowDelay, "slow-delay", 20*time.Millisecond, "one-way delay of the slow link (each direction)")
	flag.IntVar(&o.slowSmall, "slow-small", 500, "small files read over the slow link (sshfs reads each in about 4 round trips)")
	flag.Int64Var(&o.largeSize, "large-size", 512<<20, "size of the large file")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory")
	flag.BoolVar(&o.debug, "debug", false, "run flechefs with --debug (logs in the work directory)")
	flag.IntVar(&o.channels, "channels", config.DefaultChannels, "SFTP sessions one large flechefs fetch reads through (the sftp tier's channels)")
	flag.IntVar(&o.uploadWorkers, "upload-workers", config.DefaultUploadWorkers, "uploads flechefs runs at once (upload_workers)")
	flag.BoolVar(&o.cpuprofile, "cpuprofile", false, "write CPU profiles of flechefs to OUT/flechefs-*.pprof")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "flechebench:", err)
		os.Exit(1)
	}
}

func run(o options) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("run as root (it mounts, raises read_ahead_kb and drops caches)")
	}
	for _, p := range []*string{&o.flechefs, &o.memfs, &o.work, &o.out} {
		if *p, err = filepath.Abs(*p); err != nil {
			return err
		}
	}
	b := &bench{opt: o, res: newResults(), log: os.Stderr, start: time.Now()}
	defer b.cleanup()
	// A signal still cleans up: mounts, namespaces, sshd.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		b.logf("signal: cleaning up")
		b.cleanup()
		os.Exit(130)
	}()

	if err := os.RemoveAll(o.work); err != nil {
		return err
	}
	if err := os.MkdirAll(o.work, 0o755); err != nil {
		return err
	}
	if !o.keep {
		b.defer_(func() { os.RemoveAll(o.work) })
	}
	b.logf("flechebench: %d repeats, %d CPUs, %s, load %s", o.repeats, runtime.NumCPU(), kernel(), loadavg())
	if err := b.startSSHD(); err != nil {
		return err
	}
	if b.ds, err = b.generate(); err != nil {
		return err
	}
	phases := map[string]bool{}
	for _, p := range strings.Split(o.only, ",") {
		phases[strings.TrimSpace(p)] = true
	}
	if phases["main"] {
		if err := b.mainPhase(); err != nil {
			return err
		}
	}
	if phases["memory"] {
		if err := b.memoryPhase(); err != nil {
			return err
		}
	}
	if phases["scale"] {
		if err := b.scalePhase(); err != nil {
			return err
		}
	}
	if phases["slow"] {
		if err := b.slowPhase(); err != nil {
			return err
		}
	}
	if phases["s3"] {
		if err := b.s3Phase(); err != nil {
			return err
		}
	}
	b.logf("flechebench: done in %v, load %s", time.Since(b.start).Round(time.Second), loadavg())
	return b.report()
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "[%6.1fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
}

func (b *bench) defer_(fn func()) { b.cleanups = append(b.cleanups, fn) }

func (b *bench) cleanup() {
	for len(b.cleanups) > 0 {
		fn := b.cleanups[len(b.cleanups)-1]
		b.cleanups = b.cleanups[:len(b.cleanups)-1]
		fn()
	}
}

// startSSHD starts sshd on 127.0.0.1, offering only the benchmark's cipher.
func (b *bench) startSSHD() error {
	srv, err := sshdtest.StartE(filepath.Join(b.opt.work, "sshd"))
	if err != nil {
		return err
	}
	b.defer_(srv.Stop)
	// Restrict the server to the one cipher: a client that asked for
	// another could not connect at all.
	f, err := os.OpenFile(srv.ConfigFile, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "Ciphers %s\n", cipher)
	f.Close()
	srv.Stop()
	if err := srv.Restart(); err != nil {
		return err
	}
	b.srv = srv
	b.logf("sshd on %s serving %s, cipher %s", srv.Addr, srv.Dir, cipher)
	return nil
}

func kernel() string {
	var u syscall.Utsname
	if syscall.Uname(&u) != nil {
		return "?"
	}
	var s []byte
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return "Linux " + string(s)
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// probeHost records, as the client's machine.fault and machine.sha256,
// two costs of the host that steal does not show, measured just before the
// client: a page fault of fresh anonymous memory (µs per 4 KiB page: 16 MiB
// mapped, one byte written a page, unmapped) and SHA-256 over 16 MiB
// (MB/s). On the project's VMs both changed by about 2× from one host to
// the next with 0% steal, and every client's figures with them: runs on
// hosts that differ here do not compare.
func (b *bench) probeHost(client string) {
	const n = 16 << 20
	if m, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE); err == nil {
		t := time.Now()
		for i := 0; i < n; i += 4096 {
			m[i] = 1
		}
		d := time.Since(t)
		syscall.Munmap(m)
		b.res.add(client, "machine.fault", "µs", float64(d.Nanoseconds())/1e3/(n/4096))
	}
	buf := bytes.Repeat([]byte{0x5a}, n)
	t := time.Now()
	sha256.Sum256(buf)
	b.res.add(client, "machine.sha256", "MB/s", n/1e6/time.Since(t).Seconds())
}

// stealMeter measures the share of the machine's CPU time the hypervisor
// took (steal) between its start and Percent. On the project's VMs it went
// from 1% to 25% within a minute, so the bench records it beside every
// client's figures.
type stealMeter struct{ steal, total uint64 }

func startSteal() stealMeter {
	_, st, tot, _ := cpuTimes()
	return stealMeter{st, tot}
}

// Percent is the steal share since start, or -1 when /proc/stat is not
// readable.
func (m stealMeter) Percent() float64 {
	_, st, tot, ok := cpuTimes()
	if !ok || tot <= m.total {
		return -1
	}
	return 100 * float64(st-m.steal) / float64(tot-m.total)
}

// quiesce flushes dirty pages and waits, at most 5 s, until the machine
// has been nearly idle (at least 90% of its CPU time) for 200 ms: a client
// measured right after the dataset's generation or another client's writes
// otherwise shares the machine with their writeback and exiting daemons,
// and reads markedly slower in a full run than alone. It returns how long
// it waited.
func quiesce() time.Duration {
	start := time.Now()
	syscall.Sync()
	deadline := start.Add(5 * time.Second)
	prevIdle, _, prevTotal, ok := cpuTimes()
	for ok && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		idle, _, total, ok2 := cpuTimes()
		if !ok2 {
			break
		}
		if total > prevTotal && float64(idle-prevIdle)/float64(total-prevTotal) >= 0.9 {
			break
		}
		prevIdle, prevTotal = idle, total
	}
	return time.Since(start)
}

// cpuTimes returns the idle (with iowait), steal and total jiffies of
// /proc/stat. Steal is time the hypervisor gave this VM's CPUs to others.
func cpuTimes() (idle, steal, total uint64, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, 0, 0, false
	}
	for i, s := range f[1:] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, 0, 0, false
		}
		total += v
		switch i {
		case 3, 4: // idle, iowait
			idle += v
		case 7:
			steal += v
		}
	}
	return idle, steal, total, true
}
