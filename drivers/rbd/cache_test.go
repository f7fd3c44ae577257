//go:build rbd

package rbd_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/drivers/rbd"
	"github.com/ringblk/ringblk/internal/cephtest"
)

// TestCacheModes: what a node's cache mode means once the OSD stops.
// With CacheOff a write fails with ETIMEDOUT: it completes only when the
// OSD has it. With CacheWriteback a write completes from librbd's cache at
// once and the flush is what fails: the write's error reaches the caller
// there, as a failed page-cache write-back reaches fsync. Once the OSD is
// back, a write and a flush succeed and another client reads the data.
// Before Spec.Cache, every node ran librbd's default (write-through until
// the first flush), so the write-back node's write, issued before any
// flush, timed out too.
func TestCacheModes(t *testing.T) {
	if cluster == nil {
		t.Skip(cephtest.Absent)
	}
	if testing.Short() {
		t.Skip("starts a second cluster and stops its OSD; not in -short")
	}
	// bluestore: a memstore OSD loses every object when it is killed, so
	// nothing would be left to read back after the restart.
	t.Setenv("CEPH_OSD_STORE", "bluestore")
	c, err := cephtest.StartPrivate(fmt.Sprintf("/var/tmp/ringblk-cephcache-%d", os.Getpid()), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	const timeout = 3 * time.Second
	e := blocktest.NewEnv(t, 0)
	open := func(image string, cache rbd.Cache) *block.Node {
		s, err := rbd.ParseName(c.Name(image) + ":timeout=3")
		if err != nil {
			t.Fatal(err)
		}
		if err := rbd.Create(s, imgSize); err != nil {
			t.Fatal(err)
		}
		s.Cache = cache
		n, err := rbd.NewNode(e.G, s, false, block.Options{Name: image})
		if err != nil {
			t.Fatal(err)
		}
		// The first write takes the image's exclusive lock while the OSD
		// runs. No flush: librbd's default would turn write-back on at the
		// first one.
		if _, err := n.WriteAt(make([]byte, 4096), 0); err != nil {
			t.Fatal(err)
		}
		return n
	}
	off := open("off", rbd.CacheOff)
	wb := open("wb", rbd.CacheWriteback)
	if err := c.StopOSD(); err != nil {
		t.Fatal(err)
	}
	data := pattern(4096, 7)

	start := time.Now()
	if _, err := off.WriteAt(data, 8192); !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("cache off, OSD stopped: write = %v, want ETIMEDOUT", err)
	}
	t.Logf("cache off: the write failed after %v", time.Since(start))

	start = time.Now()
	if _, err := wb.WriteAt(data, 8192); err != nil {
		t.Fatalf("write-back, OSD stopped: write = %v, want it held in librbd's cache", err)
	}
	if took := time.Since(start); took >= timeout {
		t.Fatalf("write-back, OSD stopped: the write took %v, as long as the OSD timeout", took)
	}
	if err := wb.Flush(); !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("write-back, OSD stopped: flush = %v, want ETIMEDOUT", err)
	}

	if err := c.StartOSD(); err != nil {
		t.Fatal(err)
	}
	var ferr error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		if _, ferr = wb.WriteAt(data, 8192); ferr == nil {
			if ferr = wb.Flush(); ferr == nil {
				break
			}
		}
	}
	if ferr != nil {
		t.Fatalf("write-back: write and flush after the OSD came back = %v", ferr)
	}
	if err := wb.Unref(); err != nil {
		t.Fatalf("closing the write-back node: %v", err)
	}
	if err := off.Unref(); err != nil {
		t.Logf("closing the cache-off node: %v", err)
	}
	s, err := rbd.ParseName(c.Name("wb"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := rbd.NewNode(e.G, s, true, block.Options{Name: "reader"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Unref()
	got := make([]byte, 4096)
	if _, err := r.ReadAt(got, 8192); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("another client reads the write-back node's write: %v, equal %v", err, bytes.Equal(got, data))
	}
}
