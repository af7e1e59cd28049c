// Package s3 is a remote tier in an S3-compatible object store (AWS S3,
// Ceph RGW, MinIO, SeaweedFS, Garage), through github.com/minio/minio-go.
//
// Objects are the raw values named <prefix><key>, so any S3 tool reads
// them. The SHA-256, the size and the creation time travel with the object
// as user metadata (x-amz-meta-flechefs-sha256, -size, -created), written
// with the object in the same request, and the SHA-256 also as S3's
// checksum header (x-amz-checksum-sha256), which stores that support it
// verify on arrival and keep; the metadata, which every store keeps, is
// what the tier reads: an object is visible with its
// checksum or not at all, and one whose size differs from its metadata is
// damage (ErrCorrupt) at Stat. A store that cannot be reached is down for
// a backoff (reach.go). Every read is verified against it by the stack, as for the other
// tiers. An object without that metadata was not written by flechefs: it is
// absent to this tier (never served, never listed, never removed). A
// damaged object of flechefs's is moved aside into the quarantine
// (quarantine.go), never deleted.
//
// First writer wins: a Put of up to 5 GiB is one PUT (never a multipart
// upload, whose completion SeaweedFS does not make conditional) with
// If-None-Match: *, and a store that honours it (AWS S3 since 2024, MinIO,
// SeaweedFS) answers 412 to the second writer of a key, which Put reports
// as tiers.ErrExist. A larger value is a multipart upload (multipart.go),
// whose conditional completion fewer stores honour. A store that ignores the
// header lets a later upload replace the object: the first writer's mount
// then keeps serving its own copy while other mounts read the replacement,
// so such a store must not be shared by mounts that may write one key
// (the conformance suite's FirstWriterWins tells).
//
// A value whose size and SHA-256 the caller announces is streamed, and the
// stream fails (so the object is never completed) if the bytes differ; one
// announced without them is spooled to a temp file first, so that its
// checksum can go with it.
package s3

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
)

// Options configure Open.
type Options struct {
	Name     string // default "s3"
	Endpoint string // http(s)://host[:port]; https when no scheme is given
	Bucket   string
	Prefix   string // object names are Prefix + key
	Region   string
	// PathStyle addresses the bucket in the path (http://host/bucket/key),
	// which stores on an IP address or without wildcard DNS need.
	PathStyle bool
	// Credentials; when empty, the AWS environment (AWS_ACCESS_KEY_ID,
	// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), then ~/.aws/credentials
	// with Profile.
	AccessKey, SecretKey, SessionToken string
	Profile                            string
	// Timeout bounds each request that hears nothing. Default 10s.
	Timeout time.Duration
	// Retention bounds the prefix (retention.go): entries are marked when
	// used, and Prune removes the least recently used.
	Retention tiers.Bound
	// SpoolDir holds a value put without its size and SHA-256 while it
	// is hashed. Default os.TempDir().
	SpoolDir string
	// Ranges is how many ranged GETs of RangeSize bytes one fetch of a
	// large value keeps in flight (reader.go). Defaults 4 and 4 MiB: a
	// fetch holds at most Ranges × RangeSize bytes.
	Ranges    int
	RangeSize int64
	Logger    *slog.Logger
}

const (
	metaSum     = "Flechefs-Sha256"
	metaCreated = "Flechefs-Created"
	// metaSize is the value's size: an object whose bytes were replaced
	// by others of another size, keeping the metadata, is damage that Stat
	// sees, as the sftp tier's record does.
	metaSize = "Flechefs-Size"
	// headerChecksum is S3's checksum header (a multipart upload's parts
	// go without it: the metadata carries the sum).
	headerChecksum = "X-Amz-Checksum-Sha256"
	// maxPut is the largest value one S3 PUT takes.
	maxPut = 5 << 30
)

