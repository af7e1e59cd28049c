package fs

import "golang.org/x/sys/unix"

// The open calls that only amd64 has.
const (
	sysOpen  = unix.SYS_OPEN
	sysCreat = unix.SYS_CREAT
)
