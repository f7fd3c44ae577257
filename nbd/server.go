package nbd

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/bitmap"
	"github.com/ringblk/ringblk/block"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

// ExportOptions configure one export.
type ExportOptions struct {
	Name        string // the export name clients ask for ("" is the default export)
	Description string
	ReadOnly    bool
	// Context runs the export's connections (nil: the main Context).
	// Requests run on its ring, whatever Context the node is in.
	Context *aio.Context
	// MaxConnections limits concurrent clients of this export (0: no
	// limit). qemu-nbd's -e.
	MaxConnections int
	// AllocationDepth offers qemu:allocation-depth (qemu-nbd's -A).
	AllocationDepth bool
	// NoMultiConn withholds CAN_MULTI_CONN (also withheld when
	// MaxConnections is 1).
	NoMultiConn bool
	// IgnoreDiscard is qemu-nbd's --discard=ignore: TRIM succeeds without
	// reaching the node, and WRITE_ZEROES never asks to unmap, as QEMU
	// drops discards at the node a BlockBackend without BDRV_O_UNMAP
	// writes to. A node's own discard setting is not enough when it is
	// on the file node under a format, which still discards.
	IgnoreDiscard bool
	// DetectZeroes is qemu-nbd's --detect-zeroes: a WRITE of zero bytes
	// becomes a write-zeroes at the export's node (allowed to unmap with
	// DetectZeroesUnmap, unless IgnoreDiscard), as QEMU does at the top
	// node; a format node under the export then stores zero clusters
	// where the setting on its file node alone stored zero data.
	DetectZeroes DetectZeroes
	// Bitmaps names dirty bitmaps to offer as qemu:dirty-bitmap:NAME
	// (block-export-add's bitmaps). Each is looked up on the export's
	// node, then down its filtered or backing children; it is held busy
	// (not removable) while the export exists.
	Bitmaps []string
}

// DetectZeroes says what a WRITE of zero bytes becomes (ExportOptions).
type DetectZeroes uint8

const (
	DetectZeroesOff   DetectZeroes = iota // a write, as sent
	DetectZeroesOn                        // a write-zeroes
	DetectZeroesUnmap                     // a write-zeroes that may deallocate
)

// Export serves one node as a front end of the block layer: its
// connections submit through the front end's Queue on their Context, and
// it stops reading new requests while the front end is drained.
type Export struct {
	opts ExportOptions
	fe   *block.FrontEnd
	ctx  *aio.Context
	q    *block.Queue
	size int64
	// chain is the backing chain block status walks, replaced whole by
	// Refresh when the export's node changes (a snapshot, a job's pivot)
	// and loaded once per BLOCK_STATUS request.
	chain atomic.Pointer[chainView]
	// bitmaps are the dirty bitmaps offered, in ExportOptions.Bitmaps
	// order; bitmap i has meta context id idBitmap0+i.
	bitmaps []*bitmap.Bitmap

	// quiesced is set between DrainedBegin and DrainedEnd.
	quiesced atomic.Bool
	// walks counts BLOCK_STATUS walks past their first query, which go
	// to the chain's nodes directly (conn.bsRun): written on the
	// export's Context, read by DrainedPoll on the main one.
	walks atomic.Int64
	main  *aio.Context // kicked when walks drops to zero

	stats exportStats // per-request accounting (stats.go)

	mu       sync.Mutex
	conns    map[*conn]struct{}
	reserved int // places taken by handshakes that end in GO or EXPORT_NAME
	closed   bool
	wg       sync.WaitGroup
}

