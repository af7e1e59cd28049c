package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/flechefs/flechefs/internal/delayproxy"
)

// The slow link. The issue asks for a veth pair between network namespaces
// with `tc netem delay 20ms`; this kernel has no netem qdisc, so the delay
// is made in user space by internal/delayproxy: a TCP proxy on 127.0.0.1 in
// front of sshd that holds every byte 20 ms in each direction (40 ms round
// trip) and does not limit bandwidth.

// slowPhase reads the slow-link file cold through flechefs and sshfs, both
// over the delaying proxy.
func (b *bench) slowPhase() error {
	px, err := delayproxy.Start(b.srv.Addr, b.opt.slowDelay)
	if err != nil {
		return err
	}
	defer px.Close()
	// known_hosts names host and port: the same host key under the
	// proxy's port.
	kh, err := os.ReadFile(b.srv.KnownHosts)
	if err != nil {
		return err
	}
	_, key, _ := strings.Cut(strings.TrimSpace(string(kh)), " ")
	khPath := filepath.Join(b.opt.work, "proxy_known_hosts")
	if err := os.WriteFile(khPath, fmt.Appendf(nil, "[127.0.0.1]:%d %s\n", px.Port(), key), 0o644); err != nil {
		return err
	}
	f := b.newFlechefs("flechefs-slow")
	f.url = fmt.Sprintf("sftp://%s@127.0.0.1:%d%s", b.srv.User, px.Port(), b.srv.Dir)
	f.knownHosts = khPath
	s := b.newSSHFS("sshfs-slow")
	s.port, s.knownHosts = px.Port(), khPath
	b.defer_(f.kill)
	b.defer_(s.kill)
	for r := range b.opt.repeats {
		for _, c := range []client{f, s} {
			if err := c.start(true); err != nil {
				return err
			}
			if err := connect(c); err != nil {
				return err
			}
			d, err := readSet(c.root(), []string{b.ds.slow}, b.opt.slowSize)
			// Then the 4 MiB files, one after the other, on the
			// connection the large read opened: here round trips
			// (lookup, open, the first reads) count as much as the
			// transfer.
			var dm time.Duration
			if err == nil {
				dm, err = readSet(c.root(), b.ds.medium, mediumSize)
			}
			c.settle()
			if serr := c.stop(); err == nil {
				err = serr
			}
			if err != nil {
				return fmt.Errorf("slow link: %s: %w", c.name(), err)
			}
			v := float64(b.opt.slowSize) / mib / d.Seconds()
			vm := float64(len(b.ds.medium)*mediumSize) / mib / dm.Seconds()
			b.res.add(c.name(), "slow.cold.large", "MiB/s", v)
			b.res.add(c.name(), "slow.cold.medium", "MiB/s", vm)
			b.logf("slow link %d: %s large %.1f MiB/s, 4 MiB files %.1f MiB/s", r+1, c.name(), v, vm)
			if err := b.slowSmall(c, r); err != nil {
				return fmt.Errorf("slow link: %s: %w", c.name(), err)
			}
		}
	}
	return nil
}

// slowSmall reads the first -slow-small small files over the slow link,
// cold, one after another, as a program that does not know what it will
// read does (slow.cold.small); and for flechefs, on another fresh mount,
// `flechefs warm` of those names and then the same reads, timed together
// (slow.warmread.small), as a job that knows its inputs does.
func (b *bench) slowSmall(c client, r int) error {
	names := b.ds.small[:min(b.opt.slowSmall, len(b.ds.small))]
	files := func(d time.Duration) float64 { return float64(len(names)) / d.Seconds() }
	if err := c.start(true); err != nil {
		return err
	}
	if err := connect(c); err != nil {
		return err
	}
	d, err := readSet(c.root(), names, smallSize)
	c.settle()
	if serr := c.stop(); err == nil {
		err = serr
	}
	if err != nil {
		return err
	}
	b.res.add(c.name(), "slow.cold.small", "files/s", files(d))
	b.logf("slow link %d: %s %d small files cold, one after another: %.1f files/s", r+1, c.name(), len(names), files(d))
	f, ok := c.(*flechefsClient)
	if !ok {
		return nil
	}
	if err := f.start(true); err != nil {
		return err
	}
	if err := connect(f); err != nil {
		return err
	}
	start := time.Now()
	cmd := exec.Command(b.opt.flechefs, "warm", "--quiet", f.root())
	cmd.Stdin = strings.NewReader(strings.Join(names, "\n") + "\n")
	out, err := cmd.CombinedOutput()
	if err == nil {
		_, err = readSet(f.root(), names, smallSize)
	} else {
		err = fmt.Errorf("flechefs warm: %v: %s", err, out)
	}
	d = time.Since(start)
	f.settle()
	if serr := f.stop(); err == nil {
		err = serr
	}
	if err != nil {
		return err
	}
	b.res.add(c.name(), "slow.warmread.small", "files/s", files(d))
	b.logf("slow link %d: %s warm then read %d small files: %.1f files/s", r+1, c.name(), len(names), files(d))
	return nil
}
