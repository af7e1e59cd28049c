package faults

// A slow, lossy link between the nodes and the remote: two network
// namespaces joined by a veth pair with netem on both ends.

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flechefs/flechefs/internal/mounttest"
	"github.com/flechefs/flechefs/internal/sshdtest"
)

// The link's addresses exist only inside the two namespaces the test makes.
const (
	srvAddr   = "10.213.0.1"
	cliAddr   = "10.213.0.2"
	linkDelay = 50 * time.Millisecond // each way
	linkLoss  = 0.01                  // each way
)

// netns is a pair of network namespaces joined by a link that delays and
// drops packets both ways: a veth pair with tc netem on both ends when the
// kernel has sch_netem, else a TUN device in each namespace with the test
// forwarding IP packets between them, delaying and dropping them the same
// way (the kernels of some VMs are built without netem).
type netns struct {
	srv, cli string // namespace names; /run/netns/NAME
	how      string // which link
	tun      *tunLink
}

func nsPath(name string) string { return "/run/netns/" + name }

// newNetns makes the namespaces and the link, and removes everything at
// cleanup, whatever happened. Cleanups run last-in first-out: call it
// before starting anything inside the namespaces.
func newNetns(t *testing.T) *netns {
	t.Helper()
	id := os.Getpid() % 100000
	ns := &netns{srv: fmt.Sprintf("flsrv%d", id), cli: fmt.Sprintf("flcli%d", id)}
	vs, vc := fmt.Sprintf("fvs%d", id), fmt.Sprintf("fvc%d", id)
	t.Cleanup(func() {
		for _, n := range []string{ns.srv, ns.cli} {
			if out, err := exec.Command("ip", "netns", "del", n).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such file") {
				t.Errorf("ip netns del %s: %v %s", n, err, out)
			}
		}
		// The links go with their namespaces; make sure no end is left.
		if exec.Command("ip", "link", "show", vs).Run() == nil {
			exec.Command("ip", "link", "del", vs).Run()
			t.Errorf("veth %s was left in the root namespace", vs)
		}
	})
	run := func(args ...string) (string, error) {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			return string(out), fmt.Errorf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out), nil
	}
	must := func(args ...string) {
		t.Helper()
		if _, err := run(args...); err != nil {
			t.Fatal(err)
		}
	}
	// Leftovers of a killed earlier run with the same pid modulo.
	run("ip", "netns", "del", ns.srv)
	run("ip", "netns", "del", ns.cli)
	must("ip", "netns", "add", ns.srv)
	must("ip", "netns", "add", ns.cli)
	for _, n := range []string{ns.srv, ns.cli} {
		must("ip", "-n", n, "link", "set", "lo", "up")
	}
	must("ip", "link", "add", vs, "type", "veth", "peer", "name", vc)
	must("ip", "link", "set", vs, "netns", ns.srv)
	must("ip", "link", "set", vc, "netns", ns.cli)
	netem := []string{"netem", "delay", fmt.Sprint(linkDelay), "loss", fmt.Sprintf("%g%%", linkLoss*100)}
	out, err := run(append([]string{"ip", "netns", "exec", ns.srv, "tc", "qdisc", "add", "dev", vs, "root"}, netem...)...)
	switch {
	case err == nil:
		must(append([]string{"ip", "netns", "exec", ns.cli, "tc", "qdisc", "add", "dev", vc, "root"}, netem...)...)
		must("ip", "-n", ns.srv, "addr", "add", srvAddr+"/30", "dev", vs)
		must("ip", "-n", ns.cli, "addr", "add", cliAddr+"/30", "dev", vc)
		must("ip", "-n", ns.srv, "link", "set", vs, "up")
		must("ip", "-n", ns.cli, "link", "set", vc, "up")
		ns.how = "veth pair, tc " + strings.Join(netem, " ") + " on both ends"
	case strings.Contains(out, "qdisc kind is unknown"):
		must("ip", "-n", ns.srv, "link", "del", vs) // and its peer
		l := newTunLink(t, ns, fmt.Sprintf("fts%d", id), fmt.Sprintf("ftc%d", id))
		must("ip", "-n", ns.srv, "addr", "add", srvAddr+"/30", "dev", l.names[0])
		must("ip", "-n", ns.cli, "addr", "add", cliAddr+"/30", "dev", l.names[1])
		must("ip", "-n", ns.srv, "link", "set", l.names[0], "up")
		must("ip", "-n", ns.cli, "link", "set", l.names[1], "up")
		l.start()
		ns.tun = l
		ns.how = fmt.Sprintf("no sch_netem in this kernel: TUN devices, the test forwarding packets with %v delay and %g%% loss each way", linkDelay, linkLoss*100)
	default:
		t.Fatal(err)
	}
	return ns
}

