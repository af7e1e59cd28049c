package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// testEnv is a fixed environment: HOME=/home/u, no XDG variables, config
// files in /etc/flechefs.
func testEnv() Env {
	vars := map[string]string{"HOME": "/home/u", "DATA": "/data"}
	return Env{
		Getenv: func(k string) string { return vars[k] },
		Home:   "/home/u",
		LookupHome: func(name string) (string, error) {
			if name == "alice" {
				return "/home/alice", nil
			}
			return "", errors.New("no such user")
		},
		Dir: "/etc/flechefs",
	}
}

func TestDefault(t *testing.T) {
	c, err := Parse(DefaultName, []byte(DefaultTOML), testEnv())
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		File: DefaultName, Promote: "all", NegativeTTL: time.Second, RemoteTimeout: 10 * time.Second,
		ListTTL: 30 * time.Second, DeleteRemote: true, SpoolDir: "/home/u/.cache/flechefs/spool",
		UploadWorkers: DefaultUploadWorkers,
		Tiers: []Tier{
			{Kind: Memory, Name: "ram", Size: 256 << 20},
			{Kind: Bolt, Name: "bolt", Size: 10 << 30, Path: "/home/u/.cache/flechefs/cache.db"},
		},
	}
	if diff := compare(c, want); diff != "" {
		t.Fatal(diff)
	}
	if len(c.Warnings) != 0 {
		t.Errorf("warnings: %q", c.Warnings)
	}
	if got := c.Describe(); got != "ram 256MiB, bolt 10GiB" {
		t.Errorf("Describe = %q", got)
	}
}

// compare compares the settings, not where they were declared.
func compare(got, want *Config) string {
	g, w := *got, *want
	g.Warnings, w.Warnings = nil, nil
	g.File, w.File = "", ""
	g.Tiers = append([]Tier(nil), g.Tiers...)
	w.Tiers = append([]Tier(nil), w.Tiers...)
	for _, ts := range [][]Tier{g.Tiers, w.Tiers} {
		for i := range ts {
			ts[i].At, ts[i].origin, ts[i].explicitName, ts[i].timeoutSet = "", origin{}, false, false
		}
	}
	if reflect.DeepEqual(g, w) {
		return ""
	}
	return "got  " + strings.ReplaceAll((&g).TOML(), "\n", "\n     ") + "\nwant " + strings.ReplaceAll((&w).TOML(), "\n", "\n     ")
}

