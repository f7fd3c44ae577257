package prefetch

import (
	"testing"
	"unsafe"
)

// TestLineNeverFaults: a hint for any address — valid, nil, unmapped,
// non-canonical — returns without a fault, and the memory hinted is
// unchanged.
func TestLineNeverFaults(t *testing.T) {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	for _, a := range []uintptr{uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&b[200])), 0, 8, 1 << 47, ^uintptr(0)} {
		Line(a)
	}
	for i := range b {
		if b[i] != byte(i) {
			t.Fatalf("byte %d changed to %d", i, b[i])
		}
	}
}

func BenchmarkLine(b *testing.B) {
	buf := make([]byte, 1<<20)
	base := uintptr(unsafe.Pointer(&buf[0]))
	i := uintptr(0)
	for b.Loop() {
		Line(base + i&(1<<20-1))
		i += 4160
	}
}
