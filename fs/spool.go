package fs

import (
	"io"
	"os"
	"sync"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/pagemem"
	"github.com/flechefs/flechefs/tiers"
)

// spool holds the bytes of a value being written: in memory up to limit
// bytes, then in an unlinked temporary file in dir. It is not safe for
// concurrent use; the write handle's mutex guards it.
type spool struct {
	dir   string
	limit int

	mem  []byte   // the data while f == nil; len(mem) == size
	f    *os.File // the data once spilled; its length == size
	size int64
}

func newSpool(dir string, limit int) *spool { return &spool{dir: dir, limit: limit} }

// spill moves the data to an unlinked temporary file.
func (s *spool) spill() error {
	f, err := os.CreateTemp(s.dir, "flechefs-spool-*")
	if err != nil {
		return err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return err
	}
	if _, err := f.WriteAt(s.mem, 0); err != nil {
		f.Close()
		return err
	}
	s.f, s.mem = f, nil
	return nil
}

// grow makes mem n bytes long; new bytes are zero.
func (s *spool) grow(n int) {
	if n <= len(s.mem) {
		return
	}
	if n <= cap(s.mem) {
		old := len(s.mem)
		s.mem = s.mem[:n]
		clear(s.mem[old:])
		return
	}
	c := max(2*cap(s.mem), n, 4096)
	c = min(c, max(s.limit, n))
	m := pagemem.Make(n, c)
	copy(m, s.mem)
	s.mem = m
}

// writeAt writes p at off, spilling first when the end passes the limit.
func (s *spool) writeAt(p []byte, off int64) error {
	end := off + int64(len(p))
	if s.f == nil && end > int64(s.limit) {
		if err := s.spill(); err != nil {
			return err
		}
	}
	if s.f != nil {
		if _, err := s.f.WriteAt(p, off); err != nil {
			return err
		}
	} else {
		s.grow(int(end))
		copy(s.mem[off:], p)
	}
	s.size = max(s.size, end)
	return nil
}

// truncate sets the size to n, zero-filling when it grows.
func (s *spool) truncate(n int64) error {
	if s.f == nil && n > int64(s.limit) {
		if err := s.spill(); err != nil {
			return err
		}
	}
	if s.f != nil {
		if err := s.f.Truncate(n); err != nil {
			return err
		}
	} else if n < int64(len(s.mem)) {
		s.mem = s.mem[:n]
	} else {
		s.grow(int(n))
	}
	s.size = n
	return nil
}

// readAt reads like io.ReaderAt.
func (s *spool) readAt(p []byte, off int64) (int, error) {
	return readSpool(s.mem, s.f, s.size, p, off)
}

func readSpool(mem []byte, f *os.File, size int64, p []byte, off int64) (int, error) {
	if off >= size {
		return 0, io.EOF
	}
	short := false
	if rest := size - off; int64(len(p)) > rest {
		p, short = p[:rest], true
	}
	var n int
	var err error
	if f != nil {
		n, err = f.ReadAt(p, off)
	} else {
		n = copy(p, mem[off:])
	}
	if err == nil && short {
		err = io.EOF
	}
	return n, err
}

// readFrom appends everything src holds, from offset 0 to EOF.
func (s *spool) readFrom(src io.ReaderAt) error {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for off := int64(0); ; {
		n, err := src.ReadAt(buf, off)
		if n > 0 {
			if werr := s.writeAt(buf[:n], s.size); werr != nil {
				return werr
			}
			off += int64(n)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// sum hashes the whole content, for a value not written sequentially.
func (s *spool) sum() (digest.Sum, error) {
	h := digest.NewHasher()
	if s.f == nil {
		h.Write(s.mem)
		return h.Sum(), nil
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	if _, err := io.CopyBuffer(h, io.NewSectionReader(s.f, 0, s.size), *bp); err != nil {
		return digest.Sum{}, err
	}
	return h.Sum(), nil
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, maxIO); return &b }}

// blob hands the data over as a tiers.Blob, with the early upload of
// those bytes if there is one; the spool must not be used after.
func (s *spool) blob(early *tiers.EarlyUpload) *spoolBlob {
	b := &spoolBlob{mem: s.mem, f: s.f, size: s.size, early: early}
	s.mem, s.f = nil, nil
	return b
}

// close drops the data.
func (s *spool) close() {
	if s.f != nil {
		s.f.Close()
	}
	s.mem, s.f = nil, nil
}

// spoolBlob is a finished spool, owned by the stack once published.
type spoolBlob struct {
	mem   []byte
	f     *os.File
	size  int64
	early *tiers.EarlyUpload // nil: none
	once  sync.Once
}

var (
	_ tiers.UploadingBlob = (*spoolBlob)(nil)
	_ tiers.BytesBlob     = (*spoolBlob)(nil)
)

// Bytes implements tiers.BytesBlob: the value, when it is in memory in a
// buffer not much larger (the RAM tier keeps the buffer itself). The spool
// gave it up, so nobody changes it.
func (b *spoolBlob) Bytes() []byte {
	if b.f != nil || int64(len(b.mem)) != b.size || cap(b.mem)-len(b.mem) > len(b.mem)/8 {
		return nil
	}
	return b.mem
}

// EarlyUpload implements tiers.UploadingBlob.
func (b *spoolBlob) EarlyUpload() *tiers.EarlyUpload { return b.early }

func (b *spoolBlob) ReadAt(p []byte, off int64) (int, error) {
	return readSpool(b.mem, b.f, b.size, p, off)
}

func (b *spoolBlob) Size() int64 { return b.size }

func (b *spoolBlob) Release() {
	b.once.Do(func() {
		if b.f != nil {
			b.f.Close()
		}
	})
}
