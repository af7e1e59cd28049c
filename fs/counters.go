package fs

import (
	"sync/atomic"

	"github.com/flechefs/flechefs/tiers"
)

// MountStats is the JSON of .flechefs/stats: the stack's counters and the
// mount's own.
type MountStats struct {
	tiers.Stats
	Writes WriteStats `json:"writes"`
}

// WriteStats counts what became of the values written through the mount.
type WriteStats struct {
	// Published values: the last close (or an fsync, or a rename of a
	// scratch file) handed them to the stack and they became the key's.
	Published int64 `json:"published"`
	// Scratch files held now (names that are not keys; see doc.go).
	Scratch int64 `json:"scratch"`
	// Dropped values, by reason.
	Dropped DropStats `json:"dropped"`
}

// DropStats counts values that were written and not published.
type DropStats struct {
	// Killed: a process holding the file was killed by a signal.
	Killed int64 `json:"killed"`
	// FailedExit: a process holding the file exited with a non-zero status
	// (unless Options.PublishFailed).
	FailedExit int64 `json:"failed_exit"`
	// WriteError: a write or ftruncate failed (ENOSPC...).
	WriteError int64 `json:"write_error"`
	// Exists: the key had a value already (first writer wins).
	Exists int64 `json:"exists"`
	// PublishError: the stack refused the value at the last close.
	PublishError int64 `json:"publish_error"`
}

// dropReason is why a written value was not published.
type dropReason int

const (
	dropKilled dropReason = iota
	dropFailedExit
	dropWriteError
	dropExists
	dropPublishError
	numDropReasons
)

func (d dropReason) String() string {
	return [...]string{"killed", "failed exit", "write error", "exists", "publish error"}[d]
}

// writeCounters are the mount's live counters behind WriteStats.
type writeCounters struct {
	published atomic.Int64
	dropped   [numDropReasons]atomic.Int64
}

func (c *writeCounters) snapshot(scratch int) WriteStats {
	return WriteStats{
		Published: c.published.Load(),
		Scratch:   int64(scratch),
		Dropped: DropStats{
			Killed:       c.dropped[dropKilled].Load(),
			FailedExit:   c.dropped[dropFailedExit].Load(),
			WriteError:   c.dropped[dropWriteError].Load(),
			Exists:       c.dropped[dropExists].Load(),
			PublishError: c.dropped[dropPublishError].Load(),
		},
	}
}
