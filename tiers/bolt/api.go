package bolt

import (
	"io"

	"github.com/flechefs/flechefs/tiers"
)

// The interfaces Tier and its readers implement. Tier does not implement
// tiers.Syncer: Put returns only after its transaction is synced.
var (
	_ tiers.Tier           = (*Tier)(nil)
	_ tiers.Queue          = (*Tier)(nil)
	_ tiers.TombstoneQueue = (*Tier)(nil)
	_ tiers.UsageReporter  = (*Tier)(nil)
	_ tiers.Reader         = (*reader)(nil)
	_ io.WriterTo          = (*reader)(nil)
)
