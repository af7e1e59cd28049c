package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flechefs/flechefs/fs"
	"github.com/flechefs/flechefs/internal/config"
	"github.com/flechefs/flechefs/internal/mountinfo"
)

// TestMain lets tests run the test binary as flechefs itself.
func TestMain(m *testing.M) {
	if os.Getenv("FLECHEFS_TEST_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// runCLI runs a command line and returns the exit code and outputs.
func runCLI(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

// isolate points HOME and the XDG directories into a temporary directory,
// so no test reads the user's configuration.
func isolate(t *testing.T) string {
	t.Helper()
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, "config"))
	t.Setenv("XDG_CACHE_HOME", filepath.Join(home, "cache"))
	return home
}

func TestUsageErrors(t *testing.T) {
	isolate(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string // in stderr
	}{
		{nil, "Usage: flechefs COMMAND"},
		{[]string{"frob"}, `flechefs: unknown command "frob"`},
		{[]string{"--frob"}, "flechefs: flag --frob before a command"},
		{[]string{"mount"}, "flechefs mount: want one MOUNTPOINT, got 0 arguments\nRun 'flechefs mount --help' for usage."},
		{[]string{"mount", "a", "b"}, "flechefs mount: want one MOUNTPOINT, got 2 arguments"},
		{[]string{"mount", "--bogus", dir}, "flechefs mount: flag provided but not defined: -bogus"},
		{[]string{"mount", "--ram", "10XB", dir}, `flechefs mount: invalid configuration:` + "\n" + `--ram "10XB": unknown unit "XB"`},
		{[]string{"mount", dir, "--remote", "http://x/y"}, `--remote "http://x/y": scheme "http"`},
		{[]string{"mount", "--config", filepath.Join(dir, "nope.toml"), dir}, "nope.toml: no such file or directory"},
		{[]string{"umount"}, "flechefs umount: want one MOUNTPOINT"},
		{[]string{"status"}, "flechefs status: want one MOUNTPOINT"},
		{[]string{"sync", "--timeout", "soon", dir}, `flechefs sync: invalid value "soon" for flag -timeout`},
		{[]string{"sync", "--timeout", "0s", dir}, "flechefs sync: --timeout and --give-up must be positive"},
		{[]string{"digest"}, "flechefs digest: missing NAME (or --file PATH)"},
		{[]string{"digest", "--json", "f", "1.5"}, "flechefs digest: digest: number 1.5 is not an integer"},
		{[]string{"digest", "--json", "f", "{"}, "flechefs digest: argument 1: not JSON"},
		{[]string{"digest", "--file", "x", "y"}, "flechefs digest: --file takes no NAME, ARG or --json"},
		{[]string{"config", "extra"}, "flechefs config: no arguments expected"},
		{[]string{"version", "extra"}, "flechefs version: no arguments expected"},
		{[]string{"help", "nope"}, `flechefs help: unknown command "nope"`},
		{[]string{"help", "a", "b"}, "flechefs help: too many arguments"},
	} {
		code, stdout, stderr := runCLI(t, "", tc.args...)
		if code != exitUsage {
			t.Errorf("%q: exit %d, want %d; stderr:\n%s", tc.args, code, exitUsage, stderr)
		}
		if !strings.Contains(stderr, tc.want) {
			t.Errorf("%q: stderr does not contain %q:\n%s", tc.args, tc.want, stderr)
		}
		if stdout != "" {
			t.Errorf("%q: stdout %q", tc.args, stdout)
		}
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		code, stdout, stderr := runCLI(t, "", args...)
		if code != exitOK || stderr != "" {
			t.Fatalf("%q: exit %d, stderr %q", args, code, stderr)
		}
		for _, cmd := range commands {
			if !strings.Contains(stdout, "  "+cmd.name+" ") {
				t.Errorf("%q: %s is not listed:\n%s", args, cmd.name, stdout)
			}
		}
	}
	for _, cmd := range commands {
		for _, args := range [][]string{{"help", cmd.name}, {cmd.name, "--help"}, {cmd.name, "-h"}} {
			code, stdout, stderr := runCLI(t, "", args...)
			if code != exitOK || stderr != "" {
				t.Fatalf("%q: exit %d, stderr %q", args, code, stderr)
			}
			if !strings.HasPrefix(stdout, "Usage: flechefs "+cmd.name) {
				t.Errorf("%q: help starts %q", args, stdout[:min(len(stdout), 40)])
			}
		}
	}
	_, stdout, _ := runCLI(t, "", "help", "mount")
	for _, want := range []string{"Examples:", "  --config FILE\n", "  --remote URL\n", "  --ram SIZE\n", "  --allow-other\n", "  --debug\n"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("mount help lacks %q:\n%s", want, stdout)
		}
	}
	_, stdout, _ = runCLI(t, "", "help", "sync")
	if !strings.Contains(stdout, "  --timeout DURATION\n      fail when the queue is not empty after this long (default 10m)\n") {
		t.Errorf("sync help:\n%s", stdout)
	}
}

