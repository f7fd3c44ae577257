package nbd

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

const (
	numSlots     = 64        // requests in flight on the connection
	rbufSize     = 64 << 10  // receive buffer
	directRead   = 16 << 10  // payload left at least this long is read straight into the request's buffer
	maxChunkMeta = 1 << 20   // largest non-data chunk payload accepted
	defaultMax   = 32 << 20  // maximum block size when the server gives none
	maxStatusLen = 1 << 30   // longest BLOCK_STATUS query
	tagOut       = uint64(2) // POLLOUT completion
)

// Driver is one node's NBD connection.
type Driver struct {
	block.DriverBase

	uri URI
	ex  export
	fd  int
	f   *aio.File

	ctx     atomic.Pointer[aio.Context] // the connection's Context (the node's)
	node    *block.Node
	handler *aio.FDHandler // POLLIN, kept armed while the connection lives

	// Owner-only state (the connection's Context).
	slots   [numSlots]slot
	free    []int // free slot indices (stack)
	waiting []*block.Request
	waitPos int
	sendq   [numSlots]int
	sendH   int
	sendN   int
	sendOff int
	iov     []unix.Iovec
	pollOut bool
	dead    error
	closed  bool

	rbuf       []byte
	rpos, rend int
	rx         rxState

	// Requests from other Contexts (slow path, see package comment).
	inbox block.Inbox
}

type slot struct {
	r        *block.Request
	gen      uint32
	cmd      uint16
	busy     bool
	sending  bool
	fuaFlush bool // a FUA write to a server without FUA: flush afterwards
	status   bool // block status: an extent for our context arrived
	err      error
	hdr      [28]byte
	out      [][]byte
	outLen   int
}

type rxPhase uint8

const (
	rxHeader  rxPhase = iota
	rxData            // payload into the request's buffers
	rxScratch         // small payload into rx.scratch
)

type rxState struct {
	phase   rxPhase
	sl      *slot
	simple  bool
	flags   uint16
	typ     uint16
	length  uint32
	skip    int64 // rxData: position in the request's buffers
	left    int64 // rxData: bytes still to come
	scratch []byte
	need    int
	got     int
	hdrDone bool // rxScratch of OFFSET_DATA's offset: the data follows
}

// NewNode connects to the export named by uri, negotiates, and opens a node
// on g for it. A read-only export can only be opened read-only.
func NewNode(g *block.Graph, uri string, readOnly bool, bopts block.Options) (*block.Node, error) {
	n, err := Open(g, uri, Options{ReadOnly: readOnly}, bopts)
	if err != nil {
		var re *ReadOnlyError
		if errors.As(err, &re) {
			return nil, fmt.Errorf("Could not open '%s': export %q is read-only", uri, re.Export)
		}
		if _, isURI := err.(*URIError); isURI {
			return nil, err
		}
		return nil, fmt.Errorf("Could not open '%s': %w", uri, err)
	}
	return n, nil
}

// Options say how Open connects (QEMU's BlockdevOptionsNbd beyond the
// address).
type Options struct {
	ReadOnly bool
	// AutoReadOnly opens a read-only export read-only instead of
	// failing (QEMU's auto-read-only).
	AutoReadOnly bool
	// OpenTimeout keeps retrying a connection the server refuses, or a
	// socket not there yet, for this long (QEMU's open-timeout; 0: one
	// attempt).
	OpenTimeout time.Duration
	// MetaContext is the metadata context block status reports instead
	// of base:allocation, its flags read as base:allocation's (QEMU's
	// x-dirty-bitmap: "qemu:dirty-bitmap:NAME", "qemu:allocation-depth").
	// The open fails when the server does not offer it.
	MetaContext string
}

// URIError is a URI Open could not parse.
type URIError struct{ Err error }

func (e *URIError) Error() string { return e.Err.Error() }
func (e *URIError) Unwrap() error { return e.Err }

// ConnectError is a connection the server did not accept, worded as
// QEMU words it: "Failed to connect to 'ADDR': Strerror".
type ConnectError struct {
	Addr string // the socket path, or host:port
	Err  error
}

