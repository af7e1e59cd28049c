package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
)

// Retention bounds a shared bucket that would otherwise only grow, by the
// rules of the SFTP tier (tiers/retention.go has the shared parts). With
// Options.Retention set, the tier records when each entry was last used,
// and Prune removes the least recently used entries until the prefix is
// under the bound:
//
//	<prefix>.flechefs/used/<key>     empty; its Last-Modified is the entry's last use
//	<prefix>.flechefs/prune.lease    held by the one mount pruning
//
// A read or an upload marks the entry used, off the request's path and at
// most once per tiers.MarkEvery per key and process. An entry never marked
// was last used when it was uploaded.
//
// What Prune never removes: an object flechefs did not write (without the
// flechefs checksum metadata; it is counted in PruneReport.Adopted), a key
// whose fleche <key>.lock object exists, an entry used less than Grace
// ago. One mount at a time prunes a prefix: the lease is an object made
// with If-None-Match: * (so only one of two mounts creating it at once
// succeeds), rewritten while the pass runs, and taken over once it is
// tiers.LeaseStale old. On a store that ignores If-None-Match two passes
// may run at once; each removes only least recently used entries over the
// bound, so together they remove no more than the slower one would alone
// plus the entries the two lists ordered differently.
//
// The bucket's own lifecycle rules are the store's way to expire objects
// by age; they do not know last use, and they remove foreign objects too.

func (t *Tier) usedName(k digest.Key) string { return t.opt.Prefix + ".flechefs/used/" + k.String() }
func (t *Tier) leaseName() string            { return t.opt.Prefix + ".flechefs/prune.lease" }

// used notes a read or an upload of k when the tier is bounded.
func (t *Tier) used(k digest.Key) {
	if t.marks != nil {
		t.marks.Used(k)
	}
}

// touchUsed writes k's marker, empty, which sets its Last-Modified to now.
func (t *Tier) touchUsed(k digest.Key) error {
	ctx, cancel := context.WithTimeout(t.ctx, t.opt.Timeout)
	defer cancel()
	_, err := t.c.PutObject(ctx, t.opt.Bucket, t.usedName(k), bytes.NewReader(nil), 0,
		minio.PutObjectOptions{ContentType: "application/octet-stream"})
	return t.wrap("mark", k, err)
}

// Prune removes least recently used entries until the prefix is under b,
// under the prefix's lease (tiers.ErrLeaseHeld when another mount holds
// it). With dryRun it removes nothing and reports what it would remove.
func (t *Tier) Prune(ctx context.Context, b tiers.Bound, dryRun bool) (tiers.PruneReport, error) {
	start := time.Now()
	rep := tiers.PruneReport{DryRun: dryRun}
	if !b.On() {
		return rep, errors.New("no retention bound: set max_size or max_age on the remote tier")
	}
	var token string
	if !dryRun {
		var err error
		if token, err = t.takeLease(ctx); err != nil {
			return rep, err
		}
		defer t.dropLease(token)
	}
	ents, err := t.pruneCandidates(ctx, &rep)
	if err != nil {
		return rep, err
	}
	victims, err := tiers.PlanPrune(ents, b, time.Now(), &rep, func(batch []tiers.PruneEntry) ([]tiers.PruneVerdict, error) {
		out := make([]tiers.PruneVerdict, len(batch))
		errs := make([]error, len(batch))
		tiers.Batch(len(batch), func(i int) { out[i], errs[i] = t.pruneVerdict(ctx, batch[i].Key) })
		return out, errors.Join(errs...)
	})
	if err != nil {
		rep.Took = time.Since(start)
		return rep, err
	}
	err = tiers.ApplyPrune(victims, &rep, func() { t.putLease(ctx, token, false) }, func(e tiers.PruneEntry) error {
		err := t.Delete(ctx, e.Key)
		if err == nil || errors.Is(err, tiers.ErrNotFound) && !errors.Is(err, tiers.ErrForeign) {
			rctx, cancel := context.WithTimeout(ctx, t.opt.Timeout)
			t.c.RemoveObject(rctx, t.opt.Bucket, t.usedName(e.Key), minio.RemoveObjectOptions{})
			cancel()
		}
		return err
	})
	rep.Took = time.Since(start)
	if err != nil {
		return rep, err
	}
	if !dryRun && len(rep.Removed) > 0 {
		t.opt.Logger.Info("pruned the remote", "tier", t.opt.Name, "removed", len(rep.Removed), "bytes", rep.RemovedBytes,
			"left", rep.Bytes-rep.RemovedBytes, "took", rep.Took.Round(time.Millisecond))
	}
	return rep, nil
}

// pruneVerdict tells whether k's object is flechefs's to remove.
func (t *Tier) pruneVerdict(ctx context.Context, k digest.Key) (tiers.PruneVerdict, error) {
	_, err := t.Stat(ctx, k)
	switch {
	case err == nil:
		return tiers.PruneRemove, nil
	case errors.Is(err, tiers.ErrForeign):
		return tiers.PruneAdopted, nil
	case errors.Is(err, tiers.ErrNotFound):
		return tiers.PruneGone, nil
	}
	return 0, err
}

