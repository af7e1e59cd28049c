package sftp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cenkalti/backoff/v5"
	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/pagemem"
	"github.com/flechefs/flechefs/tiers"
	xsftp "github.com/pkg/sftp"
)

// Tier is the SFTP tier. It is safe for concurrent use.
type Tier struct {
	opt     Options
	rem     remote
	sumDir  string // <root>/.flechefs/sums
	tmpDir  string // <root>/.flechefs/tmp
	signers []ssh.Signer
	log     *slog.Logger
	ctx     context.Context // canceled by Close; bounds dials
	cancel  context.CancelFunc

	mu      sync.Mutex
	closed  bool
	cur     *conn
	dialing *dialAttempt // non-nil while a dial runs
	dialErr error        // last dial failure, until retryAt
	retryAt time.Time
	backoff backoff.ExponentialBackOff // dial retries; Reset on a connection
	retry   *time.Timer                // runs reprobe when the backoff ends
	dials   int
	// failedDials counts the dials of the current outage; warned and
	// warnedAt throttle its warnings (warnDial).
	failedDials int
	warned      string
	warnedAt    time.Time
	orphans     []string // temp files to remove once connected again

	ret *retention // last-use marks, when Options.Retention bounds the remote

	// hook, if set (tests), is called at the steps of the record protocol
	// (record.go): "renamed", "record", "record-other", "record-stale",
	// "record-check", "adopt", "adopt-check", "delete-record-removed".
	hook func(step string, k digest.Key)

	laneChunks atomic.Int64  // chunks fetched or uploaded through lanes (lanes.go)
	laneRTT    time.Duration // laneRTT; tests lower it
	swept      bool
	// settled is how long a connection must have lived for its loss to
	// be followed by a dial at once (conn.go, lostConn); tests lower it.
	settled time.Duration
}

var _ tiers.Tier = (*Tier)(nil)

// Open returns the tier for opt.URL. Unless opt.Lazy is set it connects
// first and fails when it cannot (the error wraps tiers.ErrUnavailable and
// says why: refused, host key, login, directory).
func Open(ctx context.Context, opt Options) (*Tier, error) {
	if err := opt.setDefaults(); err != nil {
		return nil, fmt.Errorf("sftp tier: %w", err)
	}
	rem, err := parseURL(opt.URL)
	if err != nil {
		return nil, fmt.Errorf("%s tier: %w", opt.Name, err)
	}
	if opt.Transport == TransportSSH && !rem.portSet {
		rem.addr = rem.host // its port is ssh_config's business: messages name the host alone
	}
	var signers []ssh.Signer
	if opt.Transport == TransportGo {
		home, _ := os.UserHomeDir()
		hc, err := readSSHConfig(opt.SSHConfig, home, rem.host)
		if err != nil {
			return nil, fmt.Errorf("%s tier: %w", opt.Name, err)
		}
		hc.apply(&rem)
		if opt.IdentityFiles == nil {
			opt.IdentityFiles = hc.identities
			if opt.IdentityFiles == nil {
				opt.IdentityFiles = defaultIdentities(home)
			}
		}
		// The system's ssh client (TransportSSH) loads its own keys.
		signers, err = loadSigners(opt.IdentityFiles, opt.UseAgent)
		if err != nil {
			return nil, fmt.Errorf("%s tier: %w", opt.Name, err)
		}
		if len(signers) == 0 && !opt.UseAgent {
			return nil, fmt.Errorf("%s tier: no identity: set identity (key files) or agent = true", opt.Name)
		}
	}
	t := &Tier{
		opt:     opt,
		rem:     rem,
		sumDir:  path.Join(rem.root, ".flechefs", "sums"),
		tmpDir:  path.Join(rem.root, ".flechefs", "tmp"),
		signers: signers,
		log:     opt.Logger,
		laneRTT: laneRTT,
		settled: settledConn,
		backoff: backoff.ExponentialBackOff{InitialInterval: minBackoff, MaxInterval: maxBackoff,
			Multiplier: 2, RandomizationFactor: backoffJitter},
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	if opt.Retention.On() {
		t.ret = newRetention(t)
	}
	if !opt.Lazy {
		if _, err := t.conn(ctx); err != nil {
			t.Close()
			return nil, tiers.Wrap(opt.Name, "open", digest.Key{}, unavailable(rem.addr, err))
		}
		return t, nil
	}
	// Lazy: one dial, waited for; only a permanent failure fails the open.
	t.mu.Lock()
	a := t.startDial()
	t.mu.Unlock()
	select {
	case <-a.done:
		if errors.Is(a.err, ErrPermanent) {
			t.Close()
			return nil, tiers.Wrap(opt.Name, "open", digest.Key{}, a.err)
		}
	case <-ctx.Done():
	}
	return t, nil
}

// unavailable wraps err, a failure to reach addr, in tiers.ErrUnavailable.
func unavailable(addr string, err error) error {
	if errors.Is(err, tiers.ErrUnavailable) || errors.Is(err, tiers.ErrClosed) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if strings.Contains(err.Error(), addr) {
		return fmt.Errorf("%w: %w", tiers.ErrUnavailable, err)
	}
	return fmt.Errorf("%w: %s: %w", tiers.ErrUnavailable, addr, err)
}

// Name returns Options.Name.
func (t *Tier) Name() string { return t.opt.Name }

// Close drops the connection. Readers fail after it.
func (t *Tier) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	c := t.cur
	t.cur = nil
	if t.retry != nil {
		t.retry.Stop()
	}
	t.mu.Unlock()
	t.cancel()
	if c != nil {
		c.kill(tiers.ErrClosed)
	}
	return nil
}

