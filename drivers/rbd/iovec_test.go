//go:build rbd

package rbd_test

import (
	"bytes"
	"runtime"
	"sync"
	"testing"

	"github.com/ringblk/ringblk/block/blocktest"
)

// TestIovecStoreNoWriteBarrier: the driver fills its C iovec arrays with
// integer stores. With pointer stores the GC's write barrier shaded the
// previous request's buffer left in the array, already freed, and the
// runtime died with "found pointer to free object". Reads into buffers
// dropped at once, with collections running all the time, reproduce it.
func TestIovecStoreNoWriteBarrier(t *testing.T) {
	s := newImage(t, 16<<20)
	e := blocktest.NewEnv(t, 0)
	n := open(t, e, s, false)
	want := pattern(512, 7)
	if _, err := n.WriteAt(want, 0); err != nil {
		t.Fatal(err)
	}
	keep := make([]byte, 512)
	for i := 0; i < 150; i++ {
		// A buffer of a size nothing else allocates, dropped after the
		// read and freed by a full collection: nothing reuses its memory,
		// so a later shade of it is caught as a zombie.
		x := make([]byte, 5000)
		if _, err := n.ReadAt(x[:512], 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(x[:512], want) {
			t.Fatalf("read %d differs", i)
		}
		x = nil
		runtime.GC()
		// The next request's iovec store, while a collection marks.
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); runtime.GC() }()
		for j := 0; j < 4; j++ {
			if _, err := n.ReadAt(keep, 0); err != nil {
				t.Fatal(err)
			}
		}
		wg.Wait()
	}
}
