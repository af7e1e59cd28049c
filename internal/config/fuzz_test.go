package config

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParse: Parse never panics; every error names the file and a line
// inside it; what parses prints (TOML) to a file that parses to the same
// configuration. The seed corpus is in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add([]byte(DefaultTOML))
	f.Fuzz(func(t *testing.T, data []byte) {
		lines := strings.Count(string(data), "\n") + 1
		locate(string(data)) // also on what the decoder refuses
		c, err := Parse("config.toml", data, testEnv())
		if err != nil {
			var list Errors
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("%T %v is not an Errors list", err, err)
			}
			for _, e := range list {
				if e.File != "config.toml" || e.Msg == "" || e.Line < 0 || e.Line > lines || e.Col < 0 {
					t.Fatalf("bad error %#v (%d lines)", e, lines)
				}
				if !strings.HasPrefix(e.Error(), "config.toml") {
					t.Fatalf("error %q does not name the file", e)
				}
			}
			return
		}
		if len(c.Tiers) == 0 {
			t.Fatal("a configuration without tiers")
		}
		names := map[string]bool{}
		for _, tr := range c.Tiers {
			if names[tr.Name] || checkName(tr.Name) != nil {
				t.Fatalf("tier name %q duplicate or invalid", tr.Name)
			}
			names[tr.Name] = true
		}
		out := c.TOML()
		again, err := Parse("again.toml", []byte(out), testEnv())
		if err != nil {
			t.Fatalf("TOML of a valid config does not parse: %v\n%s", err, out)
		}
		if diff := compare(again, c); diff != "" {
			t.Fatalf("round trip: %s", diff)
		}
	})
}
