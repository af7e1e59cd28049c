// Command writeburst writes N files of SIZE bytes under random key names
// into DIR one after another, as the bench's write scenario does (open
// O_CREAT|O_EXCL, one write, close), and prints the time of the whole burst
// and the median of each call.
//
//	writeburst DIR N SIZE
package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: writeburst DIR N SIZE")
		os.Exit(2)
	}
	dir := os.Args[1]
	n, err1 := strconv.Atoi(os.Args[2])
	size, err2 := strconv.Atoi(os.Args[3])
	if err1 != nil || err2 != nil || n <= 0 || size < 0 {
		fmt.Fprintln(os.Stderr, "writeburst: N must be a positive number, SIZE a number of bytes")
		os.Exit(2)
	}
	data := make([]byte, size)
	rand.Read(data)
	names := make([]string, n)
	for i := range names {
		var b [32]byte
		rand.Read(b[:])
		names[i] = filepath.Join(dir, hex.EncodeToString(b[:]))
	}
	syscall.Sync()
	start := time.Now()
	var to, tw, tc []time.Duration
	for _, p := range names {
		t0 := time.Now()
		fd, err := syscall.Open(p, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_CLOEXEC, 0o644)
		if err != nil {
			fail("create", p, err)
		}
		t1 := time.Now()
		if _, err := syscall.Write(fd, data); err != nil {
			fail("write", p, err)
		}
		t2 := time.Now()
		if err := syscall.Close(fd); err != nil {
			fail("close", p, err)
		}
		t3 := time.Now()
		to, tw, tc = append(to, t1.Sub(t0)), append(tw, t2.Sub(t1)), append(tc, t3.Sub(t2))
	}
	el := time.Since(start).Seconds()
	med := func(d []time.Duration) float64 { slices.Sort(d); return float64(d[len(d)/2].Microseconds()) }
	fmt.Printf("%.3f s  open %.0f  write %.0f  close %.0f us (medians)\n", el, med(to), med(tw), med(tc))
}

func fail(op, path string, err error) {
	fmt.Fprintf(os.Stderr, "writeburst: %s %s: %v\n", op, path, err)
	os.Exit(1)
}
