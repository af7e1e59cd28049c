package digest

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

const h64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParseValid(t *testing.T) {
	for _, name := range []string{
		h64, h64 + ".lock", h64 + ".json", "0123456789abcdef", strings.Repeat("a", 128),
		strings.Repeat("a", 128) + "." + strings.Repeat("Z", 32), h64 + ".A_b-9",
	} {
		k, err := Parse(name)
		if err != nil {
			t.Errorf("Parse(%q): %v", name, err)
			continue
		}
		if k.String() != name {
			t.Errorf("String() = %q, want %q", k.String(), name)
		}
		if k.Hex()+map[bool]string{true: "", false: "." + k.Ext()}[k.Ext() == ""] != name {
			t.Errorf("Hex/Ext of %q = %q %q", name, k.Hex(), k.Ext())
		}
	}
}

func TestParseInvalid(t *testing.T) {
	for name, want := range map[string]string{
		"":                                  "empty",
		"0123456789ABCDEF":                  "uppercase",
		"..":                                "0 hex digits",
		"0123456789abcdef/..":               "contains '/'",
		"0123456789abcde":                   "15 hex digits",
		strings.Repeat("a", 129):            "129 hex digits",
		h64 + ".":                           "suffix of 0",
		h64 + ".a.b":                        "suffix character '.'",
		h64 + "." + strings.Repeat("a", 33): "suffix of 33",
		"abc/def0123456789abcdef":           "contains '/'",
		"0123456789abcdef\x00":              "NUL",
		"0123456789abcdeg":                  "'g'",
		"é0123456789abcdef":                 "not lowercase hex",
		h64 + ".ü":                          "suffix character",
		strings.Repeat("a", 10000):          "bytes long",
		".lock":                             "0 hex digits",
	} {
		_, err := Parse(name)
		if err == nil {
			t.Errorf("Parse(%q) accepted", name)
			continue
		}
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%.40q) = %v, want ErrInvalid mentioning %q", name, err, want)
		}
	}
}

func TestKeyComparable(t *testing.T) {
	m := map[Key]int{MustParse(h64): 1}
	if m[MustParse(h64)] != 1 {
		t.Fatal("equal keys are not equal map keys")
	}
	if !(Key{}).IsZero() || MustParse(h64).IsZero() {
		t.Fatal("IsZero")
	}
}

func TestHasher(t *testing.T) {
	h := NewHasher()
	h.Write([]byte("hello "))
	h.Write([]byte("world"))
	if h.Size() != 11 || h.Sum() != Of([]byte("hello world")) {
		t.Fatal("streaming hash differs from one-shot hash")
	}
	if got := h.Sum().String(); got != "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9" {
		t.Fatalf("sha256 = %s", got)
	}
	s, err := ParseSum(h.Sum().String())
	if err != nil || s != h.Sum() {
		t.Fatalf("ParseSum round trip: %v", err)
	}
	if _, err := ParseSum("zz"); !errors.Is(err, ErrInvalid) {
		t.Fatal("ParseSum accepted junk")
	}
}

var vectors = []struct {
	fn   string
	args []any
	want string
}{
	{"simulate", nil, "814ed46ec90fecff3b7ba19d3d23aa27464e68dbb977e362fcadb1383d6f0e96"},
	{"simulate", []any{"a", 1, true, nil}, "dbd4865b2550c9e127b38f1e9c8e88bdfe261cb6fb42b0359fdf18399fed9a72"},
	{"features", []any{map[string]any{"z": 1, "a": []any{1, 2, "x"}}, "ünïcode \"q\" \\ \n\t\x01"}, "3b937837011bd53567b3014c773b68fb76ea923727c226fcef54ef80f25e87bd"},
	{"build", []any{-42, int64(9007199254740993)}, "226d83df41ffd209ba87a14756b08fd05e8760abf3a0b9b757224dd6b19e95bd"},
}

func TestCallVectors(t *testing.T) {
	for _, v := range vectors {
		k, err := Call(v.fn, v.args)
		if err != nil {
			t.Fatal(err)
		}
		if k.String() != v.want {
			t.Errorf("Call(%q, %v) = %s, want %s", v.fn, v.args, k, v.want)
		}
		if _, err := Parse(k.String()); err != nil {
			t.Errorf("call key does not parse: %v", err)
		}
	}
}

// TestCallMatchesPython runs the documented Python one-liner, when python3 is
// installed, on the same inputs.
func TestCallMatchesPython(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed; the vectors above still hold")
	}
	args, err := ParseArgs([]string{`{"b":[1,"\u00e9"],"a":null}`, `-7`, `"tab\there"`}, true)
	if err != nil {
		t.Fatal(err)
	}
	k, err := Call("fn", args)
	if err != nil {
		t.Fatal(err)
	}
	script := `import hashlib,json,sys
args=[json.loads(a) for a in sys.argv[1:]]
print(hashlib.sha256(json.dumps({"fn":"fn","args":args},sort_keys=True,separators=(",",":"),ensure_ascii=False).encode()).hexdigest())`
	out, err := exec.Command(py, "-c", script, `{"b":[1,"\u00e9"],"a":null}`, `-7`, `"tab\there"`).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != k.String() {
		t.Fatalf("python %s, go %s", got, k)
	}
}

func TestCallRefusesFloats(t *testing.T) {
	if _, err := Call("f", []any{1.5}); err == nil {
		t.Fatal("float accepted")
	}
	args, err := ParseArgs([]string{"1.0"}, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Call("f", args); err == nil {
		t.Fatal("JSON float accepted")
	}
	if _, err := ParseArgs([]string{"{"}, true); err == nil {
		t.Fatal("bad JSON accepted")
	}
	if _, err := Call("f", []any{"\xff"}); err == nil {
		t.Fatal("invalid UTF-8 accepted")
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{h64, h64 + ".lock", "", "..", "/", "0123456789ABCDEF", "\x00", h64 + ".a.b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		k, err := Parse(name)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		if k.String() != name || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." || strings.ToLower(k.Hex()) != k.Hex() {
			t.Fatalf("accepted bad name %q", name)
		}
	})
}

func FuzzCall(f *testing.F) {
	f.Add("fn", `[1,"a",{"k":null}]`)
	f.Add("", `[]`)
	f.Add("x", `[1.5]`)
	f.Fuzz(func(t *testing.T, fn, argsJSON string) {
		args, err := ParseArgs([]string{argsJSON}, true)
		if err != nil {
			return
		}
		k, err := Call(fn, args)
		if err != nil {
			return
		}
		if _, err := Parse(k.String()); err != nil {
			t.Fatalf("call key %q does not parse: %v", k, err)
		}
	})
}
