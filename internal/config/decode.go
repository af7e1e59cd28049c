package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/BurntSushi/toml"
	"github.com/minio/minio-go/v7/pkg/s3utils"
	"golang.org/x/crypto/ssh"

	"github.com/flechefs/flechefs/tiers"
)

// Defaults of the settings a file leaves out.
const (
	DefaultPromote       = "all"
	DefaultNegativeTTL   = time.Second
	DefaultRemoteTimeout = 10 * time.Second
	DefaultListTTL       = 30 * time.Second
	DefaultUploadWorkers = tiers.DefaultUploadWorkers
	DefaultConcurrency   = 64
	DefaultChannels      = 3
	// DefaultMode is the permission of the values an sftp tier uploads:
	// the remote's owner reads and writes, its group reads.
	DefaultMode     = 0o640
	DefaultBoltSize = 10 << 30
)

// Bounds of the settings: values outside are refused, not clamped.
const (
	// MaxNegativeTTL is the mount's limit (fs.MaxNegativeTTL): a name
	// another machine publishes must appear within this time.
	MaxNegativeTTL   = 2 * time.Second
	MaxRemoteTimeout = 10 * time.Minute
	// DefaultPruneGrace and DefaultPruneEvery: a bounded remote never
	// loses an entry used in the last hour, and each mount runs a pass
	// every hour.
	DefaultPruneGrace = time.Hour
	DefaultPruneEvery = time.Hour
	MaxListTTL        = 24 * time.Hour
	MaxUploadWorkers  = 64
	MaxConcurrency    = 1024
	MaxChannels       = 8
)

var topKeys = []string{
	"promote", "write", "negative_ttl", "remote_timeout", "list_ttl",
	"delete_remote", "spool_dir", "allow_other", "upload_workers", "publish_failed", "metrics", "tier",
}

// tierKeys maps each tier key to the kinds that use it.
var tierKeys = map[string][]Kind{
	"kind":        {Memory, Bolt, SFTP, S3},
	"name":        {Memory, Bolt, SFTP, S3},
	"size":        {Memory, Bolt},
	"max_entry":   {Memory},
	"read_only":   {Bolt, SFTP, S3},
	"path":        {Bolt},
	"url":         {SFTP},
	"identity":    {SFTP},
	"known_hosts": {SFTP},
	"agent":       {SFTP},
	"concurrency": {SFTP},
	"channels":    {SFTP},
	"timeout":     {SFTP, S3},
	"ciphers":     {SFTP},
	"mode":        {SFTP},
	"foreign":     {SFTP},
	"transport":   {SFTP},
	"ssh_config":  {SFTP},
	"max_size":    {SFTP, S3},
	"max_age":     {SFTP, S3},
	"prune_grace": {SFTP, S3},
	"prune_every": {SFTP, S3},
	"endpoint":    {S3},
	"bucket":      {S3},
	"prefix":      {S3},
	"region":      {S3},
	"path_style":  {S3},
	"profile":     {S3},
}

// kindAliases are names people reach for, mapped to the kind they mean.
var kindAliases = map[string]Kind{
	"ram": Memory, "mem": Memory, "disk": Bolt, "bbolt": Bolt, "boltdb": Bolt,
	"db": Bolt, "ssh": SFTP, "remote": SFTP,
}

// newConfig returns a Config holding the defaults.
func newConfig(file string) *Config {
	return &Config{
		File:          file,
		Promote:       DefaultPromote,
		NegativeTTL:   DefaultNegativeTTL,
		RemoteTimeout: DefaultRemoteTimeout,
		ListTTL:       DefaultListTTL,
		DeleteRemote:  true,
		UploadWorkers: DefaultUploadWorkers,
	}
}

type parser struct {
	file string
	env  Env
	loc  *locations
	errs Errors
}

// Parse reads a configuration from data, validates it and fills in the
// defaults. file names it in errors. Relative paths are resolved against
// env.Dir. The error is an Errors list.
func Parse(file string, data []byte, env Env) (*Config, error) {
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, Errors{{File: file, Line: pe.Position.Line, Col: pe.Position.Col, Msg: "TOML syntax: " + pe.Message}}
		}
		return nil, Errors{{File: file, Msg: err.Error()}}
	}
	p := &parser{file: file, env: env, loc: locate(string(data))}
	c := newConfig(file)
	p.top(c, raw)
	if len(p.errs) > 0 {
		return nil, p.sorted()
	}
	if err := c.Validate(env); err != nil {
		return nil, err
	}
	return c, nil
}

