package raw

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/block"
)

// Discard and write-zeroes.
//
//	               regular file                      block device
//	discard        PUNCH_HOLE|KEEP_SIZE (ring)       BLKDISCARD (worker)
//	zeroes         ZERO_RANGE (ring)                 BLKZEROOUT (worker)
//	zeroes+unmap   PUNCH_HOLE|KEEP_SIZE (ring)       PUNCH_HOLE|KEEP_SIZE (ring)
//	               inside the file, else ZERO_RANGE
//
// "+unmap" needs the request's MayUnmap (or detect-zeroes=unmap) and
// discard=unmap. Ioctls have no ring opcode here, so they run on a short-
// lived goroutine and their completion is scheduled back onto the
// request's Context; the request stays in flight (its node's count held)
// until then. A kernel that answers EOPNOTSUPP is remembered (noPunch,
// noZeroRange) and later requests go straight to the fallback: a discard
// becomes a no-op (it is advisory), a punch becomes a zero range, a zero
// range becomes writes of a zero buffer.
//
// A write-zeroes with block.NoFallback takes none of the slow fallbacks:
// where the only way left is writing zero buffers it fails with ENOTSUP
// and leaves the range alone. On a regular file ZERO_RANGE and the hole
// punch never write data. On a block device only the unmapping punch is
// used: the kernel runs it as a zero-out that must not fall back to
// writing (BLKDEV_ZERO_NOFALLBACK), while BLKZEROOUT and ZERO_RANGE on a
// device may write zero pages, so without MayUnmap a NoFallback request
// on a device is refused.

const (
	punchHole = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
	zeroRange = unix.FALLOC_FL_ZERO_RANGE
)

// Discard deallocates the range when discard=unmap; otherwise (and where
// the kernel cannot) it does nothing and succeeds.
func (d *Driver) Discard(r *block.Request) {
	if d.opts.Discard == DiscardIgnore || d.noPunch.Load() || r.Len <= 0 {
		r.CompleteLater(nil)
		return
	}
	if d.blockdev {
		// BLKDISCARD takes whole logical blocks only: shrink the range (a
		// discard may leave any part of its range alone).
		off, end := alignUp(r.Off, d.logical), alignDown(r.Off+r.Len, d.logical)
		if end <= off {
			r.CompleteLater(nil)
			return
		}
		d.offload(r, tagDiscard, func() error { return blkRange(d.fd, unix.BLKDISCARD, off, end-off) })
		return
	}
	r.Context().Fallocate(d.file, punchHole, r.Off, r.Len, (*rawReq)(r), tagDiscard)
}

// WriteZeroes makes the range read as zeroes; MayUnmap (with
// discard=unmap) lets it deallocate.
func (d *Driver) WriteZeroes(r *block.Request) {
	d.writeZeroes(r, r.Flags&block.MayUnmap != 0)
}

func (d *Driver) writeZeroes(r *block.Request, unmap bool) {
	if r.Len <= 0 {
		r.CompleteLater(nil)
		return
	}
	unmap = unmap && d.opts.Discard == DiscardUnmap && !d.noPunch.Load()
	if d.blockdev && (r.Off|r.Len)&(d.logical-1) != 0 {
		// Devices zero whole logical blocks only, and the block layer pads
		// reads and writes, not write-zeroes.
		r.CompleteLater(d.opError(r.Node(), r.Op, r.Off, syscall.EINVAL))
		return
	}
	if unmap {
		// A hole punched with KEEP_SIZE does not extend the file: past the
		// end, zero the range instead so the size grows as a write would.
		if d.blockdev {
			r.Context().Fallocate(d.file, punchHole, r.Off, r.Len, (*rawReq)(r), tagZeroPunch)
			return
		}
		if size, err := d.length(); err == nil && r.Off+r.Len <= size {
			r.Context().Fallocate(d.file, punchHole, r.Off, r.Len, (*rawReq)(r), tagZeroPunch)
			return
		}
	}
	d.zeroRange(r)
}

// FastZeroes reports that the driver honours block.NoFallback
// (block.FastZeroer).
func (d *Driver) FastZeroes() bool { return true }