// Tier is an S3 bucket (and prefix) as a tier.
type Tier struct {
	opt    Options
	c      *minio.Client
	core   minio.Core      // the same client: single requests (ranged GETs)
	reach  *reach          // whether the store answers (reach.go)
	ctx    context.Context // ends at Close: the background marks stop
	cancel context.CancelFunc
	marks  *tiers.UseMarks // last-use marks, when Options.Retention bounds the prefix
	// putLimit: a larger value is a multipart upload (multipart.go).
	putLimit int64

	rangesInFlight atomic.Int64 // ranged GETs running (reader.go)
	// rangeHook, when set (tests), runs before each ranged GET with its
	// offset.
	rangeHook func(off int64)
}

// Open checks the options and makes the client. It does not talk to the
// store: a store that is down leaves the tier usable once it comes back.
func Open(opt Options) (*Tier, error) {
	if opt.Name == "" {
		opt.Name = "s3"
	}
	if opt.Timeout <= 0 {
		opt.Timeout = 10 * time.Second
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.Ranges <= 0 {
		opt.Ranges = defaultRanges
	}
	if opt.RangeSize <= 0 {
		opt.RangeSize = defaultRangeSize
	}
	if opt.Bucket == "" {
		return nil, fmt.Errorf("%s tier: no bucket", opt.Name)
	}
	ep := opt.Endpoint
	if !strings.Contains(ep, "://") {
		ep = "https://" + ep
	}
	u, err := url.Parse(ep)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("%s tier: endpoint %q: want http(s)://host[:port]", opt.Name, opt.Endpoint)
	}
	var creds *credentials.Credentials
	if opt.AccessKey != "" {
		creds = credentials.NewStaticV4(opt.AccessKey, opt.SecretKey, opt.SessionToken)
	} else {
		creds = credentials.NewChainCredentials([]credentials.Provider{
			&credentials.EnvAWS{},
			&credentials.FileAWSCredentials{Profile: opt.Profile},
		})
	}
	lookup := minio.BucketLookupDNS
	if opt.PathStyle {
		lookup = minio.BucketLookupPath
	}
	tr := &http.Transport{
		Proxy:       http.ProxyFromEnvironment,
		DialContext: dialIdle(&net.Dialer{Timeout: opt.Timeout, KeepAlive: 15 * time.Second}, opt.Timeout/2+idleMargin),
		// Room for every upload_workers upload (at most 64) and the
		// ranged GETs of several fetches, so that a busy mount reuses its
		// connections instead of dialing and closing them.
		MaxIdleConnsPerHost:   128,
		IdleConnTimeout:       time.Minute,
		TLSHandshakeTimeout:   opt.Timeout,
		ResponseHeaderTimeout: opt.Timeout / 2, // two tries within Timeout (reach.go)
	}
	rt := &reach{next: tr, timeout: opt.Timeout}
	c, err := minio.New(u.Host, &minio.Options{
		Creds: creds, Secure: u.Scheme == "https", Region: opt.Region,
		BucketLookup: lookup, Transport: rt, MaxRetries: 3,
	})
	if err != nil {
		return nil, fmt.Errorf("%s tier: %w", opt.Name, err)
	}
	t := &Tier{opt: opt, c: c, core: minio.Core{Client: c}, reach: rt, putLimit: maxPut}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	if opt.Retention.On() {
		t.marks = tiers.NewUseMarks(t.ctx, t.touchUsed, func(k digest.Key, err error) {
			opt.Logger.Debug("last-use mark failed", "tier", opt.Name, "key", k.String(), "err", err)
		})
	}
	return t, nil
}

// Name returns Options.Name.
func (t *Tier) Name() string { return t.opt.Name }

// Close stops the background marks; requests end with their contexts.
func (t *Tier) Close() error {
	t.cancel()
	return nil
}

func (t *Tier) object(k digest.Key) string { return t.opt.Prefix + k.String() }

// unavailable is ErrUnavailable for op on k while the store is known to be
// unreachable (reach), else nil: the request is not made.
func (t *Tier) unavailable(op string, k digest.Key) error {
	if err := t.reach.down(); err != nil {
		return tiers.Wrap(t.opt.Name, op, k, fmt.Errorf("%w: %s: %v", tiers.ErrUnavailable, t.opt.Endpoint, err))
	}
	return nil
}