func (e *ConnectError) Error() string {
	var errno syscall.Errno
	if errors.As(e.Err, &errno) {
		s := errno.Error()
		return "Failed to connect to '" + e.Addr + "': " + strings.ToUpper(s[:1]) + s[1:]
	}
	return "Failed to connect to '" + e.Addr + "': " + e.Err.Error()
}

func (e *ConnectError) Unwrap() error { return e.Err }

// ReadOnlyError is a writable open of an export the server offers
// read-only.
type ReadOnlyError struct{ Export string }

// Error is QEMU's wording: its open fails with EACCES.
func (e *ReadOnlyError) Error() string { return "Could not open image: Permission denied" }

// Open connects to the export named by uri, negotiates, and opens a node
// on g for it, as o says. Its errors are QEMU's blockdev-add wording
// (ConnectError, "Requested export not available", ReadOnlyError)
// without the URI in front.
func Open(g *block.Graph, uri string, o Options, bopts block.Options) (*block.Node, error) {
	readOnly := o.ReadOnly
	u, err := ParseURI(uri)
	if err != nil {
		return nil, &URIError{err}
	}
	nc, err := dial(u, o.OpenTimeout)
	if err != nil {
		return nil, err
	}
	nc.SetDeadline(time.Now().Add(HandshakeTimeout))
	ex, nc, err := handshake(nc, u, o.MetaContext)
	if err != nil {
		nc.Close()
		return nil, err
	}
	if ex.flags&nbdproto.TFlagReadOnly != 0 && !readOnly {
		if !o.AutoReadOnly {
			nc.Close()
			return nil, &ReadOnlyError{Export: u.Export}
		}
		readOnly = true
	}
	nc.SetDeadline(time.Time{})
	if tc, ok := nc.(*tls.Conn); ok {
		if nc, err = tlsPipe(tc); err != nil {
			tc.Close()
			return nil, err
		}
	}
	fd, err := rawFD(nc)
	if err != nil {
		return nil, err
	}
	d := newDriver(u, ex, fd)
	bopts.ReadOnly = bopts.ReadOnly || readOnly
	if ex.minBlock > 1 {
		bopts.Align = int(ex.minBlock)
	}
	bopts.MaxTransfer = defaultMax
	if m := int64(ex.maxBlock); m > 0 && m < defaultMax {
		bopts.MaxTransfer = m
	}
	bopts.MaxTransfer &^= int64(max(bopts.Align, 1)) - 1
	n, err := g.Open(d, bopts)
	if err != nil {
		d.f.Close()
		return nil, err
	}
	return n, nil
}

// dial connects to u's server, retrying a refused or missing socket
// until timeout has passed (open-timeout).
func dial(u URI, timeout time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(timeout)
	for {
		nc, err := net.DialTimeout(u.Network, u.Addr, HandshakeTimeout)
		if err == nil {
			return nc, nil
		}
		if time.Now().Add(dialRetry).After(deadline) {
			var sc *os.SyscallError
			if errors.As(err, &sc) {
				err = sc.Err
			}
			return nil, &ConnectError{Addr: u.Addr, Err: err}
		}
		time.Sleep(dialRetry)
	}
}

// dialRetry is the pause between connection attempts within an
// open-timeout.
const dialRetry = 100 * time.Millisecond

func newDriver(u URI, ex export, fd int) *Driver {
	d := &Driver{uri: u, ex: ex, fd: fd, rbuf: make([]byte, rbufSize), iov: make([]unix.Iovec, 256)}
	d.f = aio.NewFileFd(fd, func() error { return unix.Close(fd) })
	for i := numSlots - 1; i >= 0; i-- {
		d.free = append(d.free, i)
	}
	d.rx.scratch = make([]byte, 0, 4096)
	return d
}

// rawFD takes the descriptor out of nc: a non-blocking duplicate; nc is
// closed.
func rawFD(nc net.Conn) (int, error) {
	defer nc.Close()
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("connection type %T has no descriptor", nc)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = unix.Dup(int(s)) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, derr
	}
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// Open starts watching the socket on the node's Context.
func (d *Driver) Open(n *block.Node) error {
	d.node = n
	d.attach(n.Context())
	return nil
}

