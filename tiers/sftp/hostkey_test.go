package sftp

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/tiertest"
)

// secrets returns strings that must never appear in an error: the base64
// of the host's public key and of the private keys.
func secrets(t *testing.T, s *sshdtest.Server) []string {
	kh, err := os.ReadFile(s.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(kh))
	out := []string{f[len(f)-1]}
	for _, p := range []string{s.IdentityFile, s.HostKeyFile} {
		b, _ := os.ReadFile(p)
		blk, _ := pem.Decode(b)
		out = append(out, "PRIVATE KEY", string(b[40:80]), fmt.Sprintf("%x", blk.Bytes[:16]))
	}
	return out
}

func checkClean(t *testing.T, err error, secrets []string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(err.Error(), s) {
			t.Fatalf("error shows key material %q: %v", s, err)
		}
	}
}

func newKey(t *testing.T) ssh.PublicKey {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s.PublicKey()
}

func TestHostKeyUnknown(t *testing.T) {
	s := sshdtest.Start(t)
	opt := options(s)
	opt.KnownHosts = filepath.Join(t.TempDir(), "known_hosts")
	other := knownhosts.Line([]string{"[127.0.0.1]:1"}, newKey(t))
	os.WriteFile(opt.KnownHosts, []byte(other+"\n"), 0o644)
	_, err := Open(context.Background(), opt)
	if err == nil {
		t.Fatal("unknown host accepted")
	}
	var he *HostKeyError
	if !errors.As(err, &he) || !errors.Is(err, tiers.ErrUnavailable) {
		t.Fatalf("error %v (%T) is not a HostKeyError wrapping ErrUnavailable", err, err)
	}
	want := fmt.Sprintf("host key of %s is not in %s (add it with ssh-keyscan -p %d 127.0.0.1 >> %s", s.Addr, opt.KnownHosts, s.Port, opt.KnownHosts)
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q\ndoes not say %q", err, want)
	}
	checkClean(t, err, secrets(t, s))
	t.Log(err)

	// No file at all.
	opt.KnownHosts += ".missing"
	_, err = Open(context.Background(), opt)
	if err == nil || !strings.Contains(err.Error(), opt.KnownHosts) || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("missing known_hosts: %v", err)
	}
}

func TestHostKeyChanged(t *testing.T) {
	s := sshdtest.Start(t)
	opt := options(s)
	opt.KnownHosts = filepath.Join(t.TempDir(), "known_hosts")
	line := knownhosts.Line([]string{knownhosts.Normalize(s.Addr)}, newKey(t))
	os.WriteFile(opt.KnownHosts, []byte("# another key for the same host\n"+line+"\n"), 0o644)
	_, err := Open(context.Background(), opt)
	if err == nil {
		t.Fatal("changed host key accepted")
	}
	var he *HostKeyError
	if !errors.As(err, &he) || !errors.Is(err, tiers.ErrUnavailable) || !slices.Equal(he.Lines, []int{2}) {
		t.Fatalf("error %v: want HostKeyError at line 2", err)
	}
	for _, want := range []string{"host key of " + s.Addr + " CHANGED", "known_hosts " + opt.KnownHosts + " line 2"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q\ndoes not say %q", err, want)
		}
	}
	checkClean(t, err, secrets(t, s))
	t.Log(err)

	// A lazy tier (a mount's) fails to open likewise: trying again would
	// not help, so the mount must not start with a remote that can never
	// work.
	opt.Lazy = true
	if tr, err := Open(context.Background(), opt); err == nil {
		tr.Close()
		t.Fatal("lazy open with a changed host key succeeded")
	} else if !errors.As(err, &he) || !errors.Is(err, ErrPermanent) {
		t.Fatalf("lazy open: %v, want a permanent HostKeyError", err)
	}
}

func TestHostKeyAlgorithms(t *testing.T) {
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rs, _ := ssh.NewSignerFromKey(rk)
	kh := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(kh, []byte(knownhosts.Line([]string{"[10.0.0.1]:2222"}, rs.PublicKey())+"\n"+
		knownhosts.Line([]string{"[10.0.0.2]:2222"}, newKey(t))+"\n"), 0o644)
	tr := &Tier{opt: Options{KnownHosts: kh}, rem: remote{host: "10.0.0.1", port: 2222, addr: "10.0.0.1:2222"}}
	_, algos, err := tr.hostKeys(&net.TCPAddr{IP: net.ParseIP("10.0.0.1"), Port: 2222})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(algos, []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}) {
		t.Fatalf("algorithms %v", algos)
	}
}

