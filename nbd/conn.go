package nbd

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/bitmap"
	"github.com/ringblk/ringblk/block"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

// Per-connection limits. Memory per connection is bounded by
// numSlots*keepBuf (buffers kept between requests) plus budget+MaxPayload
// (payload of the requests in flight) plus the receive buffer.
const (
	numSlots   = 64        // requests in flight per connection
	keepBuf    = 256 << 10 // larger request buffers are released after use
	budget     = 64 << 20  // stop reading requests above this much payload in flight
	rbufSize   = 64 << 10
	maxChunks  = 8  // structured read reply: at most this many data/hole chunks
	maxPieces  = 64 // block status: extents computed per request
	cacheChunk = 1 << 20
	unixSndBuf = 2 << 20
)

const (
	tagPollIn  = 1
	tagPollOut = 2
	tagRecv    = 3 // ReadSome into rbuf
)

// piece is one block-status extent over the chain.
type piece struct {
	length int64
	flags  uint32 // base:allocation
	depth  uint32 // qemu:allocation-depth
}

// slot is one request of a connection, from header to reply sent.
type slot struct {
	idx  int
	next *slot // free list or write queue
	req  request
	buf  []byte
	held int64 // payload bytes counted in conn.held

	start  time.Time // request read (accounted commands; stats.go)
	failed bool      // answered with an error
	zeroed bool      // a WRITE of zeroes sent as a write-zeroes (DetectZeroes)

	step int   // multi-step commands: FUA flush pending, cache progress
	pos  int64 // cache: next offset

	// Reply: out are the byte slices to send, hdr their header storage.
	hdr      [maxChunks*32 + 64]byte
	out      [2*maxChunks + 2][]byte
	nout     int
	replyLen int

	// Block status walk, over the chain as it was when the request came.
	view         *chainView
	level        int
	bsOff, bsEnd int64
	bsSync       bool // inside the submission
	bsInline     bool // completed inside it
	bsSt         block.Status
	bsPnum       int64
	bsErr        error
	npieces      int
	pieces       [maxPieces]piece
}

// conn is one client in the transmission phase. Everything in it runs on
// the export's Context: the socket is non-blocking, readiness comes from
// POLL_ADD ops on the Context's ring, and requests go through the export's
// Queue. Nothing allocates per request once the slots' buffers have grown.
type conn struct {
	s          *Server
	e          *Export
	ctx        *aio.Context
	q          *block.Queue
	fd         int
	file       *aio.File
	structured bool
	meta       []uint32
	view       exportView
	remote     string

	rbuf       []byte
	rpos, rend int
	cur        *slot // WRITE whose payload is being received
	curGot     int

	slots   []slot
	free    *slot
	busy    int
	held    int64
	stalled bool // reading stopped for lack of a slot or budget

	wqHead, wqTail *slot
	wqOff          int
	iov            []unix.Iovec

	pollIn, pollOut bool // pollIn: a POLL_ADD or a ReadSome into rbuf is in flight
	recving         bool // the ReadSome into rbuf is in flight
	recvLen         int  // bytes it asked for
	rdEmpty         bool // the last read was short: the socket is empty, poll instead of reading
	reads           int  // read system calls (TestShortReadThenPoll)
	ringReads       int  // reads through the ring (TestBurstReadThroughRing)
	reading         bool
	disc            bool // read no more requests
	dead            bool // the socket is unusable: drop replies
	finished        bool

	readBH, flushBH, shutdownBH *aio.BH
	flushScheduled              bool
}

