package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/s3test"
	"github.com/flechefs/flechefs/tiers"
	"github.com/flechefs/flechefs/tiers/s3"
)

// The S3 phase: flechefs with an S3 tier (RAM, bbolt, S3) against rclone
// mount with its S3 backend, both on one local SeaweedFS (internal/s3test,
// `weed server -s3` on 127.0.0.1) holding the main phase's small, medium
// and large files as objects (with the SHA-256 metadata flechefs's tier
// reads; rclone ignores it). Per client and repeat, interleaved:
//
//	mount with empty local caches → cold read → settle → unmount
//	mount again (persistent caches kept) → remount read → settle →
//	write small, write large (closed; on the store) → unmount
//
// Metrics are the main phase's with "s3." in front, and "store" where the
// main phase says "remote"; the steal while each client ran is
// s3.machine.steal.

// s3Store is the SeaweedFS of the phase and a client of it.
type s3Store struct {
	srv *s3test.Server
	c   *minio.Client
}

func (b *bench) s3Phase() error {
	srv, err := s3test.StartE(filepath.Join(b.opt.work, "seaweedfs"),
		// Room for the writes of every repeat: SeaweedFS reclaims the
		// space of deleted objects only when it compacts a volume.
		s3test.Options{VolumeSizeLimitMB: 1024, MaxVolumes: -1})
	if srv != nil {
		b.defer_(srv.Stop)
	}
	if err != nil {
		return err
	}
	c, err := srv.Client()
	if err != nil {
		return err
	}
	st := &s3Store{srv: srv, c: c}
	if err := b.s3Upload(st); err != nil {
		return err
	}
	f := b.newFlechefs("flechefs-s3")
	f.s3 = st
	f.env = []string{"AWS_ACCESS_KEY_ID=" + s3test.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s3test.SecretKey}
	r := b.newRcloneS3("rclone-s3", st)
	b.defer_(f.kill)
	b.defer_(r.kill)
	for rep := range b.opt.repeats {
		for _, c := range []client{f, r} {
			if d := quiesce(); d > 4*time.Second {
				b.logf("s3 %d: the machine was still busy after %v; measuring %s anyway", rep+1, d.Round(time.Millisecond), c.name())
			}
			t, sm := time.Now(), startSteal()
			if err := b.oneS3Client(c, st, rep); err != nil {
				c.stop()
				return fmt.Errorf("s3 phase: %w", err)
			}
			steal := b.noteSteal(c.name(), "s3.machine.steal", sm)
			b.logf("s3 %d: %s done in %v (steal %s)", rep+1, c.name(), time.Since(t).Round(time.Millisecond), steal)
		}
	}
	return nil
}

// s3Upload puts the dataset's files into the bucket through flechefs's S3
// tier (so each object has the metadata the tier checks reads against).
func (b *bench) s3Upload(st *s3Store) error {
	start := time.Now()
	t, err := s3.Open(s3.Options{Endpoint: st.srv.Endpoint, Bucket: st.srv.Bucket, PathStyle: true, Region: "us-east-1",
		AccessKey: s3test.AccessKey, SecretKey: s3test.SecretKey, Timeout: time.Minute})
	if err != nil {
		return err
	}
	defer t.Close()
	names := append(append([]string{b.ds.large}, b.ds.medium...), b.ds.small...)
	work := make(chan string)
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range work {
				if err := putFile(t, filepath.Join(b.ds.remote, n), n); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var firstErr error
feed:
	for _, n := range names {
		select {
		case work <- n:
		case firstErr = <-errs:
			break feed
		}
	}
	close(work)
	wg.Wait()
	if firstErr == nil && len(errs) > 0 {
		firstErr = <-errs
	}
	if firstErr != nil {
		return fmt.Errorf("s3 dataset: %w", firstErr)
	}
	b.logf("s3: SeaweedFS at %s, %d objects uploaded in %v", st.srv.Endpoint, len(names), time.Since(start).Round(time.Millisecond))
	return nil
}

// putFile puts the file at path, whose name is its SHA-256, as object name.
func putFile(t *s3.Tier, path, name string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	sum, err := digest.ParseSum(name)
	if err != nil {
		return err
	}
	_, err = t.Put(context.Background(), digest.MustParse(name), f, tiers.Meta{Size: fi.Size(), Sum: sum})
	return err
}

func (b *bench) oneS3Client(c client, st *s3Store, repeat int) error {
	if err := c.start(true); err != nil {
		return err
	}
	if err := connect(c); err != nil {
		return err
	}
	if err := b.readAll(c, "s3.cold"); err != nil {
		return err
	}
	c.settle()
	if repeat == 0 {
		if err := b.verify(c); err != nil {
			return err
		}
	}
	if err := c.stop(); err != nil {
		return err
	}
	if err := c.start(false); err != nil {
		return err
	}
	if err := b.readAll(c, "s3.remount"); err != nil {
		return err
	}
	c.settle()
	if err := b.writeTo(c, writeSink{prefix: "s3.write", where: "store", wait: st.wait, remove: st.remove}); err != nil {
		return err
	}
	if err := c.stop(); err != nil {
		return fmt.Errorf("%s: %w", c.name(), err)
	}
	return nil
}

// wait waits until every name is an object of size bytes (waitFor).
func (st *s3Store) wait(names []string, size int64, timeout time.Duration) error {
	return waitFor(names, "objects not in the bucket", timeout, func(name string) bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		o, err := st.c.StatObject(ctx, st.srv.Bucket, name, minio.StatObjectOptions{})
		return err == nil && o.Size == size
	})
}

// remove deletes the named objects.
func (st *s3Store) remove(names []string) {
	for _, n := range names {
		st.c.RemoveObject(context.Background(), st.srv.Bucket, n, minio.RemoveObjectOptions{})
	}
}

// --- rclone with its S3 backend ---

// newRcloneS3 is rclone mount of the bucket, configured through
// RCLONE_CONFIG_* variables (no config file), with the main phase's VFS
// settings.
func (b *bench) newRcloneS3(label string, st *s3Store) *rcloneClient {
	c := b.newRclone(label)
	c.remote = "benchs3:" + st.srv.Bucket
	c.env = []string{
		"RCLONE_CONFIG_BENCHS3_TYPE=s3",
		"RCLONE_CONFIG_BENCHS3_PROVIDER=SeaweedFS",
		"RCLONE_CONFIG_BENCHS3_ENDPOINT=" + st.srv.Endpoint,
		"RCLONE_CONFIG_BENCHS3_ACCESS_KEY_ID=" + s3test.AccessKey,
		"RCLONE_CONFIG_BENCHS3_SECRET_ACCESS_KEY=" + s3test.SecretKey,
		"RCLONE_CONFIG_BENCHS3_REGION=us-east-1",
		// The store is plain http; an AWS_CA_BUNDLE in the environment
		// makes rclone's AWS SDK refuse to start ("unsupported
		// transport").
		"AWS_CA_BUNDLE=",
	}
	return c
}

// s3TOML is the S3 tier of flechefs's configuration.
func (st *s3Store) s3TOML() string {
	return "kind = \"s3\"\nendpoint = " + strconv.Quote(st.srv.Endpoint) + "\nbucket = " + strconv.Quote(st.srv.Bucket) +
		"\npath_style = true\nregion = \"us-east-1\"\n"
}