// tunLink forwards IP packets between a TUN device in each namespace.
type tunLink struct {
	t        *testing.T
	names    [2]string
	files    [2]*os.File
	wg       sync.WaitGroup
	packets  atomic.Int64
	dropped  atomic.Int64 // at random: the loss
	overflow atomic.Int64 // the queue was full
}

func newTunLink(t *testing.T, ns *netns, srvName, cliName string) *tunLink {
	t.Helper()
	l := &tunLink{t: t, names: [2]string{srvName, cliName}}
	for i, n := range []string{ns.srv, ns.cli} {
		f, err := openTun(nsPath(n), l.names[i])
		if err != nil {
			for _, f := range l.files {
				if f != nil {
					f.Close()
				}
			}
			t.Fatal(err)
		}
		l.files[i] = f
	}
	t.Cleanup(func() {
		l.files[0].Close()
		l.files[1].Close()
		l.wg.Wait()
	})
	return l
}

// openTun creates TUN device name in the namespace at path (a TUN device
// lives in the namespace of the thread that creates it) and returns its
// descriptor, non-blocking, so that closing it ends a pending read.
func openTun(path, name string) (*os.File, error) {
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		err := setns(path)
		if err != nil {
			ch <- result{nil, err}
			return
		}
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- result{nil, fmt.Errorf("open /dev/net/tun: %w", err)}
			return
		}
		ifr, err := unix.NewIfreq(name)
		if err == nil {
			ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
		if err == nil {
			err = unix.SetNonblock(fd, true)
		}
		if err != nil {
			unix.Close(fd)
			ch <- result{nil, fmt.Errorf("TUN device %s: %w", name, err)}
			return
		}
		ch <- result{os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil}
	}()
	r := <-ch
	return r.f, r.err
}

func setns(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns %s: %w", path, err)
	}
	return nil
}

func (l *tunLink) start() {
	seed := uint64(time.Now().UnixNano())
	l.wg.Add(2)
	go l.pipe(l.files[0], l.files[1], rand.New(rand.NewPCG(seed, 0)))
	go l.pipe(l.files[1], l.files[0], rand.New(rand.NewPCG(seed, 1)))
}

// pipe moves packets from one device to the other, dropping linkLoss of
// them and delivering the rest linkDelay later, in order. A queue of more
// than 5000 packets drops the newest (netem's default limit is 1000; a
// larger one keeps the loss near linkLoss).
func (l *tunLink) pipe(from, to *os.File, rng *rand.Rand) {
	defer l.wg.Done()
	type packet struct {
		b   []byte
		due time.Time
	}
	q := make(chan packet, 5000)
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for p := range q {
			time.Sleep(time.Until(p.due))
			to.Write(p.b) // fails only once the link is torn down
		}
	}()
	defer close(q)
	buf := make([]byte, 65536)
	for {
		n, err := from.Read(buf)
		if err != nil {
			return // closed at cleanup
		}
		l.packets.Add(1)
		if rng.Float64() < linkLoss {
			l.dropped.Add(1)
			continue
		}
		select {
		case q <- packet{append([]byte(nil), buf[:n]...), time.Now().Add(linkDelay)}:
		default:
			l.overflow.Add(1)
		}
	}
}

