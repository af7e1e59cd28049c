package main

import (
	"fmt"
	"slices"
	"strings"
)

// mount(8) runs a FUSE filesystem's program as a mount helper: for
// "mount -t fuse.flechefs SOURCE DIR -o OPTS" (or an /etc/fstab line of
// type fuse.flechefs) it runs /sbin/mount.fuse.flechefs, else mount.fuse3,
// which runs "flechefs SOURCE DIR -o OPTS". The helper form becomes a
// background mount: SOURCE names the configuration file ("none" or
// "flechefs": the default one), and each option is a flag of flechefs
// mount with _ for - (ram=1GiB, bolt_size=50GiB, allow_other, log_file=...).
// Options that mean something only to mount(8) are ignored.

// helperIgnored are mount(8)'s generic options: they do not reach a FUSE
// filesystem's behaviour (FUSE mounts are nosuid and nodev anyway).
var helperIgnored = map[string]bool{
	"defaults": true, "rw": true, "auto": true, "noauto": true, "user": true, "users": true,
	"nouser": true, "owner": true, "group": true, "nofail": true, "_netdev": true,
	"nosuid": true, "suid": true, "nodev": true, "dev": true, "exec": true, "noexec": true,
	"async": true, "atime": true, "noatime": true, "relatime": true, "norelatime": true,
	"strictatime": true, "nodiratime": true, "diratime": true, "lazytime": true,
	"nolazytime": true, "silent": true, "loud": true,
}

// helperPrefixIgnored are prefixes of options for others: systemd's and
// mount(8)'s own.
var helperPrefixIgnored = []string{"x-", "comment=", "fsname=", "subtype="}

// isHelperCall reports whether args (after the program's name) are
// mount.fuse3's: SOURCE DIR -o OPTIONS (it always passes options), where
// SOURCE is no command. A mistyped command is not taken for a source.
func isHelperCall(args []string) bool {
	if len(args) < 4 || strings.HasPrefix(args[0], "-") || lookup(args[0]) != nil {
		return false
	}
	return slices.Contains(args[2:], "-o")
}

// helperArgs turns a mount helper's arguments (SOURCE DIR [-sfnv] [-o
// OPTS] [-t TYPE]) into those of flechefs mount. It returns nil args for
// mount -f (fake: do everything but mount).
func helperArgs(args []string) ([]string, error) {
	if len(args) < 2 {
		return nil, fmt.Errorf("want SOURCE MOUNTPOINT [-o OPTIONS], got %q", args)
	}
	source, dir := args[0], args[1]
	var opts []string
	fake := false
	for i := 2; i < len(args); i++ {
		switch a := args[i]; a {
		case "-o", "-t":
			if i+1 == len(args) {
				return nil, fmt.Errorf("%s needs a value", a)
			}
			if a == "-o" {
				opts = append(opts, strings.Split(args[i+1], ",")...)
			}
			i++
		case "-f":
			fake = true
		case "-s", "-n", "-v":
		default:
			return nil, fmt.Errorf("unsupported mount helper argument %q", a)
		}
	}
	flags := newFlagSet("mount")
	mountCommand.setup(flags)
	out := []string{"mount", "--background"}
	config := ""
	switch source {
	case "", "none", "flechefs", "default":
	default:
		config = source
	}
	logged := false
	for _, o := range opts {
		if o == "" || helperIgnored[o] || hasAnyPrefix(o, helperPrefixIgnored) {
			continue
		}
		key, val, hasVal := strings.Cut(o, "=")
		name := strings.ReplaceAll(key, "_", "-")
		switch {
		case name == "ro":
			return nil, fmt.Errorf("option ro: a flechefs mount is written through; mount it read-write")
		case name == "config":
			if config != "" && config != val {
				return nil, fmt.Errorf("option config=%s and source %s name two configurations", val, source)
			}
			config = val
			continue
		case name == "background":
			continue
		case name == "log-file" || name == "syslog":
			logged = true
		}
		arg, ok := flags.args[name]
		if !ok {
			return nil, fmt.Errorf("unknown option %q: the options are the flags of flechefs mount with _ for - (see flechefs mount --help), and mount(8)'s generic ones", o)
		}
		switch {
		case arg == "" && hasVal:
			return nil, fmt.Errorf("option %s takes no value", key)
		case arg != "" && !hasVal:
			return nil, fmt.Errorf("option %s needs a value: %s=%s", key, key, arg)
		case arg == "":
			out = append(out, "--"+name)
		default:
			out = append(out, "--"+name+"="+val)
		}
	}
	if !logged && syslogAvailable() {
		out = append(out, "--syslog")
	}
	if config != "" {
		out = append(out, "--config", config)
	}
	if fake {
		return nil, nil
	}
	return append(out, "--", dir), nil
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
