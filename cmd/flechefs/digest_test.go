package main

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/flechefs/flechefs/digest"
)

// The vectors of digest/doc.go, through the command line.
func TestDigestVectors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"digest", "simulate"}, "814ed46ec90fecff3b7ba19d3d23aa27464e68dbb977e362fcadb1383d6f0e96"},
		{[]string{"digest", "--json", "simulate", `"a"`, "1", "true", "null"}, "dbd4865b2550c9e127b38f1e9c8e88bdfe261cb6fb42b0359fdf18399fed9a72"},
		{[]string{"digest", "--json", "build", "-42", "9007199254740993"}, "226d83df41ffd209ba87a14756b08fd05e8760abf3a0b9b757224dd6b19e95bd"},
		{[]string{"digest", "-json", "--", "build", "-42", "9007199254740993"}, "226d83df41ffd209ba87a14756b08fd05e8760abf3a0b9b757224dd6b19e95bd"},
		// Without --json, "1" is the string "1", not the integer.
		{[]string{"digest", "simulate", "a", "1"}, mustCall(t, "simulate", "a", "1")},
	} {
		code, stdout, stderr := runCLI(t, "", tc.args...)
		if code != 0 || stdout != tc.want+"\n" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want %s", tc.args, code, stdout, stderr, tc.want)
		}
	}
}

func mustCall(t *testing.T, fn string, args ...any) string {
	k, err := digest.Call(fn, args)
	if err != nil {
		t.Fatal(err)
	}
	return k.String()
}

func TestDigestFile(t *testing.T) {
	data := strings.Repeat("flechefs\n", 100000)
	sum := sha256.Sum256([]byte(data))
	want := hex.EncodeToString(sum[:]) + "\n"
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, stdout, stderr := runCLI(t, "", "digest", "--file", file); code != 0 || stdout != want {
		t.Errorf("--file: %d %q %q", code, stdout, stderr)
	}
	if code, stdout, stderr := runCLI(t, data, "digest", "--file", "-"); code != 0 || stdout != want {
		t.Errorf("--file -: %d %q %q", code, stdout, stderr)
	}
	code, _, stderr := runCLI(t, "", "digest", "--file", file+".missing")
	if code != exitFail || !strings.Contains(stderr, "no such file or directory") {
		t.Errorf("missing file: %d %q", code, stderr)
	}
}

func FuzzDigestArgs(f *testing.F) {
	f.Add("simulate", "a", "1", false)
	f.Add("simulate", `"a"`, "1", true)
	f.Add("build", "-42", "9007199254740993", true)
	f.Add("f", `{"b": [1, "x", null], "a": {}}`, `"\u00e9\n"`, true)
	f.Add("f", "1.5", "1e3", true)
	f.Add("f", "\xff", "", false)
	f.Add("", "", "", true)
	f.Fuzz(func(t *testing.T, name, a1, a2 string, asJSON bool) {
		k, err := digestArgs(name, []string{a1, a2}, asJSON)
		if !asJSON {
			valid := utf8.ValidString(name) && utf8.ValidString(a1) && utf8.ValidString(a2)
			if valid != (err == nil) {
				t.Fatalf("strings %q %q %q: err %v", name, a1, a2, err)
			}
			if err == nil && k.String() != mustCall(t, name, a1, a2) {
				t.Fatalf("digestArgs differs from Call")
			}
		}
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if _, perr := digest.Parse(k.String()); perr != nil || len(k.String()) != 64 || k.Ext() != "" {
			t.Fatalf("bad key %q: %v", k, perr)
		}
		if asJSON {
			// The canonical form of what was parsed names the same call.
			vals, err := digest.ParseArgs([]string{a1, a2}, true)
			if err != nil {
				t.Fatal(err)
			}
			var canon []string
			for _, v := range vals {
				b, err := digest.CanonicalJSON(v)
				if err != nil {
					t.Fatal(err)
				}
				canon = append(canon, string(b))
			}
			k2, err := digestArgs(name, canon, true)
			if err != nil || k2 != k {
				t.Fatalf("canonical args %q: %v %v, want %v", canon, k2, err, k)
			}
		}
	})
}