// startConn hands a negotiated client to its export's Context.
func startConn(s *Server, e *Export, nc net.Conn, structured bool, meta []uint32) error {
	remote := nc.RemoteAddr().String()
	if tc, ok := nc.(*tls.Conn); ok {
		pc, err := tlsPipe(tc)
		if err != nil {
			e.release()
			return err
		}
		nc = pc
	}
	isUnix := nc.LocalAddr().Network() == "unix"
	fd, err := rawFD(nc)
	if err != nil {
		e.release()
		return err
	}
	if isUnix {
		// A reply of a whole 2 MiB read fits in one send.
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, unixSndBuf)
		if got, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF); err == nil && got < unixSndBuf {
			// Capped by net.core.wmem_max: privileged processes may force it.
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, unixSndBuf)
		}
	} else {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
	c := &conn{
		s: s, e: e, ctx: e.ctx, q: e.q, fd: fd, structured: structured, meta: meta, remote: remote,
		view:  exportView{size: e.size, readOnly: e.opts.ReadOnly, structured: structured, metaCount: len(meta)},
		rbuf:  make([]byte, rbufSize),
		slots: make([]slot, numSlots),
		iov:   make([]unix.Iovec, 64),
	}
	c.file = aio.NewFileFd(fd, func() error { return unix.Close(fd) })
	for i := range c.slots {
		sl := &c.slots[i]
		sl.idx = i
		sl.next = c.free
		c.free = sl
	}
	c.readBH = c.ctx.NewBH(c.readLoop)
	c.flushBH = c.ctx.NewBH(c.flush)
	c.shutdownBH = c.ctx.NewBH(c.shutdown)
	refuse := func(err error) error {
		c.readBH.Delete()
		c.flushBH.Delete()
		c.shutdownBH.Delete()
		c.file.Close()
		return err
	}
	if err := e.addConn(c); err != nil {
		return refuse(err)
	}
	s.clients.Add(1)
	c.readBH.Schedule()
	return nil
}

func (c *conn) getSlot() *slot {
	sl := c.free
	c.free = sl.next
	sl.next = nil
	c.busy++
	sl.step, sl.npieces, sl.held, sl.zeroed = 0, 0, 0, false
	return sl
}

func (c *conn) putSlot(sl *slot) {
	c.held -= sl.held
	sl.held = 0
	if cap(sl.buf) > keepBuf {
		sl.buf = nil
	}
	sl.next = c.free
	c.free = sl
	c.busy--
	if c.stalled {
		c.stalled = false
		c.readBH.Schedule()
	}
}

// buffer makes sl.buf n bytes long (growing it to a power of two) and
// counts n in the connection's payload budget.
func (c *conn) buffer(sl *slot, n int) []byte {
	if cap(sl.buf) < n {
		sz := 4096
		for sz < n {
			sz <<= 1
		}
		sl.buf = make([]byte, sz)
	}
	sl.held = int64(n)
	c.held += sl.held
	return sl.buf[:n]
}

// OpDone receives the socket's readiness (aio.Done).
func (c *conn) OpDone(tag uint64, res int, err error) {
	switch tag {
	case tagPollIn:
		c.pollIn = false
		c.rdEmpty = false
		c.readLoop()
	case tagPollOut:
		c.pollOut = false
		c.flush()
	case tagRecv:
		c.pollIn, c.recving = false, false
		switch {
		case err != nil:
			c.lost(err)
		case res == 0:
			c.eof()
		default:
			c.rend += res
			c.rdEmpty = res < c.recvLen
			c.readLoop()
		}
	}
	c.maybeFinish()
}

func (c *conn) armIn() {
	if !c.pollIn && !c.finished {
		c.pollIn = true
		c.ctx.PollAdd(c.file, unix.POLLIN|unix.POLLRDHUP, c, tagPollIn)
	}
}

func (c *conn) armOut() {
	if !c.pollOut && !c.finished {
		c.pollOut = true
		c.ctx.PollAdd(c.file, unix.POLLOUT, c, tagPollOut)
	}
}

// readLoop reads and starts requests until the socket is empty, the
// connection has no free slot or budget, or the export is drained.
func (c *conn) readLoop() {
	if c.finished || c.reading {
		return
	}
	c.reading = true
	c.q.Plug()
	for !c.disc {
		if c.cur != nil {
			if !c.readPayload() {
				break
			}
			continue
		}
		if c.e.quiesced.Load() {
			break // DrainedEnd schedules readBH
		}
		if c.free == nil || c.held >= budget {
			c.stalled = true
			break
		}
		if c.rend-c.rpos < nbdproto.ReqHeaderLen {
			if !c.fill() {
				break
			}
			continue
		}
		r, err := parseRequest(c.rbuf[c.rpos : c.rpos+nbdproto.ReqHeaderLen])
		c.rpos += nbdproto.ReqHeaderLen
		if err != nil {
			c.fatal(err)
			break
		}
		c.handle(r)
	}
	c.q.Unplug()
	c.reading = false
	c.maybeFinish()
}