func TestGood(t *testing.T) {
	full := `# a full configuration
promote = "base"
write = "through"
negative_ttl = "0s"
remote_timeout = "2s"
list_ttl = "1m"
delete_remote = false
spool_dir = "spool"
allow_other = true
upload_workers = 8

[[tier]]
kind = "memory"
size = "1.5GiB"
max_entry = "64MiB"

[[tier]]
kind = "bolt"
name = "disk"
path = "~/cache.db"
size = 1048576

[[tier]]
kind = "bolt"
path = "${DATA}/shared.db"
size = "1TB"
read_only = true

[[tier]]
kind = "sftp"
url = "sftp://cache@example.org:2222/srv/flechefs"
identity = ["~/.ssh/id_ed25519", "~alice/key"]
known_hosts = "/etc/ssh/known"
agent = false
concurrency = 8
channels = 5
timeout = "30s"
ciphers = ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"]
foreign = "verify"

[[tier]]
kind = "sftp"
url = "sftp://mirror/cache"
read_only = true
identity = "key"
`
	inline := `tier = [
  {kind = "memory", size = "1G"},
  {kind = "sftp", url = "sftp://h/p", identity = []},
]
`
	for _, tc := range []struct {
		name, src string
		want      *Config
	}{
		{"full", full, &Config{
			Promote: "base", WriteThrough: true, NegativeTTL: 0, RemoteTimeout: 2 * time.Second,
			ListTTL: time.Minute, DeleteRemote: false, SpoolDir: "/etc/flechefs/spool", AllowOther: true,
			UploadWorkers: 8,
			Tiers: []Tier{
				{Kind: Memory, Name: "ram", Size: 3 << 29, MaxEntry: 64 << 20},
				{Kind: Bolt, Name: "disk", Size: 1 << 20, Path: "/home/u/cache.db"},
				{Kind: Bolt, Name: "bolt", Size: 1e12, Path: "/data/shared.db", ReadOnly: true},
				{Kind: SFTP, Name: "sftp", Timeout: 30 * time.Second, SFTPKeys: SFTPKeys{URL: "sftp://cache@example.org:2222/srv/flechefs",
					Identity: []string{"/home/u/.ssh/id_ed25519", "/home/alice/key"}, KnownHosts: "/etc/ssh/known",
					Concurrency: 8, Channels: 5,
					Ciphers: []string{"aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"}, Mode: 0o640, Foreign: "verify", Transport: "go"}},
				{Kind: SFTP, Name: "sftp2", ReadOnly: true, Timeout: 2 * time.Second, SFTPKeys: SFTPKeys{URL: "sftp://mirror/cache", Agent: true,
					Identity: []string{"/etc/flechefs/key"}, KnownHosts: "/home/u/.ssh/known_hosts",
					Concurrency: 64, Channels: 3, Mode: 0o640, Foreign: "adopt", Transport: "go"}},
			},
		}},
		{"inline tables", inline, &Config{
			Promote: "all", NegativeTTL: time.Second, RemoteTimeout: 10 * time.Second, ListTTL: 30 * time.Second,
			DeleteRemote: true, SpoolDir: "/home/u/.cache/flechefs/spool", UploadWorkers: DefaultUploadWorkers,
			Tiers: []Tier{
				{Kind: Memory, Name: "ram", Size: 1 << 30},
				{Kind: SFTP, Name: "sftp", Timeout: 10 * time.Second, SFTPKeys: SFTPKeys{URL: "sftp://h/p", Identity: []string{}, Agent: true,
					KnownHosts: "/home/u/.ssh/known_hosts", Concurrency: 64, Channels: 3, Mode: 0o640, Foreign: "adopt", Transport: "go"}},
			},
		}},
		{"bounded s3", "[[tier]]\nkind = \"memory\"\nsize = \"1G\"\n[[tier]]\nkind = \"s3\"\nendpoint = \"https://s3.example.org\"\nbucket = \"bkt\"\nprefix = \"c/\"\nmax_size = \"2TiB\"\nmax_age = \"720h\"\n", &Config{
			Promote: "all", NegativeTTL: time.Second, RemoteTimeout: 10 * time.Second, ListTTL: 30 * time.Second,
			DeleteRemote: true, SpoolDir: "/home/u/.cache/flechefs/spool", UploadWorkers: DefaultUploadWorkers,
			Tiers: []Tier{
				{Kind: Memory, Name: "ram", Size: 1 << 30},
				{Kind: S3, Name: "s3", Timeout: 10 * time.Second, S3Keys: S3Keys{Endpoint: "https://s3.example.org", Bucket: "bkt", Prefix: "c/"},
					RetentionKeys: RetentionKeys{MaxSize: 2 << 40, MaxAge: 720 * time.Hour, PruneGrace: time.Hour, PruneEvery: time.Hour}},
			},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("config.toml", []byte(tc.src), testEnv())
			if err != nil {
				t.Fatal(err)
			}
			if diff := compare(c, tc.want); diff != "" {
				t.Fatal(diff)
			}
			// What TOML writes reads back the same.
			again, err := Parse("again.toml", []byte(c.TOML()), testEnv())
			if err != nil {
				t.Fatalf("%v in\n%s", err, c.TOML())
			}
			if diff := compare(again, c); diff != "" {
				t.Fatal("round trip:", diff)
			}
		})
	}
}

