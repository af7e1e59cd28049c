package digest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"unicode/utf8"
)

// Call returns the key of a call: the SHA-256 of the canonical JSON of
// {"args": args, "fn": fn}. See CanonicalJSON for the encoding; the scheme
// and its test vectors are in the package documentation.
func Call(fn string, args []any) (Key, error) {
	if args == nil {
		args = []any{}
	}
	b, err := CanonicalJSON(map[string]any{"fn": fn, "args": args})
	if err != nil {
		return Key{}, err
	}
	sum := sha256.Sum256(b)
	return Key{name: hex.EncodeToString(sum[:])}, nil
}

// CanonicalJSON encodes v the way Python's
// json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
// does for the values both languages share: objects with sorted keys, no
// white space, strings as UTF-8 with only the escapes JSON requires, integers
// as digits. Accepted values: nil, bool, string, json.Number, the integer
// types, []any, []string and map[string]any. Floats are refused: Python
// prints 1.0 where Go and JavaScript print 1, so no float is language-neutral.
func CanonicalJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	if err := encode(&buf, v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func encode(b *bytes.Buffer, v any) error {
	switch x := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		b.WriteString(strconv.FormatBool(x))
	case string:
		return encodeString(b, x)
	case int:
		b.WriteString(strconv.FormatInt(int64(x), 10))
	case int64:
		b.WriteString(strconv.FormatInt(x, 10))
	case int32:
		b.WriteString(strconv.FormatInt(int64(x), 10))
	case uint64:
		b.WriteString(strconv.FormatUint(x, 10))
	case uint32:
		b.WriteString(strconv.FormatUint(uint64(x), 10))
	case float64, float32:
		return fmt.Errorf("digest: float %v has no language-neutral form (Python prints 1.0, JavaScript 1); pass an integer or a string", x)
	case json.Number:
		if i, err := x.Int64(); err == nil {
			b.WriteString(strconv.FormatInt(i, 10))
			return nil
		}
		return fmt.Errorf("digest: number %s is not an integer in the int64 range; floats have no language-neutral form, pass a string", x.String())
	case []any:
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := encode(b, e); err != nil {
				return err
			}
		}
		b.WriteByte(']')
	case []string:
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := encodeString(b, e); err != nil {
				return err
			}
		}
		b.WriteByte(']')
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys) // byte order of UTF-8 == code point order, as Python sorts
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := encodeString(b, k); err != nil {
				return err
			}
			b.WriteByte(':')
			if err := encode(b, x[k]); err != nil {
				return err
			}
		}
		b.WriteByte('}')
	default:
		return fmt.Errorf("digest: cannot encode %T in a call digest", v)
	}
	return nil
}

// encodeString writes s as Python's json.dumps(ensure_ascii=False) does:
// escapes for '"', '\\', \b \f \n \r \t, \u00XX for other control characters,
// everything else as UTF-8.
func encodeString(b *bytes.Buffer, s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("digest: string is not valid UTF-8")
	}
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		default:
			if r < 0x20 {
				fmt.Fprintf(b, `\u%04x`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
	return nil
}

// ParseArgs turns command-line arguments into call arguments: with asJSON
// each one is parsed as a JSON value (numbers kept exact), otherwise each is
// a string.
func ParseArgs(args []string, asJSON bool) ([]any, error) {
	out := make([]any, 0, len(args))
	for i, a := range args {
		if !asJSON {
			out = append(out, a)
			continue
		}
		d := json.NewDecoder(bytes.NewReader([]byte(a)))
		d.UseNumber()
		var v any
		if err := d.Decode(&v); err != nil {
			return nil, fmt.Errorf("argument %d: not JSON: %v", i+1, err)
		}
		if d.More() {
			return nil, fmt.Errorf("argument %d: more than one JSON value", i+1)
		}
		out = append(out, v)
	}
	return out, nil
}
