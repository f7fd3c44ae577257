package raw

import (
	"sync"
	"syscall"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
)

// The read/write path. A request becomes one ring operation on its own
// Context — READ/WRITE (READ_FIXED/WRITE_FIXED when the buffer lies in the
// Context's arena) for one buffer, READV/WRITEV for a vector — whose
// completion target is the request itself, seen as a *rawReq. Nothing is
// allocated: the request is the block layer's preallocated struct, and a
// pointer converts to an interface for free. aio resubmits short transfers
// for the rest, zero-fills reads at end of file and retries EAGAIN, so a
// completion is either the whole transfer or an errno.
//
// Slow paths, each for a minority of requests:
//   - O_DIRECT with a buffer that misses the DIO memory alignment: one
//     aligned bounce buffer from the Context's arena (a heap one when the
//     arena is absent or full), see bounceOp.
//   - FUA without O_DSYNC: the write, then an fdatasync, chained in the
//     completion (tag tagWriteFUA).

// rawReq is a block.Request seen as the aio.Done of its ring operations.
type rawReq block.Request

// Completion tags: what a finished operation of a request was.
const (
	tagDone      uint64 = iota // the request's last operation
	tagWriteFUA                // a write that an fdatasync must follow
	tagDiscard                 // a hole punch for a discard
	tagZeroPunch               // a hole punch for an unmapping write-zeroes
	tagZeroRange               // a FALLOC_FL_ZERO_RANGE
)

// OpDone finishes a request's ring operation.
func (q *rawReq) OpDone(tag uint64, _ int, err error) {
	r := (*block.Request)(q)
	d := r.Node().Driver().(*Driver)
	if err != nil {
		if d.fallback(r, tag, err) {
			return
		}
		r.Complete(d.opError(r.Node(), r.Op, r.Off, err))
		return
	}
	// FUA: a write (or a write-zeroes, which fallocate does not make
	// durable even on O_DSYNC files) is followed by an fdatasync.
	if tag == tagWriteFUA || (tag >= tagZeroPunch && r.Flags&block.FUA != 0) {
		r.Context().Fsync(d.file, true, q, tagDone)
		return
	}
	r.Complete(nil)
}

// Read reads r.Len bytes at r.Off into r.Iov.
func (d *Driver) Read(r *block.Request) {
	if r.Len == 0 {
		r.CompleteLater(nil)
		return
	}
	if d.direct && !d.dioAligned(r.Iov) {
		d.bounce(r, tagDone)
		return
	}
	c := r.Context()
	if len(r.Iov) == 1 {
		c.ReadPrio(d.file, r.Iov[0], r.Off, r.Prio, (*rawReq)(r), tagDone)
		return
	}
	c.Readv(d.file, r.Iov, r.Off, (*rawReq)(r), tagDone)
}

// Write writes r.Iov at r.Off; FUA makes it durable before it completes.
// With detect-zeroes an all-zero write becomes a write-zeroes.
func (d *Driver) Write(r *block.Request) {
	if r.Len == 0 {
		r.CompleteLater(nil)
		return
	}
	if d.opts.Probed && r.Off < ProbeSize && probeRefused(r) { // probeguard.go
		r.CompleteLater(d.opError(r.Node(), r.Op, r.Off, errProbeGuard))
		return
	}
	if d.opts.DetectZeroes != DetectZeroesOff && iovZero(r.Iov) {
		d.writeZeroes(r, d.opts.DetectZeroes == DetectZeroesUnmap)
		return
	}
	tag := tagDone
	if r.Flags&block.FUA != 0 && d.opts.Cache != CacheWritethrough {
		tag = tagWriteFUA
	}
	if d.direct && !d.dioAligned(r.Iov) {
		d.bounce(r, tag)
		return
	}
	c := r.Context()
	if len(r.Iov) == 1 {
		c.WritePrio(d.file, r.Iov[0], r.Off, r.Prio, (*rawReq)(r), tag)
		return
	}
	c.Writev(d.file, r.Iov, r.Off, (*rawReq)(r), tag)
}

// Flush makes completed writes durable: fdatasync through the ring (also
// for O_DIRECT and O_DSYNC files, whose metadata — allocations, size — may
// still be volatile).
func (d *Driver) Flush(r *block.Request) {
	r.Context().Fsync(d.file, true, (*rawReq)(r), tagDone)
}

// dioAligned reports whether every buffer of iov meets O_DIRECT's rules:
// its address aligned to the DIO memory alignment and its length a
// multiple of the request alignment (the kernel checks each iovec
// segment, not only the total).
func (d *Driver) dioAligned(iov [][]byte) bool {
	for _, b := range iov {
		if int64(len(b))&(d.reqAlign-1) != 0 || (len(b) > 0 && addrOf(b)&(d.memAlign-1) != 0) {
			return false
		}
	}
	return true
}

// bounceOp carries a request whose buffers O_DIRECT cannot take through an
// aligned buffer. It comes from a sync.Pool: bursty and rare, and losing
// one to the GC costs nothing.
type bounceOp struct {
	r     *block.Request
	buf   []byte
	arena *aio.Arena // the buffer's arena, nil for a heap buffer
}

var bouncePool = sync.Pool{New: func() any { return new(bounceOp) }}

// bounce runs r through an aligned buffer. r.Off and r.Len are aligned
// already (the node's Align covers the request alignment).
func (d *Driver) bounce(r *block.Request, tag uint64) {
	c := r.Context()
	b := bouncePool.Get().(*bounceOp)
	b.r = r
	n := int(r.Len)
	if a := c.Arena(); a != nil && d.memAlign <= 4096 {
		if buf, err := a.Alloc(n); err == nil {
			b.buf, b.arena = buf, a
		}
	}
	if b.buf == nil {
		b.buf = alignedBuf(n, d.memAlign)
	}
	if r.Op == block.OpWrite {
		gather(b.buf, r.Iov)
		c.Write(d.file, b.buf, r.Off, b, tag)
		return
	}
	c.Read(d.file, b.buf, r.Off, b, tag)
}

// OpDone copies a bounced read out, frees the buffer and finishes the
// request as if the operation had been its own.
func (b *bounceOp) OpDone(tag uint64, res int, err error) {
	r := b.r
	if err == nil && r.Op == block.OpRead {
		scatter(r.Iov, b.buf)
	}
	if b.arena != nil {
		b.arena.Free(b.buf)
	}
	*b = bounceOp{}
	bouncePool.Put(b)
	(*rawReq)(r).OpDone(tag, res, err)
}

// gather copies iov into dst.
func gather(dst []byte, iov [][]byte) {
	for _, v := range iov {
		dst = dst[copy(dst, v):]
	}
}

// scatter copies src into iov.
func scatter(iov [][]byte, src []byte) {
	for _, v := range iov {
		src = src[copy(v, src):]
	}
}

// iovZero reports whether every byte of iov is zero. It reads eight bytes
// at a time where it can; a non-zero block usually fails on its first word.
func iovZero(iov [][]byte) bool {
	for _, b := range iov {
		if !isZero(b) {
			return false
		}
	}
	return true
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// unsupported reports the errnos that mean "this file or device does not
// do that operation".
func unsupported(err error) bool {
	return err == syscall.EOPNOTSUPP || err == syscall.ENOTSUP || err == syscall.ENOTTY
}
