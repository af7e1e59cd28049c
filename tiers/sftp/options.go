package sftp

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Options configure Open. Only URL is required.
type Options struct {
	// Name of the tier in errors, logs and stats. Default "sftp".
	Name string
	// URL is sftp://[user@]host[:port]/absolute/path. The port defaults to
	// 22 and the user to the current user.
	URL string
	// IdentityFiles are private keys in OpenSSH or PEM format. Default: the
	// ones of ~/.ssh/id_ed25519, id_ecdsa, id_rsa that exist. Encrypted keys
	// are only usable through the agent (UseAgent): flechefs never asks for
	// or stores a passphrase.
	IdentityFiles []string
	// KnownHosts is the known_hosts file the host key must be in. Default
	// ~/.ssh/known_hosts. There is no way to turn host key checking off.
	KnownHosts string
	// UseAgent also offers the keys of the ssh-agent at $SSH_AUTH_SOCK.
	UseAgent bool
	// Timeout bounds dialing and every remote operation: an operation that
	// hears nothing from the server for this long drops the connection and
	// fails with tiers.ErrUnavailable. Transfers may take longer in total as
	// long as data keeps flowing. Default 10s.
	Timeout time.Duration
	// ReadOnly refuses Put and Delete with tiers.ErrReadOnly and creates no
	// directories on the server.
	ReadOnly bool
	// Concurrency is the number of SFTP requests in flight per transfer.
	// Default 64.
	Concurrency int
	// Channels is the number of SFTP sessions (SSH channels) a fetch of a
	// large value reads through, each with its own 2 MiB flow-control
	// window (lanes.go); 1 reads through the main session only. Default 3.
	Channels int
	// PacketSize is the payload of one SFTP read or write request. Default:
	// 255 KiB when the server announces OpenSSH's limits@openssh.com
	// extension (OpenSSH 8.7 and later serve 261120-byte reads and writes),
	// else 32 KiB, which every server must accept.
	PacketSize int
	// Ciphers, if set, restricts the SSH ciphers offered (for example
	// "aes128-gcm@openssh.com", the fastest with AES-NI).
	Ciphers []string
	// Logger receives connection events. Default slog.Default().
	Logger *slog.Logger
	// Mode is the permission of the values this tier uploads, set on the
	// temp file before it is renamed into place (the server's umask does
	// not apply). Default 0640: the owner reads and writes, the group
	// reads, others nothing. Records are symbolic links, whose own mode
	// Linux ignores: who can read a record is decided by the directory
	// .flechefs/sums.
	Mode os.FileMode
	// Foreign says what the tier does with a data file that has no sum
	// record: a file flechefs did not write (fleche's PickleFile, rsync, cp
	// on the server) or an upload cut between its rename and its record.
	// ForeignAdopt (the default) serves it, unless it looks like a write in
	// progress, and records its sum after the first complete read;
	// ForeignVerify serves only names that are the SHA-256 of the content;
	// ForeignIgnore never serves nor lists one. None of them removes it.
	Foreign Foreign
	// Lazy makes Open succeed unless the server refuses this client for
	// good (ErrPermanent: host key, login, remote directory): Open dials
	// once and waits for that dial (at most Timeout), but a server that is
	// down, unreachable or silent leaves the tier open in degraded mode,
	// dialing again in the background. A mount starts this way.
	Lazy bool
	// Transport is how the tier reaches the server: TransportGo (the
	// default) or TransportSSH, the system's ssh client (transport.go),
	// for everything ~/.ssh/config can say. With TransportSSH, the URL's
	// host may be a Host alias, its user and port are passed only when
	// the URL names them, and IdentityFiles and KnownHosts only when set;
	// UseAgent is ssh's own business.
	Transport Transport
	// SSHCommand is the ssh client TransportSSH runs. Default "ssh".
	SSHCommand string
	// SSHConfig is an ssh_config file: for TransportSSH, ssh -F (default
	// ssh's own, ~/.ssh/config and /etc/ssh/ssh_config); for TransportGo,
	// where HostName, User, Port and IdentityFile of the URL's host are
	// read (default ~/.ssh/config, if it exists; sshconfig.go).
	SSHConfig string

	// Retention bounds the remote (retention.go): entries are marked when
	// used, and Prune removes the least recently used beyond the bound.
	Retention Bound

	knownHostsSet bool // KnownHosts was given, not defaulted
}

// Transport is the setting Options.Transport.
type Transport string

const (
	TransportGo  Transport = "go"
	TransportSSH Transport = "ssh"
)

// Foreign is the setting Options.Foreign: what to do with a data file
// without a sum record (doc.go, "Files flechefs did not write").
type Foreign string

const (
	ForeignAdopt  Foreign = "adopt"
	ForeignVerify Foreign = "verify"
	ForeignIgnore Foreign = "ignore"
)

// ParseForeign checks a foreign setting's name.
func ParseForeign(s string) (Foreign, error) {
	switch f := Foreign(s); f {
	case ForeignAdopt, ForeignVerify, ForeignIgnore:
		return f, nil
	}
	return "", fmt.Errorf("foreign %q: want \"adopt\", \"verify\" or \"ignore\"", s)
}