// NewExport makes n available as an export. The export takes its own
// reference on n (through its front end). Call on any goroutine but the
// main Context's.
func NewExport(g *block.Graph, n *block.Node, opts ExportOptions) (*Export, error) {
	ctx := opts.Context
	if ctx == nil {
		ctx = g.Main()
	}
	e := &Export{opts: opts, ctx: ctx, main: g.Main(), conns: map[*conn]struct{}{}}
	if n.ReadOnly() {
		e.opts.ReadOnly = true
	}
	var err error
	if e.size, err = n.Length(); err != nil {
		return nil, fmt.Errorf("nbd: export %q: %w", opts.Name, err)
	}
	v, err := buildView(g, n)
	if err != nil {
		return nil, fmt.Errorf("nbd: export %q: %w", opts.Name, err)
	}
	e.chain.Store(v)
	if e.bitmaps, err = holdBitmaps(g, n, opts.Bitmaps); err != nil {
		return nil, fmt.Errorf("nbd: export %q: %w", opts.Name, err)
	}
	// The front end's home is the node's Context: inserting it elsewhere
	// would move the node (and its other users) away from its IOThread.
	e.fe = g.NewFrontEnd(block.FrontEndOptions{Name: "nbd-export:" + opts.Name, DevOps: e, AllowContextChange: true, Context: n.Context()})
	g.Control(n.Ref)
	if err := e.fe.Insert(n); err != nil {
		n.Unref()
		e.fe.Close()
		releaseBitmaps(e.bitmaps)
		return nil, fmt.Errorf("nbd: export %q: %w", opts.Name, err)
	}
	n.Unref()
	e.q = e.fe.Queue(ctx)
	return e, nil
}

// holdBitmaps finds each named bitmap on n or below it (through filtered
// and backing children, as QEMU's export does) and marks it busy. A
// bitmap that is missing, already busy or named twice is an error, and
// nothing stays held.
func holdBitmaps(g *block.Graph, n *block.Node, names []string) (held []*bitmap.Bitmap, err error) {
	if len(names) == 0 {
		return nil, nil
	}
	if len(names) > MaxExportBitmaps {
		return nil, fmt.Errorf("%d bitmaps requested, an export offers at most %d", len(names), MaxExportBitmaps)
	}
	g.Control(func() {
		for _, name := range names {
			var b *bitmap.Bitmap
			for x := n; x != nil && b == nil; {
				if b = x.Bitmap(name); b != nil {
					break
				}
				c := x.Child(block.RoleFiltered)
				if c == nil {
					c = x.Child(block.RoleBacking)
				}
				if c == nil {
					break
				}
				x = c.Node()
			}
			switch {
			case b == nil:
				err = &BitmapError{fmt.Sprintf("Bitmap '%s' is not found", name)}
			case b.Busy():
				err = &BitmapError{fmt.Sprintf("Bitmap '%s' is currently in use by another operation and cannot be used", name)}
			}
			if err != nil {
				releaseBitmaps(held)
				held = nil
				return
			}
			b.SetBusy(true)
			held = append(held, b)
		}
	})
	return held, err
}

// MaxExportBitmaps bounds ExportOptions.Bitmaps: a BLOCK_STATUS reply
// has one chunk per selected context, and a request's reply storage is
// sized for base:allocation, qemu:allocation-depth and this many more.
const MaxExportBitmaps = 6

func releaseBitmaps(l []*bitmap.Bitmap) {
	for _, b := range l {
		b.SetBusy(false)
	}
}

// chainView is the export's chain: its node and the backing nodes below,
// top first, with their sizes (immutable once published).
type chainView struct {
	levels []*block.Node
	sizes  []int64
}

func buildView(g *block.Graph, n *block.Node) (*chainView, error) {
	v := &chainView{}
	g.Control(func() {
		for x := n; x != nil; {
			v.levels = append(v.levels, x)
			c := x.Child(block.RoleBacking)
			if c == nil {
				break
			}
			x = c.Node()
		}
	})
	for _, x := range v.levels {
		sz, err := x.Length()
		if err != nil {
			return nil, err
		}
		v.sizes = append(v.sizes, sz)
	}
	return v, nil
}

// Refresh re-reads the chain under the export's node, for block status,
// after something replaced the node its front end is on (an external
// snapshot's overlay, a mirror's target). Call it before the drained
// section of that change ends, so that no request sees the old chain; on
// any goroutine but the main Context's.
func (e *Export) Refresh() error {
	n := e.fe.Root()
	if n == nil {
		return ErrExportClosed
	}
	v, err := buildView(e.fe.Graph(), n)
	if err != nil {
		return fmt.Errorf("nbd: export %q: %w", e.opts.Name, err)
	}
	e.chain.Store(v)
	return nil
}

// ErrExportClosed: the export has no node any more.
var ErrExportClosed = errors.New("nbd: export closed")

// Name returns the export name.
func (e *Export) Name() string { return e.opts.Name }