func (d *Driver) attach(ctx *aio.Context) {
	d.ctx.Store(ctx)
	d.inbox.Attach(ctx, d.fromInbox)
	ctx.Run(func() {
		if d.dead == nil {
			d.handler = ctx.SetFDHandler(d.fd, unix.POLLIN|unix.POLLRDHUP, d.readable, false)
		}
	})
}

// DetachContext stops watching the socket on the old Context (the node is
// drained: nothing is in flight, so nothing is queued for sending either).
func (d *Driver) DetachContext(n *block.Node) {
	ctx := d.ctx.Load()
	ctx.Run(d.removeHandler)
	d.inbox.Detach()
}

// AttachContext watches the socket on the new Context.
func (d *Driver) AttachContext(n *block.Node, ctx *aio.Context) { d.attach(ctx) }

func (d *Driver) removeHandler() {
	if d.handler != nil {
		d.handler.Remove()
		d.handler = nil
	}
}

// Close says goodbye to the server (NBD_CMD_DISC) and closes the socket.
func (d *Driver) Close(n *block.Node) error {
	ctx := d.ctx.Load()
	ctx.Run(func() {
		d.removeHandler()
		if d.dead == nil {
			var h [28]byte
			putRequest(h[:], nbdproto.CmdDisc, 0, 0, 0, 0)
			unix.Write(d.fd, h[:]) // best effort: the server copes with EOF too
		}
		d.closed = true
	})
	d.inbox.Detach()
	return d.f.Close()
}

// ContextBound reports that the driver's state belongs to its node's
// Context: requests from other Contexts take a hop through its inbox and
// back through their outbox, so the node is best placed on the Context
// that submits to it (bench does so for a clone).
func (d *Driver) ContextBound() bool { return true }

// Length reports the export size.
func (d *Driver) Length(*block.Node) (int64, error) { return d.ex.size, nil }

// FastZeroes: NoFallback write-zeroes become FAST_ZERO, when the server
// offers it (block.FastZeroer).
func (d *Driver) FastZeroes() bool {
	return d.ex.flags&nbdproto.TFlagZeroes != 0 && d.ex.flags&nbdproto.TFlagFastZero != 0
}

// MultiConn reports whether the server allows several connections to the
// export with a flush on one covering writes on all.
func (d *Driver) MultiConn() bool { return d.ex.flags&nbdproto.TFlagMultiConn != 0 }

func (d *Driver) Read(r *block.Request)        { d.submit(r) }
func (d *Driver) Write(r *block.Request)       { d.submit(r) }
func (d *Driver) Flush(r *block.Request)       { d.submit(r) }
func (d *Driver) Discard(r *block.Request)     { d.submit(r) }
func (d *Driver) WriteZeroes(r *block.Request) { d.submit(r) }
func (d *Driver) BlockStatus(r *block.Request) { d.submit(r) }

// submit runs on r's Context.
func (d *Driver) submit(r *block.Request) {
	if ctx := d.ctx.Load(); r.Context() != ctx {
		d.inbox.Push(r)
		return
	}
	d.enqueue(r, true)
}

// fromInbox starts a request submitted on another Context.
func (d *Driver) fromInbox(r *block.Request) { d.enqueue(r, false) }

// enqueue starts r or queues it for a free slot; inline says the caller is
// the submission itself (completions then go through a bottom half).
func (d *Driver) enqueue(r *block.Request, inline bool) {
	if d.dead != nil {
		d.finish(r, d.ioError(r, d.dead), inline)
		return
	}
	switch r.Op {
	case block.OpFlush:
		if d.ex.flags&nbdproto.TFlagFlush == 0 {
			d.finish(r, nil, inline) // no write cache on the server
			return
		}
	case block.OpDiscard:
		if d.ex.flags&nbdproto.TFlagTrim == 0 || r.Len == 0 {
			d.finish(r, nil, inline) // advisory
			return
		}
	case block.OpWriteZeroes:
		if d.ex.flags&nbdproto.TFlagZeroes == 0 {
			d.finish(r, &block.Error{Kind: block.Unsupported, Op: r.Op, Node: d.node.Name(), Offset: r.Off, Err: syscall.ENOTSUP}, inline)
			return
		}
	case block.OpBlockStatus:
		if !d.ex.hasMeta {
			r.Status, r.Pnum = block.StatusData|block.StatusAllocated, r.Len
			d.finish(r, nil, inline)
			return
		}
	case block.OpRead, block.OpWrite:
		if r.Len == 0 {
			d.finish(r, nil, inline)
			return
		}
	}
	if len(d.free) == 0 || len(d.waiting) > d.waitPos {
		d.waiting = append(d.waiting, r)
		return
	}
	d.start(r)
}