func (p *parser) sorted() Errors {
	sort.SliceStable(p.errs, func(i, j int) bool {
		a, b := p.errs[i], p.errs[j]
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
	if len(p.errs) > maxErrors {
		p.errs = append(p.errs[:maxErrors], &Error{File: p.file, Msg: "too many errors"})
	}
	return p.errs
}

func (p *parser) errorAt(at pos, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Line: at.Line, Col: at.Col, Msg: fmt.Sprintf(format, args...)})
}

// ordered returns m's keys in the order the file writes them.
func (p *parser) ordered(m map[string]any, base path) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := p.loc.keyPos(base.with(keys[i])), p.loc.keyPos(base.with(keys[j]))
		if a != b {
			if a.Line == 0 || b.Line == 0 {
				return b.Line == 0
			}
			if a.Line != b.Line {
				return a.Line < b.Line
			}
			return a.Col < b.Col
		}
		return keys[i] < keys[j]
	})
	return keys
}

// field is one key being decoded: where it is and how messages name it.
type field struct {
	p    *parser
	at   path
	ctx  string // "tier 2 (bolt): " or ""
	name string
	v    any
}

// bad reports a problem with the value: `ctx name "value": reason`.
func (f field) bad(format string, args ...any) {
	f.p.errorAt(f.p.loc.valPos(f.at), "%s%s %s: %s", f.ctx, f.name, show(f.v), fmt.Sprintf(format, args...))
}

// wrongType reports a value of the wrong TOML type.
func (f field) wrongType(want string) {
	f.p.errorAt(f.p.loc.valPos(f.at), "%s%s: want %s, got %s", f.ctx, f.name, want, describe(f.v))
}

func (f field) str() (string, bool) {
	s, ok := f.v.(string)
	if !ok {
		f.wrongType("a string")
	}
	return s, ok
}

func (f field) boolean(dst *bool) {
	b, ok := f.v.(bool)
	if !ok {
		f.wrongType("true or false")
		return
	}
	*dst = b
}

func (f field) integer(lo, hi int, dst *int) {
	n, ok := f.v.(int64)
	if !ok {
		f.wrongType(fmt.Sprintf("an integer from %d to %d", lo, hi))
		return
	}
	if n < int64(lo) || n > int64(hi) {
		f.bad("out of range: want %d to %d", lo, hi)
		return
	}
	*dst = int(n)
}

func (f field) enum(dst *string, values ...string) {
	s, ok := f.v.(string)
	if !ok {
		f.wrongType(quoteList(values))
		return
	}
	if err := checkEnum(s, values...); err != nil {
		f.bad("%v", err)
		return
	}
	*dst = s
}

// text stores a string value in dst.
func (f field) text(dst *string) {
	if v, ok := f.str(); ok {
		*dst = v
	}
}

func (f field) duration(lo, hi time.Duration, dst *time.Duration) {
	s, ok := f.v.(string)
	if !ok {
		f.wrongType(`a duration string such as "500ms", "10s" or "2m"`)
		return
	}
	d, err := parseDuration(s, lo, hi)
	if err != nil {
		f.bad("%v", err)
		return
	}
	*dst = d
}

// mode accepts a permission as a string of octal digits ("0640", "600"):
// as a TOML integer, 640 and 0o640 would be easy to mix up. The owner must
// be able to read (flechefs reads back what it uploads).
func (f field) mode(dst *int) {
	s, ok := f.v.(string)
	if !ok {
		f.wrongType(`a string of octal digits such as "0640"`)
		return
	}
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil || len(s) < 3 || len(s) > 4 {
		f.bad(`want octal permission bits such as "0640" or "0600"`)
		return
	}
	if n > 0o777 {
		f.bad("want permission bits only (at most 0777; no setuid, setgid or sticky bit)")
		return
	}
	if n&0o400 == 0 {
		f.bad("the owner must be able to read (flechefs reads back what it uploads): want 0400 set")
		return
	}
	*dst = int(n)
}

