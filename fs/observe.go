package fs

import (
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Observer is told of every FUSE request the mount answers that a user's
// program makes often: its name (lowercase, as in FUSE: "lookup", "read"),
// how long the daemon took to answer, and the errno it answered (0: ok).
// It runs on the request's goroutine, so it must be quick (a histogram's
// Observe is).
type Observer func(op string, took time.Duration, errno uintptr)

// observedFS times the requests of the file system it wraps for an
// Observer. The requests it does not list go through unobserved.
type observedFS struct {
	fuse.RawFileSystem
	obs Observer
}

func (o *observedFS) done(op string, start time.Time, st fuse.Status) {
	if st == fuse.ENOATTR {
		st = fuse.OK // an absent xattr is an answer, not a failure
	}
	o.obs(op, time.Since(start), uintptr(st))
}

// Lookup's ENOENT is a cache's miss, counted under its errno like any
// other answer.
func (o *observedFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) (st fuse.Status) {
	defer func(t time.Time) { o.done("lookup", t, st) }(time.Now())
	return o.RawFileSystem.Lookup(cancel, h, name, out)
}

func (o *observedFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) (st fuse.Status) {
	defer func(t time.Time) { o.done("getattr", t, st) }(time.Now())
	return o.RawFileSystem.GetAttr(cancel, in, out)
}

func (o *observedFS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) (st fuse.Status) {
	defer func(t time.Time) { o.done("setattr", t, st) }(time.Now())
	return o.RawFileSystem.SetAttr(cancel, in, out)
}

func (o *observedFS) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) (st fuse.Status) {
	defer func(t time.Time) { o.done("unlink", t, st) }(time.Now())
	return o.RawFileSystem.Unlink(cancel, h, name)
}

func (o *observedFS) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) (st fuse.Status) {
	defer func(t time.Time) { o.done("rename", t, st) }(time.Now())
	return o.RawFileSystem.Rename(cancel, in, oldName, newName)
}

func (o *observedFS) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (sz uint32, st fuse.Status) {
	defer func(t time.Time) { o.done("getxattr", t, st) }(time.Now())
	return o.RawFileSystem.GetXAttr(cancel, h, attr, dest)
}

func (o *observedFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) (st fuse.Status) {
	defer func(t time.Time) { o.done("create", t, st) }(time.Now())
	return o.RawFileSystem.Create(cancel, in, name, out)
}

func (o *observedFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) (st fuse.Status) {
	defer func(t time.Time) { o.done("open", t, st) }(time.Now())
	return o.RawFileSystem.Open(cancel, in, out)
}

func (o *observedFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (r fuse.ReadResult, st fuse.Status) {
	defer func(t time.Time) { o.done("read", t, st) }(time.Now())
	return o.RawFileSystem.Read(cancel, in, buf)
}

func (o *observedFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	defer o.done("release", time.Now(), fuse.OK)
	o.RawFileSystem.Release(cancel, in)
}

func (o *observedFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (n uint32, st fuse.Status) {
	defer func(t time.Time) { o.done("write", t, st) }(time.Now())
	return o.RawFileSystem.Write(cancel, in, data)
}

func (o *observedFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) (st fuse.Status) {
	defer func(t time.Time) { o.done("flush", t, st) }(time.Now())
	return o.RawFileSystem.Flush(cancel, in)
}

func (o *observedFS) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) (st fuse.Status) {
	defer func(t time.Time) { o.done("fsync", t, st) }(time.Now())
	return o.RawFileSystem.Fsync(cancel, in)
}

func (o *observedFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) (st fuse.Status) {
	defer func(t time.Time) { o.done("readdirplus", t, st) }(time.Now())
	return o.RawFileSystem.ReadDirPlus(cancel, in, out)
}

func (o *observedFS) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) (st fuse.Status) {
	defer func(t time.Time) { o.done("statfs", t, st) }(time.Now())
	return o.RawFileSystem.StatFs(cancel, h, out)
}