// start sends r's command in a free slot.
func (d *Driver) start(r *block.Request) {
	idx := d.free[len(d.free)-1]
	d.free = d.free[:len(d.free)-1]
	sl := &d.slots[idx]
	sl.r, sl.busy, sl.err, sl.fuaFlush, sl.status = r, true, nil, false, false
	var cmd, flags uint16
	length := uint64(r.Len)
	off := uint64(r.Off)
	fua := r.Flags&block.FUA != 0
	switch r.Op {
	case block.OpRead:
		cmd = nbdproto.CmdRead
	case block.OpWrite:
		cmd = nbdproto.CmdWrite
	case block.OpFlush:
		cmd, off, length, fua = nbdproto.CmdFlush, 0, 0, false
	case block.OpDiscard:
		cmd = nbdproto.CmdTrim
	case block.OpWriteZeroes:
		cmd = nbdproto.CmdWriteZeroes
		if r.Flags&block.MayUnmap == 0 {
			flags |= nbdproto.CmdFlagNoHole
		}
		if r.Flags&block.NoFallback != 0 {
			flags |= nbdproto.CmdFlagFastZero
		}
	case block.OpBlockStatus:
		cmd, flags = nbdproto.CmdBlockStatus, nbdproto.CmdFlagReqOne
		length = min(length, maxStatusLen)
	default:
		d.release(sl)
		d.finish(r, &block.Error{Kind: block.Unsupported, Op: r.Op, Node: d.node.Name(), Offset: r.Off, Err: syscall.ENOTSUP}, true)
		return
	}
	if fua {
		if d.ex.flags&nbdproto.TFlagFUA != 0 {
			flags |= nbdproto.CmdFlagFUA
		} else if d.ex.flags&nbdproto.TFlagFlush != 0 {
			sl.fuaFlush = true
		}
	}
	d.send(idx, cmd, flags, off, uint32(length))
}

// send queues slot idx's request header (and a write's payload).
func (d *Driver) send(idx int, cmd, flags uint16, off uint64, length uint32) {
	sl := &d.slots[idx]
	sl.gen++
	sl.cmd = cmd
	putRequest(sl.hdr[:], cmd, flags, uint64(idx)|uint64(sl.gen)<<32, off, length)
	sl.out = append(sl.out[:0], sl.hdr[:])
	sl.outLen = len(sl.hdr)
	if cmd == nbdproto.CmdWrite {
		for _, b := range sl.r.Iov {
			if len(b) > 0 {
				sl.out = append(sl.out, b)
				sl.outLen += len(b)
			}
		}
	}
	sl.sending = true
	d.sendq[(d.sendH+d.sendN)%numSlots] = idx
	d.sendN++
	ctx := d.ctx.Load()
	if ctx.Plugged() > 0 && ctx.Defer(d) {
		return // one writev at the end of the batch
	}
	d.flushSend()
}

// RunDeferred sends what a plugged batch queued (aio.Deferred).
func (d *Driver) RunDeferred(*aio.Context) { d.flushSend() }

func putRequest(h []byte, cmd, flags uint16, cookie, off uint64, length uint32) {
	binary.BigEndian.PutUint32(h, nbdproto.MagicReq)
	binary.BigEndian.PutUint16(h[4:], flags)
	binary.BigEndian.PutUint16(h[6:], cmd)
	binary.BigEndian.PutUint64(h[8:], cookie)
	binary.BigEndian.PutUint64(h[16:], off)
	binary.BigEndian.PutUint32(h[24:], length)
}

