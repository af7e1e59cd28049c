package sftp

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/delayproxy"
	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// Benchmarks against a real sshd on loopback. Each runs once per cipher:
// both ends of the SSH connection encrypt, so the cipher sets the pace.
//
//	go test -run '^$' -bench . -benchtime 3x ./tiers/sftp/

const benchSize = 256 << 20

var benchCiphers = []string{"aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"}

func benchTier(b *testing.B, s *sshdtest.Server, cipher string) *Tier {
	opt := options(s)
	opt.Ciphers = []string{cipher}
	return open(b, opt)
}

var benchData = func() func() []byte {
	var d []byte
	return func() []byte {
		if d == nil {
			d = tiertest.Data(42, benchSize)
		}
		return d
	}
}()

// fetch reads k, of size bytes, whole with WriteTo into io.Discard.
func fetch(b *testing.B, tr *Tier, k digest.Key, size int64) {
	r, err := tr.Open(context.Background(), k)
	if err != nil {
		b.Fatal(err)
	}
	n, err := r.(io.WriterTo).WriteTo(io.Discard)
	r.Close()
	if err != nil || n != size {
		b.Fatalf("WriteTo = %d, %v", n, err)
	}
}

// benchFetch puts the bench value through tr and fetches it in the loop,
// reporting this process's CPU per GiB.
func benchFetch(b *testing.B, tr *Tier) {
	k := tiertest.Key("bench fetch")
	tiertest.Put(b, tr, k, benchData())
	b.SetBytes(benchSize)
	b.ResetTimer()
	cpu := selfCPU()
	for b.Loop() {
		fetch(b, tr, k, benchSize)
	}
	reportCPU(b, selfCPU()-cpu, benchSize)
}

func BenchmarkFetch(b *testing.B) {
	s := sshdtest.Start(b)
	for _, cipher := range benchCiphers {
		b.Run(cipher, func(b *testing.B) { benchFetch(b, benchTier(b, s, cipher)) })
	}
	// Three sessions (lanes.go) on loopback, where they are not used
	// otherwise: why they are not (the window is no limit here, the CPU is).
	b.Run(benchCiphers[0]+"/lanes", func(b *testing.B) {
		tr := benchTier(b, s, benchCiphers[0])
		tr.laneRTT = 0
		benchFetch(b, tr)
	})
	// The packet size every server accepts, for comparison.
	b.Run(benchCiphers[0]+"/packet=32KiB", func(b *testing.B) {
		opt := options(s)
		opt.Ciphers = benchCiphers[:1]
		opt.PacketSize = 32 << 10
		benchFetch(b, open(b, opt))
	})
}

func BenchmarkPut(b *testing.B) {
	s := sshdtest.Start(b)
	for _, cipher := range benchCiphers {
		b.Run(cipher, func(b *testing.B) { benchPut(b, benchTier(b, s, cipher), "bench put") })
	}
}

// benchPut puts benchSize bytes through tr in a loop, under keys named
// after prefix, deleting each outside the timer.
func benchPut(b *testing.B, tr *Tier, prefix string) {
	data := benchData()
	m := tiers.Meta{Size: benchSize, Sum: digest.Of(data)}
	b.SetBytes(benchSize)
	i := 0
	for b.Loop() {
		i++
		k := tiertest.Key(fmt.Sprint(prefix, " ", i))
		if _, err := tr.Put(context.Background(), k, bytes.NewReader(data), m); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		tr.Delete(context.Background(), k)
		b.StartTimer()
	}
}

// openSSH runs OpenSSH's sftp client with a batch and returns how long it
// took.
func openSSH(b *testing.B, s *sshdtest.Server, cipher, batch string) time.Duration {
	d, _ := openSSHCPU(b, s, cipher, batch)
	return d
}

// openSSHCPU is openSSH that also returns the CPU time of sftp and the ssh
// it runs.
func openSSHCPU(b *testing.B, s *sshdtest.Server, cipher, batch string) (time.Duration, time.Duration) {
	cmd := exec.Command("sftp", "-q", "-b", "-", "-i", s.IdentityFile,
		"-o", "UserKnownHostsFile="+s.KnownHosts, "-o", "StrictHostKeyChecking=yes",
		"-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "Ciphers="+cipher,
		"-P", strconv.Itoa(s.Port), s.User+"@127.0.0.1")
	cmd.Stdin = strings.NewReader(batch)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("sftp: %v\n%s", err, out)
	}
	return time.Since(start), cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

// selfCPU is the CPU time this process has used (all threads; not sshd).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports this process's CPU time per GiB moved: a measure of the
// client's cost that load from other processes disturbs less than rates.
func reportCPU(b *testing.B, cpu time.Duration, size int64) {
	b.ReportMetric(cpu.Seconds()/(float64(b.N)*float64(size)/(1<<30)), "cpu-s/GiB")
}

func mibps(n int64, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }

