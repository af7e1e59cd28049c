package fs

import (
	"bytes"
	"context"
	"slices"
	"strconv"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// callerPid is the thread id of the process that made the request.
func callerPid(ctx context.Context) (uint32, bool) {
	c, ok := ctx.(*fuse.Context)
	if !ok || c.Caller.Pid == 0 {
		return 0, false
	}
	return c.Caller.Pid, true
}

// pfExiting is the kernel's PF_EXITING task flag.
const pfExiting = 0x4

// exit says how a task that sent a FLUSH is ending.
type exit int

const (
	notExiting exit = iota // alive (or unknown)
	exitedOK               // exit(0)
	exitFailed             // exit(n), n != 0
	exitKilled             // killed by a signal
)

// exitOf reports whether task pid is exiting, and how. The kernel sets
// PF_EXITING and the exit code before it closes a dying task's files, so a
// FLUSH sent by that close can tell: the exit code is in waitpid's form,
// its low 7 bits the killing signal, the next 8 the exit status. Best
// effort: any trouble reading /proc says "not exiting".
func exitOf(pid uint32) exit {
	var buf [1024]byte
	n, ok := procStat.read(pid, buf[:])
	if !ok {
		return notExiting
	}
	b := buf[:n]
	// Fields after the command name, which may contain spaces and ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return notExiting
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state); flags is field 9, exit_code field 52.
	const flagsIdx, exitIdx = 9 - 3, 52 - 3
	if len(f) <= exitIdx {
		return notExiting
	}
	flags, err1 := strconv.ParseUint(string(f[flagsIdx]), 10, 64)
	code, err2 := strconv.ParseInt(string(f[exitIdx]), 10, 64)
	if err1 != nil || err2 != nil || flags&pfExiting == 0 {
		return notExiting
	}
	switch {
	case code&0x7f != 0:
		return exitKilled
	case code != 0:
		return exitFailed
	}
	return exitedOK
}

// procStat keeps /proc/<pid>/stat open for the last few callers: a program
// writing many entries closes many files, and a pread of an open stat file
// costs a quarter of opening, reading and closing it (the check runs at
// every publishing close). A descriptor of a task that has gone fails to
// read (ESRCH), even when its pid has been reused, and is opened again.
var procStat = &statFiles{fds: map[uint32]int{}}

type statFiles struct {
	mu    sync.Mutex
	fds   map[uint32]int
	order []uint32 // oldest first
}

// maxStatFiles bounds the descriptors procStat keeps.
const maxStatFiles = 16

// read reads the stat file of pid into buf.
func (s *statFiles) read(pid uint32, buf []byte) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fd, ok := s.fds[pid]; ok {
		n, err := syscall.Pread(fd, buf, 0)
		if err == nil && n > 0 {
			return n, true
		}
		s.dropLocked(pid)
	}
	fd, err := syscall.Open("/proc/"+strconv.FormatUint(uint64(pid), 10)+"/stat", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return 0, false
	}
	n, err := syscall.Pread(fd, buf, 0)
	if err != nil || n <= 0 {
		syscall.Close(fd)
		return 0, false
	}
	if len(s.order) >= maxStatFiles {
		s.dropLocked(s.order[0])
	}
	s.fds[pid] = fd
	s.order = append(s.order, pid)
	return n, true
}

func (s *statFiles) dropLocked(pid uint32) {
	if fd, ok := s.fds[pid]; ok {
		syscall.Close(fd)
		delete(s.fds, pid)
	}
	if i := slices.Index(s.order, pid); i >= 0 {
		s.order = slices.Delete(s.order, i, i+1)
	}
}