// flushSend writes queued requests with writev until done or the socket is
// full (a POLLOUT poll resumes it).
func (d *Driver) flushSend() {
	for d.sendN > 0 && d.dead == nil && !d.pollOut {
		k, skip := 0, d.sendOff
	build:
		for i := 0; i < d.sendN; i++ {
			sl := &d.slots[d.sendq[(d.sendH+i)%numSlots]]
			for _, b := range sl.out {
				if skip >= len(b) {
					skip -= len(b)
					continue
				}
				b = b[skip:]
				skip = 0
				if k == len(d.iov) {
					break build
				}
				d.iov[k].Base = &b[0]
				d.iov[k].SetLen(len(b))
				k++
			}
		}
		n, _, errno := unix.Syscall(unix.SYS_WRITEV, uintptr(d.fd), uintptr(unsafe.Pointer(&d.iov[0])), uintptr(k))
		if errno == unix.EINTR {
			continue
		}
		if errno == unix.EAGAIN {
			d.pollOut = true
			d.ctx.Load().PollAdd(d.f, unix.POLLOUT, d, tagOut)
			return
		}
		if errno != 0 {
			d.fail(fmt.Errorf("sending to the server: %w", errno))
			return
		}
		d.sendOff += int(n)
		for d.sendN > 0 {
			sl := &d.slots[d.sendq[d.sendH]]
			if d.sendOff < sl.outLen {
				break
			}
			d.sendOff -= sl.outLen
			sl.sending = false
			d.sendH = (d.sendH + 1) % numSlots
			d.sendN--
		}
	}
}

// OpDone resumes sending once the socket takes data again (aio.Done).
func (d *Driver) OpDone(tag uint64, _ int, _ error) {
	if tag == tagOut {
		d.pollOut = false
		if !d.closed {
			d.flushSend()
		}
	}
}

// readable runs when the socket has data (or the server went away).
func (d *Driver) readable(uint32) {
	if d.closed {
		return
	}
	d.readReplies()
}

// readReplies parses replies until the socket is empty. It keeps its
// state in d, so a completion callback that waits (and so runs this again
// from a nested poll) leaves a consistent parser behind.
func (d *Driver) readReplies() {
	for d.dead == nil {
		switch d.rx.phase {
		case rxHeader:
			if d.rend-d.rpos < 4 {
				if !d.fill() {
					return
				}
				continue
			}
			need := 20
			if binary.BigEndian.Uint32(d.rbuf[d.rpos:]) == nbdproto.MagicSimple {
				need = 16
			}
			if d.rend-d.rpos < need {
				if !d.fill() {
					return
				}
				continue
			}
			h := d.rbuf[d.rpos : d.rpos+need]
			d.rpos += need
			d.header(h)
		case rxData:
			if !d.readData() {
				return
			}
		case rxScratch:
			rx := &d.rx
			if d.rpos < d.rend {
				k := copy(rx.scratch[rx.got:rx.need], d.rbuf[d.rpos:d.rend])
				d.rpos += k
				rx.got += k
			}
			if rx.got < rx.need {
				if !d.fill() {
					return
				}
				continue
			}
			d.scratchDone()
		}
	}
}

// fill reads more of the socket into rbuf; false: nothing now, or the
// connection ended (d.dead set).
func (d *Driver) fill() bool {
	if d.rpos > 0 {
		d.rend = copy(d.rbuf, d.rbuf[d.rpos:d.rend])
		d.rpos = 0
	}
	n := d.sockRead(d.rbuf[d.rend:])
	d.rend += n
	return n > 0
}

func (d *Driver) sockRead(b []byte) int {
	for {
		n, err := unix.Read(d.fd, b)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0
		case err != nil:
			d.fail(fmt.Errorf("reading from the server: %w", err))
			return 0
		case n == 0:
			d.fail(errors.New("the server closed the connection"))
			return 0
		}
		return n
	}
}

func (d *Driver) protocolError(format string, args ...any) {
	d.fail(fmt.Errorf("NBD protocol error from the server: "+format, args...))
}