func TestBad(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []string // one line per error, in order
	}{
		{"bad size unit", "[[tier]]\nkind = \"memory\"\nsize = \"1G\"\n\n[[tier]]\nkind = \"bolt\"\nsize = \"10XB\"\npath = \"/c.db\"\n", []string{
			`config.toml:7:8: tier 2 (bolt): size "10XB": unknown unit "XB"; use B, KiB, MiB, GiB, TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000)`,
		}},
		{"bad s3 keys", "[[tier]]\nkind = \"s3\"\nendpoint = \"s3.example.org/bucket\"\nbucket = \"a..b\"\nprefix = \"/cache/\"\n", []string{
			`config.toml:3:12: tier 1 (s3): endpoint "s3.example.org/bucket": want http(s)://host[:port], no path (the bucket is its own key)`,
			`config.toml:4:10: tier 1 (s3): bucket "a..b": Bucket name contains invalid characters`,
			`config.toml:5:10: tier 1 (s3): prefix "/cache/": object names would begin with '/', which S3 tools show as a folder with an empty name; write it without the leading '/' ("cache/")`,
		}},
		{"syntax", "promote = \"all\"\nwrite = back\n", []string{
			`config.toml:2:9: TOML syntax: `,
		}},
		{"unknown top-level key", "promote = \"all\"\npromot = \"base\"\n[[tier]]\nkind = \"memory\"\nsize = 1\n", []string{
			`config.toml:2:1: unknown key "promot" (did you mean "promote"?)`,
		}},
		{"unknown table", "[remote]\nurl = \"x\"\n[[tier]]\nkind = \"memory\"\nsize = 1\n", []string{
			`config.toml:1:1: unknown key "remote"`,
		}},
		// The decoder keeps one position per key name (the last tier's);
		// the error must point at the second tier's.
		{"unknown key in a middle tier", `[[tier]]
kind = "memory"
size = "1G"
[[tier]]
kind = "bolt"
path = "/a"
size = "1G"
colour = "red"
[[tier]]
kind = "bolt"
path = "/b"
size = "1G"
read_only = true
colour = "blue"
`, []string{
			`config.toml:8:1: tier 2 (bolt): unknown key "colour"`,
			`config.toml:14:1: tier 3 (bolt): unknown key "colour"`,
		}},
		{"mode", "[[tier]]\nkind = \"sftp\"\nurl = \"sftp://h/p\"\nmode = 640\n[[tier]]\nkind = \"sftp\"\nname = \"b\"\nurl = \"sftp://h/q\"\nmode = \"4755\"\n[[tier]]\nkind = \"sftp\"\nname = \"c\"\nurl = \"sftp://h/r\"\nmode = \"0040\"\n[[tier]]\nkind = \"sftp\"\nname = \"d\"\nurl = \"sftp://h/s\"\nmode = \"rw\"\n", []string{
			`config.toml:4:8: tier 1 (sftp): mode: want a string of octal digits such as "0640", got`,
			`config.toml:9:8: tier 2 (sftp): mode "4755": want permission bits only`,
			`config.toml:14:8: tier 3 (sftp): mode "0040": the owner must be able to read`,
			`config.toml:19:8: tier 4 (sftp): mode "rw": want octal permission bits`,
		}},
		{"key of another kind", "[[tier]]\nkind = \"memory\"\nsize = \"1G\"\npath = \"/x\"\n", []string{
			`config.toml:4:1: tier 1 (memory): key "path" does not apply to memory tiers (it is for bolt tiers)`,
		}},
		{"no kind", "[[tier]]\nsize = \"1G\"\n", []string{
			`config.toml:1:1: tier 1: kind is missing: add kind = "memory", "bolt" or "sftp"`,
		}},
		{"unknown kind", "[[tier]]\nkind = \"ram\"\nsize = \"1G\"\n", []string{
			`config.toml:2:8: tier 1: kind "ram": unknown kind: did you mean "memory"?`,
		}},
		{"missing size and path", "\n[[tier]]\nkind = \"bolt\"\n", []string{
			`config.toml:2:1: tier 1 (bolt): path is missing (for example path = "~/.cache/flechefs/cache.db")`,
			`config.toml:2:1: tier 1 (bolt): size is missing (for example size = "10GiB")`,
		}},
		{"single brackets", "[tier]\nkind = \"memory\"\nsize = 1\n", []string{
			`config.toml:1:1: tier: write [[tier]], with two brackets, once before each tier; [tier] is a single table`,
		}},
		{"no tiers", "promote = \"all\"\n", []string{
			`config.toml: no tiers: add at least one [[tier]] with kind = "memory", "bolt" or "sftp"`,
		}},
		{"types", "upload_workers = \"2\"\nallow_other = 1\nnegative_ttl = 1\n[[tier]]\nkind = \"memory\"\nsize = 1.5\n", []string{
			`config.toml:1:18: upload_workers: want an integer from 1 to 64, got a string`,
			`config.toml:2:15: allow_other: want true or false, got the integer 1`,
			`config.toml:3:16: negative_ttl: want a duration string such as "500ms", "10s" or "2m", got the integer 1`,
			`config.toml:6:8: tier 1 (memory): size: want a size such as "256MiB", "10GiB" or a number of bytes, got the float 1.5`,
		}},
		{"ranges", "negative_ttl = \"3s\"\nremote_timeout = \"-1s\"\nupload_workers = 0\n[[tier]]\nkind = \"memory\"\nsize = \"0\"\n", []string{
			`config.toml:1:16: negative_ttl "3s": too long: the maximum is 2s`,
			`config.toml:2:18: remote_timeout "-1s": too short: the minimum is 1ms`,
			`config.toml:3:18: upload_workers 0: out of range: want 1 to 64`,
			`config.toml:6:8: tier 1 (memory): size "0": must be positive`,
		}},
		{"urls", `[[tier]]
kind = "sftp"
url = "http://h/p"
[[tier]]
kind = "sftp"
url = "sftp://h"
[[tier]]
kind = "sftp"
url = "sftp://u:secret@h/p"
[[tier]]
kind = "sftp"
url = "sftp://h:99999/p"
`, []string{
			`config.toml:3:7: tier 1 (sftp): url "http://h/p": scheme "http": want sftp://[user@]host[:port]/path`,
			`config.toml:6:7: tier 2 (sftp): url "sftp://h": no path: want the remote directory, such as sftp://host/srv/flechefs`,
			`config.toml:9:7: tier 3 (sftp): url "sftp://u:secret@h/p": do not put a password in the URL: use identity files or the SSH agent`,
			`config.toml:12:7: tier 4 (sftp): url "sftp://h:99999/p": port "99999": want 1 to 65535`,
		}},
		{"foreign", "[[tier]]\nkind = \"sftp\"\nurl = \"sftp://h/p\"\nforeign = \"delete\"\n", []string{
			`config.toml:4:11: tier 1 (sftp): foreign "delete": want "adopt", "verify" or "ignore"`,
		}},
		{"channels", "[[tier]]\nkind = \"sftp\"\nurl = \"sftp://h/p\"\nchannels = 9\n", []string{
			`config.toml:4:12: tier 1 (sftp): channels 9: out of range: want 1 to 8`,
		}},
		{"ciphers", "[[tier]]\nkind = \"sftp\"\nurl = \"sftp://h/p\"\nciphers = [\"aes128-gcm@openssh.com\", \"rot13\"]\n[[tier]]\nkind = \"sftp\"\nurl = \"sftp://h/q\"\nciphers = []\n", []string{
			`config.toml:4:38: tier 1 (sftp): ciphers "rot13": unknown cipher: want one of ` + strings.Join(ssh.SupportedAlgorithms().Ciphers, ", "),
			`config.toml:8:11: tier 2 (sftp): ciphers: empty list: leave the key out for the default ciphers`,
		}},
		{"paths", "spool_dir = \"$NOPE/spool\"\n[[tier]]\nkind = \"bolt\"\nsize = 1\npath = \"~bob/x\"\n", []string{
			`config.toml:1:13: spool_dir "$NOPE/spool": $NOPE is not set`,
			`config.toml:5:8: tier 1 (bolt): path "~bob/x": cannot expand ~bob: no such user`,
		}},
		{"two writable bolt tiers", "[[tier]]\nkind = \"bolt\"\nsize = 1\npath = \"/a\"\n\n[[tier]]\nkind = \"bolt\"\nsize = 1\npath = \"/b\"\n", []string{
			`config.toml:6:1: tier 2 (bolt): a second writable bolt tier (tier 1 (bolt) is the first): new entries and the upload queue live in one; set read_only = true on the other`,
		}},
		{"same file twice", "[[tier]]\nkind = \"bolt\"\nsize = 1\npath = \"/a\"\n\n[[tier]]\nkind = \"bolt\"\nsize = 1\npath = \"/x/../a\"\nread_only = true\n", []string{
			`config.toml:6:1: tier 2 (bolt): path "/a" is already the database of tier 1 (bolt)`,
		}},
		{"duplicate names", "[[tier]]\nkind = \"memory\"\nsize = 1\nname = \"x\"\n[[tier]]\nkind = \"bolt\"\nsize = 1\npath = \"/a\"\nname = \"x\"\n", []string{
			`config.toml:5:1: tier 2 (bolt): name "x" is already the name of tier 1 (memory)`,
		}},
		{"bad name", "[[tier]]\nkind = \"memory\"\nsize = 1\nname = \"Big RAM\"\n", []string{
			`config.toml:4:8: tier 1 (memory): name "Big RAM": want a lowercase letter, then lowercase letters, digits, '-' or '_'`,
		}},
		{"max_entry over size", "[[tier]]\nkind = \"memory\"\nsize = \"1MiB\"\nmax_entry = \"2MiB\"\n", []string{
			`config.toml:4:13: tier 1 (memory): max_entry 2MiB is larger than size 1MiB`,
		}},
		{"dotted unknown key", "[[tier]]\nkind = \"memory\"\nsize = 1\nsftp.url = \"x\"\n", []string{
			`config.toml:4:1: tier 1 (memory): unknown key "sftp"`,
		}},
		{"array element of the wrong type", "tier = [{kind = \"memory\", size = 1}, 3]\n", []string{
			`config.toml:1:38: tier 2: want a table such as {kind = "memory", size = "256MiB"}, got the integer 3`,
		}},
		{"inline table key", "tier = [{kind = \"memory\", size = 1, bad = 2}]\n", []string{
			`config.toml:1:37: tier 1 (memory): unknown key "bad"`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("config.toml", []byte(tc.src), testEnv())
			if err == nil {
				t.Fatal("no error")
			}
			var list Errors
			if !errors.As(err, &list) {
				t.Fatalf("%T %v is not Errors", err, err)
			}
			got := strings.Split(err.Error(), "\n")
			if len(got) != len(tc.want) {
				t.Fatalf("got %d errors, want %d:\n%s", len(got), len(tc.want), err)
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tc.want[i]) {
					t.Errorf("error %d:\ngot  %s\nwant %s", i, got[i], tc.want[i])
				}
			}
			var one *Error
			if !errors.As(err, &one) || one.File != "config.toml" {
				t.Errorf("errors.As(*Error) = %v", one)
			}
		})
	}
}

