// Package integration drives the built flechefs binary on real FUSE mounts,
// with a real OpenSSH sshd as the remote, the way its users do: shell tools,
// Python, plain syscalls.
//
// The harness lives in internal/mounttest (shared with the fault tests);
// this file adapts it to the short names the tests here use.
package integration

import (
	"testing"
	"time"

	"github.com/flechefs/flechefs/internal/mounttest"
	"github.com/flechefs/flechefs/internal/remotetest"
	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers"
)

func TestMain(m *testing.M) { mounttest.Main(m) }

// node is one machine: its own cache dir (RAM + bbolt) and optionally a remote.
type node struct {
	*mounttest.Node
	t                      *testing.T
	name, dir, mnt, config string
	stderr                 daemonLog
}

// daemonLog prints the daemon's output so far with %s.
type daemonLog struct{ n *mounttest.Node }

func (d daemonLog) String() string { return d.n.Stderr() }

// nodeOpts tune a node's config.
type nodeOpts struct {
	ram        string // RAM tier size, default "64MiB"
	extra      string // more top-level TOML
	remoteTier string // more keys in the remote tier's table
	negTTL     string // negative_ttl, default "1s"
}

func newNode(t *testing.T, name string, remote *sshdtest.Server, o nodeOpts) *node {
	t.Helper()
	return wrapNode(t, mounttest.NewNode(t, name, remote, o.mounttest()))
}

// newStoreNode is newNode with a remote of any kind.
func newStoreNode(t *testing.T, name string, s remotetest.Store, o nodeOpts) *node {
	t.Helper()
	return wrapNode(t, s.Node(t, name, o.mounttest()))
}

func (o nodeOpts) mounttest() mounttest.Opts {
	return mounttest.Opts{RAM: o.ram, Extra: o.extra, RemoteTier: o.remoteTier, NegativeTTL: o.negTTL}
}

func wrapNode(t *testing.T, m *mounttest.Node) *node {
	return &node{Node: m, t: t, name: m.Name, dir: m.Dir, mnt: m.Mnt, config: m.Config, stderr: daemonLog{m}}
}

func (n *node) start()                                  { n.t.Helper(); n.Start() }
func (n *node) stop()                                   { n.t.Helper(); n.Stop() }
func (n *node) kill()                                   { n.t.Helper(); n.Kill() }
func (n *node) restart()                                { n.t.Helper(); n.Restart() }
func (n *node) path(key string) string                  { return n.Path(key) }
func (n *node) run(name string, args ...string) string  { n.t.Helper(); return n.Run(name, args...) }
func (n *node) sh(script string) string                 { n.t.Helper(); return n.Sh(script) }
func (n *node) flechefs(args ...string) (string, error) { return n.Flechefs(args...) }
func (n *node) sync(timeout time.Duration)              { n.t.Helper(); n.Sync(timeout) }
func (n *node) stats() tiers.Stats                      { n.t.Helper(); return n.Stats() }
func (n *node) tierStats(name string) tiers.TierStats   { n.t.Helper(); return n.TierStats(name) }

func isMounted(dir string) bool { return mounttest.IsMounted(dir) }

func xattr(t *testing.T, path, name string) string {
	t.Helper()
	return mounttest.Xattr(t, path, name)
}

func eventually(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	mounttest.Eventually(t, what, d, cond)
}

// key returns a 64-hex key (SHA-256) for s.
func key(s string) string { return mounttest.Key(s) }

// lines splits command output into its non-empty, trimmed lines.
func lines(s string) []string { return mounttest.Lines(s) }
