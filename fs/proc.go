package fs

import (
	"bytes"
	"context"
	"os"
	"strconv"

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

// killedBySignal reports whether task pid is exiting because a signal killed
// it. The kernel sets PF_EXITING and the exit code before it closes a dying
// task's files, so a FLUSH sent by that close can tell: the low 7 bits of
// the exit code are the killing signal (0 for exit(2)). Best effort: any
// trouble reading /proc says "not killed".
func killedBySignal(pid uint32) bool {
	b, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/stat")
	if err != nil {
		return false
	}
	// Fields after the command name, which may contain spaces and ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return false
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state); flags is field 9, exit_code field 52.
	const flagsIdx, exitIdx = 9 - 3, 52 - 3
	if len(f) <= exitIdx {
		return false
	}
	flags, err1 := strconv.ParseUint(string(f[flagsIdx]), 10, 64)
	code, err2 := strconv.ParseInt(string(f[exitIdx]), 10, 64)
	if err1 != nil || err2 != nil {
		return false
	}
	return flags&pfExiting != 0 && code&0x7f != 0
}