func TestIdentityErrors(t *testing.T) {
	s := sshdtest.Start(t)
	dir := t.TempDir()

	// An encrypted key without the agent.
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	blk, err := ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte("secret passphrase"))
	if err != nil {
		t.Fatal(err)
	}
	enc := filepath.Join(dir, "id_enc")
	os.WriteFile(enc, pem.EncodeToMemory(blk), 0o600)
	opt := options(s)
	opt.IdentityFiles = []string{enc}
	_, err = Open(context.Background(), opt)
	if err == nil || !strings.Contains(err.Error(), enc+" is encrypted") || !strings.Contains(err.Error(), "ssh-add") ||
		strings.Contains(err.Error(), "secret passphrase") {
		t.Fatalf("encrypted key: %v", err)
	}

	// A key the server does not know.
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	blk, _ = ssh.MarshalPrivateKey(other, "")
	wrong := filepath.Join(dir, "id_wrong")
	os.WriteFile(wrong, pem.EncodeToMemory(blk), 0o600)
	opt.IdentityFiles = []string{wrong}
	_, err = Open(context.Background(), opt)
	want := fmt.Sprintf("login as %s refused by %s", s.User, s.Addr)
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), wrong) || !errors.Is(err, tiers.ErrUnavailable) {
		t.Fatalf("wrong key: %v", err)
	}
	checkClean(t, err, secrets(t, s))

	// Not a key at all.
	junk := filepath.Join(dir, "junk")
	os.WriteFile(junk, []byte("hello"), 0o600)
	opt.IdentityFiles = []string{junk}
	if _, err := Open(context.Background(), opt); err == nil || !strings.Contains(err.Error(), junk) {
		t.Fatalf("junk key: %v", err)
	}
}

// TestAgent logs in with a key only the agent holds; the encrypted identity
// file is skipped, not an error, when the agent is in use.
func TestAgent(t *testing.T) {
	s := sshdtest.Start(t)
	b, err := os.ReadFile(s.IdentityFile)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := ssh.ParseRawPrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	keyring := agent.NewKeyring()
	if err := keyring.Add(agent.AddedKey{PrivateKey: priv}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { agent.ServeAgent(keyring, c); c.Close() }()
		}
	}()
	blk, _ := ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte("pw"))
	enc := filepath.Join(t.TempDir(), "id_enc")
	os.WriteFile(enc, pem.EncodeToMemory(blk), 0o600)

	t.Setenv("SSH_AUTH_SOCK", sock)
	opt := options(s)
	opt.IdentityFiles = []string{enc}
	opt.UseAgent = true
	tr := open(t, opt)
	tiertest.Put(t, tr, tiertest.Key("agent"), []byte("via agent"))

	t.Setenv("SSH_AUTH_SOCK", "")
	if _, err := Open(context.Background(), opt); err == nil || !strings.Contains(err.Error(), "SSH_AUTH_SOCK") {
		t.Fatalf("no agent: %v", err)
	}
}

// TestLazyOpenPermanent: a lazy tier (a mount's) opens while the server is
// down, but not when the server answers and refuses this client for good:
// no known_hosts file, a key the server does not know, a remote directory
// that cannot be made. Those fail the open with ErrPermanent and the
// reason, so that a mount does not start with a remote that can never
// work.
func TestLazyOpenPermanent(t *testing.T) {
	s := sshdtest.Start(t)
	wrong := filepath.Join(t.TempDir(), "id_wrong")
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	blk, _ := ssh.MarshalPrivateKey(other, "")
	os.WriteFile(wrong, pem.EncodeToMemory(blk), 0o600)
	file := filepath.Join(s.Dir, "a-file")
	os.WriteFile(file, []byte("x"), 0o644)
	for _, c := range []struct {
		name, want string
		set        func(*Options)
	}{
		{"no known_hosts", "does not exist", func(o *Options) { o.KnownHosts += ".missing" }},
		{"wrong key", "refused", func(o *Options) { o.IdentityFiles = []string{wrong} }},
		{"remote directory under a file", "remote directory", func(o *Options) { o.URL = s.URL() + "/a-file/cache" }},
	} {
		t.Run(c.name, func(t *testing.T) {
			opt := options(s)
			opt.Lazy = true
			c.set(&opt)
			tr, err := Open(context.Background(), opt)
			if err == nil {
				tr.Close()
				t.Fatal("lazy open succeeded")
			}
			if !errors.Is(err, ErrPermanent) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("lazy open: %v; want ErrPermanent saying %q", err, c.want)
			}
		})
	}
}
