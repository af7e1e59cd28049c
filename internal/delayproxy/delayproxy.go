// Package delayproxy is a TCP proxy on 127.0.0.1 that holds every byte for
// a fixed delay in each direction: a long link for benchmarks and tests on
// a kernel without the netem qdisc ("Specified qdisc kind is unknown" from
// tc here). It does not limit bandwidth, and TCP's own window does not
// matter on loopback; SSH's channel windows and the clients' request
// pipelining do, as on a real long link.
package delayproxy

import (
	"io"
	"net"
	"sync"
	"time"
)

// Proxy forwards connections to one target.
type Proxy struct {
	ln    net.Listener
	delay time.Duration
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

// Start listens on 127.0.0.1 and forwards to target, delay each way.
func Start(target string, delay time.Duration) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, delay: delay}
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

// Port is the proxy's port on 127.0.0.1.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// Addr is the proxy's address, 127.0.0.1:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

type chunk struct {
	b   []byte
	due time.Time
}

// pump copies src to dst, each chunk p.delay after it was read.
func (p *Proxy) pump(dst, src net.Conn) {
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

// Close stops listening and closes every connection.
func (p *Proxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
