//go:build !amd64

package fs

// Architectures without open(2) and creat(2): only openat and openat2.
const (
	sysOpen  = -1
	sysCreat = -2
)