// pruneCandidates lists the entries Prune may remove, least recently used
// first, and counts every key-named object's bytes into rep. Whether an
// object is flechefs's takes a request of its own (its metadata); Prune
// asks only for those it would remove.
func (t *Tier) pruneCandidates(ctx context.Context, rep *tiers.PruneReport) ([]tiers.PruneEntry, error) {
	used := map[string]time.Time{}
	if err := t.list(ctx, t.opt.Prefix+".flechefs/used/", func(o minio.ObjectInfo, name string) {
		used[name] = o.LastModified
	}); err != nil {
		return nil, err
	}
	var out []tiers.PruneEntry
	locks := map[string]bool{}
	if err := t.list(ctx, t.opt.Prefix, func(o minio.ObjectInfo, name string) {
		if base, ok := strings.CutSuffix(name, ".lock"); ok {
			locks[base] = true
			return
		}
		k, err := digest.Parse(name)
		if err != nil {
			return
		}
		rep.Bytes += o.Size
		rep.Entries++
		last := o.LastModified
		if u, ok := used[name]; ok && u.After(last) {
			last = u
		}
		out = append(out, tiers.PruneEntry{Key: k, Size: o.Size, Used: last, Mtime: o.LastModified})
	}); err != nil {
		return nil, err
	}
	kept := out[:0]
	for _, e := range out {
		if !locks[e.Key.String()] { // a fleche writer is at work on this key
			kept = append(kept, e)
		}
	}
	tiers.SortLRU(kept)
	return kept, nil
}

// list calls fn for each object directly under prefix, with its name
// after the prefix.
func (t *Tier) list(ctx context.Context, prefix string, fn func(minio.ObjectInfo, string)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for o := range t.c.ListObjects(ctx, t.opt.Bucket, minio.ListObjectsOptions{Prefix: prefix}) {
		if o.Err != nil {
			return t.wrap("list", digest.Key{}, o.Err)
		}
		if name := strings.TrimPrefix(o.Key, prefix); name != "" && !strings.Contains(name, "/") {
			fn(o, name)
		}
	}
	return nil
}

// takeLease creates the lease object unless it exists, and takes over one
// tiers.LeaseStale old (its holder died).
func (t *Tier) takeLease(ctx context.Context) (string, error) {
	host, _ := os.Hostname()
	token := fmt.Sprintf("%s %d %d\n", host, os.Getpid(), time.Now().UnixNano())
	for range 2 {
		err := t.putLease(ctx, token, true)
		if err == nil {
			return token, nil
		}
		if !errors.Is(err, tiers.ErrExist) {
			return "", err
		}
		sctx, cancel := context.WithTimeout(ctx, t.opt.Timeout)
		o, serr := t.c.StatObject(sctx, t.opt.Bucket, t.leaseName(), minio.StatObjectOptions{})
		cancel()
		if serr != nil {
			if err := t.wrap("prune", digest.Key{}, serr); !errors.Is(err, tiers.ErrNotFound) {
				return "", err
			}
			continue // released meanwhile
		}
		if age := time.Since(o.LastModified); age < tiers.LeaseStale {
			return "", tiers.Wrap(t.opt.Name, "prune", digest.Key{}, fmt.Errorf("%w (lease s3://%s/%s, %v old)", tiers.ErrLeaseHeld, t.opt.Bucket, t.leaseName(), age.Round(time.Second)))
		}
		rctx, cancel := context.WithTimeout(ctx, t.opt.Timeout)
		t.c.RemoveObject(rctx, t.opt.Bucket, t.leaseName(), minio.RemoveObjectOptions{})
		cancel()
		t.opt.Logger.Warn("took over a stale prune lease", "tier", t.opt.Name, "age", time.Since(o.LastModified).Round(time.Second))
	}
	return "", tiers.Wrap(t.opt.Name, "prune", digest.Key{}, fmt.Errorf("%w (lease s3://%s/%s)", tiers.ErrLeaseHeld, t.opt.Bucket, t.leaseName()))
}

// putLease writes the lease holding token: only where none is (create),
// or over it (a refresh).
func (t *Tier) putLease(ctx context.Context, token string, create bool) error {
	ctx, cancel := context.WithTimeout(ctx, t.opt.Timeout)
	defer cancel()
	opts := minio.PutObjectOptions{ContentType: "text/plain", DisableMultipart: true}
	if create {
		opts.SetMatchETagExcept("*")
	}
	_, err := t.c.PutObject(ctx, t.opt.Bucket, t.leaseName(), strings.NewReader(token), int64(len(token)), opts)
	return t.wrap("prune", digest.Key{}, err)
}

// dropLease removes the lease if it still holds token.
func (t *Tier) dropLease(token string) {
	ctx, cancel := context.WithTimeout(t.ctx, t.opt.Timeout)
	defer cancel()
	o, err := t.c.GetObject(ctx, t.opt.Bucket, t.leaseName(), minio.GetObjectOptions{})
	if err != nil {
		return
	}
	b, err := io.ReadAll(io.LimitReader(o, int64(len(token))+1))
	o.Close()
	if err == nil && string(b) == token {
		t.c.RemoveObject(ctx, t.opt.Bucket, t.leaseName(), minio.RemoveObjectOptions{})
	}
}
