package host

import (
	"sync"
	"testing"
)

// TestIdxRing: FIFO order, empty and ready, and no index lost or
// duplicated under concurrent producers and consumers.
func TestIdxRing(t *testing.T) {
	r := newIdxRing(5) // rounds to 8
	if r.ready() {
		t.Fatal("new ring ready")
	}
	for i := uint32(0); i < 8; i++ {
		if !r.push(i) {
			t.Fatalf("push %d refused", i)
		}
	}
	if r.push(8) {
		t.Fatal("push into a full ring")
	}
	for i := uint32(0); i < 8; i++ {
		if !r.ready() {
			t.Fatal("not ready with values in it")
		}
		if v, ok := r.pop(); !ok || v != i {
			t.Fatalf("pop %d: %d %v", i, v, ok)
		}
	}
	if _, ok := r.pop(); ok || r.ready() {
		t.Fatal("empty ring gave a value")
	}
	// Concurrency: 64 indices circulate between two rings through four
	// goroutines; at the end each is present exactly once.
	a, b := newIdxRing(64), newIdxRing(64)
	for i := uint32(0); i < 64; i++ {
		a.push(i)
	}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			from, to := a, b
			if g%2 == 1 {
				from, to = b, a
			}
			for n := 0; n < 20000; n++ {
				if v, ok := from.pop(); ok && !to.push(v) {
					t.Error("push refused")
					return
				}
			}
		}()
	}
	wg.Wait()
	seen := map[uint32]bool{}
	for _, r := range []*idxRing{a, b} {
		for v, ok := r.pop(); ok; v, ok = r.pop() {
			if seen[v] {
				t.Fatalf("index %d twice", v)
			}
			seen[v] = true
		}
	}
	if len(seen) != 64 {
		t.Fatalf("%d of 64 indices left", len(seen))
	}
}
