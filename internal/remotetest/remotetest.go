// Package remotetest gives the fault and integration tests one view of a
// remote store, whichever tier reaches it: an OpenSSH sshd (the sftp tier,
// internal/sshdtest) or a SeaweedFS S3 gateway (the s3 tier,
// internal/s3test). A scenario written once against Store runs against
// every kind (Each), so a remote tier cannot skip a fault the others pass.
package remotetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/mounttest"
	"github.com/flechefs/flechefs/internal/s3test"
	"github.com/flechefs/flechefs/internal/sshdtest"
	"github.com/flechefs/flechefs/tiers/sftp"
)

// Store is a running remote store.
type Store interface {
	// Kind is the remote tier's kind, and its name in stats and status:
	// "sftp" or "s3".
	Kind() string
	// Node starts a node (mounttest.NewNode) whose remote tier is this
	// store, its timeout o.RemoteTimeout.
	Node(t testing.TB, name string, o mounttest.Opts) *mounttest.Node
	// Stop kills the server: open connections drop, new ones are refused.
	Stop()
	// Restart brings a stopped server back with its data.
	Restart() error
	// Freeze stops the server's processes (SIGSTOP): connections stay
	// open and nothing answers, as with a hung host. Thaw resumes them.
	Freeze()
	Thaw()
	// Put stores data under key the way the tier does (with its checksum).
	Put(t testing.TB, key string, data []byte)
	// Get returns the value stored under key and the SHA-256 (hex)
	// recorded for it ("" when there is no record); an error wrapping
	// fs.ErrNotExist when the key has no value.
	Get(key string) (data []byte, sum string, err error)
	// Keys lists the keys the store holds values under, sorted.
	Keys(t testing.TB) []string
}

// Each runs f as a subtest per kind of store, named by the kind, with a
// function that starts a store of that kind.
func Each(t *testing.T, f func(t *testing.T, start func(testing.TB) Store)) {
	for _, k := range []struct {
		name  string
		start func(testing.TB) Store
	}{{"sftp", StartSFTP}, {"s3", StartS3}} {
		t.Run(k.name, func(t *testing.T) { f(t, k.start) })
	}
}

// SFTP is an sshd serving a directory, reached by the sftp tier.
type SFTP struct{ *sshdtest.Server }

// StartSFTP starts an sshd (sshdtest.Start).
func StartSFTP(t testing.TB) Store { t.Helper(); return &SFTP{sshdtest.Start(t)} }

func (s *SFTP) Kind() string { return "sftp" }

func (s *SFTP) Node(t testing.TB, name string, o mounttest.Opts) *mounttest.Node {
	t.Helper()
	return mounttest.NewNode(t, name, s.Server, o)
}