// size accepts "512MiB"-like strings and plain integers (bytes); it must
// be positive.
func (f field) size(dst *int64) {
	var n int64
	switch x := f.v.(type) {
	case string:
		var err error
		if n, err = parseSize(x); err != nil {
			f.bad("%v", err)
			return
		}
	case int64:
		if n = x; n <= 0 {
			f.bad("must be positive")
			return
		}
	default:
		f.wrongType(`a size such as "256MiB", "10GiB" or a number of bytes`)
		return
	}
	*dst = n
}

// hostPort reads "host:port", the address of a listener; "" is off.
func (f field) hostPort(dst *string) {
	s, ok := f.str()
	if !ok {
		return
	}
	if s != "" {
		if err := checkHostPort(s); err != nil {
			f.bad("%v", err)
			return
		}
	}
	*dst = s
}

// checkHostPort checks a listener's address: host (or empty: every
// interface) and a port number.
func checkHostPort(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf(`want "host:port", such as "127.0.0.1:9464"`)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	return nil
}

func (f field) path(dst *string) {
	s, ok := f.str()
	if !ok {
		return
	}
	pth, err := f.p.env.ExpandPath(s)
	if err != nil {
		f.bad("%v", err)
		return
	}
	*dst = pth
}

func (f field) unknown(known []string) {
	msg := fmt.Sprintf("%sunknown key %q", f.ctx, f.name)
	if s := suggest(f.name, known); s != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", s)
	}
	f.p.errorAt(f.p.loc.keyPos(f.at), "%s", msg)
}

func (p *parser) top(c *Config, raw map[string]any) {
	for _, k := range p.ordered(raw, nil) {
		f := field{p: p, at: path{k}, name: k, v: raw[k]}
		switch k {
		case "promote":
			f.enum(&c.Promote, "all", "base")
		case "write":
			w := "back"
			f.enum(&w, "back", "through")
			c.WriteThrough = w == "through"
		case "negative_ttl":
			f.duration(0, MaxNegativeTTL, &c.NegativeTTL)
		case "remote_timeout":
			f.duration(time.Millisecond, MaxRemoteTimeout, &c.RemoteTimeout)
		case "list_ttl":
			f.duration(time.Second, MaxListTTL, &c.ListTTL)
		case "delete_remote":
			f.boolean(&c.DeleteRemote)
		case "spool_dir":
			if s, ok := f.v.(string); ok && s == "" {
				continue // the default
			}
			f.path(&c.SpoolDir)
		case "allow_other":
			f.boolean(&c.AllowOther)
		case "metrics":
			f.hostPort(&c.Metrics)
		case "upload_workers":
			f.integer(1, MaxUploadWorkers, &c.UploadWorkers)
		case "publish_failed":
			f.boolean(&c.PublishFailed)
		case "tier":
			p.tiers(c, f)
		default:
			f.unknown(topKeys)
		}
	}
}

func (p *parser) tiers(c *Config, f field) {
	switch x := f.v.(type) {
	case []map[string]any:
		for i, m := range x {
			c.Tiers = append(c.Tiers, p.tier(i, m))
		}
	case []any:
		for i, e := range x {
			m, ok := e.(map[string]any)
			if !ok {
				p.errorAt(p.loc.valPos(f.at.with(index(i))), "tier %d: want a table such as {kind = \"memory\", size = \"256MiB\"}, got %s", i+1, describe(e))
				continue
			}
			c.Tiers = append(c.Tiers, p.tier(i, m))
		}
	case map[string]any:
		p.errorAt(p.loc.keyPos(f.at), "tier: write [[tier]], with two brackets, once before each tier; [tier] is a single table")
	default:
		f.wrongType("one [[tier]] table per tier")
	}
}