// wrap makes err a tiers error: absent, existing, or the store unreachable.
func (t *Tier) wrap(op string, k digest.Key, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, tiers.ErrNotFound) || errors.Is(err, tiers.ErrExist) || errors.Is(err, tiers.ErrCorrupt) ||
		errors.Is(err, context.Canceled) {
		return tiers.Wrap(t.opt.Name, op, k, err)
	}
	resp := minio.ToErrorResponse(err)
	switch {
	case resp.Code == "NoSuchKey" || resp.StatusCode == http.StatusNotFound && resp.Code != "NoSuchBucket":
		return tiers.Wrap(t.opt.Name, op, k, tiers.ErrNotFound)
	case resp.StatusCode == http.StatusPreconditionFailed:
		return tiers.Wrap(t.opt.Name, op, k, tiers.ErrExist)
	case resp.StatusCode == 0 || resp.StatusCode >= 500:
		return tiers.Wrap(t.opt.Name, op, k, fmt.Errorf("%w: %s: %v", tiers.ErrUnavailable, t.opt.Endpoint, err))
	}
	return tiers.Wrap(t.opt.Name, op, k, fmt.Errorf("%s: %w", t.opt.Endpoint, err))
}

// info is the Info of object o of key k, or ErrNotFound when it carries no
// checksum (not written by flechefs). An object its own metadata shows
// damaged is ErrCorrupt, judged by its ETag (tiers.Judged).
func (t *Tier) info(k digest.Key, o minio.ObjectInfo) (tiers.Info, error) {
	sum, err := digest.ParseSum(o.UserMetadata[metaSum])
	if err != nil || sum.IsZero() {
		return tiers.Info{}, fmt.Errorf("%w: %s has no flechefs checksum", tiers.ErrForeign, o.Key)
	}
	created := o.LastModified
	if ms, err := time.Parse(time.RFC3339Nano, o.UserMetadata[metaCreated]); err == nil {
		created = ms
	}
	info := tiers.Info{Key: k, Size: o.Size, Sum: sum, Created: created}
	// Objects put before the size was recorded have none; an empty one
	// can still be told from its checksum, which no read would check (a
	// reader of 0 bytes reads nothing).
	if v, ok := o.UserMetadata[metaSize]; ok {
		if n, err := strconv.ParseInt(v, 10, 64); err != nil || n != o.Size {
			return info, &tiers.Judged{Copy: o.ETag, Err: fmt.Errorf("%w: %s is %d bytes, its metadata says %q", tiers.ErrCorrupt, o.Key, o.Size, v)}
		}
	} else if o.Size == 0 && sum != digest.Of(nil) {
		return info, &tiers.Judged{Copy: o.ETag, Err: fmt.Errorf("%w: %s is empty, its checksum is of another value", tiers.ErrCorrupt, o.Key)}
	}
	return info, nil
}

