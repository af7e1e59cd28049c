package digest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strings"
)

// Limits of a key's parts, in characters.
const (
	MinHexLen = 16
	MaxHexLen = 128
	MaxExtLen = 32
	// MaxNameLen is the longest valid name: 128 hex, a dot, 32 suffix characters.
	MaxNameLen = MaxHexLen + 1 + MaxExtLen
)

// ErrInvalid is returned (wrapped) for every name that is not a key.
var ErrInvalid = errors.New("invalid key")

// Key is the name of one cache entry: lowercase hex, optionally with one
// suffix. It is a comparable value type usable as a map key; the zero Key is
// not valid. Parse a name once at the edge and pass the Key everywhere after.
type Key struct{ name string }

// Parse checks a file name and returns it as a Key. The error wraps
// ErrInvalid and says what is wrong.
func Parse(name string) (Key, error) {
	if err := check(name); err != nil {
		return Key{}, fmt.Errorf("%w %q: %s", ErrInvalid, clip(name), err.Error())
	}
	return Key{name: name}, nil
}

// MustParse is Parse for constants in tests and examples; it panics on a bad name.
func MustParse(name string) Key {
	k, err := Parse(name)
	if err != nil {
		panic(err)
	}
	return k
}

type reason string

func (r reason) Error() string { return string(r) }

func check(name string) error {
	if name == "" {
		return reason("empty name")
	}
	if len(name) > MaxNameLen {
		return reason(fmt.Sprintf("%d bytes long, the longest key is %d", len(name), MaxNameLen))
	}
	hexPart, ext, hasExt := strings.Cut(name, ".")
	n := 0
	for n < len(hexPart) && isLowerHex(hexPart[n]) {
		n++
	}
	if n < len(hexPart) {
		c := hexPart[n]
		switch {
		case c >= 'A' && c <= 'F':
			return reason("uppercase hex; keys are lowercase")
		case c == '/':
			return reason("contains '/'")
		case c == 0:
			return reason("contains NUL")
		default:
			return reason(fmt.Sprintf("character %q at %d is not lowercase hex", c, n))
		}
	}
	if n < MinHexLen || n > MaxHexLen {
		return reason(fmt.Sprintf("%d hex digits, want %d to %d", n, MinHexLen, MaxHexLen))
	}
	if !hasExt {
		return nil
	}
	if ext == "" || len(ext) > MaxExtLen {
		return reason(fmt.Sprintf("suffix of %d characters, want 1 to %d", len(ext), MaxExtLen))
	}
	for i := 0; i < len(ext); i++ {
		if c := ext[i]; !isExtChar(c) {
			return reason(fmt.Sprintf("suffix character %q is not one of [A-Za-z0-9_-]", c))
		}
	}
	return nil
}

func isLowerHex(c byte) bool { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') }

func isExtChar(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == '-'
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}

// String returns the file name of the key.
func (k Key) String() string { return k.name }

// MarshalText writes the key's name, so that keys read as names in JSON.
func (k Key) MarshalText() ([]byte, error) { return []byte(k.name), nil }

// UnmarshalText parses a key's name (Parse).
func (k *Key) UnmarshalText(b []byte) error {
	parsed, err := Parse(string(b))
	if err != nil {
		return err
	}
	*k = parsed
	return nil
}

// IsZero reports whether k is the zero Key (not a valid key).
func (k Key) IsZero() bool { return k.name == "" }

// Hex returns the hex part of the key, without suffix.
func (k Key) Hex() string { h, _, _ := strings.Cut(k.name, "."); return h }

// Ext returns the suffix without its dot, or "".
func (k Key) Ext() string { _, e, _ := strings.Cut(k.name, "."); return e }

// Sum is a SHA-256 content hash. The zero Sum means "not known".
type Sum [sha256.Size]byte

// IsZero reports whether the sum is unknown.
func (s Sum) IsZero() bool { return s == Sum{} }

// String returns the lowercase hex of the sum.
func (s Sum) String() string { return hex.EncodeToString(s[:]) }

// ParseSum parses 64 lowercase or uppercase hex characters.
func ParseSum(h string) (Sum, error) {
	var s Sum
	if len(h) != 2*sha256.Size {
		return s, fmt.Errorf("%w: sha256 %q: want 64 hex digits", ErrInvalid, clip(h))
	}
	if _, err := hex.Decode(s[:], []byte(h)); err != nil {
		return s, fmt.Errorf("%w: sha256 %q: %v", ErrInvalid, clip(h), err)
	}
	return s, nil
}

// Hasher is a streaming SHA-256 that also counts bytes. Use it as an
// io.Writer (for example with io.TeeReader) while a value is copied.
type Hasher struct {
	h hash.Hash
	n int64
}

// NewHasher returns an empty Hasher.
func NewHasher() *Hasher { return &Hasher{h: sha256.New()} }

// Write adds p to the hash. It never fails.
func (h *Hasher) Write(p []byte) (int, error) {
	h.n += int64(len(p))
	return h.h.Write(p)
}

// Size is the number of bytes written so far.
func (h *Hasher) Size() int64 { return h.n }

// Sum returns the hash of what was written so far.
func (h *Hasher) Sum() Sum {
	var s Sum
	h.h.Sum(s[:0])
	return s
}

// Of returns the sum of b.
func Of(b []byte) Sum { return sha256.Sum256(b) }
