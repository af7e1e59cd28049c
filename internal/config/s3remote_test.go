package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRemoteS3 applies --remote s3://... with the AWS environment and
// config file in their usual places.
func TestRemoteS3(t *testing.T) {
	home := t.TempDir()
	if err := os.MkdirAll(filepath.Join(home, ".aws"), 0o700); err != nil {
		t.Fatal(err)
	}
	awsConfig := `# a comment
[default]
region = us-west-2
endpoint_url = http://default.example.org:9000

[profile team]
region = eu-west-1
endpoint_url = http://everything.example.org
s3 =
  endpoint_url = https://minio.example.org
  addressing_style = path
output = json

[profile other]
region = ap-south-1
`
	if err := os.WriteFile(filepath.Join(home, ".aws", "config"), []byte(awsConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	type want struct {
		endpoint, region, bucket, prefix, profile string
		pathStyle                                 bool
	}
	for _, tc := range []struct {
		name string
		vars map[string]string
		ovs  []string // --remote values, in order
		want want
		err  string
	}{
		{name: "endpoint from the environment", ovs: []string{"s3://flechefs/cache/v1"},
			vars: map[string]string{"AWS_ENDPOINT_URL": "http://127.0.0.1:8333", "AWS_REGION": "us-east-1", "AWS_CONFIG_FILE": "/nonexistent"},
			want: want{endpoint: "http://127.0.0.1:8333", region: "us-east-1", bucket: "flechefs", prefix: "cache/v1/", pathStyle: true}},
		{name: "the S3 endpoint variable wins", ovs: []string{"s3://flechefs/"},
			vars: map[string]string{"AWS_ENDPOINT_URL": "http://a.example.org", "AWS_ENDPOINT_URL_S3": "http://b.example.org:9000/", "AWS_DEFAULT_REGION": "r1", "AWS_REGION": "r2"},
			want: want{endpoint: "http://b.example.org:9000", region: "r2", bucket: "flechefs", pathStyle: true}},
		{name: "default profile of the config file", ovs: []string{"s3://flechefs"},
			want: want{endpoint: "http://default.example.org:9000", region: "us-west-2", bucket: "flechefs", pathStyle: true}},
		{name: "AWS_PROFILE, its s3 sub-section first", ovs: []string{"s3://flechefs/x"},
			vars: map[string]string{"AWS_PROFILE": "team"},
			want: want{endpoint: "https://minio.example.org", region: "eu-west-1", bucket: "flechefs", prefix: "x/", profile: "team", pathStyle: true}},
		{name: "AWS itself", ovs: []string{"s3://my.bucket-1/p"},
			vars: map[string]string{"AWS_PROFILE": "other"},
			want: want{endpoint: "https://s3.ap-south-1.amazonaws.com", region: "ap-south-1", bucket: "my.bucket-1", prefix: "p/", profile: "other"}},
		{name: "configured endpoints ignored", ovs: []string{"s3://flechefs"},
			vars: map[string]string{"AWS_ENDPOINT_URL": "http://127.0.0.1:8333", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true", "AWS_CONFIG_FILE": "/nonexistent"},
			want: want{endpoint: "https://s3.amazonaws.com", bucket: "flechefs"}},
		{name: "a second s3 URL replaces the first", ovs: []string{"s3://first/a", "s3://second/b"},
			vars: map[string]string{"AWS_ENDPOINT_URL": "http://127.0.0.1:8333"},
			want: want{endpoint: "http://127.0.0.1:8333", region: "us-west-2", bucket: "second", prefix: "b/", pathStyle: true}},

		{name: "no bucket", ovs: []string{"s3://"}, err: `--remote "s3://": no bucket: want s3://bucket[/prefix]`},
		{name: "one slash", ovs: []string{"s3:bucket"}, err: `--remote "s3:bucket": want s3://bucket[/prefix], with two slashes`},
		{name: "bad bucket", ovs: []string{"s3://My_Bucket/x"}, err: `--remote "s3://My_Bucket/x": bucket "My_Bucket": want 3 to 63 lowercase letters`},
		{name: "credentials in the URL", ovs: []string{"s3://AKIA:secret@bucket"}, err: `--remote "s3://AKIA:secret@bucket": do not put credentials in the URL`},
		{name: "a port", ovs: []string{"s3://127.0.0.1:8333/bucket"}, err: `--remote "s3://127.0.0.1:8333/bucket": a port has no meaning here: the host part is the bucket; the store's address is AWS_ENDPOINT_URL`},
		{name: "empty segment", ovs: []string{"s3://bucket/a//b"}, err: `--remote "s3://bucket/a//b": prefix "/a//b": empty`},
		{name: "query", ovs: []string{"s3://bucket?region=x"}, err: `--remote "s3://bucket?region=x": a query (?...) has no meaning here`},
		{name: "bad endpoint variable", ovs: []string{"s3://bucket"}, vars: map[string]string{"AWS_ENDPOINT_URL": "ftp://x"},
			err: `--remote "s3://bucket": AWS_ENDPOINT_URL: endpoint "ftp://x": want http(s)://host[:port]`},
		{name: "other scheme", ovs: []string{"gs://bucket"}, err: `--remote "gs://bucket": scheme "gs": want sftp://[user@]host[:port]/path or s3://bucket[/prefix]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := testEnv()
			env.Home = home
			env.Getenv = func(k string) string { return tc.vars[k] }
			c, err := Parse(DefaultName, []byte(DefaultTOML), testEnv())
			if err != nil {
				t.Fatal(err)
			}
			var ovs []Override
			for _, v := range tc.ovs {
				ovs = append(ovs, Override{"remote", v})
			}
			err = c.Apply(env, ovs)
			if tc.err != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tc.err) {
					t.Fatalf("error %v; want %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Tiers) != 3 {
				t.Fatalf("tiers: %s; want ram, bolt and one s3 tier", c.Describe())
			}
			r := c.Tiers[2]
			got := want{r.Endpoint, r.Region, r.Bucket, r.Prefix, r.Profile, r.PathStyle}
			if r.Kind != S3 || got != tc.want {
				t.Errorf("tier %s %+v; want %+v", r.Kind, got, tc.want)
			}
			if r.Name != "s3" || r.At != "--remote" || r.Timeout != c.RemoteTimeout {
				t.Errorf("tier name %q, at %q, timeout %v", r.Name, r.At, r.Timeout)
			}
		})
	}
}

// TestRemoteS3BesideSFTP: an s3 URL adds a tier below an sftp one, and
// "none" removes both.
func TestRemoteS3BesideSFTP(t *testing.T) {
	env := testEnv()
	env.Home = t.TempDir()
	c, err := Parse(DefaultName, []byte(DefaultTOML), testEnv())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(env, []Override{{"remote", "sftp://h/srv/c"}, {"remote", "s3://bucket/p"}}); err != nil {
		t.Fatal(err)
	}
	if got, want := c.Describe(), "ram 256MiB, bolt 10GiB, sftp sftp://h/srv/c, s3 s3://bucket/p/ at https://s3.amazonaws.com"; got != want {
		t.Errorf("Describe = %q; want %q", got, want)
	}
	if err := c.Apply(env, []Override{{"remote", "none"}}); err != nil {
		t.Fatal(err)
	}
	if got, want := c.Describe(), "ram 256MiB, bolt 10GiB"; got != want {
		t.Errorf("after none: %q; want %q", got, want)
	}
}
