package sftp

import (
	"io"
	"os"
	"sync"
	"time"

	xsftp "github.com/pkg/sftp"
)

// Lanes: one SFTP session cannot move more than 2 MiB per round trip,
// because x/crypto/ssh gives every channel a fixed 2 MiB receive window and
// OpenSSH's sshd gives every session 2 MiB: one window per round trip
// (OpenSSH's own client has the same limit). A large fetch or
// upload therefore spreads its chunks over the connection's main session
// and Options.Channels-1 more (the lanes), each with its own window, on a
// connection whose round trip is long enough for the window to be the limit
// (laneRTT). The lanes are started at the connection's first large
// transfer (or Open of a large value), in the background, and live as long
// as the connection. Each fetch opens its file on them too and uses a lane
// only once its handle is open and shows the same file (size and
// modification time) as the main handle. Values on the remote are never
// replaced in place (first writer wins), so the same name is the same file
// unless it was removed and uploaded again in between, which the check and
// the value's hash both catch. An upload opens its own temp file on them.

// laneMin is the least a transfer must have left for it to use lanes:
// below it the lanes' opens would not pay for themselves.
const laneMin = 2 << 20

// laneSlots is how many chunks (of fetchChunks packets, 1 MiB) a handle
// has in flight in a transfer with lanes: a window and a half. More, and
// the first chunks of a 4 MiB value all go to the main handle before the
// lanes' handles are open, to wait there for its window; fewer, and a large
// value does not keep every window full (docs/performance.md has the runs).
const laneSlots = 3

// laneRTT is the least round trip at which transfers use lanes: one session
// then cannot fetch faster than 1 GB/s, about what the rest of a fetch
// costs here in CPU. On loopback (0.1–0.3 ms) lanes only add processes to
// a CPU-bound transfer: BenchmarkFetch read 564 MB/s through one session
// against 458 through three (medians of 8), and 499 against 470 in another
// run of 6 (go test -run '^$' -bench 'Fetch/aes128-gcm@openssh.com(/lanes)?$').
const laneRTT = 2 * time.Millisecond

// wantLanes reports whether a transfer of remaining bytes on c uses lanes.
func (c *conn) wantLanes(remaining int64) bool {
	return c.t.opt.Channels > 1 && remaining >= laneMin && c.rtt >= c.t.laneRTT
}

// lanePool is the lanes of one connection.
type lanePool struct {
	once      sync.Once
	ready     chan struct{} // closed once the start has ended
	clients   []*xsftp.Client
	closeOnce sync.Once
}

// startLanes starts c's lanes unless started, and returns a channel closed
// once they are up (c.lanes.clients then holds those that started).
func (c *conn) startLanes() <-chan struct{} {
	p := &c.lanes
	p.once.Do(func() {
		p.ready = make(chan struct{})
		go func() {
			defer close(p.ready)
			n := c.t.opt.Channels - 1
			got := make([]*xsftp.Client, n)
			var wg sync.WaitGroup
			start := time.Now()
			for i := range n {
				wg.Go(func() {
					w := c.watch()
					defer w.stop()
					cl, err := c.startSFTP(c.packet)
					if err != nil {
						c.t.log.Debug("sftp lane not started", "tier", c.t.opt.Name, "err", err)
						return
					}
					got[i] = cl
				})
			}
			wg.Wait()
			for _, cl := range got {
				if cl != nil {
					p.clients = append(p.clients, cl)
				}
			}
			c.t.log.Debug("sftp lanes started", "tier", c.t.opt.Name, "lanes", len(p.clients), "took", time.Since(start))
			if !c.ok() {
				c.closeLanes()
			}
		}()
	})
	return p.ready
}

// closeLanes closes the lanes once they have started (kill calls it).
func (c *conn) closeLanes() {
	p := &c.lanes
	p.once.Do(func() { p.ready = make(chan struct{}); close(p.ready) }) // never started
	p.closeOnce.Do(func() {
		go func() {
			<-p.ready
			for _, cl := range p.clients {
				cl.Close()
			}
		}()
	})
}

// laneFiles is the handles one fetch reads through: the main one first,
// then those opened on lanes, added as they open. Each handle has at most
// per chunks in flight, so that the first chunks do not all queue behind
// the main session's window while the lanes open; a fetch without lanes
// (or whose lanes failed to open) gives the main handle every slot.
type laneFiles struct {
	t     *Tier
	mu    sync.Mutex
	files []*xsftp.File
	busy  []int // chunks in flight per handle
	per   int
	all   int           // slots of a handle once there are no lanes to wait for
	wake  chan struct{} // a slot was freed or handles were added
	ended bool
	at    time.Duration // from the fetch's start to the lanes' handles
}

// newLaneFiles returns the handles of a fetch through main with depth
// chunks in flight, of which main alone gets depth/channels while lanes
// are awaited (lanes) and depth otherwise.
func newLaneFiles(t *Tier, main *xsftp.File, depth int, lanes bool) *laneFiles {
	lf := &laneFiles{t: t, files: []*xsftp.File{main}, busy: []int{0}, per: depth, all: depth, wake: make(chan struct{}, 1)}
	if lanes {
		lf.per = max(1, min(depth/t.opt.Channels, laneSlots))
	}
	return lf
}

