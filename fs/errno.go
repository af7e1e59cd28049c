package fs

import (
	"context"
	"errors"
	iofs "io/fs"
	"log/slog"
	"strings"
	"syscall"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
)

// ToErrno is the one place where an error becomes the errno a FUSE reply
// carries. The table (also in doc.go):
//
//	nil                         0
//	tiers.ErrNotFound           ENOENT
//	tiers.ErrExist              EEXIST
//	digest.ErrInvalid           EINVAL
//	tiers.ErrReadOnly           EROFS
//	tiers.ErrNoSpace            ENOSPC
//	tiers.ErrCorrupt            EIO (logged)
//	tiers.ErrUnavailable        EIO (logged)
//	tiers.ErrClosed             EIO (logged)
//	context.Canceled            EINTR (the caller was interrupted)
//	context.DeadlineExceeded    EIO (logged)
//	a syscall.Errno             itself, also inside *os.PathError and other
//	                            wrappers (so a full spool disk is ENOSPC)
//	fs.ErrPermission            EACCES
//	fs.ErrNotExist              ENOENT
//	fs.ErrExist                 EEXIST
//	anything else               EIO (logged)
//
// The tiers sentinels are tested before a wrapped Errno, so a tier error
// that also wraps an Errno maps by its meaning. Unknown errors are never
// ENOTSUP: go-fuse's own fs.ToErrno does that, and a program that sees
// "operation not supported" on read(2) gives up for good; EIO says "this
// failed", which is what happened. ToErrno logs to slog.Default; the mount
// uses the same mapping with its own logger.
func ToErrno(err error) syscall.Errno { return toErrno(slog.Default(), err) }

func toErrno(log *slog.Logger, err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	switch {
	case errors.Is(err, tiers.ErrNotFound):
		return syscall.ENOENT
	case errors.Is(err, tiers.ErrExist):
		return syscall.EEXIST
	case errors.Is(err, digest.ErrInvalid):
		return syscall.EINVAL
	case errors.Is(err, tiers.ErrReadOnly):
		return syscall.EROFS
	case errors.Is(err, tiers.ErrNoSpace):
		return syscall.ENOSPC
	case errors.Is(err, tiers.ErrCorrupt),
		errors.Is(err, tiers.ErrUnavailable),
		errors.Is(err, tiers.ErrClosed),
		errors.Is(err, tiers.ErrFailed),
		errors.Is(err, context.DeadlineExceeded):
		log.Warn("flechefs: I/O error", "err", err)
		return syscall.EIO
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	case errors.As(err, &errno):
		if errno == 0 {
			break
		}
		return errno
	case errors.Is(err, iofs.ErrPermission):
		return syscall.EACCES
	case errors.Is(err, iofs.ErrNotExist):
		return syscall.ENOENT
	case errors.Is(err, iofs.ErrExist):
		return syscall.EEXIST
	}
	log.Error("flechefs: unexpected error, answering EIO", "err", err)
	return syscall.EIO
}

// xattrRefusal answers setxattr and removexattr, which no node of the mount
// allows: POSIX ACLs (system.posix_acl_*) are not supported (EOPNOTSUPP,
// which cp -p and other copiers take for "no ACLs here" and fall back to
// chmod, accepted by entries); any other attribute is EPERM.
func xattrRefusal(attr string) syscall.Errno {
	if strings.HasPrefix(attr, "system.posix_acl_") {
		return syscall.EOPNOTSUPP
	}
	return syscall.EPERM
}