func (t *Tier) dataPath(k digest.Key) string { return path.Join(t.rem.root, k.String()) }
func (t *Tier) sumPath(k digest.Key) string  { return path.Join(t.sumDir, k.String()) }

func (t *Tier) wrap(op string, k digest.Key, err error) error {
	return tiers.Wrap(t.opt.Name, op, k, err)
}

// begin checks the key and returns a live connection with a watchdog
// running. The caller stops the watch.
func (t *Tier) begin(ctx context.Context, k digest.Key) (*conn, *watch, error) {
	if k.IsZero() {
		return nil, nil, fmt.Errorf("%w: zero key", digest.ErrInvalid)
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	c, err := t.conn(ctx)
	if err != nil {
		return nil, nil, unavailable(t.rem.addr, err)
	}
	return c, c.watch(), nil
}

// Stat returns the entry's info. Size, Sum and Created come from the sum
// record; an entry without one (written by hand, or its writer died between
// the rename and the record) has a zero Sum, which the stack treats as unverifiable,
// and the data file's size and mtime. A data file whose size differs from
// its sum record gives ErrCorrupt.
func (t *Tier) Stat(ctx context.Context, k digest.Key) (tiers.Info, error) {
	c, w, err := t.begin(ctx, k)
	if err != nil {
		return tiers.Info{}, t.wrap("stat", k, err)
	}
	defer w.stop()
	sumc := t.readSumAsync(c, k)
	fi, err := c.sftp.Stat(t.dataPath(k))
	sf := <-sumc
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			err = tiers.ErrNotFound
		}
		return tiers.Info{}, t.wrap("stat", k, t.failure(c, err))
	}
	if sf.err == nil && !sf.found {
		info, err := t.statForeign(c, k, fi)
		return info, t.wrap("stat", k, err)
	}
	info, err := t.info(c, k, fi, sf)
	return info, t.wrap("stat", k, err)
}