func TestVersion(t *testing.T) {
	code, stdout, _ := runCLI(t, "", "version")
	if code != 0 || !strings.HasPrefix(stdout, "flechefs ") || !strings.Contains(stdout, "go1.") {
		t.Fatalf("version: %d %q", code, stdout)
	}
	old := version
	version = "v9.9.9"
	defer func() { version = old }()
	if _, stdout, _ := runCLI(t, "", "--version"); !strings.HasPrefix(stdout, "flechefs v9.9.9 (go") {
		t.Fatalf("--version: %q", stdout)
	}
}

// A bad configuration is reported with file, line and column, exit 2.
func TestConfigErrors(t *testing.T) {
	home := isolate(t)
	file := filepath.Join(home, "bad.toml")
	src := `promote = "all"

[[tier]]
kind = "memory"
size = "256MiB"

[[tier]]
kind = "bolt"
path = "~/.cache/flechefs/cache.db"
size = "10XB"
colour = "blue"
`
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	want := "invalid configuration:\n" +
		file + `:10:8: tier 2 (bolt): size "10XB": unknown unit "XB"; use B, KiB, MiB, GiB, TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000)` + "\n" +
		file + `:11:1: tier 2 (bolt): unknown key "colour"` + "\n"
	for _, args := range [][]string{
		{"config", "--config", file},
		{"mount", "--config", file, t.TempDir()},
	} {
		code, _, stderr := runCLI(t, "", args...)
		if code != exitUsage || !strings.HasSuffix(stderr, want) {
			t.Errorf("%q: exit %d, stderr:\n%s\nwant suffix:\n%s", args, code, stderr, want)
		}
	}

	// The user's file is found in $XDG_CONFIG_HOME.
	user := filepath.Join(home, "config", "flechefs", "config.toml")
	if err := os.MkdirAll(filepath.Dir(user), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(user, []byte("[[tier]]\nkind = \"memory\"\nsize = \"1G\"\nmax_entry = \"2G\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCLI(t, "", "config")
	if code != exitUsage || !strings.Contains(stderr, user+":4:13: tier 1 (memory): max_entry 2GiB is larger than size 1GiB") {
		t.Errorf("user file: exit %d, stderr:\n%s", code, stderr)
	}
}

func TestConfigCommand(t *testing.T) {
	home := isolate(t)
	code, stdout, stderr := runCLI(t, "", "config", "--default")
	if code != 0 || stdout != config.DefaultTOML || stderr != "" {
		t.Fatalf("config --default: %d %q", code, stderr)
	}
	code, stdout, stderr = runCLI(t, "", "config", "--remote", "sftp://me@nas/srv/c", "--ram", "1GiB", "--identity", "~/k")
	if code != 0 || stderr != "" {
		t.Fatalf("config: %d %s", code, stderr)
	}
	for _, want := range []string{
		"from " + config.DefaultName,
		`spool_dir = "` + home + `/cache/flechefs/spool"`,
		`size = "1GiB"`,
		`path = "` + home + `/cache/flechefs/cache.db"`,
		"[[tier]]  # --remote\n",
		`url = "sftp://me@nas/srv/c"`,
		`identity = ["` + home + `/k"]`,
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("config output lacks %q:\n%s", want, stdout)
		}
	}
	// What it prints is a configuration that reads back the same.
	file := filepath.Join(home, "printed.toml")
	if err := os.WriteFile(file, []byte(stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	code, again, stderr := runCLI(t, "", "config", "--config", file)
	if code != 0 {
		t.Fatalf("config --config printed: %d %s", code, stderr)
	}
	strip := func(s string) string { // the comments say where things come from
		var out []string
		for _, l := range strings.Split(s, "\n") {
			l, _, _ = strings.Cut(l, "#")
			out = append(out, l)
		}
		return strings.Join(out, "\n")
	}
	if strip(again) != strip(stdout) {
		t.Errorf("round trip:\n%s\nthen:\n%s", stdout, again)
	}
}

// The config package's bound is the mount's.
func TestNegativeTTLBound(t *testing.T) {
	if config.MaxNegativeTTL != fs.MaxNegativeTTL {
		t.Fatalf("config.MaxNegativeTTL %v, fs.MaxNegativeTTL %v", config.MaxNegativeTTL, fs.MaxNegativeTTL)
	}
}

func TestUmountNotMounted(t *testing.T) {
	dir := t.TempDir()
	code, _, stderr := runCLI(t, "", "umount", dir)
	if code != exitFail || !strings.Contains(stderr, dir+" is not mounted") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	code, _, stderr = runCLI(t, "", "umount", filepath.Join(dir, "nope"))
	if code != exitFail || !strings.Contains(stderr, "no such file or directory") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	// "/" is mounted, but not by flechefs.
	if e, ok, _ := mountinfo.Find("/"); ok && e.FSType != flechefsFSType {
		code, _, stderr = runCLI(t, "", "umount", "/")
		if code != exitFail || !strings.Contains(stderr, "not flechefs") {
			t.Fatalf("umount /: exit %d: %s", code, stderr)
		}
	}
}

func TestMountpointChecks(t *testing.T) {
	isolate(t)
	file := filepath.Join(t.TempDir(), "f")
	os.WriteFile(file, nil, 0o644)
	code, _, stderr := runCLI(t, "", "mount", file)
	if code != exitFail || !strings.Contains(stderr, file+" is not a directory") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	code, _, stderr = runCLI(t, "", "mount", file+"x")
	if code != exitFail || !strings.Contains(stderr, "no such file or directory") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
}