// FrontEnd returns the export's front end.
func (e *Export) FrontEnd() *block.FrontEnd { return e.fe }

// Size returns the export size in bytes.
func (e *Export) Size() int64 { return e.size }

// Connections returns the number of clients in the transmission phase.
func (e *Export) Connections() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.conns)
}

// DrainedBegin stops every connection from reading new requests (block.DevOps).
func (e *Export) DrainedBegin() { e.quiesced.Store(true) }

// DrainedPoll reports the device-side work the front end does not count:
// BLOCK_STATUS walks past their first query (requests already read are
// otherwise counted by the front end).
func (e *Export) DrainedPoll() bool { return e.walks.Load() > 0 }

// DrainedEnd lets the connections read again (and process what they had
// buffered).
func (e *Export) DrainedEnd() {
	e.quiesced.Store(false)
	e.mu.Lock()
	for c := range e.conns {
		c.readBH.Schedule()
	}
	e.mu.Unlock()
}

// flags returns the transmission flags for a client; DF only when it
// negotiated structured replies (the protocol requires it clear otherwise).
func (e *Export) flags(structured bool) uint16 {
	f := nbdproto.TFlagHasFlags | nbdproto.TFlagFlush | nbdproto.TFlagFUA | nbdproto.TFlagCache
	if structured {
		f |= nbdproto.TFlagDF
	}
	if e.opts.ReadOnly {
		f |= nbdproto.TFlagReadOnly
	} else {
		f |= nbdproto.TFlagTrim | nbdproto.TFlagZeroes | nbdproto.TFlagFastZero
	}
	// Every connection submits to the one front end and node: a flush on
	// any of them covers the writes completed on all of them. An export
	// that takes one client does not invite more connections.
	if !e.opts.NoMultiConn && e.opts.MaxConnections != 1 {
		f |= nbdproto.TFlagMultiConn
	}
	return f
}

// reserve takes a client's place at the end of its handshake, unless the
// export is closing or has its MaxConnections clients (counting places
// taken by handshakes not yet started: two clients finishing together
// cannot both take the last place).
func (e *Export) reserve() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return fmt.Errorf("export %q is closing", e.opts.Name)
	}
	if max := e.opts.MaxConnections; max > 0 && len(e.conns)+e.reserved >= max {
		return fmt.Errorf("export %q already has %d clients (the limit)", e.opts.Name, max)
	}
	e.reserved++
	return nil
}

// release gives back a place reserve took for a client that will not
// start.
func (e *Export) release() {
	e.mu.Lock()
	e.reserved--
	e.mu.Unlock()
}

// addConn turns c's reserved place into a connection, unless the export
// closed meanwhile.
func (e *Export) addConn(c *conn) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.reserved--
	if e.closed {
		return fmt.Errorf("export %q is closing", e.opts.Name)
	}
	e.conns[c] = struct{}{}
	e.wg.Add(1)
	return nil
}

// unlistConn removes c from the set Close and DrainedEnd walk; the
// connection then calls e.wg.Done once its BHs are gone.
func (e *Export) unlistConn(c *conn) {
	e.mu.Lock()
	delete(e.conns, c)
	e.mu.Unlock()
}

// Close disconnects every client (requests in flight complete first),
// then drains and closes the front end, returning what closing the nodes
// reported.
func (e *Export) Close() error {
	e.mu.Lock()
	e.closed = true
	for c := range e.conns {
		c.shutdownBH.Schedule()
	}
	e.mu.Unlock()
	e.wg.Wait()
	e.fe.Drain()
	err := e.fe.Close()
	e.fe.Graph().Control(func() { releaseBitmaps(e.bitmaps) })
	return err
}

// Server accepts NBD clients for a set of exports.
type Server struct {
	// Logger receives one line per refused client or broken connection
	// (nil: discarded).
	Logger *slog.Logger
	// HandshakeTimeout bounds the option haggling phase (0: 30s).
	HandshakeTimeout time.Duration
	// OneShot closes Served once a client has connected and the last
	// client (handshake or transmission) has gone (qemu-nbd without
	// --persistent).
	OneShot bool

	mu        sync.Mutex
	exports   []*Export
	listeners []net.Listener
	handshake sync.WaitGroup
	closed    bool
	served    chan struct{} // OneShot: closed when the last client left
	stop      chan struct{} // closed by Close
	once      sync.Once
	clients   atomic.Int64
	active    atomic.Int64          // accepted connections not yet closed
	hs        map[net.Conn]struct{} // connections in the handshake (Close ends them)
	tls       *tls.Config           // SetTLS
}