// fill reads from the socket into rbuf; false: nothing now (a read or
// poll on the ring is in flight) or the connection ended.
//
// When the socket is empty (the last read was short, or EAGAIN) the read
// goes through the ring (ReadSome into rbuf's free part), which completes
// when requests arrive: that costs no system call, where a POLL_ADD and
// then read(2) cost one per burst. While it is in flight rbuf's free part
// belongs to the kernel, so nothing compacts or reads into rbuf.
func (c *conn) fill() bool {
	if c.pollIn || c.finished {
		return false
	}
	if c.rpos > 0 {
		c.rend = copy(c.rbuf, c.rbuf[c.rpos:c.rend])
		c.rpos = 0
	}
	n := c.sockRead(c.rbuf[c.rend:], true)
	c.rend += n
	return n > 0
}

func (c *conn) arm(ring bool) {
	if ring {
		c.armRecv()
	} else {
		c.armIn()
	}
}

// armRecv starts a ReadSome into rbuf[rend:] (see fill).
func (c *conn) armRecv() {
	if c.pollIn || c.finished {
		return
	}
	c.pollIn, c.recving = true, true
	c.recvLen = len(c.rbuf) - c.rend
	c.ringReads++
	c.ctx.ReadSome(c.file, c.rbuf[c.rend:], c, tagRecv)
}

// sockRead reads what the socket has into b. It returns 0 when there is
// nothing to go on with: the read handler is armed again (EAGAIN), or the
// connection is ended (an error, or EOF). With ring, b is rbuf's free
// part and the wait is a ReadSome into it; otherwise a POLL_ADD.
//
// A read shorter than b emptied the socket, so the next one would only
// return EAGAIN: it arms the wait instead, which completes at once if
// data came in between. That saves a system call per wake-up.
func (c *conn) sockRead(b []byte, ring bool) int {
	if c.recving {
		// Bytes taken now would go before those the ReadSome may hold
		// already: wait for it, its completion reads on.
		return 0
	}
	if c.rdEmpty {
		c.rdEmpty = false
		c.arm(ring)
		return 0
	}
	for {
		c.reads++
		n, err := unix.Read(c.fd, b)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			c.arm(ring)
			return 0
		case err != nil:
			c.lost(err)
			return 0
		case n == 0:
			c.eof()
			return 0
		}
		c.rdEmpty = n < len(b)
		return n
	}
}

// readPayload moves a WRITE's data into its slot: what rbuf holds, then
// straight from the socket.
func (c *conn) readPayload() bool {
	sl := c.cur
	want := int(sl.req.length)
	if c.rpos < c.rend {
		n := copy(sl.buf[c.curGot:want], c.rbuf[c.rpos:c.rend])
		c.rpos += n
		c.curGot += n
	}
	for c.curGot < want {
		n := c.sockRead(sl.buf[c.curGot:want], false)
		if n == 0 {
			return false
		}
		c.curGot += n
	}
	c.cur = nil
	if sl.step != 0 {
		// Payload of a refused write: consumed, now answer.
		c.replySimple(sl, uint32(sl.step))
		return true
	}
	if dz := c.e.opts.DetectZeroes; dz != DetectZeroesOff && want > 0 && isZero(sl.buf[:want]) {
		// QEMU detects zeroes at the node the export writes to; below a
		// format layer it would be too late to store them as zeroes. FUA
		// is a flush after it, as for WRITE_ZEROES.
		var zfl block.Flags
		if dz == DetectZeroesUnmap && !c.e.opts.IgnoreDiscard {
			zfl = block.MayUnmap
		}
		sl.zeroed = true
		c.q.WriteZeroes(int64(sl.req.off), int64(want), zfl, c, uint64(sl.idx))
		return true
	}
	var fl block.Flags
	if sl.req.flags&nbdproto.CmdFlagFUA != 0 {
		fl = block.FUA
	}
	c.q.Write(sl.buf[:want], int64(sl.req.off), fl, c, uint64(sl.idx))
	return true
}

// eof: the client closed its side; requests already read still complete.
func (c *conn) eof() {
	c.disc = true
	if c.cur != nil {
		c.putSlot(c.cur)
		c.cur = nil
	}
}