func (t *Tier) Stat(ctx context.Context, k digest.Key) (tiers.Info, error) {
	if err := t.unavailable("stat", k); err != nil {
		return tiers.Info{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, t.opt.Timeout)
	defer cancel()
	o, err := t.c.StatObject(ctx, t.opt.Bucket, t.object(k), minio.StatObjectOptions{})
	if err != nil {
		return tiers.Info{}, t.wrap("stat", k, err)
	}
	info, err := t.info(k, o)
	return info, t.wrap("stat", k, err)
}

// Put stores the value under k unless the key has one (ErrExist).
func (t *Tier) Put(ctx context.Context, k digest.Key, r io.Reader, m tiers.Meta) (tiers.Info, error) {
	if m.Size < 0 || m.Sum.IsZero() {
		return t.putSpooled(ctx, k, r, m)
	}
	if err := t.unavailable("put", k); err != nil {
		return tiers.Info{}, err
	}
	created := m.Created
	if created.IsZero() {
		created = time.Now()
	}
	v := &verifier{r: r, want: m.Sum, size: m.Size}
	if !m.Verified {
		// A value whose sum its writer computed from these very bytes is
		// not hashed again (Meta.Verified); another one is checked.
		v.h = sha256.New()
	}
	opts := minio.PutObjectOptions{
		UserMetadata: map[string]string{metaSum: m.Sum.String(), metaSize: strconv.FormatInt(m.Size, 10), metaCreated: created.UTC().Format(time.RFC3339Nano)},
		ContentType:  "application/octet-stream",
		// One PUT up to 5 GiB, never minio-go's multipart upload: stores
		// honour If-None-Match on a PUT, and not all on a multipart
		// upload's completion (SeaweedFS lets a second writer's
		// completion replace the object), which would let two mounts
		// keep different values.
		DisableMultipart: true,
	}
	var err error
	if m.Size > t.putLimit {
		err = t.putMultipart(ctx, k, v, m.Size, opts)
	} else {
		opts.SetMatchETagExcept("*")
		// The sum as S3's own checksum too: a store that supports it
		// (AWS, MinIO, SeaweedFS) refuses a body that does not match and
		// keeps the checksum with the object; the others ignore it. The
		// key is not in lower case so that minio-go sends it as given
		// instead of asking for its trailing-header checksums, which
		// fewer stores take.
		opts.UserMetadata[headerChecksum] = base64.StdEncoding.EncodeToString(m.Sum[:])
		// Over http minio-go signs the body in 64 KiB chunks (a SHA-256
		// of every byte here and in the store), and that is kept: sent
		// unsigned instead (UNSIGNED-PAYLOAD, DisableContentSha256),
		// versitygw kept what a cut upload had sent as the object, while
		// a signed stream must end with its last chunk. Over https
		// minio-go sends the body unsigned whatever is set.
		_, err = t.c.PutObject(ctx, t.opt.Bucket, t.object(k), v, m.Size, opts)
	}
	if err != nil {
		if v.err != nil {
			return tiers.Info{}, tiers.Wrap(t.opt.Name, "put", k, v.err)
		}
		err = t.wrap("put", k, err)
		if errors.Is(err, tiers.ErrUnavailable) && t.reach.down() == nil && t.exists(ctx, k) {
			// A store may answer a conditional PUT's 412 before it has
			// read the body and close the connection (versitygw does):
			// the client sees its write cut, not the answer. An object
			// under the key now is that answer, or another writer's
			// value, or ours completed: the caller compares.
			return tiers.Info{}, tiers.Wrap(t.opt.Name, "put", k, fmt.Errorf("%w (the upload was cut off and the key holds an object)", tiers.ErrExist))
		}
		return tiers.Info{}, err
	}
	t.used(k)
	return tiers.Info{Key: k, Size: m.Size, Sum: m.Sum, Created: created}, nil
}

// exists reports whether k has an object (of flechefs's or not, whole or
// damaged), as far as one HEAD tells.
func (t *Tier) exists(ctx context.Context, k digest.Key) bool {
	ctx, cancel := context.WithTimeout(ctx, t.opt.Timeout)
	defer cancel()
	_, err := t.c.StatObject(ctx, t.opt.Bucket, t.object(k), minio.StatObjectOptions{})
	return err == nil
}

// putSpooled hashes a value of unknown size or checksum into a temp file,
// then puts it with both.
func (t *Tier) putSpooled(ctx context.Context, k digest.Key, r io.Reader, m tiers.Meta) (tiers.Info, error) {
	f, err := os.CreateTemp(t.opt.SpoolDir, "flechefs-s3-*")
	if err != nil {
		return tiers.Info{}, tiers.Wrap(t.opt.Name, "put", k, err)
	}
	os.Remove(f.Name())
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), r)
	if err != nil {
		return tiers.Info{}, tiers.Wrap(t.opt.Name, "put", k, err)
	}
	var sum digest.Sum
	copy(sum[:], h.Sum(nil))
	if m.Size >= 0 && n != m.Size {
		return tiers.Info{}, tiers.Wrap(t.opt.Name, "put", k, fmt.Errorf("%w: %d bytes, announced %d", tiers.ErrCorrupt, n, m.Size))
	}
	if !m.Sum.IsZero() && sum != m.Sum {
		return tiers.Info{}, tiers.Wrap(t.opt.Name, "put", k, fmt.Errorf("%w: sha256 %s, announced %s", tiers.ErrCorrupt, sum, m.Sum))
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return tiers.Info{}, tiers.Wrap(t.opt.Name, "put", k, err)
	}
	return t.Put(ctx, k, f, tiers.Meta{Size: n, Sum: sum, Created: m.Created})
}