// statForeign is Stat of a data file without a sum record: what foreign
// decides (with a zero Sum), after the probe (is the name itself a regular file, is there a
// <key>.lock): a second round trip, for such files only.
func (t *Tier) statForeign(c *conn, k digest.Key, fi os.FileInfo) (tiers.Info, error) {
	if !fi.Mode().IsRegular() {
		return tiers.Info{}, fmt.Errorf("%w: %s has no sum record and is not a regular file", tiers.ErrNotFound, t.dataPath(k))
	}
	lock, err := (<-t.probeAsync(c, k)).result(t, c, k)
	if err != nil {
		return tiers.Info{}, err
	}
	info, err := t.foreign(k, fi.Size(), fi.ModTime(), lock, time.Now())
	// Zero, even when the name is a sum (ForeignVerify): Stat says what is
	// recorded, and a caller that acts on a sum (an upload deciding
	// whether the remote holds its value) must read the file to know it.
	info.Sum = digest.Sum{}
	return info, err
}

var sumBufs = sync.Pool{New: func() any { return new([]byte) }}

type sumResult struct {
	s     sumFile
	found bool
	err   error
	raw   string // what was read: the link's target, or "file:" and the file's bytes
}

// readSumAsync reads the sum record of k in parallel with the caller's own
// request, saving a round trip.
func (t *Tier) readSumAsync(c *conn, k digest.Key) <-chan sumResult {
	ch := make(chan sumResult, 1)
	go func() { ch <- t.readSum(c, k) }()
	return ch
}

// readSum reads k's sum record: one READLINK. A record of the earlier
// format, a regular file, fails it and is read as a file.
func (t *Tier) readSum(c *conn, k digest.Key) sumResult {
	target, err := c.sftp.ReadLink(t.sumPath(k))
	switch {
	case err == nil:
		s, err := parseSumLink(target)
		if err != nil {
			return sumResult{found: true, raw: target, err: fmt.Errorf("%w: %s: %v", tiers.ErrCorrupt, t.sumPath(k), err)}
		}
		return sumResult{s: s, found: true, raw: target}
	case errors.Is(err, os.ErrNotExist):
		return sumResult{}
	case isConnErr(err):
		return sumResult{err: err}
	}
	return t.readSumFile(c, k)
}

// readSumFile reads a sum record of the earlier format, a regular file.
func (t *Tier) readSumFile(c *conn, k digest.Key) sumResult {
	f, err := c.sftp.Open(t.sumPath(k))
	if errors.Is(err, os.ErrNotExist) {
		return sumResult{}
	}
	if err != nil {
		return sumResult{err: err}
	}
	// The close needs no answer before we go on.
	defer func() { go f.Close() }()
	// A buffer longer than one packet makes pkg/sftp send two reads at
	// once and take a short answer for end of file: one round trip, where
	// a smaller buffer costs a second read to see the end.
	bp := sumBufs.Get().(*[]byte)
	defer sumBufs.Put(bp)
	if cap(*bp) < c.packet+1 {
		*bp = make([]byte, c.packet+1)
	}
	buf := (*bp)[:c.packet+1]
	n, err := f.ReadAt(buf, 0)
	if err != nil && err != io.EOF {
		return sumResult{err: err}
	}
	if n == 0 {
		// Created, not yet written: an upload between its two steps.
		return sumResult{}
	}
	raw := "file:" + string(buf[:min(n, maxSumFile)])
	if n > maxSumFile {
		return sumResult{found: true, raw: raw, err: fmt.Errorf("%w: sum file %s is %d bytes or more, not a sum file", tiers.ErrCorrupt, t.sumPath(k), n)}
	}
	s, err := parseSumFile(buf[:n])
	if err != nil {
		return sumResult{found: true, raw: raw, err: fmt.Errorf("%w: sum file %s: %v", tiers.ErrCorrupt, t.sumPath(k), err)}
	}
	return sumResult{s: s, found: true, raw: raw}
}