// SetTLS makes TLS mandatory with cfg, as qemu-nbd's --tls-creds does: a
// client must send NBD_OPT_STARTTLS before anything else (tls.go). nil
// turns TLS off. Handshakes that already started keep what they began
// with.
func (s *Server) SetTLS(cfg *tls.Config) {
	s.mu.Lock()
	s.tls = cfg
	s.mu.Unlock()
}

// NewServer returns a server with no exports.
func NewServer() *Server { return &Server{served: make(chan struct{}), stop: make(chan struct{})} }

// AddExport makes e available. Names must be unique.
func (s *Server) AddExport(e *Export) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, x := range s.exports {
		if x.opts.Name == e.opts.Name {
			return fmt.Errorf("nbd: export %q already exists", e.opts.Name)
		}
	}
	s.exports = append(s.exports, e)
	return nil
}

// RemoveExport withdraws e: new clients no longer find it, and its name
// may be given to another export. Clients already connected keep it until
// e.Close. Before, a deleted export's name stayed taken for the server's
// life (block-export-del, then block-export-add of the same name, failed).
func (s *Server) RemoveExport(e *Export) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, x := range s.exports {
		if x == e {
			s.exports = append(s.exports[:i], s.exports[i+1:]...)
			return
		}
	}
}

func (s *Server) export(name string) *Export {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.exports {
		if e.opts.Name == name {
			return e
		}
	}
	return nil
}

func (s *Server) exportList() []*Export {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Export(nil), s.exports...)
}

func (s *Server) logf(msg string, args ...any) {
	if s.Logger != nil {
		s.Logger.Info(msg, args...)
	}
}

// Served is closed when a OneShot server's last client has disconnected.
func (s *Server) Served() <-chan struct{} { return s.served }

// Serve accepts clients on l until Close, then returns nil; started after
// Close, it closes l and returns net.ErrClosed. Each client's handshake
// runs on its own goroutine; the transmission phase runs on the export's
// Context.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close() // Serve owns l, even when it starts after Close
		return net.ErrClosed
	}
	s.listeners = append(s.listeners, l)
	s.mu.Unlock()
	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if !acceptRetryable(err) {
				return err
			}
			// Out of descriptors or memory (a client opening connections
			// until the process has none left), or a connection that
			// went away before it was accepted: the listener and the
			// clients served are fine. Wait, then accept again, as
			// qemu-nbd keeps listening; returning stopped the server.
			backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
			s.logf("nbd: accepting a client failed; retrying", "err", err, "after", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-s.stop:
				t.Stop()
			}
			continue
		}
		backoff = 0
		s.active.Add(1)
		s.handshake.Add(1)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			s.handshake.Done()
			s.oneShotDone()
			return nil
		}
		if s.hs == nil {
			s.hs = map[net.Conn]struct{}{}
		}
		// Set here, under the lock: Close's deadline must not be
		// overwritten by a handshake that starts after it.
		timeout := s.HandshakeTimeout
		if timeout == 0 {
			timeout = 30 * time.Second
		}
		nc.SetDeadline(time.Now().Add(timeout))
		s.hs[nc] = struct{}{}
		s.mu.Unlock()
		go func() {
			defer s.handshake.Done()
			s.negotiate(nc)
		}()
	}
}