func (p *parser) tier(i int, m map[string]any) Tier {
	base := path{"tier", index(i)}
	head := p.loc.keyPos(base)
	t := Tier{origin: origin{file: p.file, line: head.Line, col: head.Col}}
	t.At = t.origin.String()
	kv, ok := m["kind"]
	if !ok {
		p.errorAt(head, "tier %d: kind is missing: add kind = \"memory\", \"bolt\" or \"sftp\"", i+1)
		return t
	}
	kf := field{p: p, at: base.with("kind"), ctx: fmt.Sprintf("tier %d: ", i+1), name: "kind", v: kv}
	s, ok := kf.str()
	if !ok {
		return t
	}
	switch t.Kind = Kind(s); t.Kind {
	case Memory, Bolt, SFTP, S3:
	default:
		hint := "want \"memory\", \"bolt\", \"sftp\" or \"s3\""
		if k, ok := kindAliases[strings.ToLower(s)]; ok {
			hint = fmt.Sprintf("did you mean %q?", k)
		} else if k := suggest(s, []string{"memory", "bolt", "sftp", "s3"}); k != "" {
			hint = fmt.Sprintf("did you mean %q?", k)
		}
		kf.bad("unknown kind: %s", hint)
		return t
	}
	t.setDefaults()
	ctx := fmt.Sprintf("tier %d (%s): ", i+1, t.Kind)
	allKeys := make([]string, 0, len(tierKeys))
	for k := range tierKeys {
		allKeys = append(allKeys, k)
	}
	sort.Strings(allKeys)
	for _, k := range p.ordered(m, base) {
		f := field{p: p, at: base.with(k), ctx: ctx, name: k, v: m[k]}
		kinds, known := tierKeys[k]
		switch {
		case k == "kind":
			continue
		case !known:
			f.unknown(allKeys)
			continue
		case !hasKind(kinds, t.Kind):
			p.errorAt(p.loc.keyPos(f.at), "%skey %q does not apply to %s tiers (it is for %s)", ctx, k, t.Kind, kindList(kinds))
			continue
		}
		switch k {
		case "name":
			if s, ok := f.str(); ok {
				if err := checkName(s); err != nil {
					f.bad("%v", err)
				} else {
					t.Name, t.explicitName = s, true
				}
			}
		case "size":
			f.size(&t.Size)
		case "max_entry":
			f.size(&t.MaxEntry)
		case "read_only":
			f.boolean(&t.ReadOnly)
		case "path":
			f.path(&t.Path)
		case "url":
			if s, ok := f.str(); ok {
				if u, err := checkURL(s); err != nil {
					f.bad("%v", err)
				} else {
					t.URL = u
				}
			}
		case "identity":
			p.identity(f, &t)
		case "known_hosts":
			f.path(&t.KnownHosts)
		case "agent":
			f.boolean(&t.Agent)
		case "concurrency":
			f.integer(1, MaxConcurrency, &t.Concurrency)
		case "channels":
			f.integer(1, MaxChannels, &t.Channels)
		case "timeout":
			f.duration(time.Millisecond, MaxRemoteTimeout, &t.Timeout)
			t.timeoutSet = true
		case "ciphers":
			p.ciphers(f, &t)
		case "mode":
			f.mode(&t.Mode)
		case "foreign":
			f.enum(&t.Foreign, "adopt", "verify", "ignore")
		case "transport":
			f.enum(&t.Transport, "go", "ssh")
		case "ssh_config":
			f.path(&t.SSHConfig)
		case "max_size":
			f.size(&t.MaxSize)
		case "max_age":
			f.duration(time.Hour, 100*365*24*time.Hour, &t.MaxAge)
		case "prune_grace":
			f.duration(time.Minute, 100*365*24*time.Hour, &t.PruneGrace)
		case "prune_every":
			f.duration(time.Minute, 30*24*time.Hour, &t.PruneEvery)
		case "endpoint":
			if v, ok := f.str(); ok {
				if e, err := checkEndpoint(v); err != nil {
					f.bad("%v", err)
				} else {
					t.Endpoint = e
				}
			}
		case "bucket":
			if v, ok := f.str(); ok {
				// The S3 client's own rule, which it applies to every
				// request: a name it refuses would fail them all.
				if err := s3utils.CheckValidBucketName(v); err != nil {
					f.bad("%v", err)
				} else {
					t.Bucket = v
				}
			}
		case "prefix":
			if v, ok := f.str(); ok {
				if strings.HasPrefix(v, "/") {
					f.bad("object names would begin with '/', which S3 tools show as a folder with an empty name; write it without the leading '/' (%q)", strings.TrimLeft(v, "/"))
				} else {
					t.Prefix = v
				}
			}
		case "region":
			f.text(&t.Region)
		case "path_style":
			f.boolean(&t.PathStyle)
		case "profile":
			f.text(&t.Profile)
		}
	}
	missing := func(key, example string) {
		p.errorAt(head, "%s%s is missing (for example %s)", ctx, key, example)
	}
	switch t.Kind {
	case Memory:
		if _, ok := m["size"]; !ok {
			missing("size", `size = "256MiB"`)
		}
		if t.MaxEntry > t.Size && t.Size > 0 {
			p.errorAt(p.loc.valPos(base.with("max_entry")), "%smax_entry %s is larger than size %s", ctx, FormatSize(t.MaxEntry), FormatSize(t.Size))
		}
	case Bolt:
		if _, ok := m["path"]; !ok {
			missing("path", `path = "~/.cache/flechefs/cache.db"`)
		}
		if _, ok := m["size"]; !ok {
			missing("size", `size = "10GiB"`)
		}
	case SFTP:
		if _, ok := m["url"]; !ok {
			missing("url", `url = "sftp://user@host/srv/flechefs"`)
		}
	case S3:
		if _, ok := m["endpoint"]; !ok {
			missing("endpoint", `endpoint = "https://s3.example.org"`)
		}
		if _, ok := m["bucket"]; !ok {
			missing("bucket", `bucket = "flechefs"`)
		}
	}
	return t
}

