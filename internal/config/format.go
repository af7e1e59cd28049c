package config

import (
	"fmt"
	"strconv"
	"strings"
)

// TOML returns the configuration as a file Parse reads back to the same
// Config: every setting written out, paths expanded, warnings as comments.
func (c *Config) TOML() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# flechefs configuration in effect, from %s\n", comment(c.File))
	for _, w := range c.Warnings {
		fmt.Fprintf(&b, "# warning: %s\n", comment(w))
	}
	fmt.Fprintf(&b, "promote = %q\n", c.Promote)
	write := "back"
	if c.WriteThrough {
		write = "through"
	}
	fmt.Fprintf(&b, "write = %q\n", write)
	fmt.Fprintf(&b, "negative_ttl = %q\n", c.NegativeTTL.String())
	fmt.Fprintf(&b, "remote_timeout = %q\n", c.RemoteTimeout.String())
	fmt.Fprintf(&b, "list_ttl = %q\n", c.ListTTL.String())
	fmt.Fprintf(&b, "delete_remote = %t\n", c.DeleteRemote)
	fmt.Fprintf(&b, "spool_dir = %s\n", quotePath(c.SpoolDir))
	fmt.Fprintf(&b, "allow_other = %t\n", c.AllowOther)
	fmt.Fprintf(&b, "upload_workers = %d\n", c.UploadWorkers)
	fmt.Fprintf(&b, "publish_failed = %t\n", c.PublishFailed)
	if c.Metrics != "" {
		fmt.Fprintf(&b, "metrics = %q\n", c.Metrics)
	}
	for _, t := range c.Tiers {
		fmt.Fprintf(&b, "\n[[tier]]  # %s\n", comment(t.At))
		fmt.Fprintf(&b, "kind = %q\n", t.Kind)
		fmt.Fprintf(&b, "name = %s\n", tomlString(t.Name))
		switch t.Kind {
		case Memory:
			fmt.Fprintf(&b, "size = %s\n", exactSize(t.Size))
			if t.MaxEntry > 0 {
				fmt.Fprintf(&b, "max_entry = %s\n", exactSize(t.MaxEntry))
			}
		case Bolt:
			fmt.Fprintf(&b, "path = %s\n", quotePath(t.Path))
			fmt.Fprintf(&b, "size = %s\n", exactSize(t.Size))
			fmt.Fprintf(&b, "read_only = %t\n", t.ReadOnly)
		case S3:
			fmt.Fprintf(&b, "endpoint = %s\n", tomlString(t.Endpoint))
			fmt.Fprintf(&b, "bucket = %s\n", tomlString(t.Bucket))
			fmt.Fprintf(&b, "prefix = %s\n", tomlString(t.Prefix))
			if t.Region != "" {
				fmt.Fprintf(&b, "region = %s\n", tomlString(t.Region))
			}
			fmt.Fprintf(&b, "path_style = %t\n", t.PathStyle)
			if t.Profile != "" {
				fmt.Fprintf(&b, "profile = %s\n", tomlString(t.Profile))
			}
			fmt.Fprintf(&b, "read_only = %t\n", t.ReadOnly)
			fmt.Fprintf(&b, "timeout = %q\n", t.Timeout.String())
			formatRetention(&b, t)
		case SFTP:
			fmt.Fprintf(&b, "url = %s\n", tomlString(t.URL))
			if t.Identity != nil {
				ids := make([]string, len(t.Identity))
				for i, id := range t.Identity {
					ids[i] = quotePath(id)
				}
				fmt.Fprintf(&b, "identity = [%s]\n", strings.Join(ids, ", "))
			}
			if t.KnownHosts != "" {
				fmt.Fprintf(&b, "known_hosts = %s\n", quotePath(t.KnownHosts))
			}
			fmt.Fprintf(&b, "agent = %t\n", t.Agent)
			fmt.Fprintf(&b, "read_only = %t\n", t.ReadOnly)
			fmt.Fprintf(&b, "concurrency = %d\n", t.Concurrency)
			fmt.Fprintf(&b, "channels = %d\n", t.Channels)
			fmt.Fprintf(&b, "timeout = %q\n", t.Timeout.String())
			fmt.Fprintf(&b, "mode = \"%04o\"\n", t.Mode)
			fmt.Fprintf(&b, "foreign = %q\n", t.Foreign)
			fmt.Fprintf(&b, "transport = %q\n", t.Transport)
			formatRetention(&b, t)
			if t.SSHConfig != "" {
				fmt.Fprintf(&b, "ssh_config = %s\n", quotePath(t.SSHConfig))
			}
			if t.Ciphers != nil {
				cs := make([]string, len(t.Ciphers))
				for i, c := range t.Ciphers {
					cs[i] = tomlString(c)
				}
				fmt.Fprintf(&b, "ciphers = [%s]\n", strings.Join(cs, ", "))
			}
		}
	}
	return b.String()
}

// quotePath quotes an expanded path so that expansion leaves it as it is.
func quotePath(p string) string {
	return tomlString(strings.ReplaceAll(p, "$", "$$"))
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// exactSize writes n as "256MiB" when a binary unit divides it, else as
// an integer number of bytes.
func exactSize(n int64) string {
	for _, u := range []struct {
		name string
		size int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return strconv.Quote(strconv.FormatInt(n/u.size, 10) + u.name)
		}
	}
	return strconv.FormatInt(n, 10)
}

// comment makes s safe to write after a "#".
func comment(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

// formatRetention writes a remote tier's retention keys, when it is bounded.
func formatRetention(b *strings.Builder, t Tier) {
	if t.MaxSize > 0 {
		fmt.Fprintf(b, "max_size = %q\n", FormatSize(t.MaxSize))
	}
	if t.MaxAge > 0 {
		fmt.Fprintf(b, "max_age = %q\n", t.MaxAge.String())
	}
	if t.PruneGrace > 0 {
		fmt.Fprintf(b, "prune_grace = %q\n", t.PruneGrace.String())
		fmt.Fprintf(b, "prune_every = %q\n", t.PruneEvery.String())
	}
}
