package s3

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
)

func (t *Tier) quarantinePrefix() string { return t.opt.Prefix + ".flechefs/quarantine/" }

// Quarantine moves k's damaged object aside, to
// <prefix>.flechefs/quarantine/<key>.<time>, where flechefs keeps it (it
// is evidence of a failing store, and may be the only trace of a value):
// a server-side copy with its metadata, then the removal of the original.
// Only the object that was judged is moved: the one with the ETag copyID
// names (when it names one: an object with another ETag was put in its
// place by another mount's repair, and is left alone: ErrNotFound); the
// copy is made only from the object with the ETag read first, and the
// original is removed only if it still has that ETag just before. S3 has
// no conditional delete that every store honours, so a repair put in the
// moment between that check and the removal is removed: the key is then
// absent until its next upload, never another value. An object without flechefs's
// metadata is never moved (ErrForeign). The quarantine holds at most
// tiers.QuarantineMax objects (ErrQuarantineFull).
func (t *Tier) Quarantine(ctx context.Context, k digest.Key, copyID string) error {
	if err := t.unavailable("quarantine", k); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, t.opt.Timeout)
	defer cancel()
	src := t.object(k)
	o, err := t.c.StatObject(ctx, t.opt.Bucket, src, minio.StatObjectOptions{})
	if err != nil {
		return t.wrap("quarantine", k, err)
	}
	if _, err := t.info(k, o); errors.Is(err, tiers.ErrForeign) {
		return tiers.Wrap(t.opt.Name, "quarantine", k, err)
	}
	if copyID != "" && o.ETag != copyID {
		return tiers.Wrap(t.opt.Name, "quarantine", k, fmt.Errorf("%w: the damaged object (ETag %s) was replaced by another (%s), left in place", tiers.ErrNotFound, copyID, o.ETag))
	}
	n := 0
	if err := t.list(ctx, t.quarantinePrefix(), func(minio.ObjectInfo, string) { n++ }); err != nil {
		return err
	}
	if n >= tiers.QuarantineMax {
		return tiers.Wrap(t.opt.Name, "quarantine", k, fmt.Errorf("%w: %s holds %d objects", tiers.ErrQuarantineFull, t.quarantinePrefix(), n))
	}
	if o.Size > maxPut {
		return tiers.Wrap(t.opt.Name, "quarantine", k, fmt.Errorf("%d bytes: larger than one server-side copy takes (%d)", o.Size, int64(maxPut)))
	}
	dst := t.quarantinePrefix() + k.String() + "." + time.Now().UTC().Format("20060102T150405.000000000Z")
	_, err = t.c.CopyObject(ctx, minio.CopyDestOptions{Bucket: t.opt.Bucket, Object: dst},
		minio.CopySrcOptions{Bucket: t.opt.Bucket, Object: src, MatchETag: o.ETag})
	if err != nil {
		if minio.ToErrorResponse(err).StatusCode == http.StatusPreconditionFailed {
			return tiers.Wrap(t.opt.Name, "quarantine", k, errors.New("the object changed since it was found damaged; left in place"))
		}
		return t.wrap("quarantine", k, err)
	}
	now, err := t.c.StatObject(ctx, t.opt.Bucket, src, minio.StatObjectOptions{})
	switch {
	case err != nil:
		return t.wrap("quarantine", k, err)
	case now.ETag != o.ETag:
		return tiers.Wrap(t.opt.Name, "quarantine", k, fmt.Errorf("the object changed while it was copied to %s; left in place", dst))
	}
	if err := t.c.RemoveObject(ctx, t.opt.Bucket, src, minio.RemoveObjectOptions{}); err != nil {
		return t.wrap("quarantine", k, err)
	}
	t.opt.Logger.Warn("damaged remote copy moved to quarantine", "tier", t.opt.Name, "key", k.String(), "to", dst)
	return nil
}

var _ tiers.Quarantiner = (*Tier)(nil)
