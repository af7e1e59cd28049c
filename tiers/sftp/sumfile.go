package sftp

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/flechefs/flechefs/digest"
)

// sumFile is the content of .flechefs/sums/<key>:
//
//	sha256 <64 hex>
//	size <bytes>
//	created <RFC 3339 with nanoseconds>
//
// Unknown lines are ignored, so that later versions can add fields.
type sumFile struct {
	sum     digest.Sum
	size    int64
	created time.Time
}

// maxSumFile bounds what is read of a sum file.
const maxSumFile = 4096

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