// info combines the data file's attributes and the sum record.
func (t *Tier) info(c *conn, k digest.Key, fi os.FileInfo, sf sumResult) (tiers.Info, error) {
	// Damage found here is judged on this data file (tiers.Judged): the
	// quarantine then moves it, not one put under the name since. A
	// garbled record is damage of the entry this data file is part of.
	judged := func(err error) error { return &tiers.Judged{Copy: copyID(fi.Size(), fi.ModTime()), Err: err} }
	if sf.err != nil {
		if errors.Is(sf.err, tiers.ErrCorrupt) {
			return tiers.Info{}, judged(sf.err)
		}
		return tiers.Info{}, t.failure(c, sf.err)
	}
	if !fi.Mode().IsRegular() {
		return tiers.Info{}, judged(fmt.Errorf("%w: %s is not a regular file (%v)", tiers.ErrCorrupt, t.dataPath(k), fi.Mode().Type()))
	}
	info := tiers.Info{Key: k, Size: fi.Size(), Created: fi.ModTime()}
	if !sf.found {
		return info, nil
	}
	if sf.s.size != fi.Size() {
		t.log.Warn("sftp entry has the wrong size", "tier", t.opt.Name, "key", k, "size", fi.Size(), "recorded", sf.s.size)
		return tiers.Info{}, judged(fmt.Errorf("%w: remote file has %d bytes, its sum record says %d", tiers.ErrCorrupt, fi.Size(), sf.s.size))
	}
	info.Sum = sf.s.sum
	if !sf.s.created.IsZero() {
		info.Created = sf.s.created
	}
	return info, nil
}

// Open opens the entry. The Reader reads through the connection that was
// current at Open; if that connection drops, the Reader fails with
// ErrUnavailable and the caller opens again.
//
// The sum record's READLINK goes out with the data file's open. With a
// record, Open returns once both have answered (one round trip; Info is the
// record's) and the first bytes (the head) are read in the background, with
// an fstat beside them: reads wait for them, and a data file whose size
// disagrees with the record fails them with ErrCorrupt. A lookup of a small value thus answers after one round
// trip while the value is on its way, and a fetch starts one round trip
// earlier. Without a record, Open reads the head and fstats before it
// returns, and takes the size and time from the data file.
func (t *Tier) Open(ctx context.Context, k digest.Key) (tiers.Reader, error) {
	c, w, err := t.begin(ctx, k)
	if err != nil {
		return nil, t.wrap("open", k, err)
	}
	defer w.stop()
	sumc := t.readSumAsync(c, k)
	f, err := c.sftp.Open(t.dataPath(k))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			err = tiers.ErrNotFound
		}
		return nil, t.wrap("open", k, t.failure(c, err))
	}
	sf := <-sumc
	r := &reader{t: t, c: c, f: f, info: tiers.Info{Key: k}, headReady: make(chan struct{})}
	// An empty value is checked before Open returns: the kernel reads an
	// empty file without asking the mount, so a read could not fail
	// (a directory under a key's name, with an empty record beside it,
	// would read as an empty value).
	if sf.err == nil && sf.found && !sf.s.created.IsZero() {
		r.info = tiers.Info{Key: k, Size: sf.s.size, Sum: sf.s.sum, Created: sf.s.created}
		if c.wantLanes(sf.s.size - r.headLen()) {
			c.startLanes() // in the background, for the fetch that follows
		}
		if sf.s.size > 0 {
			go func() {
				w := c.watch()
				defer w.stop()
				r.headErr = r.readHead(sf, false)
				close(r.headReady)
			}()
			t.markUsed(k)
			return r, nil
		}
	}
	var probec <-chan probe
	noRecord := sf.err == nil && !sf.found
	if noRecord {
		probec = t.probeAsync(c, k) // beside the head's read
	}
	err = r.readHead(sf, true)
	close(r.headReady)
	if noRecord {
		err = r.openForeign(err, <-probec)
	}
	if err != nil {
		go f.Close()
		return nil, t.wrap("open", k, err)
	}
	t.markUsed(k)
	return r, nil
}

