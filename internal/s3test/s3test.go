// Package s3test starts a real S3 server for tests: SeaweedFS's
// `weed server -s3` (master, volume server, filer and S3 gateway) on
// 127.0.0.1, in a directory of the test's own, as internal/sshdtest does
// for sshd. The weed binary is built once from SeaweedFS's Go module by
// scripts/seaweedfs.sh and found at $FLECHEFS_WEED or in its cache.
package s3test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Version is the SeaweedFS module version scripts/seaweedfs.sh builds.
const Version = "v0.0.0-20261109003541-7506e5f91cd6"

// Credentials the server accepts.
const (
	AccessKey = "flechefs-test"
	SecretKey = "flechefs-test-secret"
)

// Binary is where scripts/seaweedfs.sh puts the weed binary of Version.
func Binary() string {
	if p := os.Getenv("FLECHEFS_WEED"); p != "" {
		return p
	}
	return filepath.Join(cacheDir(), "weed-"+Version)
}

func cacheDir() string {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "flechefs-test")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".cache", "flechefs-test")
	}
	return filepath.Join(os.TempDir(), "flechefs-test")
}

// Server is a running SeaweedFS with its S3 gateway.
type Server struct {
	Endpoint string // http://127.0.0.1:PORT
	Bucket   string // made at Start
	Dir      string
	LogFile  string

	cmd  *exec.Cmd
	done chan struct{}
}

// Start starts a server in a new t.TempDir, makes a bucket, and stops the
// server at cleanup. It fails the test (never skips) when the binary is
// missing or the server does not come up.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := StartE(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Options size the server's storage.
type Options struct {
	// VolumeSizeLimitMB is the size of one volume, default 64;
	// MaxVolumes how many the volume server makes, default 20 (0 in
	// SeaweedFS is "from the free disk space": pass -1 for that).
	VolumeSizeLimitMB, MaxVolumes int
}

// StartE starts a server in dir and makes a bucket, as Start does, for
// callers without a testing.TB (the benchmark); the caller stops it.
func StartE(dir string, o Options) (*Server, error) {
	bin := Binary()
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("s3test: no SeaweedFS binary at %s (build it with scripts/seaweedfs.sh, which scripts/deps.sh test runs): %v", bin, err)
	}
	if o.VolumeSizeLimitMB == 0 {
		o.VolumeSizeLimitMB = 64
	}
	switch o.MaxVolumes {
	case 0:
		o.MaxVolumes = 20
	case -1:
		o.MaxVolumes = 0
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, Bucket: "flechefs"}
	s.LogFile = filepath.Join(s.Dir, "weed.log")
	ports, err := freePorts(7)
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(s.Dir, "s3.json")
	ident := fmt.Sprintf(`{"identities":[{"name":"test","credentials":[{"accessKey":%q,"secretKey":%q}],"actions":["Admin","Read","Write","List","Tagging"]}]}`, AccessKey, SecretKey)
	if err := os.WriteFile(cfg, []byte(ident), 0o600); err != nil {
		return nil, err
	}
	data := filepath.Join(s.Dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		return nil, err
	}
	args := []string{"server", "-dir=" + data, "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
		"-master.port=" + strconv.Itoa(ports[0]), "-master.port.grpc=" + strconv.Itoa(ports[1]),
		"-volume.port=" + strconv.Itoa(ports[2]), "-volume.port.grpc=" + strconv.Itoa(ports[3]),
		"-filer", "-filer.port=" + strconv.Itoa(ports[4]), "-filer.port.grpc=" + strconv.Itoa(ports[5]),
		"-s3", "-s3.port=" + strconv.Itoa(ports[6]), "-s3.config=" + cfg,
		"-master.volumeSizeLimitMB=" + strconv.Itoa(o.VolumeSizeLimitMB), "-volume.max=" + strconv.Itoa(o.MaxVolumes),
	}
	logf, err := os.Create(s.LogFile)
	if err != nil {
		return nil, err
	}
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	s.done = make(chan struct{})
	go func() { s.cmd.Wait(); logf.Close(); close(s.done) }()
	s.Endpoint = "http://127.0.0.1:" + strconv.Itoa(ports[6])
	if err := s.ready(); err != nil {
		s.Stop()
		log, _ := os.ReadFile(s.LogFile)
		return nil, fmt.Errorf("s3test: SeaweedFS did not come up: %v\n%s", err, tail(log))
	}
	return s, nil
}

// Client is a client of the server with the test credentials.
func (s *Server) Client() (*minio.Client, error) {
	return minio.New(s.Endpoint[len("http://"):], &minio.Options{
		Creds: credentials.NewStaticV4(AccessKey, SecretKey, ""), BucketLookup: minio.BucketLookupPath,
	})
}

// ready waits until the gateway makes the bucket (the filer and a volume
// must be up for that), at most a minute.
func (s *Server) ready() error {
	c, err := s.Client()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(time.Minute)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return fmt.Errorf("weed exited")
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		last = c.MakeBucket(ctx, s.Bucket, minio.MakeBucketOptions{})
		if r := minio.ToErrorResponse(last); r.Code == "BucketAlreadyOwnedByYou" || r.Code == "BucketAlreadyExists" {
			last = nil
		}
		if last == nil {
			// A first small object proves a volume is writable.
			_, last = c.PutObject(ctx, s.Bucket, ".ready", http.NoBody, 0, minio.PutObjectOptions{})
			if last == nil {
				c.RemoveObject(ctx, s.Bucket, ".ready", minio.RemoveObjectOptions{})
				cancel()
				return nil
			}
		}
		cancel()
		time.Sleep(200 * time.Millisecond)
	}
	return last
}

// Stop stops the server and its processes.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(3 * time.Second):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var out []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

func tail(b []byte) []byte {
	if len(b) > 4000 {
		return b[len(b)-4000:]
	}
	return b
}
