package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/flechefs/flechefs/internal/mountinfo"
)

var umountCommand = &command{
	name:    "umount",
	summary: "unmount a flechefs mount",
	usage: `
Usage: flechefs umount [--lazy] MOUNTPOINT

Unmounts a flechefs mount: with umount(2) as root, else with
fusermount3 -u. The flechefs mount process then finishes its in-flight
writes to the local tiers, closes the database and exits; entries waiting
for upload stay queued and are uploaded at the next mount (run flechefs
sync first to upload them now).

It fails while the mount is busy (a process has a file open or its working
directory inside); --lazy detaches it at once, and the mount process exits
when the last file is closed.

Examples:
  flechefs umount /mnt/cache
  flechefs sync /mnt/cache && flechefs umount /mnt/cache
`,
	interspersed: true,
	setup: func(fs *flagSet) func(c *cli, args []string) int {
		lazy := fs.boolFlag("lazy", "detach the mount even if busy; it goes away when the last file is closed")
		return func(c *cli, args []string) int {
			if len(args) != 1 {
				return c.usageError("want one MOUNTPOINT, got %d arguments", len(args))
			}
			if err := unmount(args[0], *lazy); err != nil {
				return c.fail("%v", err)
			}
			return exitOK
		}
	},
}

// flechefsFSType is the type of a flechefs mount in /proc/self/mountinfo
// (fs mounts with the name "flechefs").
const flechefsFSType = "fuse.flechefs"

// absMountpoint makes dir absolute without touching the file system: a
// stale FUSE mount point cannot be resolved (ENOTCONN).
func absMountpoint(dir string) (string, error) {
	return filepath.Abs(dir)
}

func unmount(dir string, lazy bool) error {
	abs, err := absMountpoint(dir)
	if err != nil {
		return err
	}
	m, ok, err := mountinfo.Find(abs)
	if err != nil {
		return err
	}
	if !ok {
		if _, err := os.Stat(abs); err != nil && !errors.Is(err, syscall.ENOTCONN) {
			return err
		}
		return fmt.Errorf("%s is not mounted", dir)
	}
	if m.FSType != flechefsFSType {
		return fmt.Errorf("%s is a %s mount, not flechefs", dir, m.FSType)
	}
	if os.Geteuid() == 0 {
		flags := 0
		if lazy {
			flags = syscall.MNT_DETACH
		}
		err := syscall.Unmount(abs, flags)
		if errors.Is(err, syscall.EBUSY) {
			return busyError(dir)
		}
		if err != nil {
			return fmt.Errorf("umount %s: %w", dir, err)
		}
		return nil
	}
	return fusermountUnmount(abs, dir, lazy)
}

func busyError(dir string) error {
	return fmt.Errorf("%s is busy: a process has a file open or its working directory in it (see fuser -vm %s); close it, or use --lazy", dir, dir)
}

// fusermountUnmount runs fusermount3 -u (or fusermount, the FUSE 2 name).
func fusermountUnmount(abs, dir string, lazy bool) error {
	bin, err := exec.LookPath("fusermount3")
	if err != nil {
		if bin, err = exec.LookPath("fusermount"); err != nil {
			return errors.New("cannot unmount: neither fusermount3 nor fusermount is installed (install fuse3), and not running as root")
		}
	}
	args := []string{"-u"}
	if lazy {
		args = append(args, "-z")
	}
	out, err := exec.Command(bin, append(args, abs)...).CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if strings.Contains(msg, "busy") {
			return busyError(dir)
		}
		if msg == "" {
			msg = err.Error()
		}
		return fmt.Errorf("%s -u %s: %s", filepath.Base(bin), dir, msg)
	}
	return nil
}
