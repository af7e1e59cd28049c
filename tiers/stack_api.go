package tiers

import (
	"io"
	"log/slog"
	"time"
)

// Layer is one tier of a Stack with its role.
type Layer struct {
	Tier Tier
	// ReadOnly: the stack never writes to, promotes into or deletes from it.
	ReadOnly bool
	// Remote: a shared, slow tier. Puts reach it through the upload queue
	// (or synchronously with WriteThrough); its listing is cached.
	Remote bool
}

// Promote says which faster tiers a hit is copied into.
type Promote string

const (
	PromoteAll  Promote = "all"  // every writable tier faster than the hit (default)
	PromoteBase Promote = "base" // tier 0 only, as fleche's CacheStack does
)

// DefaultUploadWorkers is StackOptions.UploadWorkers when unset: an
// object store takes small uploads faster the more are in flight.
const DefaultUploadWorkers = 32

// StackOptions configure a Stack. The zero value is usable.
type StackOptions struct {
	Promote Promote
	// WriteThrough: Publish returns only once the value is on every remote
	// tier. Default is write-back through the durable upload queue.
	WriteThrough bool
	// KeepRemoteOnDelete: Delete leaves remote tiers alone.
	KeepRemoteOnDelete bool
	// RemoteTimeout bounds a remote lookup (default 10s).
	RemoteTimeout time.Duration
	// ListTTL is how long a remote listing is reused (default 30s).
	ListTTL time.Duration
	// ListingTTL turns on absence snapshots (see doc.go): when lookups miss
	// a remote in a burst, the stack lists it once and, for ListingTTL from
	// the start of that listing, answers names absent from the listing
	// without a round trip. The mount passes its negative TTL. 0 disables.
	ListingTTL time.Duration
	// ListingMaxNames caps the names of one such listing (default
	// DefaultListingMaxNames, 8 bytes each); a larger remote is not listed
	// for this purpose.
	ListingMaxNames int
	// SpoolDir holds values being fetched from a remote tier (default os.TempDir()).
	SpoolDir string
	// UploadWorkers is the number of concurrent uploads (default
	// DefaultUploadWorkers; values over 1 MiB go two at a time).
	UploadWorkers int
	Logger        *slog.Logger
	// Policy: the timings and sizes of the background work (policy.go);
	// zero fields take their defaults.
	Policy Policy
	// Observe, when set, is told how long each tier took for the
	// operations a user waits on or that bound the remote's freshness:
	// "stat" (a local tier's lookup), "lookup" (a remote's, which opens
	// the value), "open" (a local tier's), "fetch" (a remote value read
	// whole and verified) and "upload". err is the operation's error (a
	// miss is ErrNotFound). It must be quick: it runs on the caller's path.
	Observe func(tier, op string, took time.Duration, err error)
}

// Blob is a complete value handed to Publish. The stack reads it at any
// offset until it calls Release, exactly once, when it no longer needs it.
type Blob interface {
	io.ReaderAt
	Size() int64
	Release()
}

// BytesBlob is a Blob that may hold its value in memory, unchanging: Bytes
// returns it (nil when it does not). A BytesPutter tier keeps that slice
// instead of a copy.
type BytesBlob interface {
	Blob
	Bytes() []byte
}

// UploadState of an entry, for the user.flechefs.upload xattr.
type UploadState string

const (
	UploadNone    UploadState = "none"    // no remote tier configured
	UploadPending UploadState = "pending" // waiting in the upload queue
	UploadDone    UploadState = "done"    // on the remote (or not queued)
	// UploadConflict: the remote holds another value of the key (another
	// mount wrote it first); this value is being dropped here, and the
	// next read fetches the remote's.
	UploadConflict UploadState = "conflict"
)

// TierStats are one tier's counters.
type TierStats struct {
	Name      string `json:"name"`
	Remote    bool   `json:"remote,omitempty"`
	ReadOnly  bool   `json:"read_only,omitempty"`
	Available bool   `json:"available"`
	// Failed is why the tier failed for good (tiers.ErrFailed), if it did.
	Failed string `json:"failed,omitempty"`
	// LastError is the tier's last unexpected error (not a miss), kept
	// after the tier recovers; Available says whether it did.
	LastError string `json:"last_error,omitempty"`
	// Hits: opens served by this tier. Misses: opens that found no copy
	// here and went on to a slower tier, and lookups of keys no tier holds.
	Hits        int64 `json:"hits"`
	Misses      int64 `json:"misses"`
	BytesIn     int64 `json:"bytes_in"`
	BytesOut    int64 `json:"bytes_out"`
	Promotions  int64 `json:"promotions"`
	Evictions   int64 `json:"evictions"`
	Corruptions int64 `json:"corruptions"`
	// Quarantined: damaged copies of a remote tier moved into its
	// quarantine by this mount; Unquarantined: those left in place,
	// unserved (the quarantine was full, or the move failed).
	Quarantined   int64 `json:"quarantined,omitempty"`
	Unquarantined int64 `json:"unquarantined,omitempty"`
	Errors        int64 `json:"errors"`
	Entries       int64 `json:"entries"`
	Bytes         int64 `json:"bytes"`
	Limit         int64 `json:"limit"`
	DiskBytes     int64 `json:"disk_bytes,omitempty"`
	DiskFree      int64 `json:"disk_free,omitempty"`
	// Listings of a remote tier made to answer misses (absence snapshots),
	// and the misses they answered without a round trip.
	Listings     int64 `json:"listings,omitempty"`
	ListedMisses int64 `json:"listed_misses,omitempty"`
}

// Stats are the stack's counters (the JSON of .flechefs/stats).
type Stats struct {
	Tiers []TierStats `json:"tiers"`
	// Queue is the number of entries waiting for upload.
	Queue int64 `json:"queue"`
	// QueueOldest is when the entry waiting longest entered the queue
	// (since this mount started, for one resumed from the durable queue).
	QueueOldest time.Time `json:"queue_oldest,omitzero"`
	// Deletes is the number of remote deletes queued (tombstones): keys
	// deleted here while the remote could not be reached.
	Deletes         int64  `json:"deletes,omitempty"`
	Uploaded        int64  `json:"uploaded"`
	UploadedBytes   int64  `json:"uploaded_bytes"`
	UploadErrors    int64  `json:"upload_errors"`
	LastUploadError string `json:"last_upload_error,omitempty"`
	// Conflicts: uploads refused because the remote held another value.
	Conflicts int64 `json:"conflicts"`
	// DroppedPublishes: publishes of a key that already existed (first writer won).
	DroppedPublishes int64 `json:"dropped_publishes"`
	// Unpersisted is the number of published entries not yet in a persistent tier.
	Unpersisted int64 `json:"unpersisted"`
	Fetching    int64 `json:"fetching"`
	// Deferred: values fetched from a remote, in tier 0, whose copies into
	// the slower local tiers wait for a pause in reads (promoter.go).
	Deferred int64 `json:"deferred"`
}
