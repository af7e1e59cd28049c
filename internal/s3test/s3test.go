// Package s3test starts a real S3 server for tests: SeaweedFS's
// `weed server -s3` (master, volume server, filer and S3 gateway) on
// 127.0.0.1, in a directory of the test's own, as internal/sshdtest does
// for sshd. The weed binary is built once from SeaweedFS's Go module by
// scripts/seaweedfs.sh and found at $FLECHEFS_WEED or in its cache.
//
// With Options.VolumeServers of 2 or more, the parts run as processes of
// their own (weed master, weed volume per server, weed filer, weed s3) and the
// master replicates every write on that many volume servers, so that a
// test can kill one of them (KillVolume) and read from the others.
//
// With Options.Gateway "versitygw", the server is instead the Versity S3
// Gateway over a POSIX directory (`versitygw posix`), a second S3
// implementation for the tier's conformance suite, built by
// scripts/versitygw.sh and found at $FLECHEFS_VERSITYGW or in the cache.
package s3test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Version is the SeaweedFS module version scripts/seaweedfs.sh builds.
const Version = "v0.0.0-20261109003541-7506e5f91cd6"

// VersityVersion is the versitygw module version scripts/versitygw.sh
// installs.
const VersityVersion = "v1.8.0"

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

// VersityBinary is where scripts/versitygw.sh puts the versitygw binary of
// VersityVersion.
func VersityBinary() string {
	if p := os.Getenv("FLECHEFS_VERSITYGW"); p != "" {
		return p
	}
	return filepath.Join(cacheDir(), "versitygw-"+VersityVersion)
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

// Options shape the server.
type Options struct {
	// VolumeServers is the number of volume servers; 2 or more starts the
	// parts as separate processes and replicates each write on every
	// volume server (replication 00N-1: copies on other servers of the
	// same rack). 0 or 1 is one `weed server`.
	VolumeServers int
	// VolumeSizeLimitMB is the size of one volume, default 64;
	// MaxVolumes how many a volume server makes, default 20 (0 in
	// SeaweedFS is "from the free disk space": pass -1 for that).
	VolumeSizeLimitMB, MaxVolumes int
	// Gateway "versitygw" starts the Versity S3 Gateway over a directory
	// instead of SeaweedFS (VolumeServers and the volume options do not
	// apply); "" is SeaweedFS.
	Gateway string
}

// Server is a running SeaweedFS with its S3 gateway.
type Server struct {
	Endpoint string // http://127.0.0.1:PORT
	Bucket   string // made at Start
	Dir      string
	LogFile  string // the log of the S3 gateway's process

	bin   string
	kind  string // "SeaweedFS" or "versitygw", for messages
	mu    sync.Mutex
	procs []*proc // the gateway last: started last, stopped first
}

// proc is one weed process.
type proc struct {
	name string
	args []string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
}

// Start starts a server (one `weed server`) in a new t.TempDir, makes a
// bucket, and stops the server at cleanup. It fails the test (never
// skips) when the binary is missing or the server does not come up.
func Start(t testing.TB) *Server { t.Helper(); return StartWith(t, Options{}) }

// StartWith starts a server shaped by o, as Start does.
func StartWith(t testing.TB, o Options) *Server {
	t.Helper()
	s, err := StartE(t.TempDir(), o)
	if s != nil {
		t.Cleanup(s.Stop)
	}
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// StartE starts a server in dir and makes a bucket, as Start does, for
// callers without a testing.TB (the benchmark); the caller stops it, also
// after an error when it returns a Server.
func StartE(dir string, o Options) (*Server, error) {
	if o.Gateway == "versitygw" {
		return startVersity(dir)
	}
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
	s := &Server{Dir: dir, Bucket: "flechefs", bin: bin, kind: "SeaweedFS"}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cfg := filepath.Join(s.Dir, "s3.json")
	ident := fmt.Sprintf(`{"identities":[{"name":"test","credentials":[{"accessKey":%q,"secretKey":%q}],"actions":["Admin","Read","Write","List","Tagging"]}]}`, AccessKey, SecretKey)
	if err := os.WriteFile(cfg, []byte(ident), 0o600); err != nil {
		return nil, err
	}
	var dirErr error
	mkdir := func(name string) string {
		d := filepath.Join(s.Dir, name)
		if err := os.MkdirAll(d, 0o755); err != nil && dirErr == nil {
			dirErr = err
		}
		return d
	}
	// Every port at once: ports taken one by one could repeat.
	ports, err := freePorts(8 + 2*max(o.VolumeServers, 1))
	if err != nil {
		return nil, err
	}
	port := func() string {
		p := ports[0]
		ports = ports[1:]
		return strconv.Itoa(p)
	}
	size, maxVol := strconv.Itoa(o.VolumeSizeLimitMB), strconv.Itoa(o.MaxVolumes)
	s3Port := port()
	s.Endpoint = "http://127.0.0.1:" + s3Port
	if o.VolumeServers < 2 {
		s.add("server", "server", "-dir="+mkdir("data"), "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
			"-master.port="+port(), "-master.port.grpc="+port(),
			"-volume.port="+port(), "-volume.port.grpc="+port(),
			"-filer", "-filer.port="+port(), "-filer.port.grpc="+port(),
			"-s3", "-s3.port="+s3Port, "-s3.config="+cfg,
			// Off: their fixed default ports collide when two servers
			// start at once.
			"-s3.port.iceberg=0", "-s3.port.lance=0",
			"-master.volumeSizeLimitMB="+size, "-volume.max="+maxVol, "-master.telemetry=false")
	} else {
		mp, mg := port(), port()
		master := "127.0.0.1:" + mp + "." + mg // SeaweedFS's host:port.grpcPort
		s.add("master", "master", "-mdir="+mkdir("master"), "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
			"-port="+mp, "-port.grpc="+mg, "-peers=none", "-volumeSizeLimitMB="+size, "-telemetry=false",
			fmt.Sprintf("-defaultReplication=00%d", o.VolumeServers-1))
		for i := range o.VolumeServers {
			s.add(fmt.Sprintf("volume%d", i), "volume", "-dir="+mkdir(fmt.Sprintf("volume%d", i)), "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
				"-port="+port(), "-port.grpc="+port(), "-master="+master, "-max="+maxVol, "-preStopSeconds=0")
		}
		fp, fg := port(), port()
		s.add("filer", "filer", "-defaultStoreDir="+mkdir("filer"), "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
			"-port="+fp, "-port.grpc="+fg, "-master="+master)
		// A gateway of its own: `weed filer -s3` of this version never
		// started its gateway here.
		s.add("s3", "s3", "-filer=127.0.0.1:"+fp+"."+fg, "-ip.bind=127.0.0.1", "-port="+s3Port,
			"-port.grpc="+port(), "-port.iceberg=0", "-port.lance=0", "-config="+cfg)
	}
	if dirErr != nil {
		return nil, dirErr
	}
	s.LogFile = s.procs[len(s.procs)-1].log
	if err := s.Restart(); err != nil {
		return s, fmt.Errorf("s3test: %v", err)
	}
	return s, nil
}

// startVersity starts `versitygw posix` on a directory of dir, with the
// test credentials as its root account.
func startVersity(dir string) (*Server, error) {
	bin := VersityBinary()
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("s3test: no versitygw binary at %s (install it with scripts/versitygw.sh, which scripts/deps.sh test runs): %v", bin, err)
	}
	s := &Server{Dir: dir, Bucket: "flechefs", bin: bin, kind: "versitygw"}
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	ports, err := freePorts(1)
	if err != nil {
		return nil, err
	}
	s.Endpoint = fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	s.add("versitygw", "--access", AccessKey, "--secret", SecretKey, "--port", s.Endpoint[len("http://"):], "posix", root)
	s.LogFile = s.procs[0].log
	if err := s.Restart(); err != nil {
		return s, fmt.Errorf("s3test: %v", err)
	}
	return s, nil
}

func (s *Server) add(name string, args ...string) {
	s.procs = append(s.procs, &proc{name: name, args: args, log: filepath.Join(s.Dir, name+".log")})
}

// Client is a client of the server with the test credentials.
func (s *Server) Client() (*minio.Client, error) {
	return minio.New(s.Endpoint[len("http://"):], &minio.Options{
		Creds: credentials.NewStaticV4(AccessKey, SecretKey, ""), BucketLookup: minio.BucketLookupPath,
	})
}

// Restart starts every process that is not running (all of them after
// Stop, or a volume server after KillVolume) and waits, at most a minute,
// until the gateway stores an object.
func (s *Server) Restart() error {
	s.mu.Lock()
	for _, p := range s.procs {
		if p.cmd != nil {
			continue
		}
		if err := p.start(s.bin); err != nil {
			s.mu.Unlock()
			return err
		}
	}
	s.mu.Unlock()
	if err := s.ready(); err != nil {
		return fmt.Errorf("%s did not come up: %v\n%s", s.kind, err, s.tails())
	}
	return nil
}

func (p *proc) start(bin string) error {
	logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, p.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("%s %s: %w", filepath.Base(bin), p.name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	p.cmd, p.done = cmd, done
	return nil
}

// ready waits until the gateway makes the bucket (the filer must be up for
// that) and stores an object of one byte, at most a minute. The byte is
// what proves the volume servers up: SeaweedFS keeps an empty object in the
// filer alone, while any byte goes to a volume that takes writes only when
// as many volume servers as the replication asks for have registered with
// the master. A volume server restarted after KillVolume may take seconds
// to register, and a test that kills another before then leaves its reads
// no replica.
func (s *Server) ready() error {
	c, err := s.Client()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(time.Minute)
	var last error
	for time.Now().Before(deadline) {
		if p := s.exited(); p != "" {
			return fmt.Errorf("%s process %q exited", s.kind, p)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		last = c.MakeBucket(ctx, s.Bucket, minio.MakeBucketOptions{})
		if r := minio.ToErrorResponse(last); r.Code == "BucketAlreadyOwnedByYou" || r.Code == "BucketAlreadyExists" {
			last = nil
		}
		if last == nil {
			_, last = c.PutObject(ctx, s.Bucket, ".ready", strings.NewReader("r"), 1, minio.PutObjectOptions{})
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

// exited names a process that was started and has exited, or is "".
func (s *Server) exited() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.procs {
		if p.cmd == nil {
			continue
		}
		select {
		case <-p.done:
			return p.name
		default:
		}
	}
	return ""
}

// Stop SIGKILLs every process, as a crash would: open connections drop at
// once (a SIGTERM lets the gateway finish the requests it serves, and the
// volume servers wait before they exit). Restart brings the server back
// with its data.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.procs) - 1; i >= 0; i-- {
		s.procs[i].kill()
	}
}

// KillVolume SIGKILLs volume server i (of Options.VolumeServers); the
// other processes go on. Restart starts it again.
func (s *Server) KillVolume(i int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, p := range s.procs {
		if p.args[0] == "volume" {
			if n == i {
				p.kill()
				return
			}
			n++
		}
	}
	panic(fmt.Sprintf("s3test: no volume server %d", i))
}

func (p *proc) kill() {
	if p.cmd == nil {
		return
	}
	// A frozen process dies of SIGKILL too.
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
	p.cmd = nil
}

// Freeze SIGSTOPs every process: connections stay open and the server
// answers nothing, as with a hung host or a lost route. Thaw undoes it;
// Stop works on a frozen server.
func (s *Server) Freeze() { s.signal(syscall.SIGSTOP) }

// Thaw resumes a frozen server.
func (s *Server) Thaw() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.procs {
		if p.cmd != nil {
			syscall.Kill(-p.cmd.Process.Pid, sig)
		}
	}
}

// tails is the end of every process's log.
func (s *Server) tails() string {
	var out string
	for _, p := range s.procs {
		b, _ := os.ReadFile(p.log)
		out += fmt.Sprintf("--- %s (%s):\n%s\n", p.name, p.log, tail(b))
	}
	return out
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
