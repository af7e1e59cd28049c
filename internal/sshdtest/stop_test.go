package sshdtest

import (
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// A connection being set up while Stop runs must not survive it: a listener
// stopped between accept(2) and fork(2) and then let run to handle SIGTERM
// forked the session after Stop had collected the processes (seen about
// once in 40 stops before the fix).
func TestStopDropsConnectionsBeingSetUp(t *testing.T) {
	if testing.Short() {
		t.Skip("100 stops and restarts")
	}
	s := Start(t)
	survived := 0
	for i := range 100 {
		if err := s.Restart(); err != nil {
			t.Fatal(err)
		}
		ch := make(chan *ssh.Client, 1)
		go func() {
			c, err := ssh.Dial("tcp", s.Addr, s.ClientConfig())
			if err != nil {
				c = nil
			}
			ch <- c
		}()
		time.Sleep(time.Duration(i%12) * time.Millisecond) // anywhere in the handshake
		s.Stop()
		c := <-ch
		if c == nil {
			continue
		}
		time.Sleep(50 * time.Millisecond)
		if sess, err := c.NewSession(); err == nil {
			survived++
			sess.Close()
		}
		c.Close()
	}
	if survived > 0 {
		t.Errorf("%d of 100 connections set up during Stop still opened a session after it", survived)
	}
}
