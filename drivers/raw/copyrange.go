package raw

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// CopyRange copies n bytes at off of src's file to dstOff of dst's file
// in the kernel, with copy_file_range(2): QEMU's copy offloading between
// two file nodes (raw_co_copy_range), used by convert -C. The file system
// may share the extents (reflink) or copy them without the data passing
// through user space. It blocks the calling goroutine and bypasses the
// nodes' request paths, so it is for a command that owns both nodes and
// has no request in flight on the target range (the target's dirty
// bitmaps are not marked). Any error, including a source that ends
// before off+n (ENOSPC, as QEMU reports it), tells the caller to copy
// the range itself; nothing else is promised about the target range then.
func CopyRange(src *Driver, off int64, dst *Driver, dstOff, n int64) error {
	for n > 0 {
		in, out := off, dstOff
		k, err := unix.CopyFileRange(src.fd, &in, dst.fd, &out, int(min(n, 1<<30)), 0)
		switch {
		case err == syscall.EINTR:
			continue
		case err != nil:
			return err
		case k == 0:
			return syscall.ENOSPC
		}
		off, dstOff, n = off+int64(k), dstOff+int64(k), n-int64(k)
	}
	return nil
}