// Put writes the data file and its sum record in the served directory.
func (s *SFTP) Put(t testing.TB, key string, data []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(s.Dir, key), data, 0o644); err != nil {
		t.Fatal(err)
	}
	err := sftp.WriteLocalSum(s.Dir, key, sftp.SumRecord{Sum: digest.Sum(sha256.Sum256(data)), Size: int64(len(data)), Created: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
}

func (s *SFTP) Get(key string) ([]byte, string, error) {
	data, err := os.ReadFile(filepath.Join(s.Dir, key))
	if err != nil {
		return nil, "", err
	}
	r, err := sftp.LocalSum(s.Dir, key)
	if errors.Is(err, fs.ErrNotExist) {
		return data, "", nil
	}
	if err != nil {
		return data, "", err
	}
	return data, r.Sum.String(), nil
}

func (s *SFTP) Keys(t testing.TB) []string {
	t.Helper()
	ents, err := os.ReadDir(s.Dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if _, err := digest.Parse(e.Name()); err == nil && e.Type().IsRegular() {
			out = append(out, e.Name())
		}
	}
	return out
}

// S3 is a SeaweedFS S3 gateway, reached by the s3 tier; the nodes' values
// are objects under Prefix in its bucket.
type S3 struct {
	*s3test.Server
	Prefix string
	c      *minio.Client
}

// StartS3 starts a SeaweedFS (s3test.Start).
func StartS3(t testing.TB) Store { t.Helper(); return NewS3(t, s3test.Start(t)) }

// NewS3 is a Store of a started server.
func NewS3(t testing.TB, s *s3test.Server) *S3 {
	t.Helper()
	c, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	return &S3{Server: s, Prefix: "cache/", c: c}
}

func (s *S3) Kind() string { return "s3" }

// Node's s3 tier takes the test credentials from the daemon's environment.
func (s *S3) Node(t testing.TB, name string, o mounttest.Opts) *mounttest.Node {
	t.Helper()
	timeout := o.RemoteTimeout
	if timeout == "" {
		timeout = "5s"
	}
	o.MoreTiers = fmt.Sprintf("\n[[tier]]\nkind = \"s3\"\nendpoint = %q\nbucket = %q\nprefix = %q\npath_style = true\nregion = \"us-east-1\"\ntimeout = %q\n%s\n",
		s.Endpoint, s.Bucket, s.Prefix, timeout, o.RemoteTier) + o.MoreTiers
	o.Env = append(o.Env, "AWS_ACCESS_KEY_ID="+s3test.AccessKey, "AWS_SECRET_ACCESS_KEY="+s3test.SecretKey)
	return mounttest.NewNode(t, name, nil, o)
}

// Put stores the object with the metadata the tier writes.
func (s *S3) Put(t testing.TB, key string, data []byte) {
	t.Helper()
	s.put(t, key, data, map[string]string{
		"Flechefs-Sha256":  fmt.Sprintf("%x", sha256.Sum256(data)),
		"Flechefs-Size":    fmt.Sprint(len(data)),
		"Flechefs-Created": time.Now().UTC().Format(time.RFC3339Nano),
	})
}

// Overwrite replaces the bytes of key's object with data and keeps its
// metadata, as a tool or a bad disk under the store might: a damaged
// object when data is not the value.
func (s *S3) Overwrite(t testing.TB, key string, data []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	info, err := s.c.StatObject(ctx, s.Bucket, s.Prefix+key, minio.StatObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.put(t, key, data, info.UserMetadata)
}

func (s *S3) put(t testing.TB, key string, data []byte, meta map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := s.c.PutObject(ctx, s.Bucket, s.Prefix+key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{
		UserMetadata: meta, DisableMultipart: true,
	})
	if err != nil {
		t.Fatal(err)
	}
}

func (s *S3) Get(key string) ([]byte, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o, err := s.c.GetObject(ctx, s.Bucket, s.Prefix+key, minio.GetObjectOptions{})
	if err != nil {
		return nil, "", err
	}
	defer o.Close()
	info, err := o.Stat()
	if minio.ToErrorResponse(err).Code == "NoSuchKey" {
		return nil, "", fmt.Errorf("%s: %w", key, fs.ErrNotExist)
	}
	if err != nil {
		return nil, "", err
	}
	data, err := io.ReadAll(o)
	if err != nil {
		return nil, "", err
	}
	if int64(len(data)) != info.Size {
		return nil, "", fmt.Errorf("%s: read %d bytes of %d", key, len(data), info.Size)
	}
	return data, info.UserMetadata["Flechefs-Sha256"], nil
}

// Quarantined returns the bytes of each object in the tier's quarantine
// that holds a copy of key, oldest first.
func (s *S3) Quarantined(t testing.TB, key string) [][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out [][]byte
	for o := range s.c.ListObjects(ctx, s.Bucket, minio.ListObjectsOptions{Prefix: s.Prefix + ".flechefs/quarantine/" + key + "."}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		data, _, err := s.Get(strings.TrimPrefix(o.Key, s.Prefix))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, data)
	}
	return out
}

func (s *S3) Keys(t testing.TB) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out []string
	for o := range s.c.ListObjects(ctx, s.Bucket, minio.ListObjectsOptions{Prefix: s.Prefix}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		out = append(out, strings.TrimPrefix(o.Key, s.Prefix))
	}
	slices.Sort(out)
	return out
}

// Verify checks the store against want (key → hex SHA-256): it holds
// exactly those keys, each with those bytes and a record that says so.
func Verify(t testing.TB, s Store, want map[string]string) {
	t.Helper()
	keys := s.Keys(t)
	for _, k := range keys {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: %s is not an entry of the node", s.Kind(), k)
		}
	}
	for k, w := range want {
		data, sum, err := s.Get(k)
		switch got := fmt.Sprintf("%x", sha256.Sum256(data)); {
		case err != nil:
			t.Errorf("%s: %s: %v", s.Kind(), k[:12], err)
		case got != w:
			t.Errorf("%s: %s holds sha256 %s, the node %s", s.Kind(), k[:12], got, w)
		case sum != w:
			t.Errorf("%s: the record of %s says %q, the data is %s", s.Kind(), k[:12], sum, got)
		}
	}
}
