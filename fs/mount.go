package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"syscall"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Defaults and limits of Options.
const (
	DefaultSpoolThreshold = 1 << 20
	DefaultNegativeTTL    = time.Second
	// MaxNegativeTTL bounds NegativeTTL: a name published by another mount
	// of the same stack must become visible here within this time.
	MaxNegativeTTL  = 2 * time.Second
	DefaultEntryTTL = time.Hour
	// DefaultReadAheadKB is written to the mount's read_ahead_kb.
	DefaultReadAheadKB = 1024
	// maxIO is the largest READ and WRITE request (fuse MaxWrite) and the
	// readahead the kernel is asked for at INIT.
	maxIO = 1 << 20

	// maxBackground is the kernel's limit of background requests (reads
	// ahead, RELEASE) in flight.
	maxBackground = 256

	// DefaultUploadWhileWriting is Options.UploadWhileWriting's default.
	DefaultUploadWhileWriting = 8 << 20
)

// Options configure a mount. The zero value is usable.
type Options struct {
	// SpoolDir holds the temporary files of values being written (unlinked
	// at once, so nothing is left behind by a crash). Default os.TempDir().
	SpoolDir string
	// SpoolThreshold is how many bytes a write handle keeps in memory
	// before it moves its data to a temp file in SpoolDir (default 1 MiB).
	SpoolThreshold int
	// NegativeTTL is how long a miss is remembered, by the daemon and by
	// the kernel (default 1s). At most MaxNegativeTTL; negative disables
	// negative caching.
	NegativeTTL time.Duration
	// EntryTTL is the kernel's entry and attribute timeout for published
	// entries (default 1h; entries are immutable).
	EntryTTL time.Duration
	// AllowOther lets users other than the mounting one read and list the
	// mount; the kernel then checks the modes (default_permissions), so
	// only the mounting user (and root) can create and delete entries.
	AllowOther bool
	// Debug logs every FUSE request (go-fuse's trace) to Logger, at level
	// Info.
	Debug bool
	// Observe, when set, is told of every common FUSE request and how long
	// it took (metrics).
	Observe Observer
	// Ctl adds read-only files to .flechefs, each generated at every open
	// by its function (the program's own reports: "retention", "prune").
	// An error answers the open with its errno. At most 11; names must not
	// be "stats" or "version".
	Ctl    map[string]func() ([]byte, error)
	Logger *slog.Logger
	// ReadAheadKB is written to /sys/class/bdi/<dev>/read_ahead_kb after
	// mounting, when running as root (default 1024; negative: leave alone).
	ReadAheadKB int
	// UploadWhileWriting: a value written sequentially starts its upload
	// (Stack.BeginUpload) once it has this many bytes in its spool file,
	// before it is published (default 8 MiB; negative: uploads start at
	// publish). See doc.go, "Spool".
	UploadWhileWriting int64
	// PublishFailed publishes a value even when a process holding its file
	// exited with a non-zero status. By default such a value is dropped,
	// as make's .DELETE_ON_ERROR does: "./simulate > f" that fails midway
	// must not leave its partial output cached for good (see doc.go).
	PublishFailed bool
}

func (o Options) withDefaults() (Options, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.SpoolDir == "" {
		o.SpoolDir = os.TempDir()
	}
	if o.SpoolThreshold <= 0 {
		o.SpoolThreshold = DefaultSpoolThreshold
	}
	switch {
	case o.NegativeTTL == 0:
		o.NegativeTTL = DefaultNegativeTTL
	case o.NegativeTTL < 0:
		o.NegativeTTL = 0
	case o.NegativeTTL > MaxNegativeTTL:
		return o, fmt.Errorf("flechefs: negative_ttl %v is above the %v limit", o.NegativeTTL, MaxNegativeTTL)
	}
	if o.EntryTTL <= 0 {
		o.EntryTTL = DefaultEntryTTL
	}
	if o.ReadAheadKB == 0 {
		o.ReadAheadKB = DefaultReadAheadKB
	}
	if o.UploadWhileWriting == 0 {
		o.UploadWhileWriting = DefaultUploadWhileWriting
	}
	return o, nil
}

// stack is what the mount needs of a *tiers.Stack. It is declared here, by
// its consumer, so tests can wrap a real stack to inject faults.
type stack interface {
	Stat(ctx context.Context, k digest.Key) (tiers.Info, error)
	Open(ctx context.Context, k digest.Key) (tiers.Reader, error)
	Publish(ctx context.Context, k digest.Key, b tiers.Blob, sum digest.Sum) (tiers.Info, error)
	BeginUpload(k digest.Key, src io.ReaderAt) *tiers.EarlyUpload
	WaitDurable(ctx context.Context, k digest.Key) error
	WaitPersisted(ctx context.Context, k digest.Key) error
	Delete(ctx context.Context, k digest.Key) error
	List(ctx context.Context, fn func(tiers.Info) error) error
	Where(ctx context.Context, k digest.Key) []string
	Local(ctx context.Context, k digest.Key) bool
	UploadState(k digest.Key) tiers.UploadState
	Stats() tiers.Stats
}

var _ stack = (*tiers.Stack)(nil)

// Server is a mounted flechefs.
type Server struct {
	srv        *fuse.Server
	mountpoint string
	root       *root
}

// Unmount unmounts the filesystem. It fails (EBUSY) while files are open
// or a process has its working directory inside. The Stack is not closed:
// it belongs to the caller.
func (s *Server) Unmount() error { return s.srv.Unmount() }

// Wait returns when the filesystem is unmounted (by Unmount, umount(8) or
// fusermount3 -u).
func (s *Server) Wait() { s.srv.Wait() }

