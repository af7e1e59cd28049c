// Package config reads the flechefs configuration: a TOML file that lists
// the tiers of the cache, fastest first, and the stack's settings. The
// reference of every key is in default.toml (the configuration used when
// there is no file) and docs/config.md.
//
// # Errors
//
// Every problem is an *Error that names the file, the line and column, and
// the reason, in the form compilers use:
//
//	config.toml:7:8: tier 2 (bolt): size "10XB": unknown unit "XB" (...)
//
// Parse reports every problem it finds, in file order, as an Errors list.
// Unknown keys are errors (a misspelt key silently ignored is a setting
// silently lost). Settings that work but are probably not what was meant
// (a RAM tier below a disk tier) are Warnings, not errors.
//
// # Paths
//
// Paths expand a leading "~" or "~user", and $VAR or ${VAR}; an unset
// variable is an error, except the XDG base directories ($XDG_CACHE_HOME,
// $XDG_CONFIG_HOME, $XDG_DATA_HOME, $XDG_STATE_HOME), which default to
// ~/.cache, ~/.config, ~/.local/share and ~/.local/state. Relative paths
// are relative to the configuration file's directory (to the working
// directory for command-line flags).
package config

import (
	_ "embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DefaultTOML is the configuration used when there is no file: a RAM tier
// over a bbolt tier, no remote. It documents every key.
//
//go:embed default.toml
var DefaultTOML string

// DefaultName is the file name shown in errors about DefaultTOML.
const DefaultName = "(default config)"

// Kind is a tier's implementation.
type Kind string

const (
	Memory Kind = "memory" // RAM, bounded by bytes (tiers/memory)
	Bolt   Kind = "bolt"   // a bbolt database file (tiers/bolt)
	SFTP   Kind = "sftp"   // a directory on an SFTP server (tiers/sftp)
	S3     Kind = "s3"     // a bucket of an S3-compatible object store (tiers/s3)
)

// Kinds lists the known kinds, in their usual order in a stack.
var Kinds = []Kind{Memory, Bolt, SFTP, S3}

// Remote reports whether tiers of kind k are remote (shared, slow, fed by
// the upload queue).
func (k Kind) Remote() bool { return k == SFTP || k == S3 }

// Config is a parsed, validated configuration.
type Config struct {
	// File is where the configuration was read: a path, or DefaultName.
	File string

	Promote       string        // "all" or "base"
	WriteThrough  bool          // write = "through"
	NegativeTTL   time.Duration // how long the kernel remembers a missing name
	RemoteTimeout time.Duration // bound of one remote lookup
	ListTTL       time.Duration // how long a remote listing is reused
	DeleteRemote  bool          // a delete also removes the remote copy
	SpoolDir      string        // absolute
	AllowOther    bool          // other users may use the mount
	UploadWorkers int
	PublishFailed bool   // publish a value whose writer exited with a failure status
	Metrics       string // host:port of the Prometheus metrics endpoint; "": off

	// Tiers, fastest first.
	Tiers []Tier

	// Warnings are settings that work but look like mistakes, each with
	// its position ("config.toml:12:1: ...").
	Warnings []string
}

// Tier is one [[tier]] table: the keys every kind has, then each kind's
// own (a key of another kind is refused when the configuration is read).
type Tier struct {
	Kind Kind
	// Name is unique in the stack: the name key, else "ram", "bolt" or
	// "sftp", numbered from the second tier of a kind on ("bolt2").
	Name     string
	ReadOnly bool

	// Size bounds the bytes held (memory, bolt).
	Size int64
	// MaxEntry is the largest value a memory tier admits; 0: Size/4.
	MaxEntry int64

	// Path of the database file (bolt), absolute.
	Path string

	// Timeout of a remote's requests (sftp, s3).
	Timeout time.Duration

	SFTPKeys
	S3Keys
	RetentionKeys

	// At is where the tier was declared: "config.toml:12:1", or the flag
	// that added it ("--remote").
	At     string
	origin origin
	// explicitName: the name key was given (made-up names are renumbered).
	explicitName bool
	// timeoutSet: the timeout key was given (else it is remote_timeout).
	timeoutSet bool
}

// SFTPKeys are the keys of an sftp tier.
type SFTPKeys struct {
	// URL of the remote directory, sftp://[user@]host[:port]/path.
	URL         string
	Identity    []string // private key files, absolute
	KnownHosts  string   // absolute; "" only with transport "ssh" (ssh's own)
	Agent       bool     // use $SSH_AUTH_SOCK
	Concurrency int      // requests in flight per transfer
	Channels    int      // SFTP sessions a large fetch reads through
	Ciphers     []string // SSH ciphers offered, in order; nil: the library's defaults
	Mode        int      // permission bits of uploaded values, default 0640
	// Foreign is what the tier does with a remote file that has no sum
	// record: "adopt" (serve it and record its sum), "verify" (only a
	// name that is the SHA-256 of the content), "ignore".
	Foreign string
	// Transport is how the tier reaches the server: "go" (the built-in SSH
	// client, the default) or "ssh" (the system's ssh client, which reads
	// ~/.ssh/config: ProxyJump, host aliases, certificates).
	Transport string
	// SSHConfig is the ssh_config file, absolute: ssh -F for transport
	// "ssh"; for "go", where the URL host's HostName, User, Port and
	// IdentityFile are read ("": ~/.ssh/config).
	SSHConfig string
}

// S3Keys are the keys of an s3 tier: Endpoint (http(s)://host[:port]),
// Bucket, Prefix (of the object names), Region, PathStyle, and the
// ~/.aws/credentials Profile when the AWS environment gives no
// credentials.
type S3Keys struct {
	Endpoint  string
	Bucket    string
	Prefix    string
	Region    string
	PathStyle bool
	Profile   string
}

// RetentionKeys bound a remote tier (sftp, s3): MaxSize bytes of values
// and MaxAge since last use (0: no bound); PruneGrace, the age under
// which an entry is never removed; PruneEvery, how often this mount runs
// a pass.
type RetentionKeys struct {
	MaxSize    int64
	MaxAge     time.Duration
	PruneGrace time.Duration
	PruneEvery time.Duration
}

// origin is where a tier comes from: a place in a file, or a flag.
type origin struct {
	file      string
	line, col int
	flag      string // "--remote"
}

func (o origin) String() string {
	if o.flag != "" {
		return o.flag
	}
	s := (&Error{File: o.file, Line: o.line, Col: o.col}).Error()
	return strings.TrimSuffix(s, ": ")
}

// errorf makes an Error located at o.
func (o origin) errorf(format string, args ...any) *Error {
	msg := fmt.Sprintf(format, args...)
	if o.flag != "" {
		return &Error{Msg: o.flag + ": " + msg}
	}
	return &Error{File: o.file, Line: o.line, Col: o.col, Msg: msg}
}

// label is how messages name tier i: "tier 2 (bolt)", 1-based.
func (c *Config) label(i int) string {
	if i < 0 || i >= len(c.Tiers) {
		return "tier ?"
	}
	return fmt.Sprintf("tier %d (%s)", i+1, c.Tiers[i].Kind)
}

// Describe is a short summary of the tiers for the "mounted" line:
// "ram 256MiB, bolt 10GiB, sftp sftp://u@h/srv (read-only)".
func (c *Config) Describe() string {
	var parts []string
	for _, t := range c.Tiers {
		var s string
		switch t.Kind {
		case SFTP:
			s = t.Name + " " + t.URL
		case S3:
			s = t.Name + " s3://" + t.Bucket + "/" + t.Prefix + " at " + t.Endpoint
		default:
			s = t.Name + " " + FormatSize(t.Size)
		}
		if t.ReadOnly {
			s += " (read-only)"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

// Error is one problem in a configuration.
type Error struct {
	File      string // file name as given, DefaultName, or "" for flags
	Line, Col int    // 1-based; 0 when not known
	Msg       string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
			if e.Col > 0 {
				fmt.Fprintf(&b, ":%d", e.Col)
			}
		}
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors are the problems of one configuration, in file order. Its Error
// has one line per problem.
type Errors []*Error

// maxErrors bounds the list: after that many, the rest is noise.
const maxErrors = 20

func (l Errors) Error() string {
	s := make([]string, len(l))
	for i, e := range l {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

func (l Errors) Unwrap() []error {
	out := make([]error, len(l))
	for i, e := range l {
		out[i] = e
	}
	return out
}

// UserFile returns the path of the user's configuration file,
// $XDG_CONFIG_HOME/flechefs/config.toml.
func UserFile(env Env) (string, error) {
	dir, err := env.XDG("XDG_CONFIG_HOME")
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "flechefs", "config.toml"), nil
}

// Load reads the configuration at file; when file is "", the user's file
// if it exists, else DefaultTOML. Relative paths in a file are resolved
// against its directory.
func Load(file string, env Env) (*Config, error) {
	if file == "" {
		user, err := UserFile(env)
		if err == nil {
			if _, statErr := os.Stat(user); statErr == nil {
				file = user
			} else if !errors.Is(statErr, fs.ErrNotExist) {
				return nil, fmt.Errorf("config: %w", statErr)
			}
		}
		if file == "" {
			return Parse(DefaultName, []byte(DefaultTOML), env)
		}
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	dir, err := filepath.Abs(filepath.Dir(file))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	env.Dir = dir
	return Parse(file, data, env)
}
