package fs

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"syscall"
	"testing"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
)

func TestToErrno(t *testing.T) {
	k := digest.MustParse("0123456789abcdef")
	_, invalid := digest.Parse("NOPE")
	tierErr := func(err error) error { return tiers.Wrap("ram", "open", k, err) }
	for _, c := range []struct {
		name string
		err  error
		want syscall.Errno
	}{
		{"nil", nil, 0},
		{"not found", tierErr(tiers.ErrNotFound), syscall.ENOENT},
		{"exist", tierErr(tiers.ErrExist), syscall.EEXIST},
		{"invalid key", invalid, syscall.EINVAL},
		{"read-only", tierErr(tiers.ErrReadOnly), syscall.EROFS},
		{"no space", tierErr(tiers.ErrNoSpace), syscall.ENOSPC},
		{"corrupt", tierErr(tiers.ErrCorrupt), syscall.EIO},
		{"unavailable", tierErr(tiers.ErrUnavailable), syscall.EIO},
		{"closed", tierErr(tiers.ErrClosed), syscall.EIO},
		{"canceled", context.Canceled, syscall.EINTR},
		{"canceled wrapped", fmt.Errorf("fetch: %w", context.Canceled), syscall.EINTR},
		{"deadline", context.DeadlineExceeded, syscall.EIO},
		{"errno", syscall.EXDEV, syscall.EXDEV},
		{"errno wrapped", fmt.Errorf("x: %w", syscall.EMFILE), syscall.EMFILE},
		{"disk full", &os.PathError{Op: "write", Path: "/spool/x", Err: syscall.ENOSPC}, syscall.ENOSPC},
		{"fs.PathError", &iofs.PathError{Op: "open", Path: "x", Err: syscall.ENOENT}, syscall.ENOENT},
		{"EPERM stays EPERM", &os.PathError{Op: "chmod", Path: "x", Err: syscall.EPERM}, syscall.EPERM},
		{"permission", os.ErrPermission, syscall.EACCES},
		{"not exist", os.ErrNotExist, syscall.ENOENT},
		{"fs exist", iofs.ErrExist, syscall.EEXIST},
		{"sentinel before errno", tierErr(fmt.Errorf("%w: %w", tiers.ErrNoSpace, syscall.EIO)), syscall.ENOSPC},
		{"zero errno", syscall.Errno(0), syscall.EIO},
		{"unknown", errors.New("something odd"), syscall.EIO},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := ToErrno(c.err); got != c.want {
				t.Errorf("ToErrno(%v) = %v (%d), want %v (%d)", c.err, got, got, c.want, c.want)
			}
		})
	}
}
