package tiers

import (
	"io"
)

// SectionReader returns an io.Reader over the whole of r, from offset 0.
func SectionReader(r Reader) io.Reader { return io.NewSectionReader(r, 0, r.Info().Size) }

// ReadAll reads a whole entry. For tests and small values only.
func ReadAll(r Reader) ([]byte, error) {
	b := make([]byte, r.Info().Size)
	n, err := r.ReadAt(b, 0)
	if err == io.EOF && int64(n) == r.Info().Size {
		err = nil
	}
	return b[:n], err
}