func TestWarnings(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []string
	}{
		{"memory below bolt", "[[tier]]\nkind = \"bolt\"\npath = \"/a\"\nsize = 1\n[[tier]]\nkind = \"memory\"\nsize = 1\n", []string{
			`config.toml:5:1: tier 2 (memory): a memory tier below a slower tier is searched after it; put memory tiers first`,
		}},
		{"bolt below sftp", "[[tier]]\nkind = \"sftp\"\nurl = \"sftp://h/p\"\n[[tier]]\nkind = \"bolt\"\npath = \"/a\"\nsize = 1\n", []string{
			`config.toml:4:1: tier 2 (bolt): a local tier below a remote tier is searched only after the remote; put local tiers first`,
		}},
		{"remote without queue", "[[tier]]\nkind = \"memory\"\nsize = 1\n[[tier]]\nkind = \"sftp\"\nurl = \"sftp://h/p\"\n", []string{
			`config.toml: no writable bolt tier holds the upload queue`,
		}},
		{"through without remote", "write = \"through\"\n[[tier]]\nkind = \"memory\"\nsize = 1\n", []string{
			`config.toml: write = "through" has no effect without a writable sftp tier`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("config.toml", []byte(tc.src), testEnv())
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Warnings) != len(tc.want) {
				t.Fatalf("warnings %q, want %q", c.Warnings, tc.want)
			}
			for i, w := range tc.want {
				if !strings.HasPrefix(c.Warnings[i], w) {
					t.Errorf("warning %d:\ngot  %s\nwant %s", i, c.Warnings[i], w)
				}
			}
		})
	}
}