const (
	defaultTimeout     = 10 * time.Second
	defaultConcurrency = 64
	defaultChannels    = 3
	defaultMode        = 0o640
	maxChannels        = 8
	// openSSHPacket is OpenSSH's SFTP_MAX_READ_LENGTH (256 KiB - 1024): its
	// sftp-server answers a larger read with this many bytes, which
	// pkg/sftp's concurrent WriteTo would take for end of file.
	openSSHPacket = 256<<10 - 1024
	minPacket     = 32 << 10
)

// remote is the parsed URL.
type remote struct {
	userSet bool // the URL names the user
	portSet bool // the URL names the port
	user    string
	host    string // without port
	port    int
	addr    string // host:port, for dialing and known_hosts
	root    string // absolute, clean
}

func parseURL(raw string) (remote, error) {
	var r remote
	if raw == "" {
		return r, errors.New("no URL: want sftp://[user@]host[:port]/path")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return r, fmt.Errorf("URL %q: %w", raw, err)
	}
	if u.Scheme != "sftp" {
		return r, fmt.Errorf("URL %q: scheme must be sftp", raw)
	}
	if u.Opaque != "" || u.RawQuery != "" || u.Fragment != "" {
		return r, fmt.Errorf("URL %q: want sftp://[user@]host[:port]/path", raw)
	}
	if _, hasPass := u.User.Password(); hasPass {
		return r, fmt.Errorf("URL %q: passwords are not supported; use keys", u.Redacted())
	}
	r.host = u.Hostname()
	if r.host == "" {
		return r, fmt.Errorf("URL %q: no host", raw)
	}
	r.port = 22
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return r, fmt.Errorf("URL %q: bad port %q", raw, p)
		}
		r.port = n
		r.portSet = true
	}
	r.addr = net.JoinHostPort(r.host, strconv.Itoa(r.port))
	r.user = u.User.Username()
	r.userSet = r.user != ""
	if r.user == "" {
		cur, err := user.Current()
		if err != nil {
			return r, fmt.Errorf("URL %q has no user and the current user is unknown: %w", raw, err)
		}
		r.user = cur.Username
	}
	if !path.IsAbs(u.Path) {
		return r, fmt.Errorf("URL %q: the path must be absolute, as in sftp://host/srv/cache", raw)
	}
	r.root = path.Clean(u.Path)
	return r, nil
}

func (o *Options) setDefaults() error {
	if o.Name == "" {
		o.Name = "sftp"
	}
	if o.Timeout <= 0 {
		o.Timeout = defaultTimeout
	}
	if o.Concurrency <= 0 {
		o.Concurrency = defaultConcurrency
	}
	if o.Channels <= 0 {
		o.Channels = defaultChannels
	}
	if o.Channels > maxChannels {
		return fmt.Errorf("%d channels: at most %d (OpenSSH allows 10 sessions per connection)", o.Channels, maxChannels)
	}
	if o.PacketSize < 0 || (o.PacketSize > 0 && o.PacketSize < 512) {
		return fmt.Errorf("packet size %d is too small", o.PacketSize)
	}
	if o.Mode == 0 {
		o.Mode = defaultMode
	}
	if o.Mode&^os.ModePerm != 0 {
		return fmt.Errorf("mode %#o: want permission bits only (0 to 0777)", uint32(o.Mode))
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Foreign == "" {
		o.Foreign = ForeignAdopt
	}
	if _, err := ParseForeign(string(o.Foreign)); err != nil {
		return err
	}
	switch o.Transport {
	case "":
		o.Transport = TransportGo
	case TransportGo, TransportSSH:
	default:
		return fmt.Errorf("transport %q: want \"go\" or \"ssh\"", o.Transport)
	}
	if o.SSHCommand == "" {
		o.SSHCommand = "ssh"
	}
	home, _ := os.UserHomeDir()
	o.knownHostsSet = o.KnownHosts != ""
	if o.Transport == TransportSSH {
		// ssh finds its own known_hosts and keys.
		if o.knownHostsSet {
			o.KnownHosts = expandHome(o.KnownHosts, home)
		}
		files := make([]string, len(o.IdentityFiles))
		for i, f := range o.IdentityFiles {
			files[i] = expandHome(f, home)
		}
		o.IdentityFiles = files
		return nil
	}
	if o.KnownHosts == "" {
		if home == "" {
			return errors.New("no known_hosts file set and no home directory to find ~/.ssh/known_hosts")
		}
		o.KnownHosts = filepath.Join(home, ".ssh", "known_hosts")
	}
	o.KnownHosts = expandHome(o.KnownHosts, home)
	if o.IdentityFiles != nil {
		files := make([]string, len(o.IdentityFiles))
		for i, f := range o.IdentityFiles {
			files[i] = expandHome(f, home)
		}
		o.IdentityFiles = files
	}
	return nil
}

// defaultIdentities are the key files ssh tries when nothing names one:
// ~/.ssh/id_ed25519, id_ecdsa, id_rsa, those that exist.
func defaultIdentities(home string) []string {
	var out []string
	for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
		p := filepath.Join(home, ".ssh", n)
		if _, err := os.Stat(p); err == nil && home != "" {
			out = append(out, p)
		}
	}
	return out
}

// expandHome expands a leading "~/" as a shell would.
func expandHome(p, home string) string {
	if home != "" && strings.HasPrefix(p, "~/") {
		return filepath.Join(home, p[2:])
	}
	return p
}