// acquire waits for a free slot on the least busy handle and returns the
// handle's index and the handle; ok is false once stop is closed.
func (lf *laneFiles) acquire(stop <-chan struct{}) (i int, f *xsftp.File, ok bool) {
	for {
		lf.mu.Lock()
		best := -1
		for j, n := range lf.busy {
			if n < lf.per && (best < 0 || n < lf.busy[best]) {
				best = j
			}
		}
		if best >= 0 {
			lf.busy[best]++
			f := lf.files[best]
			lf.mu.Unlock()
			if best > 0 {
				lf.t.laneChunks.Add(1)
			}
			return best, f, true
		}
		lf.mu.Unlock()
		select {
		case <-lf.wake:
		case <-stop:
			return 0, nil, false
		}
	}
}

// release frees handle i's slot.
func (lf *laneFiles) release(i int) {
	lf.mu.Lock()
	lf.busy[i]--
	lf.mu.Unlock()
	lf.signal()
}

func (lf *laneFiles) signal() {
	select {
	case lf.wake <- struct{}{}:
	default:
	}
}

// add adds the lanes' handles (none when they failed: the main handle then
// gets every slot). It reports false when the fetch has ended.
func (lf *laneFiles) add(files []*xsftp.File, since time.Time) bool {
	lf.mu.Lock()
	defer lf.mu.Unlock()
	if lf.ended {
		return false
	}
	if len(files) == 0 {
		lf.per = lf.all
	}
	for _, f := range files {
		lf.files = append(lf.files, f)
		lf.busy = append(lf.busy, 0)
	}
	lf.at = time.Since(since)
	lf.signal()
	return true
}

// handles returns how many handles the fetch used and when the lanes'
// were added.
func (lf *laneFiles) handles() (int, time.Duration) {
	lf.mu.Lock()
	defer lf.mu.Unlock()
	return len(lf.files), lf.at
}

// openLanes opens r's file on the connection's lanes for a fetch and adds
// the handles to lf, until done is closed. A lane's handle is kept only if
// its file has the main handle's size and time (from the head's fstat).
func (r *reader) openLanes(lf *laneFiles, done <-chan struct{}) {
	p := r.t.dataPath(r.info.Key)
	r.c.openOnLanes(lf, done, func(cl *xsftp.Client) *xsftp.File {
		// The stat goes by name beside the open: one round trip, beside
		// the main handle's head read and fstat when the fetch follows
		// its Open at once.
		statc := make(chan os.FileInfo, 1)
		go func() {
			fi, _ := cl.Lstat(p)
			statc <- fi
		}()
		f, err := cl.Open(p)
		fi := <-statc
		if err != nil {
			return nil
		}
		if r.waitHead() != nil || r.mtime.IsZero() ||
			fi == nil || !fi.Mode().IsRegular() || fi.Size() != r.info.Size || !fi.ModTime().Equal(r.mtime) {
			go f.Close()
			return nil
		}
		return f
	})
}

// openOnLanes opens a handle on each of c's lanes with open (nil: none) and
// adds them to lf, once the lanes are up, unless done is closed first.
func (c *conn) openOnLanes(lf *laneFiles, done <-chan struct{}, open func(*xsftp.Client) *xsftp.File) {
	start := time.Now()
	var files []*xsftp.File
	defer func() {
		if !lf.add(files, start) {
			closeFiles(files)
		}
	}()
	select {
	case <-c.startLanes():
	case <-done:
		return
	}
	if len(c.lanes.clients) == 0 {
		return
	}
	w := c.watch()
	opened := make([]*xsftp.File, len(c.lanes.clients))
	var wg sync.WaitGroup
	for i, cl := range c.lanes.clients {
		wg.Go(func() { opened[i] = open(cl) })
	}
	wg.Wait()
	w.stop()
	for _, f := range opened {
		if f != nil {
			files = append(files, f)
		}
	}
}

// end stops lf's use and closes its lane handles (all reads on them are
// done).
func (lf *laneFiles) end() {
	lf.mu.Lock()
	defer lf.mu.Unlock()
	lf.ended = true
	closeFiles(lf.files[1:])
}

func closeFiles(fs []*xsftp.File) {
	for _, f := range fs {
		go f.Close()
	}
}

// writeLanes uploads src to the temp file tmp, open as f on c's main
// session, through f and the handles of tmp it opens on the lanes: chunks
// of fetchChunks packets, each on the least busy handle, Concurrency
// packets in flight in all. It returns once every write has been answered.
func (t *Tier) writeLanes(c *conn, f *xsftp.File, tmp string, src *putSource) error {
	chunk := c.packet * fetchChunks
	depth := max(1, t.opt.Concurrency/fetchChunks)
	lf := newLaneFiles(t, f, depth, true)
	done := make(chan struct{})
	defer lf.end()
	defer close(done)
	go c.openOnLanes(lf, done, func(cl *xsftp.Client) *xsftp.File {
		lane, err := cl.OpenFile(tmp, os.O_WRONLY)
		if err != nil {
			return nil
		}
		return lane
	})
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		stop     = make(chan struct{})
	)
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if firstErr == nil {
			firstErr = err
			close(stop)
		}
	}
	var off int64
	for {
		mu.Lock()
		failed := firstErr != nil
		mu.Unlock()
		if failed {
			break
		}
		hi, h, ok := lf.acquire(stop)
		if !ok {
			break
		}
		bp := getChunk(chunk)
		b := (*bp)[:chunk]
		n, rerr := io.ReadFull(src, b)
		if n > 0 {
			wg.Add(1)
			go func(b []byte, at int64) {
				defer wg.Done()
				_, err := h.WriteAt(b, at)
				lf.release(hi)
				chunkBufs.Put(bp)
				if err != nil {
					fail(err)
				}
			}(b[:n], off)
			off += int64(n)
		} else {
			lf.release(hi)
			chunkBufs.Put(bp)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			fail(rerr) // src.err has it too
			break
		}
	}
	wg.Wait()
	return firstErr
}