func (d *Driver) zeroRange(r *block.Request) {
	switch {
	case r.Flags&block.NoFallback != 0 && (d.blockdev || d.noZeroRange.Load()):
		r.CompleteLater(d.opError(r.Node(), r.Op, r.Off, syscall.ENOTSUP))
	case d.noZeroRange.Load():
		d.zeroByWrite(r)
	case d.blockdev:
		off, n := r.Off, r.Len
		d.offload(r, tagZeroRange, func() error { return blkRange(d.fd, unix.BLKZEROOUT, off, n) })
	default:
		r.Context().Fallocate(d.file, zeroRange, r.Off, r.Len, (*rawReq)(r), tagZeroRange)
	}
}

// fallback handles an error that has a fallback and reports whether it
// did; other errors fail the request.
func (d *Driver) fallback(r *block.Request, tag uint64, err error) bool {
	if !unsupported(err) {
		return false
	}
	switch tag {
	case tagDiscard:
		d.noPunch.Store(true)
		r.Complete(nil)
	case tagZeroPunch:
		d.noPunch.Store(true)
		d.zeroRange(r)
	case tagZeroRange:
		d.noZeroRange.Store(true)
		d.zeroRange(r) // writes zeroes, or ENOTSUP for NoFallback
	default:
		return false
	}
	return true
}

// offload runs fn — a blocking system call — on its own goroutine and
// finishes r with its result on r's Context, as if a ring operation with
// the given tag had completed. The request is in flight meanwhile, so a
// drain waits for it and the driver (and its fd) stays open.
func (d *Driver) offload(r *block.Request, tag uint64, fn func() error) {
	c := r.Context()
	go func() {
		err := fn()
		c.Schedule(func() { (*rawReq)(r).OpDone(tag, 0, err) })
	}()
}

// blkRange issues a block-device range ioctl (BLKDISCARD, BLKZEROOUT).
func blkRange(fd int, req uint, off, n int64) error {
	rng := [2]uint64{uint64(off), uint64(n)}
	// SAFETY: rng lives until the system call returns and the kernel only
	// reads the 16 bytes during it.
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(&rng)))
	if errno != 0 {
		return errno
	}
	return nil
}

// zeroWriter writes zeroes over a range, one chunk of the driver's zero
// buffer at a time: the last resort of write-zeroes.
type zeroWriter struct {
	r        *block.Request
	d        *Driver
	pos, end int64
	n        int64 // bytes of the chunk in flight
}

func (d *Driver) zeroByWrite(r *block.Request) {
	if d.direct && (r.Off|r.Len)&(d.reqAlign-1) != 0 {
		r.Complete(d.opError(r.Node(), r.Op, r.Off, syscall.EINVAL))
		return
	}
	z := &zeroWriter{r: r, d: d, pos: r.Off, end: r.Off + r.Len}
	z.next()
}

func (z *zeroWriter) next() {
	buf := z.d.zeroes()
	z.n = min(z.end-z.pos, int64(len(buf)))
	z.r.Context().Write(z.d.file, buf[:z.n], z.pos, z, 0)
}

func (z *zeroWriter) OpDone(_ uint64, _ int, err error) {
	if err != nil {
		z.r.Complete(z.d.opError(z.r.Node(), z.r.Op, z.pos, err))
		return
	}
	z.pos += z.n
	if z.pos < z.end {
		z.next()
		return
	}
	(*rawReq)(z.r).OpDone(tagZeroRange, 0, nil) // FUA, if asked, follows
}

const zeroBufSize = 1 << 20

// zeroes returns the shared zero buffer (aligned for O_DIRECT). Writes
// only read it, so every Context may use it at once.
func (d *Driver) zeroes() []byte {
	d.zeroOnce.Do(func() { d.zeroBuf = alignedBuf(zeroBufSize, max(4096, d.memAlign)) })
	return d.zeroBuf
}

func alignDown(x, a int64) int64 { return x &^ (a - 1) }
func alignUp(x, a int64) int64   { return (x + a - 1) &^ (a - 1) }
