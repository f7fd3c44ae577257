package uringtest

import (
	"unsafe"

	"github.com/ringblk/ringblk/uring"
)

// The fake reaches caller memory through the addresses stored in SQEs, as
// the kernel does. Every helper here relies on the uring.Queue contract:
// buffers, iovec arrays and timespecs named by an SQE stay valid, and off
// the Go stack, until the operation's CQE has been reaped (timespecs: until
// submission). The fake only dereferences them before posting that CQE.
//
// Go memory may sit behind these addresses (tests often use heap slices),
// so the pointer must be rebuilt in a form the garbage collector and
// checkptr (enabled by -race) accept: reinterpreting the integer's storage
// as a pointer, instead of converting uintptr to unsafe.Pointer, which
// checkptr rejects for heap addresses that did not come from arithmetic on
// a pointer in the same expression.

// addrPointer returns addr as a pointer.
func addrPointer(addr uint64) unsafe.Pointer {
	// SAFETY: uint64 and unsafe.Pointer have the same size on the 64-bit
	// targets ringblk supports; addr is a caller-owned live address (see
	// the file comment), so the rebuilt pointer is valid for the GC.
	return *(*unsafe.Pointer)(unsafe.Pointer(&addr))
}

// bytesAt returns the n bytes at addr (nil for n == 0).
func bytesAt(addr uint64, n uint32) []byte {
	if n == 0 {
		return nil
	}
	// SAFETY: [addr, addr+n) is a buffer the caller handed to a Prep helper
	// and keeps alive until the CQE (file comment).
	return unsafe.Slice((*byte)(addrPointer(addr)), n)
}

// iovecsAt returns the n iovecs at addr (nil for n == 0).
func iovecsAt(addr uint64, n uint32) []uring.Iovec {
	if n == 0 {
		return nil
	}
	// SAFETY: addr is the iovec array passed to PrepReadv/PrepWritev, read
	// during submission while the caller keeps it alive (file comment).
	return unsafe.Slice((*uring.Iovec)(addrPointer(addr)), n)
}

// iovecBytes returns the memory an iovec describes.
func iovecBytes(v uring.Iovec) []byte {
	if v.Len == 0 {
		return nil
	}
	// SAFETY: the caller keeps every iovec's buffer alive until the CQE.
	return unsafe.Slice(v.Base, v.Len)
}

// timespecAt returns the Timespec at addr.
func timespecAt(addr uint64) *uring.Timespec {
	// SAFETY: addr is the Timespec passed to PrepTimeout, read during
	// submission (file comment).
	return (*uring.Timespec)(addrPointer(addr))
}

// sliceAddr returns the address of b's first byte, 0 if b is empty.
func sliceAddr(b []byte) uint64 {
	if len(b) == 0 {
		return 0
	}
	return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
}