// stringList reads a value that is one string or a list of strings and
// returns one field per string, each positioned at its element, so errors
// point at the element. ok is false, with the errors reported, when the
// value or one of its elements is not a string.
func (f field) stringList(what string) (elems []field, ok bool) {
	var list []any
	isList := false
	switch x := f.v.(type) {
	case string:
		list = []any{x}
	case []any:
		list, isList = x, true
	default:
		f.wrongType(what + " or a list of them")
		return nil, false
	}
	ok = true
	for i, e := range list {
		g := f
		g.v = e
		if isList {
			g.at = f.at.with(index(i))
		}
		if _, isStr := e.(string); !isStr {
			g.wrongType(what)
			ok = false
			continue
		}
		elems = append(elems, g)
	}
	return elems, ok
}

func (p *parser) identity(f field, t *Tier) {
	elems, ok := f.stringList("a file name")
	if !ok {
		return // reported; the configuration is refused
	}
	t.Identity = []string{} // not nil: an empty list means no key files, only the agent
	for _, g := range elems {
		var pth string
		g.path(&pth)
		if pth != "" {
			t.Identity = append(t.Identity, pth)
		}
	}
}

// ciphers decodes the SSH ciphers an sftp tier offers: a name or a list of
// names that golang.org/x/crypto/ssh implements.
func (p *parser) ciphers(f field, t *Tier) {
	elems, ok := f.stringList("a cipher name")
	if !ok {
		return // reported; the configuration is refused
	}
	if len(elems) == 0 {
		f.p.errorAt(f.p.loc.valPos(f.at), "%s%s: empty list: leave the key out for the default ciphers", f.ctx, f.name)
		return
	}
	known := ssh.SupportedAlgorithms().Ciphers
	var out []string
	for _, g := range elems {
		s := g.v.(string)
		if !slices.Contains(known, s) {
			g.bad("unknown cipher: want one of %s", strings.Join(known, ", "))
			continue
		}
		out = append(out, s)
	}
	if len(out) == len(elems) {
		t.Ciphers = out
	}
}

// setDefaults fills in what a tier of its kind has when the file is silent.
func (t *Tier) setDefaults() {
	if t.Kind == SFTP {
		t.Agent = true
		t.Concurrency = DefaultConcurrency
		t.Channels = DefaultChannels
		t.Mode = DefaultMode
		t.Foreign = "adopt"
	}
}

func hasKind(kinds []Kind, k Kind) bool {
	for _, x := range kinds {
		if x == k {
			return true
		}
	}
	return false
}

func kindList(kinds []Kind) string {
	s := make([]string, len(kinds))
	for i, k := range kinds {
		s[i] = string(k)
	}
	switch len(s) {
	case 1:
		return s[0] + " tiers"
	default:
		return strings.Join(s[:len(s)-1], ", ") + " and " + s[len(s)-1] + " tiers"
	}
}

// The checks below are shared by the file and the flags; their errors do
// not repeat the value.

func parseSize(s string) (int64, error) {
	n, err := ParseSize(s)
	if err == nil && n <= 0 {
		err = errors.New("must be positive")
	}
	return n, err
}

