package config

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Flag is a command-line flag that overrides the file. The command
// registers every one of Flags and passes what was given to Apply.
type Flag struct {
	Name  string // without dashes: "ram"
	Arg   string // what the value is, for usage: "SIZE"; "" for a boolean flag
	Usage string
	// order: flags that add or remove tiers apply before those that
	// change them, whatever the command-line order.
	order int
	apply func(c *Config, env Env, value string) error
}

// Override is one flag as given: Name without dashes, and its value.
type Override struct{ Name, Value string }

// Flags are the overriding flags, in the order usage lists them.
var Flags = []Flag{
	{Name: "remote", Arg: "URL", order: 0, apply: setRemote,
		Usage: `remote tier sftp://[user@]host[:port]/path, or s3://bucket[/prefix] with the store, region and credentials of the AWS environment (AWS_ENDPOINT_URL, AWS_REGION, AWS_PROFILE, ~/.aws): replaces the last tier if it is of that kind, or adds one at the end; "none" removes the remote tiers`},
	{Name: "ram", Arg: "SIZE", order: 0, apply: setRAM,
		Usage: `size of the memory tier (added first if there is none); 0 removes it`},
	{Name: "bolt", Arg: "PATH", order: 0, apply: setBolt,
		Usage: `database file of the writable bolt tier (added after the memory tier if there is none); "none" removes the bolt tiers`},
	{Name: "bolt-size", Arg: "SIZE", order: 1, apply: setBoltSize,
		Usage: `size of the writable bolt tier`},
	{Name: "identity", Arg: "FILE", order: 1, apply: setIdentity,
		Usage: `SSH private key for the remote (the last sftp tier); repeat for several`},
	{Name: "known-hosts", Arg: "FILE", order: 1, apply: setKnownHosts,
		Usage: `known_hosts file for the remote (the last sftp tier)`},
	{Name: "negative-ttl", Arg: "DURATION", order: 1, apply: func(c *Config, _ Env, v string) error {
		return setDuration(&c.NegativeTTL, v, 0, MaxNegativeTTL)
	}, Usage: `how long a missing name is remembered (0 to 2s; 0: not at all)`},
	{Name: "remote-timeout", Arg: "DURATION", order: 1, apply: func(c *Config, _ Env, v string) error {
		return setDuration(&c.RemoteTimeout, v, time.Millisecond, MaxRemoteTimeout)
	}, Usage: `bound of one lookup in a remote tier`},
	{Name: "metrics", Arg: "HOST:PORT", order: 1, apply: func(c *Config, _ Env, v string) error {
		if v == "none" {
			c.Metrics = ""
			return nil
		}
		if err := checkHostPort(v); err != nil {
			return err
		}
		c.Metrics = v
		return nil
	}, Usage: `serve Prometheus metrics at http://HOST:PORT/metrics ("none": off)`},
	{Name: "promote", Arg: "all|base", order: 1, apply: func(c *Config, _ Env, v string) error {
		if err := checkEnum(v, "all", "base"); err != nil {
			return err
		}
		c.Promote = v
		return nil
	}, Usage: `copy a hit into every faster tier ("all") or into the first tier only ("base")`},
	{Name: "write", Arg: "back|through", order: 1, apply: func(c *Config, _ Env, v string) error {
		if err := checkEnum(v, "back", "through"); err != nil {
			return err
		}
		c.WriteThrough = v == "through"
		return nil
	}, Usage: `upload new entries in the background ("back") or before close returns ("through")`},
	{Name: "allow-other", order: 1, apply: func(c *Config, _ Env, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return errors.New("want true or false")
		}
		c.AllowOther = b
		return nil
	}, Usage: `let other users use the mount (needs user_allow_other in /etc/fuse.conf unless root)`},
}

func lookupFlag(name string) (Flag, bool) {
	for _, f := range Flags {
		if f.Name == name {
			return f, true
		}
	}
	return Flag{}, false
}

// Apply applies the overrides (flags that add or remove tiers first, then
// in command-line order) and validates the result. env.Dir resolves
// relative paths (the working directory). Errors name the flag.
func (c *Config) Apply(env Env, overrides []Override) error {
	ovs := append([]Override(nil), overrides...)
	sort.SliceStable(ovs, func(i, j int) bool {
		a, _ := lookupFlag(ovs[i].Name)
		b, _ := lookupFlag(ovs[j].Name)
		return a.order < b.order
	})
	var errs Errors
	identitySet := false
	for _, o := range ovs {
		f, ok := lookupFlag(o.Name)
		if !ok {
			errs = append(errs, &Error{Msg: fmt.Sprintf("--%s: not a configuration flag", o.Name)})
			continue
		}
		var err error
		if o.Name == "identity" && identitySet {
			err = addIdentity(c, env, o.Value)
		} else {
			err = f.apply(c, env, o.Value)
			identitySet = identitySet || o.Name == "identity"
		}
		if err != nil {
			msg := fmt.Sprintf("--%s %s: %v", o.Name, strconv.Quote(o.Value), err)
			if f.Arg == "" {
				msg = fmt.Sprintf("--%s=%s: %v", o.Name, o.Value, err)
			}
			errs = append(errs, &Error{Msg: msg})
		}
	}
	if len(errs) > 0 {
		return errs
	}
	return c.Validate(env)
}

