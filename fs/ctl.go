package fs

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/debug"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// ctlDir is .flechefs: read-only, holding generated files.
type ctlDir struct {
	fusefs.Inode
	r *root
}

func (d *ctlDir) Getattr(ctx context.Context, f fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.r.dirAttr(&out.Attr, 0o555, 2)
	out.SetTimeout(d.r.opt.EntryTTL)
	return 0
}

func (d *ctlDir) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fusefs.Inode, fusefs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EACCES
}

func (d *ctlDir) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	return nil, syscall.EACCES
}

func (d *ctlDir) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	return nil, syscall.EACCES
}

func (d *ctlDir) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	return nil, syscall.EACCES
}

func (d *ctlDir) Link(ctx context.Context, target fusefs.InodeEmbedder, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	return nil, syscall.EACCES
}

// Unlink and Rmdir must be refused explicitly: go-fuse's default for a
// node without them is success (and removes the child from its tree).
func (d *ctlDir) Unlink(ctx context.Context, name string) syscall.Errno { return syscall.EPERM }

func (d *ctlDir) Rmdir(ctx context.Context, name string) syscall.Errno { return syscall.EPERM }

func (d *ctlDir) Rename(ctx context.Context, name string, newParent fusefs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return syscall.EPERM
}

func (d *ctlDir) Setattr(ctx context.Context, f fusefs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EPERM
}

func (d *ctlDir) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return xattrRefusal(attr)
}

func (d *ctlDir) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return xattrRefusal(attr)
}

// ctlFile is a read-only file whose content gen makes at every open. It is
// served with FOPEN_DIRECT_IO and reports size 0, as /proc files do: the
// kernel reads until EOF whatever the size.
type ctlFile struct {
	fusefs.Inode
	r   *root
	gen func() ([]byte, error)
}

func (c *ctlFile) Getattr(ctx context.Context, f fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o444
	out.Nlink = 1
	out.Owner = c.r.owner
	out.SetTimes(&c.r.started, &c.r.started, &c.r.started)
	out.SetTimeout(c.r.opt.EntryTTL)
	return 0
}

func (c *ctlFile) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&(syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EACCES
	}
	data, err := c.gen()
	if err != nil {
		return nil, 0, c.r.errno(err)
	}
	return bytesHandle(data), fuse.FOPEN_DIRECT_IO, 0
}

func (c *ctlFile) Setattr(ctx context.Context, f fusefs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EPERM
}

func (c *ctlFile) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return xattrRefusal(attr)
}

func (c *ctlFile) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return xattrRefusal(attr)
}

// bytesHandle serves a snapshot taken at open.
type bytesHandle []byte

func (b bytesHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= int64(len(b)) {
		return fuse.ReadResultData(nil), 0
	}
	end := min(off+int64(len(dest)), int64(len(b)))
	return fuse.ReadResultData(b[off:end]), 0
}

// mountStats is the stack's and the mount's counts, now.
func (r *root) mountStats() MountStats {
	return MountStats{Stats: r.st.Stats(), Writes: r.counts.snapshot(r.scratch.len())}
}

// statsJSON is the stats file. It waits for the RELEASEs of closed
// writers first, as a listing does: counts read after a close include it.
func (r *root) statsJSON() ([]byte, error) {
	r.writers.waitAll()
	b, err := json.MarshalIndent(r.mountStats(), "", "  ")
	return append(b, '\n'), err
}

func versionText() ([]byte, error) {
	v := "(unknown)"
	if bi, ok := debug.ReadBuildInfo(); ok {
		v = bi.Main.Version
		for _, d := range bi.Deps {
			if d.Path == "github.com/flechefs/flechefs" {
				v = d.Version
			}
		}
	}
	return fmt.Appendf(nil, "flechefs %s %s\n", v, runtime.Version()), nil
}
