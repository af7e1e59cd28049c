// Command memfs is the benchmark's ceiling for a FUSE filesystem: a flat
// directory of files held in RAM, served by go-fuse with the settings
// flechefs uses (1 MiB READ and WRITE requests, read_ahead_kb raised to
// 1024, FOPEN_KEEP_CACHE on every open, long entry and attribute timeouts).
// Nothing it does is slower than a map lookup and a copy, so its figures
// are what FUSE itself allows on this machine.
//
//	memfs [-src DIR] MOUNTPOINT
//
// -src loads the regular files at the top of DIR into RAM before mounting.
// It serves until unmounted or signalled, then exits 0.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

const (
	maxIO       = 1 << 20
	readAheadKB = 1024
	ttl         = time.Hour
	negativeTTL = time.Second // flechefs's default negative_ttl
)

type root struct {
	fusefs.Inode
}

var (
	_ = (fusefs.NodeCreater)((*root)(nil))
	_ = (fusefs.NodeUnlinker)((*root)(nil))
)

func (r *root) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fusefs.Inode, fusefs.FileHandle, uint32, syscall.Errno) {
	f := &file{}
	ch := r.NewInode(ctx, f, fusefs.StableAttr{Mode: syscall.S_IFREG})
	r.AddChild(name, ch, true)
	f.attr(&out.Attr)
	out.SetEntryTimeout(ttl)
	out.SetAttrTimeout(ttl)
	return ch, nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (r *root) Unlink(ctx context.Context, name string) syscall.Errno {
	if r.GetChild(name) == nil {
		return syscall.ENOENT
	}
	r.RmChild(name)
	return 0
}

// file is one file in RAM. Writes append with amortised growth.
type file struct {
	fusefs.Inode
	mu   sync.RWMutex
	data []byte
}

var (
	_ = (fusefs.NodeOpener)((*file)(nil))
	_ = (fusefs.NodeReader)((*file)(nil))
	_ = (fusefs.NodeWriter)((*file)(nil))
	_ = (fusefs.NodeGetattrer)((*file)(nil))
	_ = (fusefs.NodeSetattrer)((*file)(nil))
	_ = (fusefs.NodeFlusher)((*file)(nil))
)

func (f *file) attr(a *fuse.Attr) {
	a.Mode = syscall.S_IFREG | 0o644
	a.Size = uint64(len(f.data))
	a.Blocks = (a.Size + 511) / 512
	a.Blksize = maxIO
	a.Nlink = 1
}

func (f *file) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (f *file) Read(ctx context.Context, fh fusefs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	off = min(off, int64(len(f.data)))
	n := copy(dest, f.data[off:])
	return fuse.ReadResultData(dest[:n]), 0
}

func (f *file) Write(ctx context.Context, fh fusefs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	end := int(off) + len(data)
	if end > len(f.data) {
		if end > cap(f.data) {
			n := make([]byte, end, max(end, 2*cap(f.data)))
			copy(n, f.data)
			f.data = n
		}
		f.data = f.data[:end]
	}
	copy(f.data[off:], data)
	return uint32(len(data)), 0
}

func (f *file) Getattr(ctx context.Context, fh fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.mu.RLock()
	defer f.mu.RUnlock()
	f.attr(&out.Attr)
	out.SetTimeout(ttl)
	return 0
}

func (f *file) Setattr(ctx context.Context, fh fusefs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	if sz, ok := in.GetSize(); ok {
		if int(sz) <= len(f.data) {
			f.data = f.data[:sz]
		} else {
			n := make([]byte, sz)
			copy(n, f.data)
			f.data = n
		}
	}
	f.attr(&out.Attr)
	out.SetTimeout(ttl)
	return 0
}

func (f *file) Flush(ctx context.Context, fh fusefs.FileHandle) syscall.Errno { return 0 }

func main() {
	src := flag.String("src", "", "load the regular files at the top of `DIR` before mounting")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: memfs [-src DIR] MOUNTPOINT")
		os.Exit(2)
	}
	mnt, _ := filepath.Abs(flag.Arg(0))
	r := &root{}
	var files map[string][]byte
	if *src != "" {
		var err error
		if files, err = load(*src); err != nil {
			fmt.Fprintln(os.Stderr, "memfs:", err)
			os.Exit(1)
		}
	}
	opts := &fusefs.Options{
		MountOptions: fuse.MountOptions{
			MaxWrite:             maxIO,
			MaxReadAhead:         maxIO,
			FsName:               "memfs",
			Name:                 "memfs",
			DirectMount:          os.Geteuid() == 0,
			IgnoreSecurityLabels: true,
			DisableSplice:        true,
		},
		EntryTimeout:    ptr(ttl),
		AttrTimeout:     ptr(ttl),
		NegativeTimeout: ptr(negativeTTL),
		OnAdd: func(ctx context.Context) {
			for name, data := range files {
				f := &file{data: data}
				r.AddChild(name, r.NewPersistentInode(ctx, f, fusefs.StableAttr{Mode: syscall.S_IFREG}), false)
			}
		},
	}
	srv, err := fusefs.Mount(mnt, r, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "memfs:", err)
		os.Exit(1)
	}
	if os.Geteuid() == 0 {
		var st syscall.Stat_t
		if err := syscall.Stat(mnt, &st); err == nil {
			major := (st.Dev>>8)&0xfff | (st.Dev>>32)&^uint64(0xfff)
			minor := st.Dev&0xff | (st.Dev>>12)&^uint64(0xff)
			p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", major, minor)
			os.WriteFile(p, []byte(strconv.Itoa(readAheadKB)), 0o644)
		}
	}
	fmt.Fprintf(os.Stderr, "memfs: mounted %s (%d files)\n", mnt, len(files))
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		for range 50 {
			if srv.Unmount() == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		syscall.Unmount(mnt, syscall.MNT_DETACH)
	}()
	srv.Wait()
}

func ptr[T any](v T) *T { return &v }

func load(dir string) (map[string][]byte, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		files[e.Name()] = b
	}
	return files, nil
}
