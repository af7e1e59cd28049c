package config

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// --remote s3://bucket[/prefix]: an S3 tier whose store, region and
// credentials come from where the AWS tools read them, so that a mount
// needs nothing the aws CLI does not.
//
//   - The endpoint: AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, else
//     endpoint_url in the profile's section of ~/.aws/config (its "s3 ="
//     sub-section first), else AWS S3 itself (https://s3.REGION.amazonaws.com).
//     AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true skips all but AWS.
//   - The region: AWS_REGION, else AWS_DEFAULT_REGION, else region in the
//     profile's section; else the store's default.
//   - The profile: AWS_PROFILE, else "default"; ~/.aws/config is
//     AWS_CONFIG_FILE when set.
//   - The credentials are the tier's (AWS_ACCESS_KEY_ID and
//     AWS_SECRET_ACCESS_KEY, else ~/.aws/credentials under the profile),
//     read when it opens: never in the configuration.
//
// The bucket is addressed in the path (path_style) unless the endpoint is
// AWS's: other stores are often on an IP address or without wildcard DNS.

// s3URL is a parsed s3://bucket[/prefix].
type s3URL struct{ bucket, prefix string }

const s3Form = "s3://bucket[/prefix]"

// parseS3URL checks s3://bucket[/prefix]. The prefix is a directory of
// the bucket: it gets a trailing "/".
func parseS3URL(s string) (s3URL, error) {
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return s3URL{}, fmt.Errorf("not a URL: %v", err)
	}
	switch {
	case u.Opaque != "":
		return s3URL{}, fmt.Errorf("want %s, with two slashes", s3Form)
	case u.User != nil:
		return s3URL{}, errors.New("do not put credentials in the URL: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use ~/.aws/credentials")
	case u.Port() != "":
		return s3URL{}, fmt.Errorf("a port has no meaning here: the host part is the bucket; the store's address is AWS_ENDPOINT_URL (for example http://127.0.0.1:%s)", u.Port())
	case u.Host == "":
		return s3URL{}, fmt.Errorf("no bucket: want %s", s3Form)
	case u.RawQuery != "" || u.ForceQuery:
		return s3URL{}, errors.New("a query (?...) has no meaning here")
	case u.Fragment != "":
		return s3URL{}, errors.New("a fragment (#...) has no meaning here")
	}
	if err := checkBucket(u.Host); err != nil {
		return s3URL{}, err
	}
	prefix := strings.TrimPrefix(u.Path, "/")
	if prefix != "" {
		prefix = strings.TrimSuffix(prefix, "/")
		for _, seg := range strings.Split(prefix, "/") {
			if seg == "" || seg == "." || seg == ".." {
				return s3URL{}, fmt.Errorf("prefix %q: empty, \".\" and \"..\" path segments are not allowed", u.Path)
			}
		}
		prefix += "/"
	}
	return s3URL{bucket: u.Host, prefix: prefix}, nil
}

// checkBucket checks S3's bucket naming rules: 3 to 63 lowercase letters,
// digits, dots and hyphens, beginning and ending with a letter or digit.
func checkBucket(b string) error {
	bad := fmt.Errorf("bucket %q: want 3 to 63 lowercase letters, digits, '.' and '-', beginning and ending with a letter or digit", b)
	if len(b) < 3 || len(b) > 63 {
		return bad
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (c != '.' && c != '-' || i == 0 || i == len(b)-1) {
			return bad
		}
	}
	if strings.Contains(b, "..") {
		return bad
	}
	return nil
}

// awsSettings are the endpoint, region and profile the AWS environment
// gives an S3 tier. endpointFrom names where the endpoint came from (""
// when it is AWS's default).
type awsSettings struct {
	endpoint, endpointFrom string
	region                 string
	profile                string
}

