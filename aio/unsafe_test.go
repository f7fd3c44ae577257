package aio

import "unsafe"

// unsafePointer returns the address of b's first byte, for alignment checks.
func unsafePointer(b []byte) unsafe.Pointer { return unsafe.Pointer(&b[0]) }
