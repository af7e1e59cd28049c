package tiers

import (
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Policy holds the timing and size constants of the stack's background
// work: when copies, persistence and uploads run, and how much each holds.
// They live in one place so that they can be read together and so that
// tests can set them (a test that checks "X waits for a pause" sets the
// pause to an hour instead of racing a 250 ms timer on a loaded machine).
// A zero field takes its DefaultPolicy value.
//
// The rule behind most of them: on the 2-core machines flechefs is built
// for, a bbolt commit or an upload running beside a loop of reads or writes
// takes CPU from that loop. So background work that can wait (copies into
// slower tiers, persistence, queued uploads) waits while the foreground is
// busy, for a bounded time, and then runs in batches that share commits.
type Policy struct {
	// PromoteDelay: a copy of a small value into a tier after the first
	// waits this long, so that the copies of values read one after the
	// other reach the tier together and share a commit. The values are
	// served from RAM and the fetch meanwhile.
	PromoteDelay time.Duration

	// ParkTTL: a lookup that opened a remote copy too large to prefetch
	// keeps ("parks") its reader this long for the Open that usually
	// follows, which then saves the remote open's round trips.
	ParkTTL time.Duration

	// DeferIdle, DeferMaxAge: a value fetched from a remote that is small
	// beside tier 0 is copied into tier 0 at once and into the slower local
	// tiers once the stack was not used for DeferIdle, or once the oldest
	// such copy waited DeferMaxAge (see promoter.go).
	DeferIdle   time.Duration
	DeferMaxAge time.Duration

	// UploadQuiet, UploadMaxHold: while entries are being published (the
	// last less than UploadQuiet ago), queued uploads and the persistence
	// of small entries wait, for at most UploadMaxHold from the start of
	// the burst. A lone publish waits UploadQuiet.
	UploadQuiet   time.Duration
	UploadMaxHold time.Duration

	// PersistHoldBytes bounds the bytes of the entries persisters hold
	// during a burst (in memory: tier 0 has a copy, the blob another).
	PersistHoldBytes int64
	// PersistBatch, PersistSmall: a persister puts up to PersistBatch
	// entries of at most PersistSmall bytes at once, in one commit.
	PersistBatch int
	PersistSmall int64
	// PersistDefer bounds how long the persistence of a large value waits
	// for its upload (both read the whole value; one at a time is faster).
	PersistDefer time.Duration

	// DequeueLinger: the dequeuer waits this long for more uploads to end
	// before it commits their removal from the durable queue.
	DequeueLinger time.Duration

	// SmallUpload, LargeUploads: values over SmallUpload bytes are uploaded
	// LargeUploads at a time (each keeps a window of packets in flight);
	// smaller ones upload_workers at a time.
	SmallUpload  int64
	LargeUploads int

	// RecordWait: an upload that finds the remote copy without a record
	// waits this long for one before it hashes the copy itself (the
	// rename's winner writes its record one round trip after its rename).
	RecordWait time.Duration

	// AbsentBurst misses of one remote within AbsentBurstWindow start a
	// listing of it for the absence snapshots. AbsentBackoff: a remote
	// whose listing was too large or too slow to be of use is not listed
	// again for this long. AbsentRetry: after a failed listing (the remote
	// down), for this long.
	AbsentBurst       int
	AbsentBurstWindow time.Duration
	AbsentBackoff     time.Duration
	AbsentRetry       time.Duration

	// RetryMin, RetryMax: a failed upload or remote delete is tried again
	// after RetryMin, doubling up to RetryMax, each wait drawn within
	// ±50% so that many mounts of one remote do not retry in step.
	RetryMin time.Duration
	RetryMax time.Duration

	// DamagedTTL: the first Open of a key whose remote copy a lookup's
	// fetch found damaged less than this long ago answers that damage
	// (ErrCorrupt), not absence (damaged.go).
	DamagedTTL time.Duration
}

// DefaultPolicy is the policy of a stack whose options set none.
func DefaultPolicy() Policy {
	return Policy{
		PromoteDelay:      50 * time.Millisecond,
		ParkTTL:           time.Second,
		DeferIdle:         250 * time.Millisecond,
		DeferMaxAge:       10 * time.Second,
		UploadQuiet:       20 * time.Millisecond,
		UploadMaxHold:     2 * time.Second,
		PersistHoldBytes:  64 << 20,
		PersistBatch:      32,
		PersistSmall:      64 << 10,
		PersistDefer:      30 * time.Second,
		DequeueLinger:     100 * time.Millisecond,
		SmallUpload:       1 << 20,
		LargeUploads:      2,
		RecordWait:        3 * time.Second,
		AbsentBurst:       32,
		AbsentBurstWindow: time.Second,
		AbsentBackoff:     10 * time.Minute,
		AbsentRetry:       30 * time.Second,
		RetryMin:          time.Second,
		RetryMax:          time.Minute,
		DamagedTTL:        10 * time.Second,
	}
}

// withDefaults returns p with each zero field set from DefaultPolicy.
func (p Policy) withDefaults() Policy {
	d := DefaultPolicy()
	def(&p.PromoteDelay, d.PromoteDelay)
	def(&p.ParkTTL, d.ParkTTL)
	def(&p.DeferIdle, d.DeferIdle)
	def(&p.DeferMaxAge, d.DeferMaxAge)
	def(&p.UploadQuiet, d.UploadQuiet)
	def(&p.UploadMaxHold, d.UploadMaxHold)
	def(&p.PersistHoldBytes, d.PersistHoldBytes)
	def(&p.PersistBatch, d.PersistBatch)
	def(&p.PersistSmall, d.PersistSmall)
	def(&p.PersistDefer, d.PersistDefer)
	def(&p.DequeueLinger, d.DequeueLinger)
	def(&p.SmallUpload, d.SmallUpload)
	def(&p.LargeUploads, d.LargeUploads)
	def(&p.RecordWait, d.RecordWait)
	def(&p.AbsentBurst, d.AbsentBurst)
	def(&p.AbsentBurstWindow, d.AbsentBurstWindow)
	def(&p.AbsentBackoff, d.AbsentBackoff)
	def(&p.AbsentRetry, d.AbsentRetry)
	def(&p.RetryMin, d.RetryMin)
	def(&p.RetryMax, d.RetryMax)
	def(&p.DamagedTTL, d.DamagedTTL)
	return p
}

func def[T time.Duration | int | int64](v *T, d T) {
	if *v <= 0 {
		*v = d
	}
}

// retry is the schedule of one failing upload or remote delete.
type retry struct {
	next time.Time // not tried again before
	bo   *backoff.ExponentialBackOff
}

// failed sets the time of the next attempt after one more failure.
func (r *retry) failed(p *Policy) {
	if r.bo == nil {
		r.bo = &backoff.ExponentialBackOff{InitialInterval: p.RetryMin, MaxInterval: p.RetryMax,
			Multiplier: 2, RandomizationFactor: 0.5}
	}
	r.next = time.Now().Add(r.bo.NextBackOff())
}
