package sftp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// sshConfigHost is an ssh_config Host block for s under alias, with extra
// lines.
func sshConfigHost(alias string, s *sshdtest.Server, extra ...string) string {
	b := fmt.Sprintf("Host %s\n  HostName 127.0.0.1\n  Port %d\n  User %s\n  IdentityFile %s\n  IdentitiesOnly yes\n  UserKnownHostsFile %s\n  StrictHostKeyChecking yes\n",
		alias, s.Port, s.User, s.IdentityFile, s.KnownHosts)
	for _, e := range extra {
		b += "  " + e + "\n"
	}
	return b
}

// sshOptions are Options of the ssh transport that reach s through the
// Host alias "storage" of an ssh_config holding cfg.
func sshOptions(t testing.TB, s *sshdtest.Server, cfg string) Options {
	t.Helper()
	file := filepath.Join(t.TempDir(), "ssh_config")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return Options{
		URL:       fmt.Sprintf("sftp://storage%s/t%d", s.Dir, subdirs.Add(1)),
		Transport: TransportSSH,
		SSHConfig: file,
		Timeout:   5 * time.Second,
		Logger:    slog.New(slog.DiscardHandler),
	}
}

// TestConformanceSSHTransport: the conformance suite through the system's
// ssh client, which finds host, port, user, key and known_hosts in an
// ssh_config under a Host alias (the URL names none of them).
func TestConformanceSSHTransport(t *testing.T) {
	s := sshdtest.Start(t)
	opt := sshOptions(t, s, sshConfigHost("storage", s))
	tiertest.Run(t, func(t *testing.T) tiers.Tier {
		o := opt
		o.URL = fmt.Sprintf("sftp://storage%s/t%d", s.Dir, subdirs.Add(1))
		return open(t, o)
	}, tiertest.Options{
		Reopen: func(t *testing.T, tr tiers.Tier) tiers.Tier {
			old := tr.(*Tier)
			old.Close()
			return open(t, old.opt)
		},
	})
}

// TestSSHTransportJumpHost: a server reached through a jump host
// (ProxyJump in ssh_config): values go up and come back, lanes included,
// and the jump host's log shows the connection it forwarded to the server.
func TestSSHTransportJumpHost(t *testing.T) {
	target := sshdtest.Start(t)
	jump := sshdtest.StartWith(t, sshdtest.Options{Forwarding: true})
	cfg := sshConfigHost("jump", jump) + sshConfigHost("storage", target, "ProxyJump jump")
	tr := open(t, sshOptions(t, target, cfg))
	tr.laneRTT = 0 // large fetches through lanes: more ssh processes, each through the jump
	k, b := tiertest.Key("through the jump host"), tiertest.Data(3, 9<<20)
	tiertest.Put(t, tr, k, b)
	if got := tiertest.Get(t, tr, k); string(got) != string(b) {
		t.Fatal("read back through the jump host differs")
	}
	if _, err := os.Stat(filepath.Join(localPath(tr), k.String())); err != nil {
		t.Fatalf("the value is not on the target server: %v", err)
	}
	log, _ := os.ReadFile(jump.LogFile)
	if want := fmt.Sprintf("port %d", target.Port); !strings.Contains(string(log), "direct_tcpip") || !strings.Contains(string(log), want) {
		t.Fatalf("the jump host's log shows no connection forwarded to the target (%s):\n%s", want, log)
	}
}