func TestApply(t *testing.T) {
	env := testEnv()
	env.Dir = "/work"
	def := func() *Config {
		c, err := Parse(DefaultName, []byte(DefaultTOML), testEnv())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, tc := range []struct {
		name string
		ovs  []Override
		want string // Describe
		err  string
	}{
		{"none", nil, "ram 256MiB, bolt 10GiB", ""},
		{"remote added", []Override{{"remote", "sftp://u@h:2222/srv/c"}}, "ram 256MiB, bolt 10GiB, sftp sftp://u@h:2222/srv/c", ""},
		{"identity before remote", []Override{{"identity", "k1"}, {"remote", "sftp://h/c"}, {"identity", "k2"}}, "ram 256MiB, bolt 10GiB, sftp sftp://h/c", ""},
		{"ram and bolt", []Override{{"ram", "1G"}, {"bolt", "db"}, {"bolt-size", "2GiB"}}, "ram 1GiB, bolt 2GiB", ""},
		{"no ram", []Override{{"ram", "0"}}, "bolt 10GiB", ""},
		{"no bolt, then bolt", []Override{{"bolt", "none"}, {"ram", "8M"}}, "ram 8MiB", ""},
		{"remote none", []Override{{"remote", "sftp://h/c"}, {"remote", "none"}}, "ram 256MiB, bolt 10GiB", ""},
		{"settings", []Override{{"negative-ttl", "0"}, {"remote-timeout", "1s"}, {"promote", "base"}, {"write", "through"}, {"allow-other", "true"}}, "ram 256MiB, bolt 10GiB", ""},
		{"bad size", []Override{{"ram", "10XB"}}, "", `--ram "10XB": unknown unit "XB"`},
		{"bad url", []Override{{"remote", "ftp://h/x"}}, "", `--remote "ftp://h/x": scheme "ftp"`},
		{"identity without remote", []Override{{"identity", "k"}}, "", `--identity "k": there is no sftp tier (add one with --remote URL)`},
		{"bad ttl", []Override{{"negative-ttl", "1h"}}, "", `--negative-ttl "1h": too long: the maximum is 2s`},
		{"bad promote", []Override{{"promote", "some"}}, "", `--promote "some": want "all" or "base"`},
		{"nothing left", []Override{{"ram", "0"}, {"bolt", "none"}}, "", `(default config): no tiers`},
		{"bolt-size without bolt", []Override{{"bolt", "none"}, {"bolt-size", "1G"}}, "", `--bolt-size "1G": there is no writable bolt tier`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := def()
			err := c.Apply(env, tc.ovs)
			if tc.err != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tc.err) {
					t.Fatalf("error %v, want %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Describe(); got != tc.want {
				t.Errorf("Describe = %q, want %q", got, tc.want)
			}
		})
	}

	c := def()
	if err := c.Apply(env, []Override{{"remote", "sftp://h/c"}, {"identity", "k1"}, {"identity", "~/k2"}, {"known-hosts", "kh"}, {"bolt", "db"}, {"remote-timeout", "3s"}}); err != nil {
		t.Fatal(err)
	}
	r := c.Tiers[2]
	if !reflect.DeepEqual(r.Identity, []string{"/work/k1", "/home/u/k2"}) || r.KnownHosts != "/work/kh" || r.Timeout != 3*time.Second || r.At != "--remote" {
		t.Errorf("remote tier %+v", r)
	}
	if c.Tiers[1].Path != "/work/db" {
		t.Errorf("bolt path %q", c.Tiers[1].Path)
	}
	if len(c.Warnings) != 0 {
		t.Errorf("warnings %q", c.Warnings)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	env := testEnv()
	vars := map[string]string{"XDG_CONFIG_HOME": dir}
	env.Getenv = func(k string) string { return vars[k] }

	// No file: the default.
	c, err := Load("", env)
	if err != nil || c.File != DefaultName {
		t.Fatalf("Load = %v, %v", c, err)
	}
	// The user's file, relative paths against its directory.
	user := filepath.Join(dir, "flechefs", "config.toml")
	if err := os.MkdirAll(filepath.Dir(user), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(user, []byte("[[tier]]\nkind = \"bolt\"\npath = \"c.db\"\nsize = \"1G\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err = Load("", env)
	if err != nil || c.File != user || c.Tiers[0].Path != filepath.Join(dir, "flechefs", "c.db") {
		t.Fatalf("Load = %+v, %v", c, err)
	}
	// A named file that is not there.
	if _, err := Load(filepath.Join(dir, "nope.toml"), env); err == nil || !strings.Contains(err.Error(), "nope.toml") {
		t.Fatalf("Load of a missing file: %v", err)
	}
	// An error names the file as given.
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("[[tier]]\nkind = \"bolt\"\npath = \"c.db\"\nsize = \"1XB\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bad, env); err == nil || !strings.HasPrefix(err.Error(), bad+":4:8: tier 1 (bolt): size \"1XB\"") {
		t.Fatalf("Load = %v", err)
	}
}

func TestSizes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  string
	}{
		{"0", 0, ""}, {"4096", 4096, ""}, {"1GiB", 1 << 30, ""}, {"512MiB", 512 << 20, ""},
		{"10GB", 10e9, ""}, {"1.5GiB", 3 << 29, ""}, {"2 G", 2 << 30, ""}, {"1k", 1024, ""},
		{"1kb", 1000, ""}, {"1.1KiB", 1126, ""}, {"8EiB", 0, `unknown unit "EiB"`},
		{"8191PiB", 8191 << 50, ""}, {"8192PiB", 0, "too large"}, {"9223372036854775807", 1<<63 - 1, ""},
		{"9223372036854775808", 0, "too large"}, {"", 0, "empty size"}, {"-1", 0, "negative"},
		{"1.2.3MB", 0, `unknown unit ".3MB"`}, {"GiB", 0, "want a number"}, {".", 0, "want a number"},
		{"10XB", 0, `unknown unit "XB"`}, {".5K", 512, ""}, {"1.", 1, ""},
	} {
		got, err := ParseSize(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseSize(%q) = %d, %v; want error %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for n, want := range map[int64]string{0: "0B", 1023: "1023B", 1024: "1KiB", 256 << 20: "256MiB", 3 << 29: "1.5GiB", 10 << 30: "10GiB", -2048: "-2KiB"} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestExpandPath(t *testing.T) {
	env := testEnv()
	for _, tc := range []struct{ in, want, err string }{
		{"~", "/home/u", ""}, {"~/x", "/home/u/x", ""}, {"~alice/y", "/home/alice/y", ""},
		{"$DATA/z", "/data/z", ""}, {"${DATA}z", "/dataz", ""}, {"rel", "/etc/flechefs/rel", ""},
		{"$XDG_CACHE_HOME/f", "/home/u/.cache/f", ""}, {"/a/$$b", "/a/$b", ""}, {"/a/../b/", "/b", ""},
		{"$NOPE", "", "$NOPE is not set"}, {"/a$", "", `"$" not followed`}, {"${DATA", "", `"${" without`},
		{"${1x}", "", "not a variable name"}, {"", "", "empty path"}, {"~bob", "", "~bob: no such user"},
		{"$XDG_RUNTIME_DIR/x", "", "$XDG_RUNTIME_DIR is not set"},
	} {
		got, err := env.ExpandPath(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ExpandPath(%q) = %q, %v; want error %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ExpandPath(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	// XDG variables: absolute values are used, relative ones ignored.
	vars := map[string]string{"XDG_CACHE_HOME": "/c"}
	env.Getenv = func(k string) string { return vars[k] }
	if got, _ := env.ExpandPath("$XDG_CACHE_HOME/f"); got != "/c/f" {
		t.Errorf("absolute XDG_CACHE_HOME: %q", got)
	}
	vars["XDG_CACHE_HOME"] = "rel"
	if got, _ := env.ExpandPath("$XDG_CACHE_HOME/f"); got != "/home/u/.cache/f" {
		t.Errorf("relative XDG_CACHE_HOME: %q", got)
	}
}

// Every key is documented in default.toml and docs/config.md, and every
// command-line flag in docs/config.md.
func TestDocumented(t *testing.T) {
	md, err := os.ReadFile("../../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	keys := append([]string(nil), topKeys...)
	for k := range tierKeys {
		keys = append(keys, k)
	}
	for _, k := range keys {
		if k == "tier" {
			k = "[[tier]]"
		}
		if !strings.Contains(DefaultTOML, "# "+k) && !strings.Contains(DefaultTOML, "#   "+k) && !strings.Contains(DefaultTOML, "\n"+k+" =") {
			t.Errorf("default.toml does not document %q", k)
		}
		if !strings.Contains(string(md), "`"+k+"`") {
			t.Errorf("docs/config.md does not document %q", k)
		}
	}
	for _, f := range Flags {
		if !strings.Contains(string(md), "`--"+f.Name) {
			t.Errorf("docs/config.md does not document --%s", f.Name)
		}
	}
}

// TestTransport: with transport = "ssh" the system's ssh finds its own
// known_hosts (none is filled in) and ssh_config is read; ssh_config is
// read with the built-in transport too.
func TestTransport(t *testing.T) {
	c, err := Parse("config.toml", []byte("[[tier]]\nkind = \"sftp\"\nurl = \"sftp://storage/srv/c\"\ntransport = \"ssh\"\nssh_config = \"~/ssh.conf\"\n"), testEnv())
	if err != nil {
		t.Fatal(err)
	}
	tr := c.Tiers[0]
	if tr.Transport != "ssh" || tr.KnownHosts != "" || tr.SSHConfig != "/home/u/ssh.conf" {
		t.Fatalf("tier %+v: want transport ssh, no known_hosts, ssh_config /home/u/ssh.conf", tr)
	}
	c, err = Parse("config.toml", []byte("[[tier]]\nkind = \"sftp\"\nurl = \"sftp://h/p\"\nssh_config = \"/x\"\n"), testEnv())
	if err != nil || c.Tiers[0].SSHConfig != "/x" || c.Tiers[0].Transport != "go" {
		t.Fatalf("ssh_config with the go transport: %v", err)
	}
	_, err = Parse("config.toml", []byte("[[tier]]\nkind = \"sftp\"\nurl = \"sftp://h/p\"\ntransport = \"rsh\"\n"), testEnv())
	if err == nil || !strings.Contains(err.Error(), "transport") {
		t.Fatalf("transport = rsh: %v", err)
	}
}