// verifier passes a value through, and fails the stream instead of ending
// it when the bytes are not the ones announced: the store then never
// completes the object.
type verifier struct {
	r    io.Reader
	h    hash.Hash // nil: the size is checked, not the sum (Meta.Verified)
	want digest.Sum
	size int64
	n    int64
	err  error
}

// atEnd checks a value read up to its announced size (err is the last
// read's): its hash, or when not hashed, that nothing follows, since the
// client stops at the announced size and a longer value would otherwise
// pass for the first bytes of it.
func (v *verifier) atEnd(err error) error {
	if v.h != nil {
		var sum digest.Sum
		copy(sum[:], v.h.Sum(nil))
		if sum != v.want {
			return fmt.Errorf("%w: sha256 %s, announced %s", tiers.ErrCorrupt, sum, v.want)
		}
		return nil
	}
	if !errors.Is(err, io.EOF) {
		var one [1]byte
		if m, _ := io.ReadAtLeast(v.r, one[:], 1); m > 0 {
			return fmt.Errorf("%w: longer than the announced %d bytes", tiers.ErrCorrupt, v.size)
		}
	}
	return nil
}

func (v *verifier) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.r.Read(p)
	v.n += int64(n)
	if v.h != nil {
		v.h.Write(p[:n])
	}
	switch {
	case v.n > v.size:
		v.err = fmt.Errorf("%w: longer than the announced %d bytes", tiers.ErrCorrupt, v.size)
	case v.n == v.size:
		// Checked at the last byte: the client may not read again to see
		// the end.
		v.err = v.atEnd(err)
	case errors.Is(err, io.EOF):
		v.err = fmt.Errorf("%w: %d bytes, announced %d", tiers.ErrCorrupt, v.n, v.size)
	case err != nil:
		v.err = err
	}
	if v.err != nil {
		return 0, v.err
	}
	return n, err
}

// Delete removes k's object; ErrNotFound when there is none of flechefs's.
func (t *Tier) Delete(ctx context.Context, k digest.Key) error {
	if _, err := t.Stat(ctx, k); err != nil && !errors.Is(err, tiers.ErrCorrupt) {
		return err // a damaged object of flechefs's is removed too
	}
	ctx, cancel := context.WithTimeout(ctx, t.opt.Timeout)
	defer cancel()
	return t.wrap("delete", k, t.c.RemoveObject(ctx, t.opt.Bucket, t.object(k), minio.RemoveObjectOptions{}))
}

// List reports the objects under the prefix whose names are keys, with
// their sizes and times and a zero Sum (the metadata takes a request each;
// objects flechefs did not write are listed too, and absent to Stat).
func (t *Tier) List(ctx context.Context, fn func(tiers.Info) error) error {
	if err := t.unavailable("list", digest.Key{}); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for o := range t.c.ListObjects(ctx, t.opt.Bucket, minio.ListObjectsOptions{Prefix: t.opt.Prefix}) {
		if o.Err != nil {
			return t.wrap("list", digest.Key{}, o.Err)
		}
		k, err := digest.Parse(strings.TrimPrefix(o.Key, t.opt.Prefix))
		if err != nil {
			continue
		}
		if err := fn(tiers.Info{Key: k, Size: o.Size, Created: o.LastModified}); err != nil {
			return err
		}
	}
	return nil
}