// header handles a simple reply or chunk header.
func (d *Driver) header(h []byte) {
	rx := &d.rx
	magic := binary.BigEndian.Uint32(h)
	var cookie uint64
	if magic == nbdproto.MagicSimple {
		cookie = binary.BigEndian.Uint64(h[8:])
	} else if magic == nbdproto.MagicChunk {
		cookie = binary.BigEndian.Uint64(h[8:])
	} else {
		d.protocolError("reply magic %#x", magic)
		return
	}
	idx, gen := int(uint32(cookie)), uint32(cookie>>32)
	if idx >= numSlots || !d.slots[idx].busy || d.slots[idx].gen != gen || d.slots[idx].sending {
		d.protocolError("reply to unknown cookie %#x", cookie)
		return
	}
	sl := &d.slots[idx]
	rx.sl = sl
	if magic == nbdproto.MagicSimple {
		if e := binary.BigEndian.Uint32(h[4:]); e != 0 {
			d.done(sl, d.serverError(sl, e))
			return
		}
		if sl.cmd == nbdproto.CmdBlockStatus || (sl.cmd == nbdproto.CmdRead && d.ex.structured) {
			d.protocolError("simple reply without error to a command that needs a structured one")
			return
		}
		if sl.cmd == nbdproto.CmdRead {
			rx.simple, rx.phase, rx.skip, rx.left = true, rxData, 0, sl.r.Len
			return
		}
		d.done(sl, nil)
		return
	}
	rx.simple = false
	rx.flags = binary.BigEndian.Uint16(h[4:])
	rx.typ = binary.BigEndian.Uint16(h[6:])
	rx.length = binary.BigEndian.Uint32(h[16:])
	switch {
	case rx.typ == nbdproto.ChunkNone:
		if rx.length != 0 {
			d.protocolError("NONE chunk with %d bytes", rx.length)
			return
		}
		d.chunkEnd()
	case rx.typ == nbdproto.ChunkOffsetData:
		if sl.cmd != nbdproto.CmdRead || rx.length < 8 {
			d.protocolError("data chunk of %d bytes for command %d", rx.length, sl.cmd)
			return
		}
		d.wantScratch(8)
	case rx.typ == nbdproto.ChunkOffsetHole:
		if sl.cmd != nbdproto.CmdRead || rx.length != 12 {
			d.protocolError("hole chunk of %d bytes for command %d", rx.length, sl.cmd)
			return
		}
		d.wantScratch(12)
	case rx.typ == nbdproto.ChunkBlockStatus:
		if sl.cmd != nbdproto.CmdBlockStatus || rx.length < 12 || (rx.length-4)%8 != 0 || rx.length > maxChunkMeta {
			d.protocolError("block status chunk of %d bytes for command %d", rx.length, sl.cmd)
			return
		}
		d.wantScratch(int(rx.length))
	case rx.typ&nbdproto.ChunkErrBit != 0:
		if rx.length < 6 || rx.length > maxChunkMeta {
			d.protocolError("error chunk of %d bytes", rx.length)
			return
		}
		d.wantScratch(int(rx.length))
	default:
		d.protocolError("unknown chunk type %d", rx.typ)
	}
}

func (d *Driver) wantScratch(n int) {
	rx := &d.rx
	if cap(rx.scratch) < n {
		rx.scratch = make([]byte, 0, n)
	}
	rx.scratch = rx.scratch[:n]
	rx.need, rx.got, rx.phase = n, 0, rxScratch
}