// lost: the socket failed; nothing more can be sent.
func (c *conn) lost(err error) {
	if !c.dead {
		c.s.logf("nbd: connection lost", "remote", c.remote, "err", err)
	}
	c.eof()
	c.dead = true
	c.dropQueued()
}

// fatal: the client broke the protocol; finish what is in flight, then
// close.
func (c *conn) fatal(err error) {
	c.s.logf("nbd: closing connection", "remote", c.remote, "err", err)
	c.eof()
}

// handle starts one request.
func (c *conn) handle(r request) {
	nbdErr, fatal := checkRequest(r, c.view)
	if fatal {
		c.fatal(fmt.Errorf("request %d of %d bytes exceeds the maximum payload (%d)", r.cmd, r.length, MaxPayload))
		return
	}
	if r.cmd == nbdproto.CmdDisc {
		c.disc = true
		return
	}
	sl := c.getSlot()
	sl.req = r
	sl.failed = false
	if statIndex(r.cmd) >= 0 {
		sl.start = time.Now()
	}
	tag := uint64(sl.idx)
	if r.cmd == nbdproto.CmdWrite {
		c.buffer(sl, int(r.length))
		sl.step = int(nbdErr) // answered after the payload is read
		c.cur, c.curGot = sl, 0
		return
	}
	if nbdErr != 0 {
		c.replyRefused(sl, nbdErr)
		return
	}
	off, n := int64(r.off), int64(r.length)
	switch r.cmd {
	case nbdproto.CmdRead:
		c.q.Read(c.buffer(sl, int(n)), off, c, tag)
	case nbdproto.CmdFlush:
		c.q.Flush(c, tag)
	case nbdproto.CmdTrim:
		if c.e.opts.IgnoreDiscard {
			c.replySimple(sl, 0) // a hint the export was told to ignore
			return
		}
		c.q.Discard(off, n, c, tag)
	case nbdproto.CmdWriteZeroes:
		var fl block.Flags
		if r.flags&nbdproto.CmdFlagNoHole == 0 && !c.e.opts.IgnoreDiscard {
			fl = block.MayUnmap
		}
		if r.flags&nbdproto.CmdFlagFastZero != 0 {
			// Zero without falling back to writes, or fail with ENOTSUP
			// at once (drivers without block.FastZeroer always do); the
			// client then writes the zeroes itself.
			fl |= block.NoFallback
		}
		c.q.WriteZeroes(off, n, fl, c, tag)
	case nbdproto.CmdCache:
		sl.pos = off
		c.cacheNext(sl)
	case nbdproto.CmdBlockStatus:
		// A walk starts at the top, whatever level the slot's last walk
		// stopped at (a failure below the top leaves it there).
		sl.bsOff, sl.bsEnd, sl.level = off, off+n, 0
		sl.view = nil // loaded with the first answer (RequestDone)
		c.bsRun(sl)
	}
}

// RequestDone completes a block-layer request of a slot (block.Done).
func (c *conn) RequestDone(r *block.Request, err error) {
	sl := &c.slots[r.Tag]
	switch sl.req.cmd {
	case nbdproto.CmdRead:
		c.replyRead(sl, err)
	case nbdproto.CmdBlockStatus:
		sl.bsSt, sl.bsPnum, sl.bsErr = r.Status, r.Pnum, err
		if sl.bsSync {
			sl.bsInline = true
			return
		}
		if sl.view == nil {
			// The first answer, from the front end, which still counts
			// the request: the walk is counted before that count drops,
			// so a drain never sees the request idle in between. The
			// chain is the one that answered: one that changed while the
			// request was parked was refreshed inside that drained
			// section, and none can change until the walk ends.
			sl.view = c.e.chain.Load()
			c.e.walks.Add(1)
		}
		if c.bsStep(sl) {
			c.bsRun(sl)
		}
	case nbdproto.CmdCache:
		if err != nil {
			c.replySimple(sl, nbdErrno(err))
			return
		}
		c.cacheNext(sl)
	case nbdproto.CmdTrim, nbdproto.CmdWriteZeroes, nbdproto.CmdWrite:
		// FUA on a write is the write's own flag; on the others (and on
		// a write sent as a write-zeroes) a flush after them.
		fuaFlush := sl.req.cmd != nbdproto.CmdWrite || sl.zeroed
		if err == nil && fuaFlush && sl.req.flags&nbdproto.CmdFlagFUA != 0 && sl.step == 0 {
			sl.step = 1
			c.q.Flush(c, uint64(sl.idx))
			return
		}
		c.replySimple(sl, nbdErrno(err))
	default:
		c.replySimple(sl, nbdErrno(err))
	}
}

