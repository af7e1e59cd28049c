package config

import (
	"fmt"
	"path/filepath"
	"strconv"
)

// baseNames are the default tier names, by kind.
var baseNames = map[Kind]string{Memory: "ram", Bolt: "bolt", SFTP: "sftp", S3: "s3"}

// Validate fills in the defaults that depend on other settings (tier names,
// the spool directory, the remote timeout of sftp tiers), checks the stack
// as a whole and sets Warnings. Parse and Apply call it; calling it again
// gives the same result.
func (c *Config) Validate(env Env) error {
	var errs Errors
	c.Warnings = nil
	fileErr := func(format string, args ...any) {
		errs = append(errs, &Error{File: c.File, Msg: fmt.Sprintf(format, args...)})
	}
	warn := func(o origin, format string, args ...any) {
		c.Warnings = append(c.Warnings, o.errorf(format, args...).Error())
	}
	if c.SpoolDir == "" {
		dir, err := env.XDG("XDG_CACHE_HOME")
		if err != nil {
			fileErr("spool_dir: no default: %v; set spool_dir", err)
		} else {
			c.SpoolDir = filepath.Join(dir, "flechefs", "spool")
		}
	}
	if len(c.Tiers) == 0 {
		fileErr(`no tiers: add at least one [[tier]] with kind = "memory", "bolt" or "sftp"`)
		return errs
	}

	// Names: explicit ones first, then the made-up ones around them.
	used := map[string]int{}
	for i := range c.Tiers {
		t := &c.Tiers[i]
		if !t.explicitName {
			continue
		}
		if j, dup := used[t.Name]; dup {
			errs = append(errs, t.origin.errorf("%s: name %q is already the name of %s", c.label(i), t.Name, c.label(j)))
		}
		used[t.Name] = i
	}
	count := map[Kind]int{}
	for i := range c.Tiers {
		t := &c.Tiers[i]
		if t.explicitName {
			continue
		}
		for {
			count[t.Kind]++
			t.Name = baseNames[t.Kind]
			if n := count[t.Kind]; n > 1 {
				t.Name += strconv.Itoa(n)
			}
			if _, taken := used[t.Name]; !taken {
				break
			}
		}
		used[t.Name] = i
	}

	writableBolt, writableRemote, sawSlow, sawRemote, sawMemory := -1, false, false, false, false
	paths := map[string]int{}
	urls := map[string]int{}
	for i := range c.Tiers {
		t := &c.Tiers[i]
		label := c.label(i)
		switch t.Kind {
		case Memory:
			if t.ReadOnly {
				errs = append(errs, t.origin.errorf("%s: a memory tier cannot be read-only: it starts empty", label))
			}
			if t.MaxEntry > t.Size {
				errs = append(errs, t.origin.errorf("%s: max_entry %s is larger than size %s", label, FormatSize(t.MaxEntry), FormatSize(t.Size)))
			}
			if sawSlow {
				warn(t.origin, "%s: a memory tier below a slower tier is searched after it; put memory tiers first", label)
			} else if sawMemory {
				warn(t.origin, "%s: a second memory tier: one larger memory tier does the same with less copying", label)
			}
			sawMemory = true
		case Bolt:
			if j, dup := paths[t.Path]; dup {
				errs = append(errs, t.origin.errorf("%s: path %q is already the database of %s", label, t.Path, c.label(j)))
			}
			paths[t.Path] = i
			if !t.ReadOnly {
				if writableBolt >= 0 {
					errs = append(errs, t.origin.errorf("%s: a second writable bolt tier (%s is the first): new entries and the upload queue live in one; set read_only = true on the other", label, c.label(writableBolt)))
				} else {
					writableBolt = i
				}
			}
			if sawRemote {
				warn(t.origin, "%s: a local tier below a remote tier is searched only after the remote; put local tiers first", label)
			}
			sawSlow = true
		case S3:
			if !t.timeoutSet {
				t.Timeout = c.RemoteTimeout
			}
			errs = t.validateRetention(label, errs)
			if !t.ReadOnly {
				writableRemote = true
			}
			sawSlow, sawRemote = true, true
		case SFTP:
			if j, dup := urls[t.URL]; dup {
				errs = append(errs, t.origin.errorf("%s: url %q is already the remote of %s", label, t.URL, c.label(j)))
			}
			urls[t.URL] = i
			if !t.timeoutSet {
				t.Timeout = c.RemoteTimeout
			}
			if t.Transport == "" {
				t.Transport = "go"
			}
			errs = t.validateRetention(label, errs)
			// The system's ssh finds its own known_hosts and keys.
			if t.KnownHosts == "" && env.Home != "" && t.Transport == "go" {
				t.KnownHosts = filepath.Join(env.Home, ".ssh", "known_hosts")
			}

			if !t.ReadOnly {
				writableRemote = true
			}
			sawSlow, sawRemote = true, true
		}
	}
	noOrigin := origin{file: c.File}
	switch {
	case writableRemote && !c.WriteThrough && writableBolt < 0:
		warn(noOrigin, `no writable bolt tier holds the upload queue: with write = "back", entries not yet uploaded are lost when flechefs stops; add a bolt tier or set write = "through"`)
	case c.WriteThrough && !writableRemote:
		warn(noOrigin, `write = "through" has no effect without a writable sftp tier`)
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// validateRetention sets the defaults of a bounded remote tier's passes
// and refuses settings that bound nothing.
func (t *Tier) validateRetention(label string, errs Errors) Errors {
	if t.MaxSize > 0 || t.MaxAge > 0 {
		if t.PruneGrace == 0 {
			t.PruneGrace = DefaultPruneGrace
		}
		if t.PruneEvery == 0 {
			t.PruneEvery = DefaultPruneEvery
		}
		if t.ReadOnly {
			errs = append(errs, t.origin.errorf("%s: max_size and max_age need a writable tier (read_only = true)", label))
		}
	} else if t.PruneGrace > 0 || t.PruneEvery > 0 {
		errs = append(errs, t.origin.errorf("%s: prune_grace and prune_every have no effect without max_size or max_age", label))
	}
	return errs
}
