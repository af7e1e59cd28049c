package fs

import (
	"bytes"
	"encoding/binary"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// openCreates reports whether task pid is blocked in an open call that
// has O_CREAT (open, openat, openat2, creat). The kernel strips O_CREAT from
// the flags of a FUSE OPEN, so an open of an existing entry cannot tell
// "create it if absent" (a writer that lost a race, rsync --inplace) from
// "open it for writing"; the task waiting for the reply still shows the
// call it made in /proc/<pid>/syscall. Any trouble reading it (another pid
// namespace, no ptrace access) says false.
func openCreates(pid uint32) bool {
	p := "/proc/" + strconv.FormatUint(uint64(pid), 10)
	b, err := os.ReadFile(p + "/syscall")
	if err != nil {
		return false
	}
	f := bytes.Fields(b)
	if len(f) < 4 {
		return false
	}
	nr, err := strconv.ParseInt(string(f[0]), 10, 64)
	if err != nil {
		return false
	}
	arg := func(i int) (uint64, bool) {
		v, err := strconv.ParseUint(string(bytes.TrimPrefix(f[1+i], []byte("0x"))), 16, 64)
		return v, err == nil
	}
	var flags uint64
	var ok bool
	switch nr {
	case unix.SYS_OPENAT:
		flags, ok = arg(2)
	case unix.SYS_OPENAT2:
		// The flags are the first field of the struct open_how that
		// the third argument points to.
		addr, ok2 := arg(2)
		if !ok2 {
			return false
		}
		flags, ok = readU64(p+"/mem", addr)
	case sysOpen:
		flags, ok = arg(1)
	case sysCreat:
		return true
	}
	return ok && flags&syscall.O_CREAT != 0
}

func readU64(mem string, addr uint64) (uint64, bool) {
	f, err := os.Open(mem)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	var b [8]byte
	if _, err := f.ReadAt(b[:], int64(addr)); err != nil {
		return 0, false
	}
	return binary.NativeEndian.Uint64(b[:]), true
}