func setDuration(dst *time.Duration, v string, lo, hi time.Duration) error {
	d, err := parseDuration(v, lo, hi)
	if err != nil {
		return err
	}
	*dst = d
	return nil
}

func flagOrigin(name string) origin { return origin{flag: "--" + name} }

func lastTier(c *Config, k Kind) int {
	for i := len(c.Tiers) - 1; i >= 0; i-- {
		if c.Tiers[i].Kind == k {
			return i
		}
	}
	return -1
}

func firstWritable(c *Config, k Kind) int {
	for i, t := range c.Tiers {
		if t.Kind == k && !t.ReadOnly {
			return i
		}
	}
	return -1
}

func removeKind(c *Config, k Kind) {
	out := c.Tiers[:0]
	for _, t := range c.Tiers {
		if t.Kind != k {
			out = append(out, t)
		}
	}
	c.Tiers = out
}

func insert(c *Config, at int, t Tier) {
	c.Tiers = append(c.Tiers, Tier{})
	copy(c.Tiers[at+1:], c.Tiers[at:])
	c.Tiers[at] = t
}

func setRemote(c *Config, env Env, v string) error {
	if v == "none" {
		removeKind(c, SFTP)
		removeKind(c, S3)
		return nil
	}
	if scheme, _, ok := strings.Cut(strings.TrimSpace(v), ":"); ok && strings.EqualFold(scheme, "s3") {
		return setS3Remote(c, env, v)
	}
	u, err := checkURL(v)
	if err != nil {
		if scheme, _, ok := strings.Cut(v, "://"); ok && scheme != "sftp" {
			return fmt.Errorf("scheme %q: want sftp://[user@]host[:port]/path or %s", scheme, s3Form)
		}
		return err
	}
	if i := len(c.Tiers) - 1; i >= 0 && c.Tiers[i].Kind == SFTP {
		c.Tiers[i].URL = u
		c.Tiers[i].origin = flagOrigin("remote")
		c.Tiers[i].At = "--remote"
		return nil
	}
	t := Tier{Kind: SFTP, SFTPKeys: SFTPKeys{URL: u}, origin: flagOrigin("remote"), At: "--remote"}
	t.setDefaults()
	c.Tiers = append(c.Tiers, t)
	return nil
}

func setRAM(c *Config, _ Env, v string) error {
	n, err := ParseSize(v)
	if err != nil {
		return err
	}
	if n == 0 {
		removeKind(c, Memory)
		return nil
	}
	for i := range c.Tiers {
		if t := &c.Tiers[i]; t.Kind == Memory {
			t.Size = n
			if t.MaxEntry > n {
				t.MaxEntry = 0 // back to the default, size/4
			}
			return nil
		}
	}
	insert(c, 0, Tier{Kind: Memory, Size: n, origin: flagOrigin("ram"), At: "--ram"})
	return nil
}

func setBolt(c *Config, env Env, v string) error {
	if v == "none" {
		removeKind(c, Bolt)
		return nil
	}
	p, err := env.ExpandPath(v)
	if err != nil {
		return err
	}
	if i := firstWritable(c, Bolt); i >= 0 {
		c.Tiers[i].Path = p
		return nil
	}
	at := 0
	for at < len(c.Tiers) && c.Tiers[at].Kind == Memory {
		at++
	}
	insert(c, at, Tier{Kind: Bolt, Path: p, Size: DefaultBoltSize, origin: flagOrigin("bolt"), At: "--bolt"})
	return nil
}

func setBoltSize(c *Config, _ Env, v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	i := firstWritable(c, Bolt)
	if i < 0 {
		return errors.New("there is no writable bolt tier (add one with --bolt PATH)")
	}
	c.Tiers[i].Size = n
	return nil
}

func remoteTier(c *Config) (*Tier, error) {
	i := lastTier(c, SFTP)
	if i < 0 {
		return nil, errors.New("there is no sftp tier (add one with --remote URL)")
	}
	return &c.Tiers[i], nil
}

func setIdentity(c *Config, env Env, v string) error {
	t, err := remoteTier(c)
	if err != nil {
		return err
	}
	t.Identity = nil
	return addIdentity(c, env, v)
}

func addIdentity(c *Config, env Env, v string) error {
	t, err := remoteTier(c)
	if err != nil {
		return err
	}
	p, err := env.ExpandPath(v)
	if err != nil {
		return err
	}
	t.Identity = append(t.Identity, p)
	return nil
}

func setKnownHosts(c *Config, env Env, v string) error {
	t, err := remoteTier(c)
	if err != nil {
		return err
	}
	p, err := env.ExpandPath(v)
	if err != nil {
		return err
	}
	t.KnownHosts = filepath.Clean(p)
	return nil
}
