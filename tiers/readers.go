package tiers

import (
	"bufio"
	"io"
)

// SectionReader returns an io.Reader over the whole of r, from offset 0.
func SectionReader(r Reader) io.Reader { return io.NewSectionReader(r, 0, r.Info().Size) }

// copyReader reads r from offset 0 to size, for copies between tiers.
// Tiers read and check whole pieces (bbolt a CRC per 256 KiB chunk, whatever
// part of it is asked for): the 32 KiB reads of io.Copy made a copy out of
// bbolt check every chunk eight times, so small reads go through a buffer.
// The buffer is copyDirect bytes: bufio passes reads at least that large
// (the bolt tier's 256 KiB chunks, the SFTP tier's 255 KiB packets)
// straight to r, which saves copying every byte once more.
func copyReader(r io.ReaderAt, size int64) io.Reader {
	if size <= 64<<10 {
		// Read whole by the receiving tier: one ReadAt, no buffer.
		return io.NewSectionReader(r, 0, size)
	}
	return bufio.NewReaderSize(io.NewSectionReader(r, 0, size), copyDirect)
}

// copyDirect is copyReader's buffer size.
const copyDirect = 128 << 10

// ReadAll reads a whole entry. For tests and small values only.
func ReadAll(r Reader) ([]byte, error) {
	b := make([]byte, r.Info().Size)
	n, err := r.ReadAt(b, 0)
	if err == io.EOF && int64(n) == r.Info().Size {
		err = nil
	}
	return b[:n], err
}