// openForeign decides an Open of a data file without a sum record once its
// head is read (headErr): served as foreign decides, or absent. A file
// that is not a regular one or that changed while its head was read is
// absent, not damaged: nothing vouched for it.
func (r *reader) openForeign(headErr error, p probe) error {
	t, k := r.t, r.info.Key
	lock, err := p.result(t, r.c, k)
	if errors.Is(err, tiers.ErrNotFound) {
		return err
	}
	if headErr == nil && err != nil {
		headErr = err
	}
	if errors.Is(headErr, tiers.ErrCorrupt) {
		return fmt.Errorf("%w: %s has no sum record and is not a regular file or changed while it was read", tiers.ErrNotFound, t.dataPath(k))
	}
	if headErr != nil {
		return headErr
	}
	info, err := t.foreign(k, r.info.Size, r.mtime, lock, time.Now())
	if err != nil {
		return err
	}
	r.info, r.foreign = info, true
	return nil
}

// readHead reads the first headSize bytes of r's file into r.head, with an
// fstat sent beside the read. When setInfo is set (Open has not returned r
// yet), r.info is set from the data file and the record. A size that
// disagrees with the record is ErrCorrupt.
//
// With a record of a value shorter than the head, the read asks for
// exactly the recorded size. A read of more would come back short, and
// pkg/sftp's File.ReadAt then asks again from where the reply ended to see
// the end of the file: a second round trip, which made a cold read of a
// small value three round trips (open, read, read at the end) instead of
// two. The fstat, answered in the same round trip, tells a file longer
// than its record.
func (r *reader) readHead(sf sumResult, setInfo bool) error {
	t, c, f := r.t, r.c, r.f
	headLen := r.headLen()
	if sf.err == nil && sf.found && !sf.s.created.IsZero() && sf.s.size < headLen {
		headLen = sf.s.size
	}
	type statResult struct {
		fi  os.FileInfo
		err error
	}
	statc := make(chan statResult, 1)
	go func() {
		fi, err := f.Stat()
		statc <- statResult{fi, err}
	}()
	b := pagemem.Bytes(int(headLen))
	n, err := f.ReadAt(b, 0)
	st := <-statc
	if err != nil && err != io.EOF {
		// A read that fails on what is not a regular file (a directory
		// under a key's name) is damage, not an I/O error.
		if st.err == nil && !st.fi.Mode().IsRegular() {
			return fmt.Errorf("%w: %s is not a regular file (%v)", tiers.ErrCorrupt, t.dataPath(r.info.Key), st.fi.Mode().Type())
		}
		return t.failure(c, err)
	}
	r.head = b[:n]
	if st.err != nil {
		return t.failure(c, st.err)
	}
	info, err := t.info(c, r.info.Key, st.fi, sf) // ErrCorrupt if the sizes disagree
	if err != nil {
		return err
	}
	if int64(n) < min(headLen, info.Size) {
		// Shorter than it said a moment ago.
		return fmt.Errorf("%w: remote file ended at %d bytes, its size is %d", tiers.ErrCorrupt, n, info.Size)
	}
	if setInfo {
		r.info = info
	}
	r.mtime = st.fi.ModTime()
	r.head = r.head[:min(int64(len(r.head)), info.Size)]
	return nil
}

// headSize is how much of a value Open reads at once, in parallel with its
// other requests.
const headSize = 64 << 10

// Put uploads to a temp file, checks it against m, writes the sum file to
// a temp name, then publishes with a plain SFTP rename, which OpenSSH
// refuses when the name exists: the first writer wins and a loser gets
// ErrExist. Then the sum file is written in place, replacing any stale one.
// See the package documentation for why this order is safe.
func (t *Tier) Put(ctx context.Context, k digest.Key, r io.Reader, m tiers.Meta) (tiers.Info, error) {
	if t.opt.ReadOnly {
		return tiers.Info{}, t.wrap("put", k, tiers.ErrReadOnly)
	}
	c, w, err := t.begin(ctx, k)
	if err != nil {
		return tiers.Info{}, t.wrap("put", k, err)
	}
	defer w.stop()
	info, err := t.put(ctx, c, w, k, r, m)
	if err == nil || errors.Is(err, tiers.ErrExist) {
		t.markUsed(k)
	}
	return info, t.wrap("put", k, err)
}

