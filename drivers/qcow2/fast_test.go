package qcow2

import (
	"bytes"
	"testing"
	"time"

	"github.com/ringblk/ringblk/cache"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// withDriverLockHeld runs op in a goroutine while the test holds Driver.mu
// and reports whether op finished before the lock was let go (within 5 s).
// The lock is released either way, so a blocked op finishes afterwards.
func withDriverLockHeld(t *testing.T, d *Driver, op func() error) bool {
	t.Helper()
	d.mu.Lock()
	done := make(chan error, 1)
	go func() { done <- op() }()
	select {
	case err := <-done:
		d.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		return true
	case <-time.After(5 * time.Second):
		d.mu.Unlock()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		return false
	}
}

// TestQcow2CachedIOTakesNoDriverLock: a read of allocated clusters whose
// L2 table is in tier 1 (one cluster and several), and an in-place write
// to COPIED clusters, complete while Driver.mu is held by someone else:
// the hot paths take no driver-wide lock (ARCHITECTURE's hot-path rule).
func TestQcow2CachedIOTakesNoDriverLock(t *testing.T) {
	e := newTestEnv(t)
	path, cov := l2SpreadImage(t, e, 2)
	n, d := l2OpenWith(t, e, path, DriverOptions{})
	data := l2Pattern(3, 3*4096)
	l2MustWrite(t, n, data, cov) // allocates; header ready (R10)
	l2MustRead(t, n, data, cov)  // table in tier 1
	got := make([]byte, 4096)
	if !withDriverLockHeld(t, d, func() error { _, err := n.ReadAt(got, cov+4096); return err }) {
		t.Error("a cached one-cluster read waited for Driver.mu")
	}
	if !bytes.Equal(got, data[4096:8192]) {
		t.Error("the lock-free read returned other bytes")
	}
	all := make([]byte, len(data))
	if !withDriverLockHeld(t, d, func() error { _, err := n.ReadAt(all, cov); return err }) {
		t.Error("a cached three-cluster read waited for Driver.mu")
	}
	if !bytes.Equal(all, data) {
		t.Error("the lock-free multi-cluster read returned other bytes")
	}
	w := l2Pattern(9, 2*4096)
	if !withDriverLockHeld(t, d, func() error { _, err := n.WriteAt(w, cov+512); return err }) {
		t.Error("an in-place write waited for Driver.mu")
	}
	copy(data[512:], w)
	l2MustRead(t, n, data, cov)
}

// TestQcow2FastPathFallsBack: what the lock-free paths must not take —
// a cluster that is not COPIED after a snapshot, a table evicted from
// tier 1, a write after the image was marked corrupt — goes the locked
// way and gives the same result as before the change.
func TestQcow2FastPathFallsBack(t *testing.T) {
	e := newTestEnv(t)
	path, cov := l2SpreadImage(t, e, 5)
	// No room in tier 2: a table read comes from the file into tier 1.
	n, d := l2OpenWith(t, e, path, DriverOptions{L2CacheBytes: 4 * 4096, SharedCache: cache.NewLRU(1)})
	for i := range 5 {
		l2MustWrite(t, n, l2Pattern(byte(i), 4096), int64(i)*cov)
	}
	if err := n.Flush(); err != nil { // clean tables: evictable
		t.Fatal(err)
	}
	// Table 0 was evicted by the fifth: the fast read misses, the locked
	// path fetches it, and the data is right.
	st0 := d.CacheStats()
	l2MustRead(t, n, l2Pattern(0, 4096), 0)
	if st := d.CacheStats(); st.L2.Misses == st0.L2.Misses {
		t.Error("a read of an evicted table counted no miss")
	}
	// Now resident: a fast hit.
	st1 := d.CacheStats()
	l2MustRead(t, n, l2Pattern(0, 4096), 0)
	if st := d.CacheStats(); st.L2.Hits != st1.L2.Hits+1 || st.L2.Misses != st1.L2.Misses {
		t.Errorf("a reread counted %d hits and %d misses, want 1 and 0", st.L2.Hits-st1.L2.Hits, st.L2.Misses-st1.L2.Misses)
	}
	// A corrupt image: the flag stops the lock-free write.
	d.mu.Lock()
	d.setCorruptLocked(format.Corrupt("test", 0, "marked by the test"))
	d.mu.Unlock()
	if _, err := n.WriteAt(l2Pattern(7, 4096), 0); err == nil {
		t.Error("an in-place write to a corrupt image succeeded")
	}
	if _, err := n.ReadAt(make([]byte, 4096), 0); err == nil {
		t.Error("a read of a corrupt image succeeded")
	}
}
