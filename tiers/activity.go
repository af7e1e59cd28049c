package tiers

import (
	"sync/atomic"
	"time"
)

// activity is the stack's one clock of foreground work: when an entry was
// last published and when the current burst of publishes began, and when
// the stack was last used (a Stat, an Open, a read of a reader Open
// returned). Background work asks it how long to wait, so that "background
// yields to foreground" has one definition:
//   - queued uploads and the persistence of small entries wait while
//     entries are being published (publishHold);
//   - the deferred copies into slower tiers wait until the stack is idle
//     (idleFor).
//
// Uploads and commits beside a loop that writes or reads entries take its
// CPU on 2 cores: SSH encryption, sshd's file creations, bbolt's fsyncs.
type activity struct {
	pol         *Policy
	lastPublish atomic.Int64 // unix nanoseconds
	burstStart  atomic.Int64 // of the first publish of the current burst
	lastUse     atomic.Int64 // unix nanoseconds
}

// published records a publish at now. A publish less than UploadQuiet
// after the one before continues a burst; another starts one.
func (a *activity) published(now time.Time) {
	t := now.UnixNano()
	if last := a.lastPublish.Swap(t); t-last > int64(a.pol.UploadQuiet) {
		a.burstStart.Store(t)
	}
}

// inBurst reports whether the last publish continued a burst (a lone
// publish does not).
func (a *activity) inBurst() bool { return a.lastPublish.Load() != a.burstStart.Load() }

// publishHold returns how long work that yields to publishes should wait:
// until the publishes pause for UploadQuiet, at most until UploadMaxHold
// after the burst began; 0 when they have paused.
func (a *activity) publishHold(now time.Time) time.Duration {
	t := now.UnixNano()
	quietAt := a.lastPublish.Load() + int64(a.pol.UploadQuiet)
	if t >= quietAt {
		return 0
	}
	giveUp := a.burstStart.Load() + int64(a.pol.UploadMaxHold)
	return time.Duration(max(min(quietAt, giveUp)-t, 0))
}

// used records a use of the stack now (a Stat, an Open, a read): the
// deferred copies wait for a pause.
func (a *activity) used() { a.lastUse.Store(time.Now().UnixNano()) }

// idleFor returns how long the stack has not been used at now.
func (a *activity) idleFor(now time.Time) time.Duration {
	return now.Sub(time.Unix(0, a.lastUse.Load()))
}
