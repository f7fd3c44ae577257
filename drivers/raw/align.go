package raw

import "unsafe"

// addrOf returns the address of b's first byte, for alignment checks only.
// REQUIRES: len(b) > 0.
func addrOf(b []byte) uintptr {
	// SAFETY: the address is only masked and compared, never turned back
	// into a pointer; Go's collector does not move heap objects, and ring
	// buffers never live on a goroutine stack (aio's rule), so the value
	// stays meaningful for as long as the caller holds b.
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))
}

// alignedBuf returns n bytes of heap memory whose first byte is aligned to
// align (a power of two): the bounce buffer of last resort, when the
// Context has no arena or the arena is full.
func alignedBuf(n int, align uintptr) []byte {
	if align <= 1 {
		return make([]byte, n)
	}
	raw := make([]byte, n+int(align))
	skip := int((align - addrOf(raw)&(align-1)) & (align - 1))
	return raw[skip : skip+n : skip+n]
}
