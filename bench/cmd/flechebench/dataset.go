package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers/sftp"
)

const (
	nSmall     = 2000
	smallSize  = 16 << 10
	nMedium    = 8
	mediumSize = 4 << 20
)

// dataset is the files on the remote, named by the SHA-256 of their
// content, each with the sum record the flechefs sftp tier keeps beside it
// (.flechefs/sums/<key>, format in tiers/sftp/doc.go).
type dataset struct {
	remote string // the directory sshd serves
	small  []string
	medium []string
	large  string
	slow   string // the file of the slow-link phase
	lsize  int64
	// write is what the write scenarios write: one small value and one
	// large one, under fresh names every time.
	smallData, largeData []byte
	// local copies for sftp put.
	localSmall []string
	localLarge string
}

func randBytes(seed uint64, n int64) []byte {
	b := make([]byte, n)
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	rand.NewChaCha8(s).Read(b)
	return b
}

// newKey is a fresh random key (the names written by the write scenarios).
func newKey() string {
	var b [32]byte
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	return hex.EncodeToString(b[:])
}

func (b *bench) generate() (*dataset, error) {
	start := time.Now()
	ds := &dataset{remote: b.srv.Dir, lsize: b.opt.largeSize}
	sums := filepath.Join(ds.remote, ".flechefs", "sums")
	if err := os.MkdirAll(sums, 0o755); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(ds.remote, ".flechefs", "tmp"), 0o755); err != nil {
		return nil, err
	}
	put := func(data []byte) (string, error) {
		sum := sha256.Sum256(data)
		name := hex.EncodeToString(sum[:])
		if err := os.WriteFile(filepath.Join(ds.remote, name), data, 0o644); err != nil {
			return "", err
		}
		return name, sftp.WriteLocalSum(ds.remote, name, sftp.SumRecord{Sum: sum, Size: int64(len(data)), Created: time.Now()})
	}
	all := randBytes(1, nSmall*smallSize)
	for i := range nSmall {
		n, err := put(all[i*smallSize : (i+1)*smallSize])
		if err != nil {
			return nil, err
		}
		ds.small = append(ds.small, n)
	}
	all = randBytes(2, nMedium*mediumSize)
	for i := range nMedium {
		n, err := put(all[i*mediumSize : (i+1)*mediumSize])
		if err != nil {
			return nil, err
		}
		ds.medium = append(ds.medium, n)
	}
	var err error
	if ds.large, err = put(randBytes(3, ds.lsize)); err != nil {
		return nil, err
	}
	if ds.slow, err = put(randBytes(4, b.opt.slowSize)); err != nil {
		return nil, err
	}
	// What the write scenarios write, and its local copies for sftp put.
	ds.smallData = randBytes(5, smallSize)
	ds.largeData = randBytes(6, ds.lsize)
	local := filepath.Join(b.opt.work, "local")
	if err := os.MkdirAll(local, 0o755); err != nil {
		return nil, err
	}
	for i := range nSmall {
		p := filepath.Join(local, fmt.Sprintf("small-%04d", i))
		if err := os.WriteFile(p, ds.smallData, 0o644); err != nil {
			return nil, err
		}
		ds.localSmall = append(ds.localSmall, p)
	}
	ds.localLarge = filepath.Join(local, "large")
	if err := os.WriteFile(ds.localLarge, ds.largeData, 0o644); err != nil {
		return nil, err
	}
	if err := b.checkDataset(ds); err != nil {
		return nil, err
	}
	b.logf("dataset: %d × %d KiB, %d × %d MiB, 1 × %d MiB (+ %d MiB for the slow link) in %s, in %v",
		nSmall, smallSize>>10, nMedium, mediumSize>>20, ds.lsize>>20, b.opt.slowSize>>20, ds.remote, time.Since(start).Round(time.Millisecond))
	return ds, nil
}

// checkDataset has the sftp tier stat a few entries, so that a change of
// the remote layout fails here rather than as a slow benchmark.
func (b *bench) checkDataset(ds *dataset) error {
	t, err := sftp.Open(context.Background(), sftp.Options{
		URL: b.srv.URL(), IdentityFiles: []string{b.srv.IdentityFile}, KnownHosts: b.srv.KnownHosts,
		Ciphers: []string{cipher},
	})
	if err != nil {
		return err
	}
	defer t.Close()
	for _, n := range []string{ds.small[0], ds.medium[0], ds.large} {
		k := digest.MustParse(n)
		info, err := t.Stat(context.Background(), k)
		if err != nil {
			return fmt.Errorf("dataset: the sftp tier does not see %s: %w", n, err)
		}
		if info.Sum.IsZero() || info.Sum.String() != n {
			return fmt.Errorf("dataset: the sftp tier reads sum %v for %s: the sum file format changed?", info.Sum, n)
		}
	}
	return nil
}

// removeWritten deletes names written by a write scenario from the remote.
func (ds *dataset) removeWritten(names []string) {
	for _, n := range names {
		os.Remove(filepath.Join(ds.remote, n))
		os.Remove(filepath.Join(ds.remote, ".flechefs", "sums", n))
	}
}