// markUsed notes a use of k for retention (retention.go), if bounded.
func (t *Tier) markUsed(k digest.Key) {
	if t.ret != nil {
		t.ret.Used(k)
	}
}

var errTooLong = errors.New("longer than announced")

// putSource feeds the upload: it hashes (unless the caller vouches for
// the hash: Meta.Verified, see tiers.NewSummer), enforces the announced
// size, checks the context, and pauses the watchdog while the caller's
// reader runs. pkg/sftp calls it from one goroutine at a time.
type putSource struct {
	ctx context.Context
	r   io.Reader
	sum *tiers.Summer
	max int64 // -1: unknown
	w   *watch
	err error // the caller's, the context's, or errTooLong
}

func (s *putSource) Read(p []byte) (int, error) {
	if err := s.ctx.Err(); err != nil {
		s.err = err
		return 0, err
	}
	s.w.pause()
	n, err := s.r.Read(p)
	s.w.resume()
	s.sum.Write(p[:n])
	if s.max >= 0 && s.sum.Size() > s.max {
		s.err = errTooLong
		return n, errTooLong
	}
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

func randomSuffix() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// smallPut is the largest value Put sends from memory: read whole, hashed,
// written with one call (pkg/sftp splits it into requests in flight),
// without asking first whether the key exists, which would cost more than
// the wasted upload of a value this small.
const smallPut = 1 << 20

func (t *Tier) put(ctx context.Context, c *conn, w *watch, k digest.Key, r io.Reader, m tiers.Meta) (tiers.Info, error) {
	return t.putFinal(ctx, c, w, k, r, m, nil)
}

// putFinal is put, except that once r is exhausted, final (if not nil)
// replaces m: the Meta of a value streamed before it was complete.
func (t *Tier) putFinal(ctx context.Context, c *conn, w *watch, k digest.Key, r io.Reader, m tiers.Meta,
	final func() (tiers.Meta, error)) (tiers.Info, error) {
	dst := t.dataPath(k)
	small := m.Size >= 0 && m.Size <= smallPut
	if !small {
		// Do not upload what is there already.
		if _, err := c.sftp.Lstat(dst); err == nil {
			return tiers.Info{}, tiers.ErrExist
		} else if !errors.Is(err, os.ErrNotExist) {
			return tiers.Info{}, t.failure(c, err)
		}
	}

	tmp := path.Join(t.tmpDir, k.String()+"."+randomSuffix())
	success := false
	defer func() {
		if !success {
			t.removeTemps(c, tmp)
		}
	}()
	f, err := c.sftp.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	if errors.Is(err, os.ErrNotExist) {
		// Someone removed .flechefs since we connected.
		if err = t.mkdirs(c); err == nil {
			f, err = c.sftp.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
		}
	}
	if err != nil {
		return tiers.Info{}, t.failure(c, err)
	}
	// The value's mode is chosen, not the server's umask (Options.Mode):
	// set on the temp file, so that the name appears with it. The FSETSTAT
	// goes out beside the writes; its answer is awaited before the rename.
	chmodc := make(chan error, 1)
	go func() { chmodc <- f.Chmod(t.opt.Mode) }()
	// A value streamed while it is written (final != nil) starts with an
	// unknown Meta, so it is always hashed: its writer may still change
	// bytes already sent.
	src := &putSource{ctx: ctx, r: r, sum: tiers.NewSummer(m), max: -1, w: w}
	if m.Size >= 0 {
		src.max = m.Size
	}
	switch {
	case small:
		err = t.writeSmall(f, src, m.Size)
	case m.Size >= 0 && c.wantLanes(m.Size):
		err = t.writeLanes(c, f, tmp, src)
	default:
		_, err = f.ReadFromWithConcurrency(src, t.opt.Concurrency)
	}
	chmodErr := <-chmodc
	if err != nil || src.err != nil {
		f.Close()
		switch {
		case src.err == errTooLong:
			return tiers.Info{}, fmt.Errorf("%w: value is longer than the announced %d bytes", tiers.ErrCorrupt, m.Size)
		case src.err != nil:
			return tiers.Info{}, src.err
		}
		return tiers.Info{}, t.failure(c, err)
	}
	if final != nil {
		if m, err = final(); err != nil {
			f.Close()
			return tiers.Info{}, err
		}
	}
	size, sum := src.sum.Size(), src.sum.Sum()
	if m.Size >= 0 && size != m.Size {
		f.Close()
		return tiers.Info{}, fmt.Errorf("%w: value has %d bytes, announced %d", tiers.ErrCorrupt, size, m.Size)
	}
	if !m.Sum.IsZero() && sum != m.Sum {
		f.Close()
		return tiers.Info{}, fmt.Errorf("%w: value has sha256 %s, announced %s", tiers.ErrCorrupt, sum, m.Sum)
	}
	if chmodErr != nil {
		f.Close()
		return tiers.Info{}, t.failure(c, fmt.Errorf("set mode %#o: %w", t.opt.Mode, chmodErr))
	}
	created := m.Created
	if created.IsZero() {
		created = time.Now()
	}
	created = recordedCreated(created) // as the sum record keeps it
	if created.Nanosecond() == 0 {
		// An upload's record never holds a whole second: adoption
		// records a file's own mtime, whole seconds, and a retention
		// pass tells the two apart by it (adoptedRecord).
		created = created.Add(time.Millisecond)
	}
	info := tiers.Info{Key: k, Size: size, Sum: sum, Created: created}

	// Publish. Every write has been answered, so the data is in the temp
	// file; its close goes out with the rename. OpenSSH's sftp-server
	// renames with link(2)+unlink(2): an existing name makes it fail,
	// atomically.
	go f.Close()
	if err := c.sftp.Rename(tmp, dst); err != nil {
		if _, serr := c.sftp.Lstat(dst); serr == nil {
			return tiers.Info{}, tiers.ErrExist
		}
		return tiers.Info{}, t.failure(c, err)
	}
	success = true
	t.at(w, "renamed", k)
	// We placed the data: we write its record (record.go). If this fails
	// (the connection dropped between the two steps) the data is in place
	// without its record: the Put fails, and the caller's retry finds the
	// data (ErrExist) and, without a record, hashes it and adopts it. If
	// the data is no longer ours (removed and put again by another writer
	// meanwhile), ErrExist: the caller learns the remote's value.
	if err := t.writeSum(c, w, k, sumFile{sum: sum, size: size, created: created}); err != nil {
		if errors.Is(err, tiers.ErrExist) {
			return tiers.Info{}, err
		}
		t.log.Warn("sftp entry published without its sum record", "tier", t.opt.Name, "key", k, "err", err)
		return tiers.Info{}, t.failure(c, fmt.Errorf("sum record: %w", err))
	}
	return info, nil
}

// writeSmall reads a value of size bytes (at most smallPut) from src and
// writes it to f at once. A source longer than size fails in src.
func (t *Tier) writeSmall(f *xsftp.File, src *putSource, size int64) error {
	bp := smallBufs.Get().(*[]byte)
	defer smallBufs.Put(bp)
	if int64(cap(*bp)) < size+1 {
		*bp = make([]byte, size+1)
	}
	// One byte more than announced, to see a longer source.
	buf := (*bp)[:size+1]
	n, err := io.ReadFull(src, buf)
	switch {
	case err == io.ErrUnexpectedEOF || err == io.EOF:
		// Shorter than announced, or exactly as long: the caller compares.
	case err != nil:
		return err
	default:
		return errTooLong // src.err says so too
	}
	if n == 0 {
		return nil
	}
	_, err = f.WriteAt(buf[:n], 0)
	return err
}

var smallBufs = sync.Pool{New: func() any { return new([]byte) }}

// mkdirs creates the root and the .flechefs directories.
func (t *Tier) mkdirs(c *conn) error {
	for _, d := range []string{t.rem.root, t.sumDir, t.tmpDir} {
		if err := c.sftp.MkdirAll(d); err != nil {
			return err
		}
	}
	return nil
}

// removeTemps removes temp files now, or after the next connect if c is
// dead.
func (t *Tier) removeTemps(c *conn, paths ...string) {
	for _, p := range paths {
		if c.ok() {
			err := c.sftp.Remove(p)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				continue
			}
			if c.ok() && !isConnErr(err) {
				t.log.Warn("cannot remove temp file", "tier", t.opt.Name, "path", p, "err", err)
				continue
			}
		}
		t.mu.Lock()
		t.orphans = append(t.orphans, p)
		t.mu.Unlock()
	}
}

