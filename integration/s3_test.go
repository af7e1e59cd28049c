package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flechefs/flechefs/internal/mounttest"
	"github.com/flechefs/flechefs/internal/remotetest"
	"github.com/flechefs/flechefs/internal/s3test"
)

// TestTwoMountsShareABucket: two machines whose remote is the same S3
// bucket (a real SeaweedFS): a value written on one is uploaded (an object
// named by its key, with its SHA-256 in metadata) and read on the other;
// a second writer of the key keeps the first value.
func TestTwoMountsShareABucket(t *testing.T) {
	s := remotetest.NewS3(t, s3test.Start(t))
	a := s.Node(t, "s3-a", mounttest.Opts{})
	b := s.Node(t, "s3-b", mounttest.Opts{})
	k := mounttest.Key("shared through s3")
	v := bytes.Repeat([]byte("s3 value "), 300000) // 2.7 MB
	if err := os.WriteFile(a.Path(k), v, 0o644); err != nil {
		t.Fatal(err)
	}
	a.Sync(time.Minute)
	if got, sum, err := s.Get(k); err != nil || !bytes.Equal(got, v) || sum != mounttest.Sum(v) {
		t.Fatalf("the object in the bucket: %d bytes, checksum %q, %v", len(got), sum, err)
	}
	got, err := os.ReadFile(b.Path(k))
	if err != nil || !bytes.Equal(got, v) {
		t.Fatalf("read on the second mount: %d bytes, %v\n%s", len(got), err, b.Stderr())
	}
	// Written again on the second mount, whose lookup found the value:
	// the first value stays everywhere.
	k2 := mounttest.Key("s3 first writer")
	if err := os.WriteFile(a.Path(k2), []byte("first"), 0o644); err != nil {
		t.Fatal(err)
	}
	a.Sync(time.Minute)
	if err := os.WriteFile(b.Path(k2), []byte("second"), 0o644); err != nil {
		t.Fatal(err)
	}
	b.Sync(time.Minute)
	for _, n := range []*mounttest.Node{a, b} {
		if got, err := os.ReadFile(n.Path(k2)); err != nil || string(got) != "first" {
			t.Errorf("%s reads %q, %v; want the first value", n.Name, got, err)
		}
	}
}

// TestMountRemoteS3URL mounts with --remote s3://bucket/prefix and nothing
// else about the store in the configuration: the endpoint and region come
// from AWS_ENDPOINT_URL and AWS_REGION, the credentials from
// ~/.aws/credentials under AWS_PROFILE. A value written on one mount
// lands under the URL's prefix and is read on another, a large one
// through the ranged fetch.
func TestMountRemoteS3URL(t *testing.T) {
	s := s3test.Start(t)
	home := t.TempDir()
	creds := fmt.Sprintf("[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n[flechefs]\naws_access_key_id = %s\naws_secret_access_key = %s\n", s3test.AccessKey, s3test.SecretKey)
	if err := os.MkdirAll(filepath.Join(home, ".aws"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, ".aws", "credentials"), []byte(creds), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"HOME=" + home, "AWS_PROFILE=flechefs", "AWS_ENDPOINT_URL=" + s.Endpoint, "AWS_REGION=us-east-1",
		"AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY=", "AWS_CONFIG_FILE=", "AWS_SHARED_CREDENTIALS_FILE="}
	o := mounttest.Opts{Env: env, Args: []string{"--remote", "s3://" + s.Bucket + "/via-flag"}}
	a := mounttest.NewNode(t, "s3url-a", nil, o)
	b := mounttest.NewNode(t, "s3url-b", nil, o)
	small, large := mounttest.Key("s3 url small"), mounttest.Key("s3 url large")
	vs, vl := []byte("a small value"), bytes.Repeat([]byte("0123456789abcdef"), 20<<20/16+7)
	if err := os.WriteFile(a.Path(small), vs, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(a.Path(large), vl, 0o644); err != nil {
		t.Fatal(err)
	}
	a.Sync(time.Minute)
	st := remotetest.NewS3(t, s)
	st.Prefix = "via-flag/"
	for k, v := range map[string][]byte{small: vs, large: vl} {
		got, sum, err := st.Get(k)
		if err != nil || !bytes.Equal(got, v) || sum != mounttest.Sum(v) {
			t.Fatalf("object via-flag/%s: %d bytes, checksum %q, %v\n%s", k, len(got), sum, err, a.Stderr())
		}
	}
	for k, v := range map[string][]byte{small: vs, large: vl} {
		got, err := os.ReadFile(b.Path(k))
		if err != nil || !bytes.Equal(got, v) {
			t.Fatalf("read of %s on the second mount: %d bytes, %v; want the %d written\n%s", k, len(got), err, len(v), b.Stderr())
		}
	}
	if !strings.Contains(b.Stderr(), "s3 s3://"+s.Bucket+"/via-flag/ at "+s.Endpoint) {
		t.Errorf("the mounted line does not name the bucket, prefix and endpoint:\n%s", b.Stderr())
	}
}

// TestS3RetentionThroughMount: a mount whose S3 tier has max_size runs
// its passes against the bucket: `flechefs prune --dry-run` and `flechefs
// prune` count the entries uploaded through the mount, keep those younger
// than prune_grace (S3 cannot be made to look older; tiers/s3's TestPrune
// removes entries), and `flechefs status` shows the pass.
func TestS3RetentionThroughMount(t *testing.T) {
	s := remotetest.NewS3(t, s3test.Start(t))
	n := s.Node(t, "s3-retention", mounttest.Opts{RemoteTier: "max_size = \"150KiB\"\nprune_grace = \"1h\"\n"})
	for i := range 3 {
		k := mounttest.Key(fmt.Sprintf("s3 retention %d", i))
		if err := os.WriteFile(n.Path(k), bytes.Repeat([]byte{byte(i)}, 100<<10), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	n.Sync(time.Minute)
	for _, args := range [][]string{{"prune", "--dry-run", n.Mnt}, {"prune", n.Mnt}} {
		out, err := n.Flechefs(args...)
		if err != nil || !strings.Contains(out, "max_size 150KiB") || !strings.Contains(out, "3 entries, 300KiB of values") ||
			!strings.Contains(out, " 0 entries") || !strings.Contains(out, "3 kept by prune_grace") {
			t.Fatalf("flechefs %s: %v\n%s\n%s", strings.Join(args, " "), err, out, n.Stderr())
		}
	}
	if st := n.Status(); !strings.Contains(st, "retention:") || !strings.Contains(st, "max_size 150KiB") {
		t.Errorf("status does not show the pass:\n%s", st)
	}
}
