// Package mountinfo reads /proc/self/mountinfo: which file system is
// mounted where. It serves the CLI (umount, refusing to mount twice), the
// test harnesses and the benchmark.
package mountinfo

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// Entry is one line of /proc/self/mountinfo.
type Entry struct {
	Point  string // mount point, unescaped
	FSType string // "fuse.flechefs"
	Source string
}

// Read reads /proc/self/mountinfo.
func Read() ([]Entry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Entry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if e, ok := Parse(sc.Text()); ok {
			out = append(out, e)
		}
	}
	return out, sc.Err()
}

// Parse parses one mountinfo line:
// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
func Parse(line string) (Entry, bool) {
	fields := strings.Fields(line)
	if len(fields) < 10 {
		return Entry{}, false
	}
	sep := -1
	for i := 6; i < len(fields); i++ {
		if fields[i] == "-" {
			sep = i
			break
		}
	}
	if sep < 0 || sep+2 >= len(fields) {
		return Entry{}, false
	}
	return Entry{Point: Unescape(fields[4]), FSType: fields[sep+1], Source: Unescape(fields[sep+2])}, true
}

// Unescape undoes the \040-style escapes of space, tab, newline and
// backslash in mountinfo.
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Find returns the entry of the mount at dir, the last one if several
// are stacked there.
func Find(dir string) (Entry, bool, error) {
	ms, err := Read()
	if err != nil {
		return Entry{}, false, err
	}
	var found Entry
	ok := false
	for _, m := range ms {
		if m.Point == dir {
			found, ok = m, true
		}
	}
	return found, ok, nil
}