// BenchmarkVsOpenSSH fetches and uploads the same 256 MiB file with the
// tier and with OpenSSH's sftp get/put, in adjacent pairs (the order
// alternating), and reports the median rates and the median of the pairs'
// ratios (ours / OpenSSH, above 1 is faster), which resists load from other
// processes better than totals. sftp's connection setup, measured with an
// empty batch, is subtracted from its times.
func BenchmarkVsOpenSSH(b *testing.B) {
	s := sshdtest.Start(b)
	data := benchData()
	local := filepath.Join(b.TempDir(), "upload")
	if err := os.WriteFile(local, data, 0o644); err != nil {
		b.Fatal(err)
	}
	for _, cipher := range benchCiphers {
		b.Run(cipher, func(b *testing.B) {
			tr := benchTier(b, s, cipher)
			k := tiertest.Key("bench vs")
			tiertest.Put(b, tr, k, data)
			remote := path.Join(tr.rem.root, k.String())
			remoteUp := path.Join(tr.rem.root, "openssh-upload")
			setup, setupCPU := time.Duration(1<<62), time.Duration(1<<62)
			for range 3 {
				d, c := openSSHCPU(b, s, cipher, "pwd\n")
				setup, setupCPU = min(setup, d), min(setupCPU, c)
			}
			var ourCPU, theirCPU time.Duration
			ourGet := func() time.Duration {
				start, cpu := time.Now(), selfCPU()
				fetch(b, tr, k, benchSize)
				ourCPU += selfCPU() - cpu
				return time.Since(start)
			}
			theirGet := func() time.Duration {
				d, c := openSSHCPU(b, s, cipher, "get "+remote+" /dev/null\n")
				theirCPU += c - setupCPU
				return d - setup
			}
			i := 0
			ourPut := func() time.Duration {
				i++
				pk := tiertest.Key(fmt.Sprint("bench vs put ", i))
				start := time.Now()
				if _, err := tr.Put(context.Background(), pk, bytes.NewReader(data), tiers.Meta{Size: benchSize}); err != nil {
					b.Fatal(err)
				}
				d := time.Since(start)
				tr.Delete(context.Background(), pk)
				return d
			}
			theirPut := func() time.Duration {
				d := openSSH(b, s, cipher, "put "+local+" "+remoteUp+"\n") - setup
				os.Remove(localPath(tr, "openssh-upload"))
				return d
			}
			var get, put pairs
			for b.Loop() {
				get.add(ourGet, theirGet)
				put.add(ourPut, theirPut)
			}
			get.report(b, "get")
			gib := float64(b.N) * benchSize / (1 << 30)
			b.ReportMetric(ourCPU.Seconds()/gib, "get-cpu-s/GiB")
			b.ReportMetric(theirCPU.Seconds()/gib, "sftp-get-cpu-s/GiB")
			put.report(b, "put")
		})
	}
}

// pairs collects timings of two ways to do the same transfer.
type pairs struct {
	ours, theirs, ratio []float64
}

// add times ours and theirs back to back, alternating which goes first.
func (p *pairs) add(ours, theirs func() time.Duration) {
	var o, t time.Duration
	if len(p.ratio)%2 == 0 {
		o, t = ours(), theirs()
	} else {
		t, o = theirs(), ours()
	}
	p.ours = append(p.ours, mibps(benchSize, o))
	p.theirs = append(p.theirs, mibps(benchSize, t))
	p.ratio = append(p.ratio, t.Seconds()/o.Seconds())
}

func (p *pairs) report(b *testing.B, what string) {
	b.ReportMetric(median(p.ours), what+"-MiB/s")
	b.ReportMetric(median(p.theirs), "sftp-"+what+"-MiB/s")
	b.ReportMetric(median(p.ratio), what+"-ratio")
	b.Logf("%s ratios (ours/OpenSSH): %.2f", what, p.ratio)
}

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// BenchmarkStat measures a hit: the data file's stat and the sum file's
// open and read go out together.
func BenchmarkStat(b *testing.B) {
	s := sshdtest.Start(b)
	tr := open(b, options(s))
	k := tiertest.Key("bench stat")
	tiertest.Put(b, tr, k, []byte("v"))
	for b.Loop() {
		if _, err := tr.Stat(context.Background(), k); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPutSmall uploads 16 KiB values with several puts in flight, as
// the stack's uploaders do after a burst of small writes; it reports
// values per second.
func BenchmarkPutSmall(b *testing.B) {
	s := sshdtest.Start(b)
	tr := open(b, options(s))
	data := tiertest.Data(7, 16<<10)
	m := tiers.Meta{Size: int64(len(data)), Sum: digest.Of(data)}
	seq := 0 // across the runs b.Run makes: every key is new
	for _, workers := range []int{1, 2, 8} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			n := 0
			for b.Loop() {
				const batch = 400
				keys := make(chan digest.Key, batch)
				for range batch {
					n++
					seq++
					keys <- tiertest.Key(fmt.Sprint("put small ", seq))
				}
				close(keys)
				var wg sync.WaitGroup
				for range workers {
					wg.Go(func() {
						for k := range keys {
							if _, err := tr.Put(context.Background(), k, bytes.NewReader(data), m); err != nil {
								b.Error(err)
							}
						}
					})
				}
				wg.Wait()
			}
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "values/s")
		})
	}
}

