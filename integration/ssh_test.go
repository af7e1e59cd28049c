package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flechefs/flechefs/internal/mounttest"
	"github.com/flechefs/flechefs/internal/sshdtest"
)

// TestMountThroughJumpHost: two mounts whose remote is reached with the
// system's ssh client (transport = "ssh") through a jump host, named by a
// Host alias of an ssh_config: a value written on one is uploaded, read
// on the other, and the jump host forwarded the connections.
func TestMountThroughJumpHost(t *testing.T) {
	target := sshdtest.Start(t)
	jump := sshdtest.StartWith(t, sshdtest.Options{Forwarding: true})
	host := func(alias string, s *sshdtest.Server, extra string) string {
		return fmt.Sprintf("Host %s\n  HostName 127.0.0.1\n  Port %d\n  User %s\n  IdentityFile %s\n  IdentitiesOnly yes\n  UserKnownHostsFile %s\n  StrictHostKeyChecking yes\n%s",
			alias, s.Port, s.User, s.IdentityFile, s.KnownHosts, extra)
	}
	cfg := filepath.Join(t.TempDir(), "ssh_config")
	if err := os.WriteFile(cfg, []byte(host("bastion", jump, "")+host("storage", target, "  ProxyJump bastion\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := mounttest.Opts{
		RemoteURL:  "sftp://storage" + target.Dir,
		RemoteTier: fmt.Sprintf("transport = \"ssh\"\nssh_config = %q\n", cfg),
	}
	a := mounttest.NewNode(t, "jump-a", target, opts)
	b := mounttest.NewNode(t, "jump-b", target, opts)
	k, v := mounttest.Key("through the bastion"), bytes.Repeat([]byte("bastion "), 100000)
	if err := os.WriteFile(a.Path(k), v, 0o644); err != nil {
		t.Fatal(err)
	}
	a.Sync(time.Minute)
	if got, err := os.ReadFile(filepath.Join(target.Dir, k)); err != nil || !bytes.Equal(got, v) {
		t.Fatalf("on the server: %d bytes, %v", len(got), err)
	}
	got, err := os.ReadFile(b.Path(k))
	if err != nil || !bytes.Equal(got, v) {
		t.Fatalf("read on the second mount: %d bytes, %v\n%s", len(got), err, b.Stderr())
	}
	log, _ := os.ReadFile(jump.LogFile)
	if !bytes.Contains(log, []byte("direct_tcpip")) || !bytes.Contains(log, []byte(fmt.Sprintf("port %d", target.Port))) {
		t.Fatalf("the jump host forwarded nothing to the server:\n%s", log)
	}
}