// TestSSHTransportRefused: a host key ssh cannot check and a login the
// server refuses are permanent (a mount stops, naming ssh's reason); a
// server that is down is not (the tier opens degraded, and works once the
// server is back).
func TestSSHTransportRefused(t *testing.T) {
	s := sshdtest.Start(t)
	wrongKey := filepath.Join(t.TempDir(), "wrong_key")
	if err := os.WriteFile(wrongKey, []byte(""), 0o600); err != nil {
		t.Fatal(err)
	}
	other := sshdtest.Start(t) // another server's user key is not authorized on s
	for _, c := range []struct {
		what, cfg, want string
	}{
		{"unknown host key", strings.Replace(sshConfigHost("storage", s), s.KnownHosts, os.DevNull, 1), "Host key verification failed"},
		{"refused login", strings.Replace(sshConfigHost("storage", s), s.IdentityFile, other.IdentityFile, 1), "Permission denied"},
		{"bad ssh_config", sshConfigHost("storage", s, "NoSuchOption yes"), "Bad configuration option"},
	} {
		t.Run(strings.ReplaceAll(c.what, " ", "_"), func(t *testing.T) {
			opt := sshOptions(t, s, c.cfg)
			opt.Lazy = true
			tr, err := Open(context.Background(), opt)
			if err == nil {
				tr.Close()
				t.Fatalf("open: no error, want ErrPermanent saying %q", c.want)
			}
			if !errors.Is(err, ErrPermanent) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("open: %v; want ErrPermanent saying %q", err, c.want)
			}
		})
	}

	t.Run("server down", func(t *testing.T) {
		opt := sshOptions(t, s, sshConfigHost("storage", s))
		opt.Lazy = true
		s.Kill()
		tr, err := Open(context.Background(), opt)
		if err != nil {
			t.Fatalf("lazy open with the server down: %v; want a degraded tier", err)
		}
		t.Cleanup(func() { tr.Close() })
		if _, err := tr.Stat(context.Background(), tiertest.Key("x")); !errors.Is(err, tiers.ErrUnavailable) {
			t.Fatalf("stat with the server down: %v; want ErrUnavailable", err)
		}
		if err := s.Restart(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(maxBackoffWait + 10*time.Second)
		for {
			_, err := tr.Stat(context.Background(), tiertest.Key("x"))
			if errors.Is(err, tiers.ErrNotFound) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("stat %v after the server came back", err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		works(t, tr, "after the server came back")
	})
}

// TestSSHTransportServerKilled: the server killed under a connection of
// the ssh transport: a put fails with ErrUnavailable, leaves nothing under
// the key, and the tier works again once the server is back.
func TestSSHTransportServerKilled(t *testing.T) {
	s := sshdtest.Start(t)
	opt := sshOptions(t, s, sshConfigHost("storage", s))
	opt.Timeout = faultTimeout
	killServerDuringPut(t, s, open(t, opt))
}

// BenchmarkTransport compares the two transports on loopback, one cipher
// (aes128-gcm) for both: a 256 MiB fetch and put, and the open and read
// of a 16 KiB value (the cold read of a small file).
//
//	go test -run '^$' -bench Transport -benchtime 5x ./tiers/sftp/
func BenchmarkTransport(b *testing.B) {
	s := sshdtest.Start(b)
	cipher := benchCiphers[0]
	for _, name := range []string{"go", "ssh"} {
		mk := func(b *testing.B) *Tier {
			opt := options(s)
			if name == "ssh" {
				opt = sshOptions(b, s, sshConfigHost("storage", s))
			}
			opt.Ciphers = []string{cipher}
			return open(b, opt)
		}
		b.Run(name+"/fetch", func(b *testing.B) { benchFetch(b, mk(b)) })
		b.Run(name+"/put", func(b *testing.B) { benchPut(b, mk(b), "transport put "+name) })
		b.Run(name+"/open16KiB", func(b *testing.B) { benchOpenSmall(b, mk(b), "transport open small "+name) })
	}
}

// TestGoTransportSSHConfig: the built-in client takes HostName, User, Port
// and IdentityFile of the URL's host from an ssh_config, and refuses, with
// a message naming transport = "ssh", what it cannot follow.
func TestGoTransportSSHConfig(t *testing.T) {
	s := sshdtest.Start(t)
	goOptions := func(cfg string) Options {
		opt := sshOptions(t, s, cfg)
		opt.Transport = TransportGo
		opt.KnownHosts = s.KnownHosts
		return opt
	}
	tr := open(t, goOptions(sshConfigHost("storage", s)))
	works(t, tr, "through an ssh_config alias")
	if tr.rem.addr != s.Addr || tr.rem.user != s.User {
		t.Errorf("dialled %s as %s, want %s as %s", tr.rem.addr, tr.rem.user, s.Addr, s.User)
	}
	for _, c := range []struct{ what, cfg string }{
		{"ProxyJump", sshConfigHost("storage", s, "ProxyJump jump")},
		{"ProxyCommand", sshConfigHost("storage", s, "ProxyCommand nc %h %p")},
		{"Match exec", sshConfigHost("storage", s) + "Match exec true\n  User nobody\n"},
	} {
		_, err := Open(context.Background(), goOptions(c.cfg))
		if err == nil || !strings.Contains(err.Error(), `transport = "ssh"`) {
			t.Errorf("%s with the built-in client: %v; want an error naming transport = \"ssh\"", c.what, err)
		}
	}
}
