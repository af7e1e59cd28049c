package config

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strings"
)

// Env is what path expansion reads from the environment. OSEnv returns the
// process's; tests and fuzzing pass a fixed one.
type Env struct {
	// Getenv returns a variable's value, "" if unset.
	Getenv func(string) string
	// Home is the user's home directory, for "~" and the XDG defaults.
	Home string
	// LookupHome returns the home directory of a named user, for "~name";
	// nil refuses "~name".
	LookupHome func(name string) (string, error)
	// Dir is the directory relative paths are resolved against: the
	// config file's directory when reading a file, the working directory
	// for command-line flags. "" refuses relative paths.
	Dir string
}

// OSEnv returns the environment of the process, with Dir set to the
// working directory.
func OSEnv() Env {
	home, _ := os.UserHomeDir()
	wd, _ := os.Getwd()
	return Env{
		Getenv: os.Getenv,
		Home:   home,
		LookupHome: func(name string) (string, error) {
			u, err := user.Lookup(name)
			if err != nil {
				return "", err
			}
			return u.HomeDir, nil
		},
		Dir: wd,
	}
}

func (e Env) getenv(name string) string {
	if e.Getenv == nil {
		return ""
	}
	return e.Getenv(name)
}

// xdgDefaults are the XDG base directories' defaults under $HOME, used when
// the variable is unset, empty or relative (the specification says to ignore
// a relative value).
var xdgDefaults = map[string]string{
	"XDG_CACHE_HOME":  ".cache",
	"XDG_CONFIG_HOME": ".config",
	"XDG_DATA_HOME":   ".local/share",
	"XDG_STATE_HOME":  ".local/state",
}

// XDG returns the XDG base directory named by variable (e.g.
// "XDG_CACHE_HOME"), falling back to its default under Home.
func (e Env) XDG(variable string) (string, error) {
	if v := e.getenv(variable); v != "" && filepath.IsAbs(v) {
		return filepath.Clean(v), nil
	}
	def, ok := xdgDefaults[variable]
	if !ok {
		return "", fmt.Errorf("$%s is not set", variable)
	}
	if e.Home == "" {
		return "", fmt.Errorf("$%s is not set, and neither is $HOME for its default ~/%s", variable, def)
	}
	return filepath.Join(e.Home, def), nil
}

// ExpandPath expands a leading "~" or "~user", then $VAR and ${VAR}, and
// makes the result absolute against e.Dir. An unset variable is an error,
// except the XDG base directories, which take their defaults.
func (e Env) ExpandPath(p string) (string, error) {
	if strings.TrimSpace(p) == "" {
		return "", errors.New("empty path")
	}
	if strings.IndexByte(p, 0) >= 0 {
		return "", errors.New("path contains a NUL byte")
	}
	prefix, rest := "", p
	if strings.HasPrefix(p, "~") {
		name, tail, _ := strings.Cut(p[1:], "/")
		rest = tail
		switch {
		case name == "" && e.Home == "":
			return "", errors.New("cannot expand ~: $HOME is not set")
		case name == "":
			prefix = e.Home
		case e.LookupHome == nil:
			return "", fmt.Errorf("cannot expand ~%s: no user lookup", name)
		default:
			h, err := e.LookupHome(name)
			if err != nil || h == "" {
				return "", fmt.Errorf("cannot expand ~%s: no such user", name)
			}
			prefix = h
		}
	}
	rest, err := expandVars(rest, func(name string) (string, error) {
		if _, isXDG := xdgDefaults[name]; isXDG {
			return e.XDG(name)
		}
		if v := e.getenv(name); v != "" {
			return v, nil
		}
		return "", fmt.Errorf("$%s is not set", name)
	})
	if err != nil {
		return "", err
	}
	if prefix != "" {
		rest = filepath.Join(prefix, rest)
	}
	if rest == "" {
		return "", errors.New("path is empty after expansion")
	}
	if !filepath.IsAbs(rest) {
		if e.Dir == "" {
			return "", fmt.Errorf("relative path %q: write an absolute path", rest)
		}
		rest = filepath.Join(e.Dir, rest)
	}
	return filepath.Clean(rest), nil
}

// expandVars replaces $NAME and ${NAME} with lookup(NAME), and "$$" with "$".
// Any other "$" is an error: a path with a stray "$" is more likely a typo
// than a name.
func expandVars(s string, lookup func(string) (string, error)) (string, error) {
	var b strings.Builder
	for {
		i := strings.IndexByte(s, '$')
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		b.WriteString(s[:i])
		s = s[i+1:]
		var name string
		switch {
		case strings.HasPrefix(s, "$"):
			b.WriteByte('$')
			s = s[1:]
			continue
		case strings.HasPrefix(s, "{"):
			end := strings.IndexByte(s, '}')
			if end < 0 {
				return "", errors.New(`"${" without its closing "}"`)
			}
			name, s = s[1:end], s[end+1:]
			if !isVarName(name) {
				return "", fmt.Errorf("${%s}: not a variable name", clipString(name, 40))
			}
		default:
			n := 0
			for n < len(s) && isVarChar(s[n], n == 0) {
				n++
			}
			if n == 0 {
				return "", errors.New(`"$" not followed by a variable name (write "$$" for a "$")`)
			}
			name, s = s[:n], s[n:]
		}
		v, err := lookup(name)
		if err != nil {
			return "", err
		}
		b.WriteString(v)
	}
}

func isVarName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isVarChar(s[i], i == 0) {
			return false
		}
	}
	return true
}

func isVarChar(c byte, first bool) bool {
	return c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || !first && c >= '0' && c <= '9'
}

func clipString(s string, n int) string {
	if len(s) > n {
		return s[:n-3] + "..."
	}
	return s
}