// readAWS reads the AWS environment and the profile's section of the AWS
// config file (a missing file is no error).
func readAWS(env Env) (awsSettings, error) {
	getenv := func(k string) string {
		if env.Getenv == nil {
			return ""
		}
		return strings.TrimSpace(env.Getenv(k))
	}
	var a awsSettings
	a.profile = getenv("AWS_PROFILE")
	profile := a.profile
	if profile == "" {
		profile = "default"
	}
	file := getenv("AWS_CONFIG_FILE")
	if file == "" && env.Home != "" {
		file = filepath.Join(env.Home, ".aws", "config")
	}
	var sec awsSection
	if file != "" {
		var err error
		if sec, err = readAWSConfig(file, profile); err != nil {
			return a, err
		}
	}
	ignore := strings.EqualFold(getenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"), "true")
	for _, c := range []struct{ v, from string }{
		{getenv("AWS_ENDPOINT_URL_S3"), "AWS_ENDPOINT_URL_S3"},
		{getenv("AWS_ENDPOINT_URL"), "AWS_ENDPOINT_URL"},
		{sec.s3EndpointURL, fmt.Sprintf("%s, profile %q, s3 endpoint_url", file, profile)},
		{sec.endpointURL, fmt.Sprintf("%s, profile %q, endpoint_url", file, profile)},
	} {
		if c.v != "" && !ignore {
			e, err := checkEndpoint(c.v)
			if err != nil {
				return a, fmt.Errorf("%s: endpoint %q: %v", c.from, c.v, err)
			}
			a.endpoint, a.endpointFrom = e, c.from
			break
		}
	}
	for _, r := range []string{getenv("AWS_REGION"), getenv("AWS_DEFAULT_REGION"), sec.region} {
		if r != "" {
			a.region = r
			break
		}
	}
	if a.endpoint == "" {
		a.endpoint = "https://s3.amazonaws.com"
		if a.region != "" {
			a.endpoint = "https://s3." + a.region + ".amazonaws.com"
		}
	}
	return a, nil
}

// awsSection is what flechefs reads of one profile of the AWS config file.
type awsSection struct{ region, endpointURL, s3EndpointURL string }

// readAWSConfig reads the section of profile ("[default]" or "[profile
// NAME]") of the AWS config file, an INI file in which "s3 =" opens a
// sub-section of indented keys.
func readAWSConfig(file, profile string) (awsSection, error) {
	var s awsSection
	f, err := os.Open(file)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, err
	}
	defer f.Close()
	want := "profile " + profile
	in, sub := false, ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		raw := sc.Text()
		line := strings.TrimSpace(raw)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' {
			name := strings.Join(strings.Fields(strings.Trim(line, "[]")), " ")
			in = name == want || profile == "default" && name == "default"
			sub = ""
			continue
		}
		if !in {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		indented := raw[0] == ' ' || raw[0] == '\t'
		switch {
		case !indented && v == "":
			sub = k
		case !indented:
			sub = ""
			switch k {
			case "region":
				s.region = v
			case "endpoint_url":
				s.endpointURL = v
			}
		case sub == "s3" && k == "endpoint_url":
			s.s3EndpointURL = v
		}
	}
	if err := sc.Err(); err != nil {
		return s, fmt.Errorf("%s: %w", file, err)
	}
	return s, nil
}

// isAWSEndpoint reports whether endpoint is AWS S3's, which addresses
// buckets by host name.
func isAWSEndpoint(endpoint string) bool {
	u, err := url.Parse(endpoint)
	return err == nil && (u.Hostname() == "amazonaws.com" || strings.HasSuffix(u.Hostname(), ".amazonaws.com"))
}

// setS3Remote applies --remote s3://...: the bucket and prefix of the last
// tier when it is an s3 tier (with the environment's endpoint and region
// when it sets them), else a new s3 tier at the end.
func setS3Remote(c *Config, env Env, v string) error {
	u, err := parseS3URL(v)
	if err != nil {
		return err
	}
	a, err := readAWS(env)
	if err != nil {
		return err
	}
	if i := len(c.Tiers) - 1; i >= 0 && c.Tiers[i].Kind == S3 {
		t := &c.Tiers[i]
		t.Bucket, t.Prefix = u.bucket, u.prefix
		if a.endpointFrom != "" {
			t.Endpoint, t.PathStyle = a.endpoint, !isAWSEndpoint(a.endpoint)
		}
		if a.region != "" {
			t.Region = a.region
		}
		if a.profile != "" {
			t.Profile = a.profile
		}
		t.origin, t.At = flagOrigin("remote"), "--remote"
		return nil
	}
	t := Tier{Kind: S3, S3Keys: S3Keys{Bucket: u.bucket, Prefix: u.prefix, Endpoint: a.endpoint, PathStyle: !isAWSEndpoint(a.endpoint),
		Region: a.region, Profile: a.profile}, origin: flagOrigin("remote"), At: "--remote"}
	t.setDefaults()
	c.Tiers = append(c.Tiers, t)
	return nil
}