// Delete removes the sum file, then the data file: an interrupted Delete
// leaves a valid entry without sum, never a sum without its data.
func (t *Tier) Delete(ctx context.Context, k digest.Key) error {
	if t.opt.ReadOnly {
		return t.wrap("delete", k, tiers.ErrReadOnly)
	}
	c, w, err := t.begin(ctx, k)
	if err != nil {
		return t.wrap("delete", k, err)
	}
	defer w.stop()
	if err := c.sftp.Remove(t.sumPath(k)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return t.wrap("delete", k, t.failure(c, err))
	}
	t.at(w, "delete-record-removed", k)
	if err := c.sftp.Remove(t.dataPath(k)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			err = tiers.ErrNotFound
		}
		return t.wrap("delete", k, t.failure(c, err))
	}
	return nil
}

// List reports every regular file in the root whose name parses as a key
// and that has a sum record or that a lookup would serve without one (the
// rules of Options.Foreign: a file being written, a fleche lock, or one
// the setting does not serve is left out), with its size and mtime, and a
// zero Sum (reading every record would cost a round trip each). Other
// names — temp files, .flechefs, junk — are skipped: listing names come
// from the server and are never trusted.
func (t *Tier) List(ctx context.Context, fn func(tiers.Info) error) error {
	if err := ctx.Err(); err != nil {
		return t.wrap("list", digest.Key{}, err)
	}
	c, err := t.conn(ctx)
	if err != nil {
		return t.wrap("list", digest.Key{}, unavailable(t.rem.addr, err))
	}
	w := c.watch()
	// The records' names are read beside the root: a file without one is
	// listed by the rules a lookup applies (foreign), so that a listing
	// never names an entry a lookup then refuses.
	type dirResult struct {
		ents []os.FileInfo
		err  error
	}
	sumc := make(chan dirResult, 1)
	go func() {
		ents, err := c.sftp.ReadDirContext(ctx, t.sumDir)
		sumc <- dirResult{ents, err}
	}()
	ents, err := c.sftp.ReadDirContext(ctx, t.rem.root)
	sr := <-sumc
	w.stop()
	if err == nil && sr.err != nil && !errors.Is(sr.err, os.ErrNotExist) {
		err = sr.err
	}
	if err != nil {
		return t.wrap("list", digest.Key{}, t.failure(c, err))
	}
	lf := &listFilter{t: t, sums: make(map[string]bool, len(sr.ents)), names: make(map[string]bool, len(ents)), now: time.Now()}
	for _, e := range sr.ents {
		lf.sums[e.Name()] = true
	}
	for _, e := range ents {
		lf.names[e.Name()] = true
	}
	for _, e := range ents {
		if !e.Mode().IsRegular() {
			continue
		}
		k, err := digest.Parse(e.Name())
		if err != nil || !lf.keep(k, e.Size(), e.ModTime()) {
			continue
		}
		if err := fn(tiers.Info{Key: k, Size: e.Size(), Created: e.ModTime()}); err != nil {
			return err
		}
	}
	return nil
}

// packetSize reports the SFTP payload size of the current connection, 0 if
// none.
func (t *Tier) packetSize() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cur == nil || !t.cur.ok() {
		return 0
	}
	return t.cur.packet
}
