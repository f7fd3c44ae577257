// Package pagecache tells how much of a file the kernel's page cache holds.
// Tests use it to check readahead and fadvise behaviour.
package pagecache

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Resident counts the pages of path's range [off, off+n) that are in the
// page cache (mincore over a read-only shared mapping). off must be a
// multiple of the page size; n > 0.
func Resident(path string, off, n int64) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), off, int(n), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(m)
	page := int64(os.Getpagesize())
	vec := make([]byte, (n+page-1)/page)
	// x/sys has no Mincore wrapper; SAFETY: m and vec outlive the call.
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		return 0, errno
	}
	c := 0
	for _, v := range vec {
		c += int(v & 1)
	}
	return c, nil
}
