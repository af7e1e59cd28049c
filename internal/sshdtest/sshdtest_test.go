package sshdtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func TestStartServesSFTP(t *testing.T) {
	s := Start(t)
	if !strings.HasPrefix(s.URL(), "sftp://"+s.User+"@127.0.0.1:"+strconv.Itoa(s.Port)+"/") {
		t.Fatalf("URL %q", s.URL())
	}
	for _, f := range []string{s.IdentityFile, s.HostKeyFile} {
		fi, err := os.Stat(f)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, mode %v; want 0600", f, err, fi.Mode())
		}
	}
	// The known_hosts file is what an SSH client checks against.
	cb, err := knownhosts.New(s.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.ClientConfig()
	cfg.HostKeyCallback = cb
	c, err := ssh.Dial("tcp", s.Addr, cfg)
	if err != nil {
		t.Fatalf("dial with known_hosts: %v", err)
	}
	c.Close()

	// OpenSSH's own client reads and writes the served directory.
	if err := os.WriteFile(filepath.Join(s.Dir, "hello"), []byte("hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	local := filepath.Join(t.TempDir(), "got")
	out, err := runSFTP(s, "get "+s.Dir+"/hello "+local+"\n")
	if err != nil {
		t.Fatalf("sftp get: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(local); string(b) != "hi\n" {
		t.Fatalf("got %q", b)
	}
}

func runSFTP(s *Server, batch string) (string, error) {
	cmd := exec.Command("sftp", "-b", "-", "-i", s.IdentityFile,
		"-o", "UserKnownHostsFile="+s.KnownHosts, "-o", "StrictHostKeyChecking=yes",
		"-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
		"-P", strconv.Itoa(s.Port), s.User+"@127.0.0.1")
	cmd.Stdin = strings.NewReader(batch)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestKillDropsConnectionsAndRestart(t *testing.T) {
	s := Start(t)
	c, err := ssh.Dial("tcp", s.Addr, s.ClientConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(s.Children()) == 0 {
		t.Fatal("no per-connection sshd children found")
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	s.Kill()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("open connection survived Kill")
	}
	if _, err := ssh.Dial("tcp", s.Addr, s.ClientConfig()); err == nil {
		t.Fatal("dial after Kill succeeded")
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	c2, err := ssh.Dial("tcp", s.Addr, s.ClientConfig())
	if err != nil {
		t.Fatalf("dial after Restart: %v", err)
	}
	c2.Close()
	s.Stop()
	if s.PID() != 0 {
		t.Fatal("PID after Stop")
	}
	if _, err := ssh.Dial("tcp", s.Addr, s.ClientConfig()); err == nil {
		t.Fatal("dial after Stop succeeded")
	}
	s.Stop() // idempotent
}

func TestParseStat(t *testing.T) {
	st, ok := parseStat([]byte("123 (sshd: root (x) y) S 77 123 123 0 -1 4194560 357 0 0 0 0 0 0 0 20 0 1 0 8812 9478144"))
	if !ok || st.state != "S" || st.ppid != 77 || st.start != 8812 {
		t.Fatalf("parseStat = %+v %v", st, ok)
	}
}

func TestFreezeThaw(t *testing.T) {
	s := Start(t)
	c, err := ssh.Dial("tcp", s.Addr, s.ClientConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s.Freeze()
	done := make(chan error, 1)
	go func() {
		_, _, err := c.SendRequest("keepalive@openssh.com", true, nil)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("frozen server answered: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	s.Thaw()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no answer after Thaw")
	}
	s.Freeze()
	s.Kill() // works on a frozen server
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
}

// TestNoProcessLeft: whatever state the server is in, Stop and Kill leave
// no process of it behind, stopped or running.
func TestNoProcessLeft(t *testing.T) {
	for _, c := range []struct {
		name   string
		freeze bool
		end    func(*Server)
	}{
		{"stop", false, (*Server).Stop},
		{"kill", false, (*Server).Kill},
		{"freeze+stop", true, (*Server).Stop},
		{"freeze+kill", true, (*Server).Kill},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := Start(t)
			for range 3 {
				cl, err := ssh.Dial("tcp", s.Addr, s.ClientConfig())
				if err != nil {
					t.Fatal(err)
				}
				defer cl.Close()
				sess, err := cl.NewSession()
				if err != nil {
					t.Fatal(err)
				}
				if err := sess.RequestSubsystem("sftp"); err != nil {
					t.Fatal(err)
				}
			}
			procs := append(descendants(s.PID()), proc{s.PID(), 0})
			procs[len(procs)-1].start = mustStat(t, s.PID()).start
			if len(procs) < 7 {
				t.Fatalf("%d processes; want the listener and two per connection", len(procs))
			}
			if c.freeze {
				s.Freeze()
			}
			c.end(s)
			deadline := time.Now().Add(5 * time.Second)
			for _, p := range procs {
				for p.same() {
					if time.Now().After(deadline) {
						st, _ := readStat(p.pid)
						t.Fatalf("process %d left behind: %+v", p.pid, st)
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
		})
	}
}

func mustStat(t *testing.T, pid int) procStat {
	st, ok := readStat(pid)
	if !ok {
		t.Fatalf("no process %d", pid)
	}
	return st
}
