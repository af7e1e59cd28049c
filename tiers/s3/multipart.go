package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/minio/minio-go/v7"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
)

// A value larger than one PUT takes (5 GiB) goes up as a multipart upload:
// parts of partSize (more when 10,000 parts would not hold it), at most
// partsInFlight at once, so the memory it holds is partSize×partsInFlight
// (64 MiB) whatever its size.
//
// First writer wins as far as the store allows: the upload starts only if
// the key has no object, and its completion carries If-None-Match: *,
// which AWS S3 and MinIO honour (a second writer's completion fails with
// 412, reported as ErrExist) but SeaweedFS ignores, so on such a store two
// writers of one key racing within one upload's time may leave the later
// value. A failed or refused upload is aborted: no part stays behind.
const (
	partSize      = 16 << 20
	partsInFlight = 4
	maxParts      = 10000
	maxValue      = 5 << 40 // the largest S3 object
)

// putMultipart uploads the value v (of size bytes, verified as it is read)
// under the object name, with opts' metadata.
func (t *Tier) putMultipart(ctx context.Context, k digest.Key, v *verifier, size int64, opts minio.PutObjectOptions) error {
	if size > maxValue {
		return fmt.Errorf("%w: %d bytes, more than an S3 object holds (5 TiB)", tiers.ErrNoSpace, size)
	}
	name := t.object(k)
	sctx, cancel := context.WithTimeout(ctx, t.opt.Timeout)
	_, err := t.c.StatObject(sctx, t.opt.Bucket, name, minio.StatObjectOptions{})
	cancel()
	if err == nil {
		return tiers.ErrExist
	}
	if werr := t.wrap("put", k, err); !errors.Is(werr, tiers.ErrNotFound) {
		return werr
	}
	core := minio.Core{Client: t.c}
	id, err := core.NewMultipartUpload(ctx, t.opt.Bucket, name, opts)
	if err != nil {
		return t.wrap("put", k, err)
	}
	parts, err := t.putParts(ctx, core, name, id, v, size)
	if err == nil {
		complete := minio.PutObjectOptions{}
		complete.SetMatchETagExcept("*")
		_, err = core.CompleteMultipartUpload(ctx, t.opt.Bucket, name, id, parts, complete)
		if err == nil {
			return nil
		}
		err = t.wrap("put", k, err)
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.opt.Timeout)
	defer cancel()
	if aerr := core.AbortMultipartUpload(actx, t.opt.Bucket, name, id); aerr != nil {
		t.opt.Logger.Warn("abort of a failed multipart upload failed: its parts stay until the bucket's lifecycle removes them",
			"tier", t.opt.Name, "key", k.String(), "err", aerr)
	}
	return err
}

// putParts reads v a part at a time and uploads the parts, partsInFlight
// at once.
func (t *Tier) putParts(ctx context.Context, core minio.Core, name, id string, v *verifier, size int64) ([]minio.CompletePart, error) {
	psize := int64(partSize)
	if n := (size + maxParts - 1) / maxParts; n > psize {
		psize = (n + 1<<20 - 1) &^ (1<<20 - 1)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	bufs := make(chan []byte, partsInFlight)
	for range partsInFlight {
		bufs <- nil
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		parts    []minio.CompletePart
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
			cancel()
		}
		mu.Unlock()
	}
	for num, off := 1, int64(0); off < size; num, off = num+1, off+psize {
		var buf []byte
		select {
		case buf = <-bufs:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		if buf == nil {
			buf = make([]byte, psize)
		}
		n := min(psize, size-off)
		if _, err := io.ReadFull(v, buf[:n]); err != nil {
			if v.err != nil {
				err = v.err
			}
			fail(err)
			break
		}
		wg.Go(func() {
			defer func() { bufs <- buf }()
			p, err := core.PutObjectPart(ctx, t.opt.Bucket, name, id, num, bytes.NewReader(buf[:n]), n, minio.PutObjectPartOptions{})
			if err != nil {
				fail(t.wrap("put", digest.Key{}, err))
				return
			}
			mu.Lock()
			parts = append(parts, minio.CompletePart{PartNumber: num, ETag: p.ETag})
			mu.Unlock()
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	slices.SortFunc(parts, func(a, b minio.CompletePart) int { return a.PartNumber - b.PartNumber })
	return parts, nil
}