// scratchDone handles a chunk payload collected in rx.scratch.
func (d *Driver) scratchDone() {
	rx := &d.rx
	sl := rx.sl
	r := sl.r
	b := rx.scratch[:rx.need]
	rx.phase = rxHeader
	switch {
	case rx.typ == nbdproto.ChunkOffsetData:
		off := int64(binary.BigEndian.Uint64(b))
		n := int64(rx.length) - 8
		if off < r.Off || off+n > r.Off+r.Len || off+n < off {
			d.protocolError("data chunk %d+%d outside the read %d+%d", off, n, r.Off, r.Len)
			return
		}
		rx.phase, rx.skip, rx.left = rxData, off-r.Off, n
		if n == 0 {
			rx.phase = rxHeader
			d.chunkEnd()
		}
	case rx.typ == nbdproto.ChunkOffsetHole:
		off := int64(binary.BigEndian.Uint64(b))
		n := int64(binary.BigEndian.Uint32(b[8:]))
		if n == 0 || off < r.Off || off+n > r.Off+r.Len {
			d.protocolError("hole chunk %d+%d outside the read %d+%d", off, n, r.Off, r.Len)
			return
		}
		iovZero(r.Iov, off-r.Off, n)
		d.chunkEnd()
	case rx.typ == nbdproto.ChunkBlockStatus:
		if binary.BigEndian.Uint32(b) == d.ex.metaID && !sl.status {
			length := int64(binary.BigEndian.Uint32(b[4:]))
			fl := binary.BigEndian.Uint32(b[8:])
			if length == 0 {
				d.protocolError("block status extent of length 0")
				return
			}
			// As QEMU's client: what is not a hole is data, and data or
			// zeroes are allocated; a hole that does not read as zeroes
			// is not (present: false in qemu-img map).
			var st block.Status
			if fl&nbdproto.StateHole == 0 {
				st |= block.StatusData | block.StatusAllocated
			}
			if fl&nbdproto.StateZero != 0 {
				st |= block.StatusZero | block.StatusAllocated
			}
			r.Status, r.Pnum, sl.status = st, min(length, r.Len), true
		}
		d.chunkEnd()
	default: // error chunk
		e := binary.BigEndian.Uint32(b)
		if sl.err == nil {
			sl.err = d.serverError(sl, e)
		}
		d.chunkEnd()
	}
}

// readData moves payload into the request's buffers; false: wait for more.
func (d *Driver) readData() bool {
	rx := &d.rx
	for rx.left > 0 {
		seg := iovAt(rx.sl.r.Iov, rx.skip, rx.left)
		var n int
		switch {
		case d.rpos < d.rend:
			n = copy(seg, d.rbuf[d.rpos:d.rend])
			d.rpos += n
		case len(seg) >= directRead:
			n = d.sockRead(seg)
			if n == 0 {
				return false
			}
		default:
			if !d.fill() {
				return false
			}
			continue
		}
		rx.skip += int64(n)
		rx.left -= int64(n)
	}
	rx.phase = rxHeader
	if rx.simple {
		d.done(rx.sl, nil)
	} else {
		d.chunkEnd()
	}
	return true
}

// chunkEnd finishes a structured reply on its DONE chunk.
func (d *Driver) chunkEnd() {
	rx := &d.rx
	if rx.flags&nbdproto.ChunkDone == 0 {
		return
	}
	sl := rx.sl
	err := sl.err
	if err == nil && sl.cmd == nbdproto.CmdBlockStatus && !sl.status {
		err = d.ioError(sl.r, errors.New("the server sent no base:allocation extent"))
	}
	d.done(sl, err)
}

// done finishes a slot's command.
func (d *Driver) done(sl *slot, err error) {
	d.rx.sl = nil
	if err == nil && sl.fuaFlush {
		sl.fuaFlush = false
		d.send(d.slotIndex(sl), nbdproto.CmdFlush, 0, 0, 0)
		return
	}
	r := sl.r
	d.release(sl)
	d.finish(r, err, false)
	d.startWaiting()
}

func (d *Driver) slotIndex(sl *slot) int {
	return int((uintptr(unsafe.Pointer(sl)) - uintptr(unsafe.Pointer(&d.slots[0]))) / unsafe.Sizeof(d.slots[0]))
}

func (d *Driver) release(sl *slot) {
	sl.r, sl.busy, sl.sending = nil, false, false
	clear(sl.out)
	sl.out = sl.out[:0]
	d.free = append(d.free, d.slotIndex(sl))
}

func (d *Driver) startWaiting() {
	for len(d.free) > 0 && d.waitPos < len(d.waiting) && d.dead == nil {
		r := d.waiting[d.waitPos]
		d.waiting[d.waitPos] = nil
		d.waitPos++
		d.start(r)
	}
	if d.waitPos == len(d.waiting) {
		d.waiting, d.waitPos = d.waiting[:0], 0
	}
}

