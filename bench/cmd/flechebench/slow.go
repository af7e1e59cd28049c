package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// The slow link. The issue asks for a veth pair between network namespaces
// with `tc netem delay 20ms`; this kernel has no netem qdisc ("Specified
// qdisc kind is unknown"), so the delay is made in user space: a TCP proxy
// on 127.0.0.1 in front of sshd that holds every byte 20 ms in each
// direction (40 ms round trip) and does not limit bandwidth. TCP's own
// window does not matter on loopback; SSH's channel windows and the
// clients' request pipelining do, as on a real long link.

type delayProxy struct {
	ln    net.Listener
	delay time.Duration
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func startProxy(target string, delay time.Duration) (*delayProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &delayProxy{ln: ln, delay: delay}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			p.wg.Add(2)
			go p.pump(s, c)
			go p.pump(c, s)
		}
	}()
	return p, nil
}

func (p *delayProxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

type chunk struct {
	b   []byte
	due time.Time
}

// pump copies src to dst, each chunk p.delay after it was read.
func (p *delayProxy) pump(dst, src net.Conn) {
	defer p.wg.Done()
	ch := make(chan chunk, 1<<14)
	go func() {
		defer close(ch)
		for {
			b := make([]byte, 64<<10)
			n, err := src.Read(b)
			if n > 0 {
				ch <- chunk{b[:n], time.Now().Add(p.delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range ch {
		if d := time.Until(c.due); d > 0 {
			time.Sleep(d)
		}
		if _, err := dst.Write(c.b); err != nil {
			break
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	io.Copy(io.Discard, src)
}

func (p *delayProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// slowPhase reads the slow-link file cold through flechefs and sshfs, both
// over the delaying proxy.
func (b *bench) slowPhase() error {
	px, err := startProxy(b.srv.Addr, b.opt.slowDelay)
	if err != nil {
		return err
	}
	defer px.close()
	// known_hosts names host and port: the same host key under the
	// proxy's port.
	kh, err := os.ReadFile(b.srv.KnownHosts)
	if err != nil {
		return err
	}
	_, key, _ := strings.Cut(strings.TrimSpace(string(kh)), " ")
	khPath := filepath.Join(b.opt.work, "proxy_known_hosts")
	if err := os.WriteFile(khPath, fmt.Appendf(nil, "[127.0.0.1]:%d %s\n", px.port(), key), 0o644); err != nil {
		return err
	}
	f := b.newFlechefs("flechefs-slow")
	f.url = fmt.Sprintf("sftp://%s@127.0.0.1:%d%s", b.srv.User, px.port(), b.srv.Dir)
	f.knownHosts = khPath
	s := b.newSSHFS("sshfs-slow")
	s.port, s.knownHosts = px.port(), khPath
	b.defer_(f.kill)
	b.defer_(s.kill)
	for r := range b.opt.repeats {
		for _, c := range []client{f, s} {
			if err := c.start(true); err != nil {
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
