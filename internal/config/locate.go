package config

import (
	"sort"
	"strconv"
	"strings"
)

// The TOML decoder reports the position of syntax errors, but not where a
// key of the second [[tier]] is (its MetaData keeps one position per key
// name, the last one written). locate scans the source once more, knowing
// only enough TOML to find keys, to say where every key and value starts.
// It runs on documents the decoder accepted; on anything else it returns
// what it found so far and never fails.

// path names a key: table and key names, with "[i]" for the i-th element
// of an array of tables ("tier", "[1]", "size").
type path []string

func (p path) String() string { return strings.Join(p, "\x00") }

func (p path) with(s ...string) path {
	q := make(path, 0, len(p)+len(s))
	return append(append(q, p...), s...)
}

func index(i int) string { return "[" + strconv.Itoa(i) + "]" }

// pos is a place in the source: 1-based line and byte column; 0 if unknown.
type pos struct{ Line, Col int }

type locations struct {
	key map[string]int // byte offset of where a key (or a table header) is written
	val map[string]int // byte offset of where its value starts
	nl  []int          // byte offsets of the newlines
}

// keyPos returns where p is written, falling back to its value, then to
// its closest located parent.
func (l *locations) keyPos(p path) pos { return l.find(p, l.key, l.val) }

// valPos returns where p's value starts, falling back to the key.
func (l *locations) valPos(p path) pos { return l.find(p, l.val, l.key) }

func (l *locations) find(p path, first, second map[string]int) pos {
	if l == nil {
		return pos{}
	}
	for n := len(p); n > 0; n-- {
		s := p[:n].String()
		if off, ok := first[s]; ok {
			return l.at(off)
		}
		if off, ok := second[s]; ok {
			return l.at(off)
		}
	}
	return pos{}
}

func (l *locations) at(off int) pos {
	line := sort.SearchInts(l.nl, off) // newlines before off
	start := 0
	if line > 0 {
		start = l.nl[line-1] + 1
	}
	return pos{Line: line + 1, Col: off - start + 1}
}

type scanner struct {
	src    string
	i      int
	l      *locations
	counts map[string]int // elements of each array of tables so far
	table  path
}

func locate(src string) *locations {
	l := &locations{key: map[string]int{}, val: map[string]int{}}
	for i := 0; i < len(src); i++ {
		if src[i] == '\n' {
			l.nl = append(l.nl, i)
		}
	}
	s := &scanner{src: src, l: l, counts: map[string]int{}}
	// A byte order mark is skipped by the decoder too.
	s.i = len(src) - len(strings.TrimPrefix(src, "\xef\xbb\xbf"))
	for {
		s.skipBlank(true)
		if s.i >= len(s.src) {
			return l
		}
		start := s.i
		if s.peek() == '[' {
			s.header()
		} else {
			s.keyValue(s.table)
		}
		s.skipLine()
		if s.i == start {
			s.i++
		}
	}
}

func (s *scanner) peek() byte {
	if s.i < len(s.src) {
		return s.src[s.i]
	}
	return 0
}

func (s *scanner) has(prefix string) bool {
	return s.i <= len(s.src) && strings.HasPrefix(s.src[s.i:], prefix)
}

// skipBlank skips spaces, tabs and comments, and newlines if nl.
func (s *scanner) skipBlank(nl bool) {
	for s.i < len(s.src) {
		switch c := s.src[s.i]; {
		case c == ' ' || c == '\t':
			s.i++
		case c == '#':
			for s.i < len(s.src) && s.src[s.i] != '\n' {
				s.i++
			}
		case nl && (c == '\n' || c == '\r'):
			s.i++
		default:
			return
		}
	}
}

// skipLine skips to the start of the next line.
func (s *scanner) skipLine() {
	for s.i < len(s.src) && s.src[s.i] != '\n' {
		s.i++
	}
}

// resolve turns dotted names under base into a path, stepping into the
// last element of every array of tables on the way, as TOML does.
func (s *scanner) resolve(base path, names []string) path {
	p := base.with()
	for _, n := range names {
		p = append(p, n)
		if c, ok := s.counts[p.String()]; ok && c > 0 {
			p = append(p, index(c-1))
		}
	}
	return p
}