// cacheNext reads the next part of a CACHE range (the data is dropped:
// the read warms the caches below).
func (c *conn) cacheNext(sl *slot) {
	end := int64(sl.req.off) + int64(sl.req.length)
	if sl.pos >= end {
		c.replySimple(sl, 0)
		return
	}
	n := min(end-sl.pos, cacheChunk)
	if sl.held == 0 {
		c.buffer(sl, cacheChunk)
	}
	off := sl.pos
	sl.pos += n
	c.q.Read(sl.buf[:n], off, c, uint64(sl.idx))
}

// nbdErrno maps a block-layer error to the protocol's error values.
func nbdErrno(err error) uint32 {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.EPERM, syscall.EACCES, syscall.EROFS:
			return nbdproto.ErrPerm
		case syscall.ENOMEM:
			return nbdproto.ErrNoMem
		case syscall.EINVAL:
			return nbdproto.ErrInval
		case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
			return nbdproto.ErrNoSpc
		case syscall.EOVERFLOW:
			return nbdproto.ErrOverflow
		case syscall.ENOTSUP:
			return nbdproto.ErrNotSup
		case syscall.ESHUTDOWN:
			return nbdproto.ErrShutdown
		}
	}
	return nbdproto.ErrIO
}

// ---- replies ----

func putChunkHeader(b []byte, flags, typ uint16, cookie uint64, length int) {
	binary.BigEndian.PutUint32(b, nbdproto.MagicChunk)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], cookie)
	binary.BigEndian.PutUint32(b[16:], uint32(length))
}

func (sl *slot) add(b []byte) {
	sl.out[sl.nout] = b
	sl.nout++
	sl.replyLen += len(b)
}

// replySimple answers with a simple reply (no payload).
func (c *conn) replySimple(sl *slot, nbdErr uint32) {
	sl.simpleHeader(nbdErr)
	c.queueReply(sl)
}

func (sl *slot) simpleHeader(nbdErr uint32) {
	sl.nout, sl.replyLen = 0, 0
	sl.failed = nbdErr != 0
	h := sl.hdr[:16]
	binary.BigEndian.PutUint32(h, nbdproto.MagicSimple)
	binary.BigEndian.PutUint32(h[4:], nbdErr)
	binary.BigEndian.PutUint64(h[8:], sl.req.cookie)
	sl.add(h)
}

// replyRefused answers a request refused before it started. On a
// structured connection a READ must not get a simple reply, even for an
// early EINVAL (the protocol forbids it, and QEMU's client drops the
// connection on one), and BLOCK_STATUS answers its refusals the way it
// answers its failures: one error chunk. Other commands get a simple reply.
func (c *conn) replyRefused(sl *slot, nbdErr uint32) {
	if c.structured && (sl.req.cmd == nbdproto.CmdRead || sl.req.cmd == nbdproto.CmdBlockStatus) {
		c.replyError(sl, nbdErr)
		return
	}
	c.replySimple(sl, nbdErr)
}

// replyError answers with one structured error chunk.
func (c *conn) replyError(sl *slot, nbdErr uint32) {
	sl.nout, sl.replyLen = 0, 0
	sl.failed = true
	h := sl.hdr[:26]
	putChunkHeader(h, nbdproto.ChunkDone, nbdproto.ChunkError, sl.req.cookie, 6)
	binary.BigEndian.PutUint32(h[20:], nbdErr)
	binary.BigEndian.PutUint16(h[24:], 0)
	sl.add(h)
	c.queueReply(sl)
}

var zeroes [64 << 10]byte