// Mountpoint is the directory the filesystem is mounted on.
func (s *Server) Mountpoint() string { return s.mountpoint }

// Stats is what .flechefs/stats says: the stack's and the mount's counts.
func (s *Server) Stats() MountStats { return s.root.mountStats() }

// Mount mounts st on mountpoint and serves it until unmounted. See the
// package documentation for what the mount promises.
func Mount(mountpoint string, st *tiers.Stack, opt Options) (*Server, error) {
	if st == nil {
		return nil, errors.New("flechefs: Mount: nil stack")
	}
	return mount(mountpoint, st, opt)
}

func mount(mountpoint string, st stack, opt Options) (*Server, error) {
	opt, err := opt.withDefaults()
	if err != nil {
		return nil, err
	}
	if mountpoint, err = filepath.Abs(mountpoint); err != nil {
		return nil, err
	}
	if err := checkSpoolDir(opt.SpoolDir); err != nil {
		return nil, err
	}
	r := newRoot(st, opt)
	log := opt.Logger
	var mountOpts []string
	if opt.AllowOther {
		// The kernel enforces the modes the mount reports (root directory
		// 0755, entries 0444): other users read and list, only the
		// mounting user creates and deletes. Without it the daemon, which
		// does not check the caller, would let anybody do both.
		mountOpts = append(mountOpts, "default_permissions")
	}
	fopt := &fusefs.Options{
		MountOptions: fuse.MountOptions{
			Options:      mountOpts,
			AllowOther:   opt.AllowOther,
			MaxWrite:     maxIO,
			MaxReadAhead: maxIO,
			FsName:       "flechefs",
			Name:         "flechefs",
			// mount(2) directly when root, fusermount3 otherwise or
			// when that fails.
			DirectMount: os.Geteuid() == 0,
			// security.capability and the ACL names are answered
			// ENODATA by go-fuse itself: without this the kernel asks
			// for security.capability before every WRITE.
			IgnoreSecurityLabels: true,
			// Reads answer with bytes (fuse.ReadResultData), never with
			// a file descriptor to splice from; without this go-fuse
			// still prepares a pipe for every READ reply, and warns when
			// a 1 MiB reply does not fit in one.
			DisableSplice: true,
			// RELEASE, which publishes a value, is a background request:
			// the kernel queues it behind MaxBackground others (12 by
			// default, and slow remote reads hold slots), and lookups of
			// the name wait for it.
			MaxBackground: maxBackground,
			Debug:         opt.Debug,
			// go-fuse's request trace when Debug (so it shows at the
			// default level), its rare complaints otherwise.
			Logger: slog.NewLogLogger(log.Handler(), fuseLogLevel(opt.Debug)),
			PanicHandler: func(p any) fuse.Status {
				log.Error("flechefs: panic in a FUSE handler", "panic", p, "stack", string(debug.Stack()))
				return fuse.EIO
			},
		},
		// Entry, attribute and negative timeouts are set in every reply
		// (see doc.go), not here: go-fuse replaces a zero timeout by
		// these defaults, and the writer's inode needs a zero one.
		Logger: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	srv, err := serve(mountpoint, r, fopt, opt.Observe)
	if err != nil {
		return nil, fmt.Errorf("flechefs: mount %s: %w", mountpoint, err)
	}
	if opt.ReadAheadKB > 0 && os.Geteuid() == 0 {
		if err := setReadAhead(mountpoint, opt.ReadAheadKB); err != nil {
			log.Debug("flechefs: could not raise read_ahead_kb", "err", err)
		}
	}
	log.Debug("flechefs: mounted", "mountpoint", mountpoint)
	return &Server{srv: srv, mountpoint: mountpoint, root: r}, nil
}

// serve mounts r at mountpoint and serves it, as fusefs.Mount does, with
// its requests timed for obs when set.
func serve(mountpoint string, r fusefs.InodeEmbedder, fopt *fusefs.Options, obs Observer) (*fuse.Server, error) {
	if obs == nil {
		return fusefs.Mount(mountpoint, r, fopt)
	}
	raw := &observedFS{RawFileSystem: fusefs.NewNodeFS(r, fopt), obs: obs}
	srv, err := fuse.NewServer(raw, mountpoint, &fopt.MountOptions)
	if err != nil {
		return nil, err
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		return nil, err
	}
	return srv, nil
}

func fuseLogLevel(debug bool) slog.Level {
	if debug {
		return slog.LevelInfo
	}
	return slog.LevelWarn
}

// checkSpoolDir fails early when SpoolDir cannot hold spill files.
func checkSpoolDir(dir string) error {
	f, err := os.CreateTemp(dir, "flechefs-check-*")
	if err != nil {
		return fmt.Errorf("flechefs: spool dir: %w", err)
	}
	os.Remove(f.Name())
	return f.Close()
}

// setReadAhead raises the readahead of the mount's backing device info. The
// kernel caps a FUSE mount's readahead at 128 KiB when it mounts; 1 MiB READ
// requests only help once this is raised.
func setReadAhead(mountpoint string, kb int) error {
	var st syscall.Stat_t
	if err := syscall.Stat(mountpoint, &st); err != nil {
		return err
	}
	major, minor := devMajor(st.Dev), devMinor(st.Dev)
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", major, minor)
	return os.WriteFile(p, []byte(strconv.Itoa(kb)), 0o644)
}

// devMajor and devMinor decode a Linux dev_t (glibc's gnu_dev_major/minor).
func devMajor(dev uint64) uint64 { return (dev>>8)&0xfff | (dev>>32)&^uint64(0xfff) }
func devMinor(dev uint64) uint64 { return dev&0xff | (dev>>12)&^uint64(0xff) }
