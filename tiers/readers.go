package tiers

import (
	"io"
)

// SectionReader returns an io.Reader over the whole of r, from offset 0.
func SectionReader(r Reader) io.Reader { return io.NewSectionReader(r, 0, r.Info().Size) }

// copyReader reads r from offset 0 to size, for copies between tiers.
// Tiers read and check whole pieces (bbolt a CRC per 256 KiB chunk, whatever
// part of it is asked for): the 32 KiB reads of io.Copy made a copy out of
// bbolt check every chunk eight times. So reads smaller than copyDirect go
// through a 1 MiB buffer; larger ones (the bolt tier's 256 KiB chunks, the
// SFTP tier's 255 KiB packets) go straight into the caller's buffer, which
// saves copying every byte once more (0.1 s of CPU per 512 MiB here).
func copyReader(r io.ReaderAt, size int64) io.Reader {
	if size <= 64<<10 {
		// Read whole by the receiving tier: one ReadAt, no buffer.
		return io.NewSectionReader(r, 0, size)
	}
	return &chunkReader{r: r, size: size}
}

// copyDirect is the smallest read a chunkReader passes straight to ReadAt.
const copyDirect = 128 << 10

// chunkReader is copyReader's reader of values over 64 KiB.
type chunkReader struct {
	r    io.ReaderAt
	size int64
	off  int64  // next offset to return
	buf  []byte // buffered bytes at off, for small reads
	mem  []byte // buf's storage, allocated at the first small read
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		c.off += int64(n)
		return n, nil
	}
	left := c.size - c.off
	if left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > left {
		p = p[:left]
	}
	if len(p) >= copyDirect {
		n, err := c.r.ReadAt(p, c.off)
		c.off += int64(n)
		if err == io.EOF && n == len(p) {
			err = nil
		}
		return n, err
	}
	if c.mem == nil {
		c.mem = make([]byte, min(c.size, 1<<20))
	}
	b := c.mem[:min(left, int64(len(c.mem)))]
	n, err := c.r.ReadAt(b, c.off)
	if err == io.EOF && n == len(b) {
		err = nil
	}
	c.buf = b[:n]
	if n == 0 {
		if err == nil {
			err = io.ErrNoProgress
		}
		return 0, err
	}
	m := copy(p, c.buf)
	c.buf = c.buf[m:]
	c.off += int64(m)
	return m, nil
}

// ReadAll reads a whole entry. For tests and small values only.
func ReadAll(r Reader) ([]byte, error) {
	b := make([]byte, r.Info().Size)
	n, err := r.ReadAt(b, 0)
	if err == io.EOF && int64(n) == r.Info().Size {
		err = nil
	}
	return b[:n], err
}
