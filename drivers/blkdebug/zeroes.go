package blkdebug

import (
	"syscall"
	"unsafe"

	"github.com/ringblk/ringblk/block"
)

// Write-zeroes under blkdebug's limits. QEMU's block layer cuts a
// write-zeroes request at the write-zeroes alignment A =
// max(align, opt-write-zero): an unaligned head (at most max-transfer
// bytes at a time) up to the first multiple of A, an aligned body in
// pieces of at most max-write-zero (rounded down to A), and an unaligned
// tail. blkdebug refuses (ENOTSUP) every piece shorter than A, so that
// the block layer's fallback is exercised: such a piece is written as
// zero bytes, at most max-transfer (or 16 MiB) at a time. The pieces go
// to the image one after the other. A is not necessarily a power of two
// (iotest 204 uses 15M). Rules and breakpoints apply to the request as a
// whole before it is split.

// maxZeroesWhole is the MaxWriteZeroes of a blkdebug node: large enough
// that the block layer never splits a write-zeroes request before the
// driver does.
const maxZeroesWhole = 1 << 40

// maxBounce bounds one fallback write, as QEMU's bounce buffer limit.
const maxBounce = 16 << 20

type zeroRun struct {
	d        *Driver
	r        *block.Request
	off, end int64
	buf      []byte
}

// zeroes runs r's write-zeroes pieces.
func (d *Driver) zeroes(r *block.Request) {
	c := d.child
	if c == nil || c.Node() == nil {
		r.CompleteLater(&block.Error{Kind: block.Io, Op: r.Op, Node: r.Node().Name(), Offset: r.Off, Err: syscall.ENOMEDIUM})
		return
	}
	if r.Len == 0 {
		d.forwardAs(r)
		return
	}
	z := &zeroRun{d: d, r: r, off: r.Off, end: r.Off + r.Len}
	z.step(true)
}

// piece returns the next piece [off, off+num) and whether it is written
// as zero bytes (shorter than the alignment).
func (z *zeroRun) piece() (num int64, asData bool) {
	lim := z.d.lim
	align := max(lim.Align, lim.OptWriteZero, 1)
	maxT := int64(maxBounce)
	if lim.MaxTransfer > 0 {
		maxT = min(maxT, lim.MaxTransfer)
	}
	maxZ := int64(maxZeroesWhole)
	if lim.MaxWriteZero > 0 {
		maxZ = max(lim.MaxWriteZero/align*align, align)
	}
	bytes := z.end - z.off
	num = bytes
	if head := z.off % align; head != 0 {
		num = min(bytes, maxT, align-head)
	} else if tail := z.end % align; tail != 0 && num > align {
		num -= tail
	}
	num = min(num, maxZ)
	if num < align {
		return min(num, maxT), true
	}
	return num, false
}

// step sends the next piece; first says it runs inside the driver's
// WriteZeroes call (a failure then completes from a bottom half).
func (z *zeroRun) step(first bool) {
	num, asData := z.piece()
	if asData && z.r.Flags&block.NoFallback != 0 {
		// The caller asked for no fallback to writing zero bytes.
		err := &block.Error{Kind: block.Unsupported, Op: z.r.Op, Node: z.r.Node().Name(), Offset: z.off, Err: syscall.ENOTSUP}
		if first {
			z.r.CompleteLater(err)
		} else {
			z.r.Complete(err)
		}
		return
	}
	s := z.r.Sub()
	s.Off, s.Len, s.Flags = z.off, num, z.r.Flags
	if asData {
		if int64(len(z.buf)) < num {
			z.buf = alignedZeros(num)
		}
		s.Op, s.Flags, s.Iov = block.OpWrite, 0, [][]byte{z.buf[:num]}
	} else {
		s.Op = block.OpWriteZeroes
	}
	z.off += num
	z.d.child.Submit(s, z)
}

// RequestDone continues with the next piece, or finishes the request.
func (z *zeroRun) RequestDone(s *block.Request, err error) {
	if err != nil || z.off >= z.end {
		z.d.DebugEvent(block.DbgPwritevDone)
		z.r.Complete(err)
		return
	}
	z.step(false)
}

// alignedZeros is n zero bytes at a 4 KiB-aligned address (an image
// opened with O_DIRECT below the filter takes the buffer as it is).
func alignedZeros(n int64) []byte {
	const a = 4096
	b := make([]byte, n+a)
	skip := int((a - uintptr(unsafe.Pointer(&b[0]))%a) % a)
	return b[skip : skip+int(n)]
}