// BenchmarkOpenSmall opens a 16 KiB value and reads it, as the stack does
// at the lookup of a small remote value: the latency of a cold small read.
func BenchmarkOpenSmall(b *testing.B) {
	s := sshdtest.Start(b)
	benchOpenSmall(b, open(b, options(s)), "bench open small")
}

// benchOpenSmall opens and reads a 16 KiB value, stored under name, in a
// loop.
func benchOpenSmall(b *testing.B, tr *Tier, name string) {
	k := tiertest.Key(name)
	data := tiertest.Data(8, 16<<10)
	tiertest.Put(b, tr, k, data)
	buf := make([]byte, len(data))
	for b.Loop() {
		r, err := tr.Open(context.Background(), k)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := r.ReadAt(buf, 0); err != nil && err != io.EOF {
			b.Fatal(err)
		}
		r.Close()
	}
}

// slowTiers returns a tier reaching s directly and one reaching the same
// directory through a proxy that delays each direction by delay.
func slowTiers(b testing.TB, s *sshdtest.Server, delay time.Duration, channels int) (direct, slow *Tier) {
	px, err := delayproxy.Start(s.Addr, delay)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(px.Close)
	kh, err := os.ReadFile(s.KnownHosts)
	if err != nil {
		b.Fatal(err)
	}
	_, key, _ := strings.Cut(strings.TrimSpace(string(kh)), " ")
	khPath := filepath.Join(b.TempDir(), "known_hosts")
	if err := os.WriteFile(khPath, fmt.Appendf(nil, "[127.0.0.1]:%d %s\n", px.Port(), key), 0o644); err != nil {
		b.Fatal(err)
	}
	opt := options(s)
	opt.Ciphers = benchCiphers[:1]
	direct = open(b, opt)
	u, err := url.Parse(opt.URL)
	if err != nil {
		b.Fatal(err)
	}
	u.Host = px.Addr()
	opt.URL, opt.KnownHosts, opt.Channels = u.String(), khPath, channels
	opt.Timeout = 10 * time.Second
	return direct, open(b, opt)
}

// BenchmarkFetchSlowLink fetches 64 MiB over a 20 ms-each-way link, through
// one SFTP session and through three (lanes.go). One session is capped by
// its 2 MiB window at 50 MiB/s. Each iteration uses a fresh connection, so
// the lanes' start is counted.
func BenchmarkFetchSlowLink(b *testing.B) {
	s := sshdtest.Start(b)
	const size = 64 << 20
	data := tiertest.Data(43, size)
	for _, channels := range []int{1, 3} {
		b.Run(fmt.Sprintf("channels=%d", channels), func(b *testing.B) {
			b.SetBytes(size)
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				direct, slow := slowTiers(b, s, 20*time.Millisecond, channels)
				k := tiertest.Key(fmt.Sprint("slow ", i))
				tiertest.Put(b, direct, k, data)
				if _, err := slow.Stat(context.Background(), k); err != nil { // connected
					b.Fatal(err)
				}
				b.StartTimer()
				fetch(b, slow, k, size)
			}
		})
	}
}

// BenchmarkPutSlowLink uploads 64 MiB over a 20 ms-each-way link, through
// one SFTP session and through three (lanes.go): sshd's 2 MiB window per
// channel caps one session as x/crypto/ssh's caps a fetch.
func BenchmarkPutSlowLink(b *testing.B) {
	s := sshdtest.Start(b)
	const size = 64 << 20
	data := tiertest.Data(44, size)
	m := tiers.Meta{Size: size, Sum: digest.Of(data)}
	for _, channels := range []int{1, 3} {
		b.Run(fmt.Sprintf("channels=%d", channels), func(b *testing.B) {
			b.SetBytes(size)
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				_, slow := slowTiers(b, s, 20*time.Millisecond, channels)
				slow.startLanesNow() // as after the first large transfer
				b.StartTimer()
				if _, err := slow.Put(context.Background(), tiertest.Key(fmt.Sprint("slow put ", i)), bytes.NewReader(data), m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// startLanesNow connects and waits until the lanes are up (benchmarks).
func (t *Tier) startLanesNow() {
	c, err := t.conn(context.Background())
	if err == nil && c.rtt >= t.laneRTT && t.opt.Channels > 1 {
		<-c.startLanes()
	}
}

// BenchmarkFetch4MiB fetches values of 4 MiB, the typical result, one
// after another (16 keys in turn): the tier's part of a cold 4 MiB read
// through the mount, whose per-file costs (open, sum record, close) a
// single large fetch hides.
func BenchmarkFetch4MiB(b *testing.B) {
	s := sshdtest.Start(b)
	tr := benchTier(b, s, benchCiphers[0])
	const size = 4 << 20
	d := tiertest.Data(7, size)
	var keys []digest.Key
	for i := range 16 {
		k := tiertest.Key(fmt.Sprint("fetch 4MiB ", i))
		tiertest.Put(b, tr, k, d)
		keys = append(keys, k)
	}
	b.SetBytes(size)
	cpu := selfCPU()
	i := 0
	for b.Loop() {
		fetch(b, tr, keys[i%len(keys)], size)
		i++
	}
	reportCPU(b, selfCPU()-cpu, size)
}