// dialIn returns a dialer whose sockets live in the network namespace at
// path: it dials from a goroutine locked to an OS thread that entered the
// namespace; the thread is never unlocked, so it exits with the goroutine
// and no other goroutine ever runs in the namespace.
func dialIn(path string) func(network, addr string) (net.Conn, error) {
	return func(network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			if err := setns(path); err != nil {
				ch <- result{nil, err}
				return
			}
			c, err := net.DialTimeout(network, addr, 5*time.Second)
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}

// TestSlowLossyLink runs sshd in one namespace and two nodes in the other,
// 50 ms each way and 1% loss on both ends: writes, sync, a read on the
// second node and a 32 MiB remote read all work and verify.
func TestSlowLossyLink(t *testing.T) {
	if testing.Short() {
		t.Skip("long fault suite; runs without -short")
	}
	ns := newNetns(t)
	srv := sshdtest.StartWith(t, sshdtest.Options{
		ListenAddr: srvAddr,
		Wrap:       []string{"ip", "netns", "exec", ns.srv},
		Dial:       dialIn(nsPath(ns.cli)),
	})
	wrap := []string{"nsenter", "--net=" + nsPath(ns.cli), "--"}
	a := mounttest.NewNode(t, "netem-a", srv, mounttest.Opts{Wrap: wrap})
	b := mounttest.NewNode(t, "netem-b", srv, mounttest.Opts{Wrap: wrap})

	// The link is what it should be: a TCP connect from the client side
	// takes one round trip, ~100 ms (more when the SYN is lost).
	dial := dialIn(nsPath(ns.cli))
	var rtts []time.Duration
	for range 5 {
		start := time.Now()
		c, err := dial("tcp", srv.Addr)
		if err != nil {
			t.Fatalf("connect over the link: %v", err)
		}
		rtts = append(rtts, time.Since(start))
		c.Close()
	}
	slices.Sort(rtts)
	if rtts[2] < 2*linkDelay {
		t.Fatalf("connects over the link take %v: the delay is not in place", rtts)
	}
	rtt := fmt.Sprintf("median TCP connect %v", rtts[2].Round(time.Millisecond))

	// A writes; sync uploads over the link.
	want := map[string][]byte{}
	var upBytes int
	for i := range 6 {
		d := content(17, 17, i, 1<<20+i*(512<<10))
		k := mounttest.Key(fmt.Sprintf("netem %d", i))
		writeFile(t, a.Path(k), d, i%2 == 0)
		want[k] = d
		upBytes += len(d)
	}
	start := time.Now()
	a.Sync(5 * time.Minute)
	upTook := time.Since(start)
	sums := map[string]string{}
	for k, d := range want {
		sums[k] = mounttest.Sum(d)
	}
	verifyRemote(t, srv.Dir, sums)

	// B reads them over the link.
	for k, d := range want {
		sum, n, err, _ := timedRead(b.Path(k), nil, 0)
		if err != nil || sum != mounttest.Sum(d) {
			t.Fatalf("B read %s: %d bytes, %v", k[:12], n, err)
		}
	}

	// A 32 MiB entry on the remote only, fetched (streamed, verified) by B.
	big := content(18, 18, 18, 32<<20)
	bk := mounttest.Key("netem big")
	putRemote(t, srv.Dir, bk, big)
	start = time.Now()
	sum, n, err, _ := timedRead(b.Path(bk), nil, 0)
	took := time.Since(start)
	if err != nil || sum != mounttest.Sum(big) || n != int64(len(big)) {
		t.Fatalf("32 MiB remote read: %d bytes, %v", n, err)
	}
	mounttest.Eventually(t, "B to hold the big entry locally", time.Minute, func() bool {
		w := b.Xattr(bk, "user.flechefs.tiers")
		return strings.Contains(w, "ram") || strings.Contains(w, "bolt")
	})
	if x := b.Xattr(bk, "user.flechefs.sha256"); x != sum {
		t.Errorf("sha256 xattr %s", x)
	}
	for _, nd := range []*mounttest.Node{a, b} {
		for _, ts := range nd.Stats().Tiers {
			if ts.Corruptions != 0 {
				t.Errorf("%s: tier %s counted %d corruptions", nd.Name, ts.Name, ts.Corruptions)
			}
		}
	}
	t.Logf("link: %s (%s): upload of %d entries, %.1f MiB: %v (%.2f MiB/s); 32 MiB remote read with verification: %v (%.2f MiB/s)",
		ns.how, rtt, len(want), float64(upBytes)/(1<<20), upTook.Round(time.Millisecond), float64(upBytes)/(1<<20)/upTook.Seconds(),
		took.Round(time.Millisecond), 32/took.Seconds())
	if ns.tun != nil {
		t.Logf("the TUN link carried %d packets, dropped %d at random (%.2f%%) and %d on a full queue",
			ns.tun.packets.Load(), ns.tun.dropped.Load(), 100*float64(ns.tun.dropped.Load())/float64(max(ns.tun.packets.Load(), 1)), ns.tun.overflow.Load())
	}
}