// acceptRetryable reports an Accept failure that says nothing about
// the listener: the process or the system is short of descriptors or
// memory for now, or the connection was aborted in the backlog.
func acceptRetryable(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// The wait before accepting again after a retryable failure doubles from
// acceptBackoffMin up to acceptBackoffMax while the failures go on.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// Close stops accepting clients and waits for handshakes in progress.
// Exports are closed separately (Export.Close).
func (s *Server) Close() {
	s.mu.Lock()
	if !s.closed && s.stop != nil {
		close(s.stop) // ends a Serve waiting to accept again
	}
	s.closed = true
	ls := s.listeners
	s.listeners = nil
	for nc := range s.hs {
		// Unblocks the handshake's reads and writes: it fails and ends.
		nc.SetDeadline(time.Unix(1, 0))
	}
	s.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
	s.handshake.Wait()
}

// negotiator is one client's handshake state.
type negotiator struct {
	s          *Server
	nc         net.Conn
	noZeroes   bool
	structured bool
	metaExport string
	metaX      *Export  // the export the contexts were selected on
	meta       []string // selected contexts
	scratch    []byte
	tls        *tls.Config // mandatory TLS with this configuration (nil: none)
	tlsDone    bool        // the handshake switched to TLS (n.nc is a *tls.Conn)
}

func (s *Server) negotiate(nc net.Conn) {
	s.mu.Lock()
	cfg := s.tls
	s.mu.Unlock()
	n := &negotiator{s: s, nc: nc, tls: cfg}
	e, err := n.run()
	s.mu.Lock()
	delete(s.hs, nc)
	if err == nil && s.closed {
		e.release()
		err = errors.New("server closing")
	}
	s.mu.Unlock()
	if err != nil {
		if !errors.Is(err, errAbort) {
			s.logf("nbd: client handshake failed", "remote", nc.RemoteAddr().String(), "err", err)
		}
		n.nc.Close()
		s.oneShotDone()
		return
	}
	nc.SetDeadline(time.Time{})
	if err := startConn(s, e, n.nc, n.structured, n.metaIDs()); err != nil {
		s.logf("nbd: client refused", "remote", nc.RemoteAddr().String(), "err", err)
		n.nc.Close()
		s.oneShotDone()
	}
}

// oneShotDone counts a connection closed.
func (s *Server) oneShotDone() {
	if s.active.Add(-1) == 0 && s.OneShot {
		s.once.Do(func() { close(s.served) })
	}
}

var errAbort = errors.New("client aborted the handshake")

func (n *negotiator) write(b []byte) error {
	_, err := n.nc.Write(b)
	return err
}

func (n *negotiator) reply(opt, typ uint32, data []byte) error {
	b := n.scratch[:0]
	b = binary.BigEndian.AppendUint64(b, nbdproto.MagicRepOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	n.scratch = b[:0]
	return n.write(b)
}

func (n *negotiator) replyErr(opt, typ uint32, msg string) error {
	return n.reply(opt, typ, []byte(msg))
}

func (n *negotiator) metaIDs() []uint32 {
	var ids []uint32
	for _, m := range n.meta {
		ids = append(ids, n.metaX.contextID(m))
	}
	return ids
}

// run performs the fixed newstyle handshake and returns the export chosen.
func (n *negotiator) run() (*Export, error) {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], nbdproto.MagicNBD)
	binary.BigEndian.PutUint64(hello[8:], nbdproto.MagicOpt)
	binary.BigEndian.PutUint16(hello[16:], nbdproto.FlagFixedNewstyle|nbdproto.FlagNoZeroes)
	if err := n.write(hello[:]); err != nil {
		return nil, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(n.nc, cf[:]); err != nil {
		return nil, fmt.Errorf("reading client flags: %w", err)
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^(nbdproto.CFlagFixed|nbdproto.CFlagNoZeroes) != 0 {
		return nil, fmt.Errorf("unknown client flags %#x", flags)
	}
	if flags&nbdproto.CFlagFixed == 0 {
		return nil, errors.New("client does not speak fixed newstyle negotiation")
	}
	n.noZeroes = flags&nbdproto.CFlagNoZeroes != 0
	for {
		var hdr [16]byte
		if _, err := io.ReadFull(n.nc, hdr[:]); err != nil {
			return nil, fmt.Errorf("reading option: %w", err)
		}
		if binary.BigEndian.Uint64(hdr[:]) != nbdproto.MagicOpt {
			return nil, errors.New("option with a bad magic number")
		}
		opt := binary.BigEndian.Uint32(hdr[8:])
		length := binary.BigEndian.Uint32(hdr[12:])
		if length > maxOptionLen {
			if length > maxOptionSkip || opt == nbdproto.OptExportName {
				return nil, fmt.Errorf("option %d with %d bytes of data", opt, length)
			}
			if _, err := io.CopyN(io.Discard, n.nc, int64(length)); err != nil {
				return nil, err
			}
			if err := n.replyErr(opt, nbdproto.RepErrTooBig, "option data too long"); err != nil {
				return nil, err
			}
			continue
		}
		data := make([]byte, length)
		if _, err := io.ReadFull(n.nc, data); err != nil {
			return nil, fmt.Errorf("reading option %d data: %w", opt, err)
		}
		e, done, err := n.option(opt, data)
		if err != nil || done {
			return e, err
		}
	}
}

// option answers one option; done means the transmission phase starts
// with e.
func (n *negotiator) option(opt uint32, data []byte) (e *Export, done bool, err error) {
	if n.tls != nil && !n.tlsDone {
		// TLS is mandatory: only STARTTLS and ABORT are answered.
		switch opt {
		case nbdproto.OptStartTLS, nbdproto.OptAbort:
		case nbdproto.OptExportName:
			// No error reply exists for EXPORT_NAME: disconnect.
			return nil, true, errors.New("client chose an export (NBD_OPT_EXPORT_NAME) before starting TLS")
		default:
			return nil, false, n.replyErr(opt, nbdproto.RepErrTLSReqd, "TLS is required: send NBD_OPT_STARTTLS first")
		}
	}
	switch opt {
	case nbdproto.OptExportName:
		e = n.s.export(string(data))
		if e == nil {
			return nil, true, fmt.Errorf("unknown export %q", data)
		}
		if n.metaExport != string(data) || n.metaX != e {
			n.meta = nil
		}
		if err := e.reserve(); err != nil {
			return nil, true, err // EXPORT_NAME has no error reply
		}
		b := binary.BigEndian.AppendUint64(nil, uint64(e.size))
		b = binary.BigEndian.AppendUint16(b, e.flags(n.structured))
		if !n.noZeroes {
			b = append(b, make([]byte, 124)...)
		}
		if err := n.write(b); err != nil {
			e.release()
			return nil, true, err
		}
		return e, true, nil
	case nbdproto.OptAbort:
		if len(data) != 0 {
			// Answer anyway: the client is going away.
			_ = n.replyErr(opt, nbdproto.RepErrInvalid, "NBD_OPT_ABORT carries no data")
			return nil, true, errAbort
		}
		_ = n.reply(opt, nbdproto.RepAck, nil)
		return nil, true, errAbort
	case nbdproto.OptList:
		if len(data) != 0 {
			return nil, false, n.replyErr(opt, nbdproto.RepErrInvalid, "NBD_OPT_LIST carries no data")
		}
		for _, x := range n.s.exportList() {
			b := binary.BigEndian.AppendUint32(nil, uint32(len(x.opts.Name)))
			b = append(b, x.opts.Name...)
			b = append(b, x.opts.Description...)
			if err := n.reply(opt, nbdproto.RepServer, b); err != nil {
				return nil, false, err
			}
		}
		return nil, false, n.reply(opt, nbdproto.RepAck, nil)
	case nbdproto.OptStructured:
		if len(data) != 0 {
			return nil, false, n.replyErr(opt, nbdproto.RepErrInvalid, "NBD_OPT_STRUCTURED_REPLY carries no data")
		}
		n.structured = true
		return nil, false, n.reply(opt, nbdproto.RepAck, nil)
	case nbdproto.OptInfo, nbdproto.OptGo:
		ir, perr := parseInfoRequest(data)
		if perr != nil {
			return nil, false, n.replyErr(opt, nbdproto.RepErrInvalid, perr.Error())
		}
		x := n.s.export(ir.name)
		if x == nil {
			return nil, false, n.replyErr(opt, nbdproto.RepErrUnknown, fmt.Sprintf("export %q not present", ir.name))
		}
		if opt == nbdproto.OptGo {
			// Take the client's place before the final ACK: a client
			// over the limit gets an error reply, not a closed socket.
			if err := x.reserve(); err != nil {
				return nil, false, n.replyErr(opt, nbdproto.RepErrPolicy, err.Error())
			}
		}
		if err := n.sendInfo(opt, x, ir); err != nil {
			if opt == nbdproto.OptGo {
				x.release()
			}
			return nil, false, err
		}
		if err := n.reply(opt, nbdproto.RepAck, nil); err != nil {
			if opt == nbdproto.OptGo {
				x.release()
			}
			return nil, false, err
		}
		if opt == nbdproto.OptGo {
			if n.metaExport != ir.name || n.metaX != x {
				n.meta = nil
			}
			return x, true, nil
		}
		return nil, false, nil
	case nbdproto.OptListMeta, nbdproto.OptSetMeta:
		return nil, false, n.metaContext(opt, data)
	case nbdproto.OptStartTLS:
		return nil, false, n.startTLS(data)
	default:
		return nil, false, n.replyErr(opt, nbdproto.RepErrUnsup, fmt.Sprintf("option %d is not supported", opt))
	}
}

func (n *negotiator) sendInfo(opt uint32, x *Export, ir infoRequest) error {
	b := binary.BigEndian.AppendUint16(nil, nbdproto.InfoExport)
	b = binary.BigEndian.AppendUint64(b, uint64(x.size))
	b = binary.BigEndian.AppendUint16(b, x.flags(n.structured))
	if err := n.reply(opt, nbdproto.RepInfo, b); err != nil {
		return err
	}
	// Block sizes are always sent: any alignment works (minimum 1), 4 KiB
	// is preferred, and 32 MiB is the largest request.
	b = binary.BigEndian.AppendUint16(nil, nbdproto.InfoBlockSize)
	b = binary.BigEndian.AppendUint32(b, 1)
	b = binary.BigEndian.AppendUint32(b, 4096)
	b = binary.BigEndian.AppendUint32(b, MaxPayload)
	if err := n.reply(opt, nbdproto.RepInfo, b); err != nil {
		return err
	}
	for _, want := range ir.infos {
		switch want {
		case nbdproto.InfoName:
			b = binary.BigEndian.AppendUint16(nil, nbdproto.InfoName)
			b = append(b, x.opts.Name...)
		case nbdproto.InfoDesc:
			if x.opts.Description == "" {
				continue
			}
			b = binary.BigEndian.AppendUint16(nil, nbdproto.InfoDesc)
			b = append(b, x.opts.Description...)
		default:
			continue
		}
		if err := n.reply(opt, nbdproto.RepInfo, b); err != nil {
			return err
		}
	}
	return nil
}

func (n *negotiator) metaContext(opt uint32, data []byte) error {
	if opt == nbdproto.OptSetMeta {
		// A SET replaces the earlier selection even when it fails: the
		// client then believes it has none.
		n.meta, n.metaExport, n.metaX = nil, "", nil
	}
	if !n.structured {
		return n.replyErr(opt, nbdproto.RepErrInvalid, "negotiate structured replies before meta contexts")
	}
	mr, err := parseMetaRequest(data)
	if err != nil {
		return n.replyErr(opt, nbdproto.RepErrInvalid, err.Error())
	}
	x := n.s.export(mr.name)
	if x == nil {
		return n.replyErr(opt, nbdproto.RepErrUnknown, fmt.Sprintf("export %q not present", mr.name))
	}
	list := opt == nbdproto.OptListMeta
	var found []string
	add := func(c string) {
		if c == ctxDepth && !x.opts.AllocationDepth {
			return
		}
		for _, f := range found {
			if f == c {
				return
			}
		}
		found = append(found, c)
	}
	if list && len(mr.queries) == 0 {
		add(nbdproto.CtxAllocation)
		add(ctxDepth)
		for _, b := range x.bitmaps {
			add(ctxBitmapPrefix + b.Name())
		}
	}
	for _, q := range mr.queries {
		for _, c := range x.matchContexts(q, list) {
			add(c)
		}
	}
	for _, c := range found {
		b := binary.BigEndian.AppendUint32(nil, x.contextID(c))
		b = append(b, c...)
		if err := n.reply(opt, nbdproto.RepMetaContext, b); err != nil {
			return err
		}
	}
	if !list {
		n.meta, n.metaExport, n.metaX = found, mr.name, x
	}
	return n.reply(opt, nbdproto.RepAck, nil)
}

// rawFD takes the descriptor out of nc: a duplicate, non-blocking, owned by
// the caller; nc is closed.
func rawFD(nc net.Conn) (int, error) {
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
	nc.Close()
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// BitmapError is why an export cannot offer a bitmap it was asked for, in
// QEMU's words (a QMP daemon reports it as such, without the export's
// name in front).
type BitmapError struct{ Msg string }

func (e *BitmapError) Error() string { return e.Msg }
