package main

import (
	"slices"
	"strings"
	"testing"
)

// TestHelperArgs: a mount helper's command line becomes a background
// mount; mount(8)'s generic options are dropped, a bad option is an error
// naming it, -f mounts nothing.
func TestHelperArgs(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string // the mount's arguments joined by spaces, or "error: TEXT", or "fake"
	}{
		{[]string{"none", "/c"}, "mount --background -- /c"},
		{[]string{"/etc/f.toml", "/c", "-o", "rw,dev,suid,nofail,_netdev,x-systemd.automount,comment=x,ram=1GiB,allow_other,log_file=/l"},
			"mount --background --ram=1GiB --allow-other --log-file=/l --config /etc/f.toml -- /c"},
		{[]string{"none", "/c", "-o", "config=/a.toml,bolt_size=2GiB", "-n", "-t", "fuse.flechefs"},
			"mount --background --bolt-size=2GiB --log-file=/l --config /a.toml -- /c"},
		{[]string{"/b.toml", "/c", "-o", "config=/a.toml"}, "error: name two configurations"},
		{[]string{"none", "/c", "-o", "bogus"}, `error: unknown option "bogus"`},
		{[]string{"none", "/c", "-o", "ro"}, "error: read-write"},
		{[]string{"none", "/c", "-o", "ram"}, "error: needs a value"},
		{[]string{"none", "/c", "-o", "allow_other=1"}, "error: takes no value"},
		{[]string{"none", "/c", "-x"}, "error: unsupported"},
		{[]string{"none", "/c", "-o"}, "error: needs a value"},
		{[]string{"none", "/c", "-f", "-o", "ram=1GiB"}, "fake"},
		{[]string{"none", "/c", "-f", "-o", "bogus"}, `error: unknown option "bogus"`},
	} {
		args := c.args
		if strings.Contains(c.want, "--log-file=/l") && !slices.Contains(args, "log_file=/l") && !strings.Contains(strings.Join(args, " "), "log_file") {
			// Say where to log, so that the result does not depend on
			// whether this machine has a syslog.
			args = append(slices.Clone(args), "-o", "log_file=/l")
		}
		got, err := helperArgs(args)
		var s string
		switch {
		case err != nil:
			s = "error: " + err.Error()
		case got == nil:
			s = "fake"
		default:
			s = strings.Join(got, " ")
		}
		if strings.HasPrefix(c.want, "error: ") && strings.HasPrefix(s, "error: ") {
			if !strings.Contains(s, strings.TrimPrefix(c.want, "error: ")) {
				t.Errorf("%q: %s, want an error with %q", c.args, s, c.want)
			}
			continue
		}
		if c.want == "mount --background -- /c" && strings.Contains(s, "--syslog") {
			s = strings.Replace(s, " --syslog", "", 1) // this machine has a syslog
		}
		if s != c.want {
			t.Errorf("%q:\n got %s\nwant %s", c.args, s, c.want)
		}
	}
}

func TestWithoutFlags(t *testing.T) {
	drop := map[string]bool{"background": false, "log-file": true}
	got := withoutFlags([]string{"--background", "--log-file", "/l", "-log-file=/m", "--ram", "1G", "/c", "--", "--background"}, drop)
	want := []string{"--ram", "1G", "/c", "--", "--background"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}
