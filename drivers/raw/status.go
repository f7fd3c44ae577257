package raw

import (
	"errors"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/block"
)

// BlockStatus describes the range at r.Off from the file's extent map:
// lseek SEEK_DATA / SEEK_HOLE, synchronous (they do not block on I/O).
// Data reads as data, a hole as zeroes; the raw node always decides its
// own content (no backing), so both are StatusAllocated. A block device,
// or a filesystem that cannot answer, reports data for the whole range.
func (d *Driver) BlockStatus(r *block.Request) {
	r.Status, r.Pnum = block.StatusData|block.StatusAllocated, r.Len
	if !d.blockdev && !d.chardev {
		r.Status, r.Pnum = d.extent(r.Off, r.Len)
	}
	r.CompleteLater(nil)
}

func (d *Driver) extent(off, n int64) (block.Status, int64) {
	const data, zero = block.StatusData | block.StatusAllocated, block.StatusZero | block.StatusAllocated
	next, err := unix.Seek(d.fd, off, unix.SEEK_DATA)
	switch {
	case err == syscall.ENXIO:
		// No data at or after off: a hole up to the end of the file (or
		// off is past it, which reads as zeroes too).
		return zero, n
	case err != nil:
		return data, n
	case next > off:
		return zero, min(next-off, n)
	}
	hole, err := unix.Seek(d.fd, off, unix.SEEK_HOLE)
	if err != nil || hole <= off {
		return data, n
	}
	// A hole that starts off the request alignment can only be the end
	// of a file whose size is not a multiple of it. With O_DIRECT nothing
	// smaller than reqAlign can be read, so the last unit is data
	// through its end, as QEMU reports it (iotest 253); buffered
	// (reqAlign 1) the data ends at the file's last byte and the rest of
	// the rounded-up last sector reads as a hole (iotest 221).
	hole = (hole + d.reqAlign - 1) &^ (d.reqAlign - 1)
	return data, min(hole-off, n)
}

// Truncate sets the image length to r.Off. Growth is backed as
// Options.Prealloc says. A block device cannot change size: asking for its
// size or less succeeds and does nothing (QEMU's rule), more fails. It runs
// on a worker goroutine: preallocation may write gigabytes.
func (d *Driver) Truncate(r *block.Request) {
	size := r.Off
	d.offload(r, tagDone, func() error { return d.truncate(size) })
}

func (d *Driver) truncate(size int64) error {
	cur, err := d.length()
	if err != nil {
		return err
	}
	if d.blockdev {
		if size > cur {
			return errors.New("cannot grow a block device")
		}
		return nil
	}
	if size <= cur {
		return unix.Ftruncate(d.fd, size)
	}
	return grow(d.file.OS(), d.path, cur, size, d.opts.Prealloc)
}

// grow extends f from its current size cur to size, backed as prealloc
// says. Full preallocation writes through a second, buffered descriptor so
// neither O_DIRECT's alignment nor O_DSYNC applies, then syncs it.
func grow(f *os.File, path string, cur, size int64, prealloc Prealloc) error {
	fd := int(f.Fd())
	switch prealloc {
	case PreallocOff:
		return unix.Ftruncate(fd, size)
	case PreallocFalloc:
		// Mode 0 allocates and extends the size.
		return unix.Fallocate(fd, 0, cur, size-cur)
	case PreallocFull:
		w, err := os.OpenFile(path, os.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer w.Close()
		buf := make([]byte, zeroBufSize)
		for pos := cur; pos < size; {
			n := min(size-pos, int64(len(buf)))
			if _, err := w.WriteAt(buf[:n], pos); err != nil {
				return err
			}
			pos += n
		}
		return unix.Fdatasync(int(w.Fd()))
	}
	return errors.New("unknown preallocation mode " + prealloc.String())
}
