package sftp

import (
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/flechefs/flechefs/digest"
)

// sumFile is what the tier records of a value next to it, in
// .flechefs/sums/<key>: its SHA-256, size and creation time.
//
// It is written as the target of a symbolic link (link), one SFTP request
// to write (SYMLINK, which also never leaves a half-written record) and one
// to read (READLINK):
//
//	<sha256, base64url without padding: 43 characters>.<size, base 36>.<created, Unix milliseconds, base 36>
//
// for example "LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564.cnk.mi4n5zbc". For
// a value under 2 GiB that is at most 59 characters, which ext4 and XFS
// keep in the inode (a "fast" symlink: no data block to allocate). Fields
// after the third are ignored, so that later versions can add some.
//
// Earlier versions wrote a regular file instead, which is still read:
//
//	sha256 <64 hex>
//	size <bytes>
//	created <RFC 3339 with nanoseconds>
type sumFile struct {
	sum     digest.Sum
	size    int64
	created time.Time
}

// maxSumFile bounds what is read of a sum file.
const maxSumFile = 4096

// link is the record as a symlink target. created is kept to the
// millisecond (see recordedCreated).
func (s sumFile) link() string {
	return base64.RawURLEncoding.EncodeToString(s.sum[:]) + "." + strconv.FormatInt(s.size, 36) + "." +
		strconv.FormatInt(s.created.UnixMilli(), 36)
}

// recordedCreated is the creation time as a record keeps it: rounded up
// to the millisecond, so that it is never before the Put began.
func recordedCreated(t time.Time) time.Time {
	ms := time.UnixMilli(t.UnixMilli())
	if ms.Before(t) {
		ms = ms.Add(time.Millisecond)
	}
	return ms
}

func parseSumLink(target string) (sumFile, error) {
	var s sumFile
	fields := strings.Split(target, ".")
	if len(fields) < 3 {
		return s, fmt.Errorf("sum record %q: want <sha256>.<size>.<created>", clip(target))
	}
	b, err := base64.RawURLEncoding.DecodeString(fields[0])
	if err != nil || len(b) != len(s.sum) {
		return s, fmt.Errorf("sum record %q: sha256 is not 43 characters of base64url", clip(target))
	}
	copy(s.sum[:], b)
	if s.size, err = strconv.ParseInt(fields[1], 36, 64); err != nil || s.size < 0 {
		return s, fmt.Errorf("sum record %q: bad size", clip(target))
	}
	ms, err := strconv.ParseInt(fields[2], 36, 64)
	if err != nil || ms < 0 {
		return s, fmt.Errorf("sum record %q: bad creation time", clip(target))
	}
	s.created = time.UnixMilli(ms)
	return s, nil
}

// marshal is the record in the earlier format, a regular file.
func (s sumFile) marshal() []byte {
	return fmt.Appendf(nil, "sha256 %s\nsize %d\ncreated %s\n", s.sum, s.size, s.created.UTC().Format(time.RFC3339Nano))
}

func parseSumFile(b []byte) (sumFile, error) {
	var s sumFile
	var haveSum, haveSize bool
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), " ")
		v = strings.TrimSpace(v)
		var err error
		switch k {
		case "sha256":
			s.sum, err = digest.ParseSum(v)
			haveSum = err == nil
		case "size":
			s.size, err = strconv.ParseInt(v, 10, 64)
			if err == nil && s.size < 0 {
				err = fmt.Errorf("negative size %d", s.size)
			}
			haveSize = err == nil
		case "created":
			s.created, err = time.Parse(time.RFC3339Nano, v)
		}
		if err != nil {
			return s, fmt.Errorf("line %q: %v", clip(line), err)
		}
	}
	if !haveSum || !haveSize {
		return s, fmt.Errorf("want lines \"sha256 <hex>\" and \"size <n>\"")
	}
	return s, nil
}

func clip(s string) string {
	if len(s) > 60 {
		return s[:57] + "..."
	}
	return s
}

// SumRecord is what the tier records of a value: tests and tools that see
// a remote directory through the local filesystem (on the server) read
// and write it with LocalSum and WriteLocalSum.
type SumRecord struct {
	Sum     digest.Sum
	Size    int64
	Created time.Time
}

func localSumPath(root, key string) string { return filepath.Join(root, ".flechefs", "sums", key) }

// LocalSum reads the record of key in the remote directory root, in either
// format. A missing record is an error satisfying errors.Is(err,
// os.ErrNotExist).
func LocalSum(root, key string) (SumRecord, error) {
	p := localSumPath(root, key)
	var s sumFile
	target, err := os.Readlink(p)
	if err == nil {
		s, err = parseSumLink(target)
	} else if errors.Is(err, os.ErrNotExist) {
		return SumRecord{}, err
	} else {
		var b []byte
		if b, err = os.ReadFile(p); err == nil {
			s, err = parseSumFile(b)
		}
	}
	if err != nil {
		return SumRecord{}, fmt.Errorf("%s: %w", p, err)
	}
	return SumRecord{Sum: s.sum, Size: s.size, Created: s.created}, nil
}

// WriteLocalSum writes the record of key in the remote directory root, as
// the tier does (a symlink), replacing any record there.
func WriteLocalSum(root, key string, r SumRecord) error {
	p := localSumPath(root, key)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.Symlink(sumFile{sum: r.Sum, size: r.Size, created: r.Created}.link(), p)
}
