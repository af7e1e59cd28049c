package main

import (
	"fmt"
	"os"
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
		}
	}
	return nil
}