func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroes))
		if string(b[:n]) != string(zeroes[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// replyRead answers a READ: simple reply with data, or structured chunks
// where runs of zeroes become holes (unless the client set DF).
func (c *conn) replyRead(sl *slot, err error) {
	if err != nil {
		if c.structured {
			c.replyError(sl, nbdErrno(err))
		} else {
			c.replySimple(sl, nbdErrno(err))
		}
		return
	}
	data := sl.buf[:sl.req.length]
	if !c.structured {
		sl.simpleHeader(0)
		sl.add(data)
		c.queueReply(sl)
		return
	}
	sl.nout, sl.replyLen = 0, 0
	if len(data) == 0 {
		h := sl.hdr[:20]
		putChunkHeader(h, nbdproto.ChunkDone, nbdproto.ChunkNone, sl.req.cookie, 0)
		sl.add(h)
		c.queueReply(sl)
		return
	}
	g := 4096
	for (len(data)+g-1)/g > maxChunks {
		g <<= 1
	}
	if sl.req.flags&nbdproto.CmdFlagDF != 0 || len(data) < 2*4096 {
		g = len(data) // one data chunk (short reads are not worth holes)
	}
	hp := 0
	start := 0
	for start < len(data) {
		end := min(start+g, len(data))
		zero := g != len(data) && isZero(data[start:end])
		for end < len(data) {
			e2 := min(end+g, len(data))
			if isZero(data[end:e2]) != zero {
				break
			}
			end = e2
		}
		var fl uint16
		if end == len(data) {
			fl = nbdproto.ChunkDone
		}
		off := sl.req.off + uint64(start)
		if zero {
			h := sl.hdr[hp : hp+32]
			putChunkHeader(h, fl, nbdproto.ChunkOffsetHole, sl.req.cookie, 12)
			binary.BigEndian.PutUint64(h[20:], off)
			binary.BigEndian.PutUint32(h[28:], uint32(end-start))
			sl.add(h)
			hp += 32
		} else {
			h := sl.hdr[hp : hp+28]
			putChunkHeader(h, fl, nbdproto.ChunkOffsetData, sl.req.cookie, 8+end-start)
			binary.BigEndian.PutUint64(h[20:], off)
			sl.add(h)
			sl.add(data[start:end])
			hp += 32
		}
		start = end
	}
	c.queueReply(sl)
}

// ---- block status ----

// bsRun issues block-status queries until the range is described (or the
// extent limit is reached), then replies.
//
// The first query goes through the front end like any request (counted,
// parked while the export is drained). The rest of the walk goes straight
// to the chain's nodes, the top one included, and is counted in
// Export.walks instead: DrainedPoll reports it, so a drain of any node of
// the chain waits until the walk has ended, as QEMU's export waits for
// its requests (drain.md bug class 32). Parking it in the front end
// instead would keep its reply until the drained section ends, with a
// chain that section may have changed (TestDrainWaitsForBlockStatusWalk).
func (c *conn) bsRun(sl *slot) {
	for {
		if sl.bsOff >= sl.bsEnd || sl.npieces == maxPieces ||
			(sl.npieces > 0 && sl.req.flags&nbdproto.CmdFlagReqOne != 0) {
			c.bsDone(sl)
			c.replyStatus(sl)
			return
		}
		sl.bsSync, sl.bsInline = true, false
		r := c.q.Get()
		r.Op, r.Off, r.Len, r.Tag = block.OpBlockStatus, sl.bsOff, sl.bsEnd-sl.bsOff, uint64(sl.idx)
		if sl.view == nil {
			c.q.Submit(r, c) // completes from a BH, never inline
		} else {
			sl.view.levels[sl.level].Submit(r, c)
		}
		sl.bsSync = false
		if !sl.bsInline || !c.bsStep(sl) {
			return
		}
	}
}

// bsStep consumes one status result; false when the reply was sent.
func (c *conn) bsStep(sl *slot) bool {
	if sl.bsErr != nil || sl.bsPnum <= 0 {
		e := nbdErrno(sl.bsErr)
		if sl.bsErr == nil {
			e = nbdproto.ErrIO
		}
		c.bsDone(sl)
		if sl.npieces > 0 {
			c.replyStatus(sl) // what was found so far
		} else {
			c.replyError(sl, e)
		}
		return false
	}
	st, pnum, lv := sl.bsSt, min(sl.bsPnum, sl.bsEnd-sl.bsOff), sl.level
	bottom := lv == len(sl.view.levels)-1
	var backing int64
	if !bottom {
		backing = sl.view.sizes[lv+1]
	}
	var p piece
	switch block.StepAbove(st, bottom, sl.bsOff, backing) {
	case block.AboveDecided:
		switch {
		case st&block.StatusAllocated != 0:
			p = piece{flags: allocFlags(st), depth: uint32(lv + 1)}
		case lv == 0:
			p = piece{flags: allocFlags(st)} // a chain of one image
		default:
			p = piece{flags: nbdproto.StateHole | nbdproto.StateZero} // unallocated everywhere
		}
	case block.AbovePastEnd:
		// Beyond the end of the backing file: reads as zeroes, which
		// that (short) backing file provides, so QEMU counts the range
		// as allocated at its depth.
		p = piece{flags: nbdproto.StateHole | nbdproto.StateZero, depth: uint32(lv + 2)}
	case block.AboveNext:
		sl.level++
		sl.bsEnd = sl.bsOff + pnum // ask the backing file about this part only
		return true
	}
	p.length = pnum
	sl.pieces[sl.npieces] = p
	sl.npieces++
	sl.bsOff += pnum
	if sl.level > 0 {
		// Back to the top for the rest of the request.
		sl.level = 0
		sl.bsEnd = int64(sl.req.off) + int64(sl.req.length)
	}
	return true
}

// bsDone ends sl's walk: a drain waiting for it may go on (D10: the
// change that ends the wait kicks the main Context).
func (c *conn) bsDone(sl *slot) {
	if sl.view == nil {
		return // refused, or failed at its first query
	}
	sl.view = nil
	if c.e.walks.Add(-1) == 0 {
		c.e.main.Kick()
	}
}

func allocFlags(st block.Status) uint32 {
	var f uint32
	if st&block.StatusData == 0 {
		f |= nbdproto.StateHole
	}
	if st&block.StatusZero != 0 {
		f |= nbdproto.StateZero
	}
	return f
}

// replyStatus sends one BLOCK_STATUS chunk per selected context.
func (c *conn) replyStatus(sl *slot) {
	sl.nout, sl.replyLen = 0, 0
	need := len(c.meta) * maxPieces * 8
	buf := c.buffer(sl, need)
	bp, hp := 0, 0
	for i, id := range c.meta {
		start := bp
		if id >= idBitmap0 {
			bp = c.bitmapExtents(sl, c.e.bitmaps[id-idBitmap0], buf, bp)
			c.statusChunk(sl, i, id, hp, bp-start)
			sl.add(buf[start:bp])
			hp += 24
			continue
		}
		var curLen int64
		var curVal uint32
		for k := 0; k < sl.npieces; k++ {
			p := sl.pieces[k]
			v := p.flags
			if id == idDepth {
				v = p.depth
			}
			if curLen > 0 && v == curVal && curLen+p.length <= 1<<31 {
				curLen += p.length
				continue
			}
			if curLen > 0 {
				binary.BigEndian.PutUint32(buf[bp:], uint32(curLen))
				binary.BigEndian.PutUint32(buf[bp+4:], curVal)
				bp += 8
			}
			curLen, curVal = p.length, v
		}
		binary.BigEndian.PutUint32(buf[bp:], uint32(curLen))
		binary.BigEndian.PutUint32(buf[bp+4:], curVal)
		bp += 8
		c.statusChunk(sl, i, id, hp, bp-start)
		sl.add(buf[start:bp])
		hp += 24
	}
	c.queueReply(sl)
}

// statusChunk adds the header of the i-th context's BLOCK_STATUS chunk
// (n bytes of extents) at hdr[hp:].
func (c *conn) statusChunk(sl *slot, i int, id uint32, hp, n int) {
	var fl uint16
	if i == len(c.meta)-1 {
		fl = nbdproto.ChunkDone
	}
	h := sl.hdr[hp : hp+24]
	putChunkHeader(h, fl, nbdproto.ChunkBlockStatus, sl.req.cookie, 4+n)
	binary.BigEndian.PutUint32(h[20:], id)
	sl.add(h)
}

// bitmapExtents writes at buf[bp:] the extents of a dirty bitmap over the
// request's range (flag stateDirty or 0), alternating dirty and clean runs
// at the bitmap's granularity: at most maxPieces of them, one for
// REQ_ONE. Bytes past the bitmap's end read as clean. Returns the new bp.
func (c *conn) bitmapExtents(sl *slot, b *bitmap.Bitmap, buf []byte, bp int) int {
	off, end := int64(sl.req.off), int64(sl.req.off)+int64(sl.req.length)
	limit := maxPieces
	if sl.req.flags&nbdproto.CmdFlagReqOne != 0 {
		limit = 1
	}
	for k := 0; k < limit && off < end; k++ {
		var next int64
		var v uint32
		if b.Get(off) {
			next, v = b.NextClean(off), stateDirty
		} else if next = b.NextDirty(off); next < 0 {
			next = end
		}
		if next > end || next <= off {
			next = end
		}
		binary.BigEndian.PutUint32(buf[bp:], uint32(next-off))
		binary.BigEndian.PutUint32(buf[bp+4:], v)
		bp += 8
		off = next
	}
	return bp
}

// ---- sending ----

func (c *conn) queueReply(sl *slot) {
	c.e.stats.record(sl)
	if c.dead {
		c.putSlot(sl)
		c.maybeFinish()
		return
	}
	sl.next = nil
	if c.wqTail == nil {
		c.wqHead = sl
	} else {
		c.wqTail.next = sl
	}
	c.wqTail = sl
	if !c.flushScheduled && !c.pollOut {
		c.flushScheduled = true
		c.flushBH.Schedule()
	}
}

// flush writes queued replies with writev until done or the socket is
// full (then a POLLOUT poll resumes it).
func (c *conn) flush() {
	c.flushScheduled = false
	for c.wqHead != nil && !c.dead {
		k, skip := 0, c.wqOff
	build:
		for sl := c.wqHead; sl != nil; sl = sl.next {
			for i := 0; i < sl.nout; i++ {
				b := sl.out[i]
				if skip >= len(b) {
					skip -= len(b)
					continue
				}
				b = b[skip:]
				skip = 0
				if k == len(c.iov) {
					break build
				}
				c.iov[k].Base = &b[0]
				c.iov[k].SetLen(len(b))
				k++
			}
		}
		n, _, errno := unix.Syscall(unix.SYS_WRITEV, uintptr(c.fd), uintptr(unsafe.Pointer(&c.iov[0])), uintptr(k))
		if errno == unix.EINTR {
			continue
		}
		if errno == unix.EAGAIN {
			c.armOut()
			return
		}
		if errno != 0 {
			c.lost(errno)
			break
		}
		c.wqOff += int(n)
		for c.wqHead != nil && c.wqOff >= c.wqHead.replyLen {
			sl := c.wqHead
			c.wqOff -= sl.replyLen
			c.wqHead = sl.next
			if c.wqHead == nil {
				c.wqTail = nil
			}
			c.putSlot(sl)
		}
	}
	c.maybeFinish()
}

// dropQueued frees replies that can no longer be sent.
func (c *conn) dropQueued() {
	for c.wqHead != nil {
		sl := c.wqHead
		c.wqHead = sl.next
		c.putSlot(sl)
	}
	c.wqTail, c.wqOff = nil, 0
}

// shutdown ends the connection for Export.Close: requests in flight
// complete, unsent replies are dropped.
func (c *conn) shutdown() {
	if c.finished {
		return
	}
	c.eof()
	c.dead = true
	c.dropQueued()
	c.maybeFinish()
}

// maybeFinish closes the connection once it reads no more, nothing is in
// flight and every reply is out.
func (c *conn) maybeFinish() {
	if c.finished || !c.disc || c.busy > 0 || c.wqHead != nil {
		return
	}
	if c.pollIn || c.pollOut {
		// Wake the polls; their completions come back here.
		_ = unix.Shutdown(c.fd, unix.SHUT_RDWR)
		return
	}
	c.finished = true
	// Leave the export's set first: Close and DrainedEnd schedule the
	// BHs of the connections in it, which must not be deleted yet.
	c.e.unlistConn(c)
	c.readBH.Delete()
	c.flushBH.Delete()
	c.shutdownBH.Delete()
	c.file.Close()
	c.e.wg.Done()
	c.s.clients.Add(-1)
	c.s.oneShotDone()
}
