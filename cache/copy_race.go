//go:build race

package cache

import (
	"sync/atomic"
	"unsafe"
)

// fillTable copies src into dst and zeroes the rest. Under the race
// detector it stores word by word with atomics: a View reader may still be
// reading the slot's previous table, and only its Valid check (which fails:
// the slot's sequence is odd while it is filled) keeps it from using what
// it read. Ordinary builds copy (fill.go).
func fillTable(dst, src []byte) {
	if len(dst)%8 != 0 {
		n := copy(dst, src)
		clear(dst[n:])
		return
	}
	for i := 0; i < len(dst); i += 8 {
		var w [8]byte
		if i < len(src) {
			copy(w[:], src[i:])
		}
		atomic.StoreUint64((*uint64)(unsafe.Pointer(&dst[i])), *(*uint64)(unsafe.Pointer(&w[0])))
	}
}
