package chain

import (
	"testing"

	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/drivers/rbd"
)

// TestRBDCache: a node's cache mode reaches librbd as the design says
// (docs/design/rbd.md §"Cache mode"): writeback keeps librbd's write-back
// cache; none and writethrough turn it off, so a completed write is on
// the OSDs.
func TestRBDCache(t *testing.T) {
	for _, c := range []struct {
		in   raw.Cache
		want rbd.Cache
	}{
		{raw.CacheWriteback, rbd.CacheWriteback},
		{raw.CacheNone, rbd.CacheOff},
		{raw.CacheWritethrough, rbd.CacheOff},
	} {
		if got := RBDCache(c.in); got != c.want {
			t.Errorf("cache=%v: librbd mode %d, want %d", c.in, got, c.want)
		}
	}
}