// header reads [table] or [[array.of.tables]].
func (s *scanner) header() {
	start := s.i
	array := s.has("[[")
	if array {
		s.i += 2
	} else {
		s.i++
	}
	names := s.key()
	if len(names) == 0 {
		return
	}
	if !array {
		s.table = s.resolve(nil, names)
		s.l.key[s.table.String()] = start
		return
	}
	p := s.resolve(nil, names[:len(names)-1]).with(names[len(names)-1])
	n := s.counts[p.String()]
	s.counts[p.String()] = n + 1
	s.table = p.with(index(n))
	s.l.key[s.table.String()] = start
}

// keyValue reads key = value under table.
func (s *scanner) keyValue(table path) {
	start := s.i
	names := s.key()
	if len(names) == 0 {
		return
	}
	s.skipBlank(false)
	if s.peek() != '=' {
		return
	}
	s.i++
	s.skipBlank(false)
	// Every prefix of a dotted key is a table defined here, unless it was
	// defined before.
	for n := 1; n < len(names); n++ {
		if q := s.resolve(table, names[:n]).String(); !hasKey(s.l.key, q) {
			s.l.key[q] = start
		}
	}
	p := s.resolve(table, names)
	s.l.key[p.String()] = start
	s.value(p)
}

// key reads a dotted key: bare, "basic" or 'literal' names.
func (s *scanner) key() []string {
	var names []string
	for {
		s.skipBlank(false)
		switch c := s.peek(); {
		case c == '"':
			names = append(names, s.basicString())
		case c == '\'':
			s.i++
			end := strings.IndexAny(s.src[s.i:], "'\n")
			if end < 0 {
				end = len(s.src) - s.i
			}
			names = append(names, s.src[s.i:s.i+end])
			s.i += end
			if s.peek() == '\'' {
				s.i++
			}
		default:
			n := s.i
			for n < len(s.src) && isBareKeyChar(s.src[n]) {
				n++
			}
			if n == s.i {
				return names
			}
			names = append(names, s.src[s.i:n])
			s.i = n
		}
		s.skipBlank(false)
		if s.peek() != '.' {
			return names
		}
		s.i++
	}
}

func isBareKeyChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c >= 0x80
}

// basicString reads a one-line "string" and returns its value.
func (s *scanner) basicString() string {
	s.i++
	start := s.i
	for s.i < len(s.src) && s.src[s.i] != '"' && s.src[s.i] != '\n' {
		if s.src[s.i] == '\\' {
			s.i++
		}
		s.i++
	}
	if s.i > len(s.src) {
		s.i = len(s.src)
	}
	raw := s.src[start:s.i]
	if s.peek() == '"' {
		s.i++
	}
	if v, err := strconv.Unquote(`"` + raw + `"`); err == nil {
		return v
	}
	return raw
}

// value skips one value, recording where the elements of arrays and the
// keys of inline tables are.
func (s *scanner) value(p path) {
	s.l.val[p.String()] = s.i
	switch {
	case s.has(`"""`), s.has(`'''`):
		q := s.src[s.i : s.i+3]
		s.i += 3
		for s.i < len(s.src) && !s.has(q) {
			if q[0] == '"' && s.src[s.i] == '\\' {
				s.i++
			}
			s.i++
		}
		s.i = min(s.i+3, len(s.src))
		for n := 0; n < 2 && s.peek() == q[0]; n++ { // """a"""" ends in a quote
			s.i++
		}
	case s.peek() == '"':
		s.basicString()
	case s.peek() == '\'':
		s.i++
		for s.i < len(s.src) && s.src[s.i] != '\'' && s.src[s.i] != '\n' {
			s.i++
		}
		if s.peek() == '\'' {
			s.i++
		}
	case s.peek() == '[':
		s.i++
		for n := 0; s.i < len(s.src); {
			s.skipBlank(true)
			switch s.peek() {
			case ']':
				s.i++
				return
			case ',':
				s.i++
			default:
				start := s.i
				s.value(p.with(index(n)))
				n++
				if s.i == start {
					s.i++
				}
			}
		}
	case s.peek() == '{':
		s.i++
		for s.i < len(s.src) {
			s.skipBlank(false)
			switch s.peek() {
			case '}':
				s.i++
				return
			case ',':
				s.i++
			case '\n', 0:
				return
			default:
				start := s.i
				s.keyValue(p)
				if s.i == start {
					s.i++
				}
			}
		}
	default:
		for s.i < len(s.src) && !strings.ContainsRune(" \t\r\n,]}#", rune(s.src[s.i])) {
			s.i++
		}
	}
}

func hasKey(m map[string]int, k string) bool { _, ok := m[k]; return ok }
