package qcow2

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/cache"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
)

// TestL2CacheSizeBeyondMemoryRefused: an L2 cache larger than the
// machine could hold (iotest 137: 1 TiB on a 32 PiB image) is refused
// at open with an error naming it, instead of allocating the tables and
// running out of memory.
func TestL2CacheSizeBeyondMemoryRefused(t *testing.T) {
	e := newTestEnv(t)
	path := filepath.Join(t.TempDir(), "big.qcow2")
	if err := e.create(path, 32<<50, format.CreateOptions{ClusterSize: 256 << 10}); err != nil {
		t.Fatal(err)
	}
	file, err := raw.NewNode(e.g, path, raw.Options{Locking: raw.LockingOff}, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	huge := 2 * l2CacheLimit()
	n, err := NewNode(e.g, file, DriverOptions{L2CacheBytes: huge, SharedCache: cache.NewLRU(1)}, block.Options{})
	if err == nil {
		n.Unref()
		t.Fatalf("open with a %d-byte L2 cache succeeded, want it refused", huge)
	}
	if !strings.Contains(err.Error(), "L2 cache size too big") {
		t.Errorf("error %q does not name the L2 cache size", err)
	}
}
