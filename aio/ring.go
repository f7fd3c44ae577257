package aio

import "github.com/ringblk/ringblk/uring"

// newKernelRing creates the kernel ring for a Context. It runs on the owner
// thread, which is locked: uring binds a SINGLE_ISSUER ring to the thread
// of its first io_uring_enter, and registration calls must come from there
// too.
func newKernelRing(entries int) (uring.Queue, error) {
	r, err := uring.New(entries)
	if err != nil {
		return nil, err
	}
	return r, nil
}
