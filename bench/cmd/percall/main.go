// Command percall times each call of a cold read of small files through a
// mount: lstat, open, the first read, the read that sees the end, close,
// and prints the median of each over all files. The bench's cold small
// figure is files per second; this says where the time of one file goes
// (a call that needs a round trip to the server shows it).
//
//	percall MOUNT DIR [SIZE]
//
// reads, through MOUNT, every regular file of SIZE bytes (default 16384)
// that DIR lists: DIR is the remote directory itself (the bench's
// /var/tmp/flechebench/sshd/remote), so that listing it does not touch the
// mount. Mount with empty caches first; a second run of the same mount
// measures warm reads.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 3 || len(os.Args) > 4 {
		fmt.Fprintln(os.Stderr, "usage: percall MOUNT DIR [SIZE]")
		os.Exit(2)
	}
	mnt, dir := os.Args[1], os.Args[2]
	size := int64(16 << 10)
	if len(os.Args) == 4 {
		n, err := strconv.ParseInt(os.Args[3], 10, 64)
		if err != nil || n <= 0 {
			fmt.Fprintln(os.Stderr, "percall: SIZE must be a positive number of bytes")
			os.Exit(2)
		}
		size = n
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "percall:", err)
		os.Exit(1)
	}
	var names []string
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() && fi.Size() == size {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		fmt.Fprintf(os.Stderr, "percall: no file of %d bytes in %s\n", size, dir)
		os.Exit(1)
	}
	calls := []string{"lstat", "open", "read", "read at end", "close", "whole file"}
	took := make([][]time.Duration, len(calls))
	buf := make([]byte, max(size, 1<<20))
	start := time.Now()
	for _, n := range names {
		if err := one(filepath.Join(mnt, n), buf, size, took); err != nil {
			fmt.Fprintln(os.Stderr, "percall:", err)
			os.Exit(1)
		}
	}
	el := time.Since(start)
	fmt.Printf("%d files of %d bytes in %v: %.0f files/s; medians:", len(names), size, el.Round(time.Millisecond), float64(len(names))/el.Seconds())
	for i, c := range calls {
		slices.Sort(took[i])
		fmt.Printf(" %s %v", c, took[i][len(took[i])/2].Round(time.Microsecond))
		if i < len(calls)-1 {
			fmt.Print(",")
		}
	}
	fmt.Println()
}

// one reads path and appends the time of each call to took.
func one(path string, buf []byte, size int64, took [][]time.Duration) error {
	var st syscall.Stat_t
	t := []time.Time{time.Now()}
	if err := syscall.Lstat(path, &st); err != nil {
		return &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	t = append(t, time.Now())
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	t = append(t, time.Now())
	n1, err1 := syscall.Read(fd, buf)
	t = append(t, time.Now())
	n2, err2 := syscall.Read(fd, buf)
	t = append(t, time.Now())
	syscall.Close(fd)
	t = append(t, time.Now())
	switch {
	case err1 != nil || err2 != nil:
		return &os.PathError{Op: "read", Path: path, Err: cmpErr(err1, err2)}
	case int64(n1) != size || n2 != 0:
		return fmt.Errorf("%s: reads returned %d and %d bytes, want %d and 0", path, n1, n2, size)
	}
	for i := range len(t) - 1 {
		took[i] = append(took[i], t[i+1].Sub(t[i]))
	}
	took[len(t)-1] = append(took[len(t)-1], t[len(t)-1].Sub(t[0]))
	return nil
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