// finish completes r on its own Context.
func (d *Driver) finish(r *block.Request, err error, inline bool) {
	if r.Context() == d.ctx.Load() {
		if inline {
			r.CompleteLater(err)
		} else {
			r.Complete(err)
		}
		return
	}
	r.CompleteRemote(err)
}

// fail ends the connection: every request in flight or waiting fails with
// EIO naming the cause, and so does every later one.
func (d *Driver) fail(cause error) {
	if d.dead != nil {
		return
	}
	d.dead = cause
	unix.Shutdown(d.fd, unix.SHUT_RDWR)
	d.removeHandler()
	d.rx = rxState{scratch: d.rx.scratch[:0]}
	d.sendN, d.sendOff = 0, 0
	for i := range d.slots {
		sl := &d.slots[i]
		if sl.busy {
			r := sl.r
			d.release(sl)
			d.finish(r, d.ioError(r, cause), false)
		}
	}
	for d.waitPos < len(d.waiting) {
		r := d.waiting[d.waitPos]
		d.waiting[d.waitPos] = nil
		d.waitPos++
		d.finish(r, d.ioError(r, cause), false)
	}
	d.waiting, d.waitPos = d.waiting[:0], 0
}

// ioError is EIO for r naming the server and the cause.
func (d *Driver) ioError(r *block.Request, cause error) error {
	return &block.Error{Kind: block.Io, Op: r.Op, Node: d.node.Name(), Offset: r.Off,
		Err: &serverErr{uri: d.uri.Text, cause: cause, errno: syscall.EIO}}
}

// serverError maps an NBD error value to a *block.Error.
func (d *Driver) serverError(sl *slot, e uint32) error {
	errno := syscall.EIO
	switch e {
	case 1:
		errno = syscall.EPERM
	case 12:
		errno = syscall.ENOMEM
	case 22:
		errno = syscall.EINVAL
	case 28:
		errno = syscall.ENOSPC
	case 75:
		errno = syscall.EOVERFLOW
	case 95:
		errno = syscall.ENOTSUP
	case 108:
		errno = syscall.ESHUTDOWN
	}
	kind := block.Io
	if errno == syscall.ENOTSUP {
		kind = block.Unsupported
	}
	return &block.Error{Kind: kind, Op: sl.r.Op, Node: d.node.Name(), Offset: sl.r.Off, Err: errno}
}

// serverErr is a failed connection: errors.Is(err, syscall.EIO) holds.
type serverErr struct {
	uri   string
	cause error
	errno syscall.Errno
}

func (e *serverErr) Error() string { return "NBD server " + e.uri + ": " + e.cause.Error() }
func (e *serverErr) Unwrap() []error {
	return []error{e.errno, e.cause}
}

// iovAt returns the buffer bytes at skip (at most n of them).
func iovAt(iov [][]byte, skip, n int64) []byte {
	for _, b := range iov {
		if skip < int64(len(b)) {
			b = b[skip:]
			if int64(len(b)) > n {
				b = b[:n]
			}
			return b
		}
		skip -= int64(len(b))
	}
	return nil
}

func iovZero(iov [][]byte, skip, n int64) {
	for n > 0 {
		b := iovAt(iov, skip, n)
		if len(b) == 0 {
			return
		}
		clear(b)
		skip += int64(len(b))
		n -= int64(len(b))
	}
}

// Size connects to the export named by uri, reads its size from the
// handshake and disconnects (for callers that need the size before they
// open a node, such as a benchmark laying out its region).
func Size(uri string) (int64, error) {
	u, err := ParseURI(uri)
	if err != nil {
		return 0, err
	}
	nc, err := dial(u, 0)
	if err != nil {
		return 0, fmt.Errorf("Could not open '%s': %w", uri, err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(HandshakeTimeout))
	ex, nc, err := handshake(nc, u, "")
	if err != nil {
		return 0, fmt.Errorf("Could not open '%s': %w", uri, err)
	}
	var h [28]byte
	putRequest(h[:], nbdproto.CmdDisc, 0, 0, 0, 0)
	nc.Write(h[:])
	return ex.size, nil
}