func parseDuration(s string, lo, hi time.Duration) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, errors.New(`not a duration: write a number and a unit among ns, us, ms, s, m, h, such as "500ms", "10s", "2m"`)
	}
	if d < lo {
		if lo == 0 {
			return 0, errors.New("must not be negative")
		}
		return 0, fmt.Errorf("too short: the minimum is %s", FormatDuration(lo))
	}
	if d > hi {
		return 0, fmt.Errorf("too long: the maximum is %s", FormatDuration(hi))
	}
	return d, nil
}

func checkEnum(s string, values ...string) error {
	for _, v := range values {
		if s == v {
			return nil
		}
	}
	return fmt.Errorf("want %s", quoteList(values))
}

func quoteList(values []string) string {
	q := make([]string, len(values))
	for i, v := range values {
		q[i] = strconv.Quote(v)
	}
	if len(q) == 2 {
		return q[0] + " or " + q[1]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

// checkName accepts tier names usable in stats, logs and xattr values.
func checkName(s string) error {
	if s == "" || len(s) > 32 {
		return errors.New("want 1 to 32 characters")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' && i > 0 || (c == '-' || c == '_') && i > 0) {
			return errors.New("want a lowercase letter, then lowercase letters, digits, '-' or '_'")
		}
	}
	return nil
}

// checkEndpoint checks an S3 endpoint, http(s)://host[:port] (https when
// the scheme is left out), and returns it with its scheme.
func checkEndpoint(s string) (string, error) {
	e := strings.TrimRight(strings.TrimSpace(s), "/")
	if !strings.Contains(e, "://") {
		e = "https://" + e
	}
	u, err := url.Parse(e)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || u.Path != "" || u.User != nil {
		return "", errors.New("want http(s)://host[:port], no path (the bucket is its own key)")
	}
	return e, nil
}

// checkURL checks sftp://[user@]host[:port]/path and returns it cleaned.
func checkURL(s string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "", fmt.Errorf("not a URL: %v", err)
	}
	switch {
	case u.Scheme != "sftp":
		if u.Scheme == "" {
			return "", errors.New("want sftp://[user@]host[:port]/path")
		}
		return "", fmt.Errorf("scheme %q: want sftp://[user@]host[:port]/path", u.Scheme)
	case u.Opaque != "":
		return "", errors.New("want sftp://[user@]host[:port]/path, with two slashes")
	case u.Hostname() == "":
		return "", errors.New("no host: want sftp://[user@]host[:port]/path")
	case u.RawQuery != "" || u.ForceQuery:
		return "", errors.New("a query (?...) has no meaning here")
	case u.Fragment != "":
		return "", errors.New("a fragment (#...) has no meaning here")
	case u.Path == "" || u.Path[0] != '/':
		return "", errors.New("no path: want the remote directory, such as sftp://host/srv/flechefs")
	}
	if _, ok := u.User.Password(); ok {
		return "", errors.New("do not put a password in the URL: use identity files or the SSH agent")
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("port %q: want 1 to 65535", p)
		}
	}
	return u.String(), nil
}

// show formats a value for a message: strings quoted and clipped.
func show(v any) string {
	switch x := v.(type) {
	case string:
		if len(x) > 60 {
			x = x[:57]
			for !utf8.ValidString(x) {
				x = x[:len(x)-1]
			}
			x += "..."
		}
		return strconv.Quote(x)
	case int64:
		return strconv.FormatInt(x, 10)
	case bool:
		return strconv.FormatBool(x)
	default:
		return describe(v)
	}
}

// describe names a decoded TOML value's type for a message.
func describe(v any) string {
	switch x := v.(type) {
	case string:
		return "a string"
	case int64:
		return "the integer " + strconv.FormatInt(x, 10)
	case float64:
		if math.IsInf(x, 0) || math.IsNaN(x) {
			return "a float"
		}
		return "the float " + strconv.FormatFloat(x, 'g', -1, 64)
	case bool:
		return "the boolean " + strconv.FormatBool(x)
	case []any, []map[string]any:
		return "an array"
	case map[string]any:
		return "a table"
	case time.Time, toml.Primitive:
		return "a date-time"
	default:
		return "a date or time"
	}
}

// suggest returns the known word closest to s, if it is close.
func suggest(s string, known []string) string {
	best, bestD := "", 3
	if len(s) > 64 {
		return ""
	}
	for _, k := range known {
		if d := distance(strings.ToLower(s), k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

// distance is the Levenshtein distance.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// FormatDuration is time.Duration.String without the zero units at the
// end: "1m" rather than "1m0s".
func FormatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
