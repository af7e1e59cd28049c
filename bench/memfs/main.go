// Command memfs is the benchmark's ceiling for a FUSE filesystem: a flat
// directory of files held in RAM, served by go-fuse with the settings
// flechefs uses (1 MiB READ and WRITE requests, read_ahead_kb raised to
// 1024, FOPEN_KEEP_CACHE and FOPEN_NOFLUSH on every open, long entry and
// attribute timeouts).
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
	// Writes bypass the page cache, as flechefs's writers do: through it,
	// every 1 MiB write also fills page cache pages (and is 3 to 5 times
	// slower here).
	return ch, nil, fuse.FOPEN_DIRECT_IO, 0
}

func (r *root) Unlink(ctx context.Context, name string) syscall.Errno {
	if r.GetChild(name) == nil {
		return syscall.ENOENT
	}
	r.RmChild(name)
	return 0
}

// file is one file in RAM, in blocks of blockSize bytes (the last may be
// shorter), so that a write never moves what is already there.
type file struct {
	fusefs.Inode
	mu     sync.RWMutex
	blocks [][]byte
	size   int64
}

const blockSize = 1 << 20

func newFile(data []byte) *file {
	f := &file{size: int64(len(data))}
	for len(data) > 0 {
		n := min(len(data), blockSize)
		f.blocks = append(f.blocks, data[:n:n])
		data = data[n:]
	}
	return f
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
	a.Size = uint64(f.size)
	a.Blocks = (a.Size + 511) / 512
	a.Blksize = maxIO
	a.Nlink = 1
}

func (f *file) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
}

func (f *file) Read(ctx context.Context, fh fusefs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n := 0
	for n < len(dest) && off+int64(n) < f.size {
		pos := off + int64(n)
		b := f.blocks[pos/blockSize]
		n += copy(dest[n:], b[pos%blockSize:])
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (f *file) Write(ctx context.Context, fh fusefs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.grow(off + int64(len(data)))
	for n := 0; n < len(data); {
		pos := off + int64(n)
		n += copy(f.blocks[pos/blockSize][pos%blockSize:], data[n:])
	}
	return uint32(len(data)), 0
}

// grow makes the file at least size bytes long; new bytes are zero.
func (f *file) grow(size int64) {
	for size > f.size {
		i := f.size / blockSize
		if i == int64(len(f.blocks)) {
			f.blocks = append(f.blocks, make([]byte, 0, blockSize))
		}
		b := f.blocks[i]
		if cap(b) < blockSize { // a loaded block: copy it to grow it
			nb := make([]byte, len(b), blockSize)
			copy(nb, b)
			b = nb
		}
		n := min(int64(blockSize), size-i*blockSize)
		f.blocks[i] = b[:n]
		f.size = i*blockSize + n
	}
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
		if int64(sz) < f.size {
			nb := (int64(sz) + blockSize - 1) / blockSize
			f.blocks = f.blocks[:nb]
			if nb > 0 {
				f.blocks[nb-1] = f.blocks[nb-1][:int64(sz)-(nb-1)*blockSize]
			}
			f.size = int64(sz)
		} else {
			f.grow(int64(sz))
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
				f := newFile(data)
				r.AddChild(name, r.NewPersistentInode(ctx, f, fusefs.StableAttr{Mode: syscall.S_IFREG}), false)
			}
		},
	}
	// Signals are caught before mounting: a SIGTERM that came between
	// the mount and signal.Notify (the bench stops a mount it has just
	// seen appear) killed memfs with the mount left behind, or, when it
	// came during go-fuse's poll hack, with memfs stuck for good in the
	// close of a file on its own mount.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
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
