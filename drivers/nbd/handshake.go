package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

// maxOptReply bounds one option reply's data during the handshake. The
// wire constants are in internal/nbdproto, shared with the server.
const maxOptReply = 1 << 20

// export is what the handshake learned.
type export struct {
	size       int64
	flags      uint16
	structured bool
	metaID     uint32 // base:allocation's id (QEMU gives it 0)
	hasMeta    bool   // the server granted base:allocation
	minBlock   uint32
	prefBlock  uint32
	maxBlock   uint32
}

// HandshakeTimeout bounds connecting and negotiating.
const HandshakeTimeout = 30 * time.Second

// handshake negotiates export u.Export on nc (fixed newstyle, STARTTLS
// for nbds URIs, then GO). It returns the connection to go on with: nc, or
// the TLS connection over it.
func handshake(nc net.Conn, u URI, ctx string) (export, net.Conn, error) {
	ex, err := handshake1(&nc, u, ctx)
	return ex, nc, err
}

// greet reads the server's greeting, sends the client flags and, for nbds
// URIs, starts TLS (*ncp becomes the TLS connection): the options phase
// can begin.
func greet(ncp *net.Conn, u URI) (*opts, error) {
	nc := *ncp
	var g [18]byte
	if _, err := io.ReadFull(nc, g[:]); err != nil {
		return nil, fmt.Errorf("reading the server greeting: %w", err)
	}
	if binary.BigEndian.Uint64(g[:]) != nbdproto.MagicNBD {
		return nil, errors.New("not an NBD server (bad greeting magic)")
	}
	if binary.BigEndian.Uint64(g[8:]) != nbdproto.MagicOpt {
		return nil, errors.New("the server speaks the oldstyle handshake, which is not supported")
	}
	hf := binary.BigEndian.Uint16(g[16:])
	if hf&nbdproto.FlagFixedNewstyle == 0 {
		return nil, errors.New("the server does not speak fixed newstyle negotiation")
	}
	cf := nbdproto.CFlagFixed
	if hf&nbdproto.FlagNoZeroes != 0 {
		cf |= nbdproto.CFlagNoZeroes
	}
	if _, err := nc.Write(binary.BigEndian.AppendUint32(nil, cf)); err != nil {
		return nil, err
	}
	if u.TLS {
		tc, err := startTLS(nc, u)
		if err != nil {
			return nil, err
		}
		nc, *ncp = tc, tc
	}
	return &opts{nc: nc}, nil
}

// structured asks for structured replies (sparse reads, block status);
// false: the server refused, and the connection gets simple replies.
func (o *opts) structured() (bool, error) {
	if err := o.send(nbdproto.OptStructured, nil); err != nil {
		return false, err
	}
	for {
		typ, _, err := o.reply(nbdproto.OptStructured)
		if err != nil {
			return false, err
		}
		if typ == nbdproto.RepAck {
			return true, nil
		}
		if typ&nbdproto.RepErrBit != 0 {
			return false, nil
		}
	}
}

// handshake1 negotiates export u.Export. ctx is the metadata context
// whose extents block status reports ("": base:allocation). Another one
// is QEMU's x-dirty-bitmap: its flags are read as base:allocation's (bit
// 0 "hole", bit 1 "zero"), which is how qemu-img map shows a dirty
// bitmap or qemu:allocation-depth of an export.
func handshake1(ncp *net.Conn, u URI, ctx string) (export, error) {
	var ex export
	o, err := greet(ncp, u)
	if err != nil {
		return ex, err
	}
	if ctx == "" {
		ctx = nbdproto.CtxAllocation
	}
	if ex.structured, err = o.structured(); err != nil {
		return ex, err
	}
	if ex.structured {
		d := nameData(u.Export)
		d = binary.BigEndian.AppendUint32(d, 1)
		d = binary.BigEndian.AppendUint32(d, uint32(len(ctx)))
		d = append(d, ctx...)
		if err := o.send(nbdproto.OptSetMeta, d); err != nil {
			return ex, err
		}
		for {
			typ, data, err := o.reply(nbdproto.OptSetMeta)
			if err != nil {
				return ex, err
			}
			if typ == nbdproto.RepMetaContext && len(data) >= 4 && string(data[4:]) == ctx {
				ex.metaID, ex.hasMeta = binary.BigEndian.Uint32(data), true
			}
			if typ == nbdproto.RepAck || typ&nbdproto.RepErrBit != 0 {
				break
			}
		}
	}
	if ctx != nbdproto.CtxAllocation && !ex.hasMeta {
		_ = o.send(nbdproto.OptAbort, nil)
		// QEMU's client: the server does not offer the context.
		return ex, fmt.Errorf("requested x-dirty-bitmap %s not found", ctx)
	}
	d := nameData(u.Export)
	d = binary.BigEndian.AppendUint16(d, 1)
	d = binary.BigEndian.AppendUint16(d, nbdproto.InfoBlockSize)
	if err := o.send(nbdproto.OptGo, d); err != nil {
		return ex, err
	}
	gotExport := false
	for {
		typ, data, err := o.reply(nbdproto.OptGo)
		if err != nil {
			return ex, err
		}
		if typ&nbdproto.RepErrBit != 0 {
			// Say goodbye before hanging up, so the server does not
			// log a broken negotiation (best effort).
			_ = o.send(nbdproto.OptAbort, nil)
		}
		if typ == nbdproto.RepErrUnknown {
			// QEMU's client words it so (its server's message says the
			// same in other words).
			return ex, errors.New("Requested export not available")
		}
		if typ&nbdproto.RepErrBit != 0 {
			msg := string(data)
			if msg == "" {
				msg = fmt.Sprintf("error %#x", typ)
			}
			return ex, fmt.Errorf("the server refused export %q: %s", u.Export, msg)
		}
		if typ == nbdproto.RepAck {
			break
		}
		if typ != nbdproto.RepInfo || len(data) < 2 {
			continue
		}
		switch binary.BigEndian.Uint16(data) {
		case nbdproto.InfoExport:
			ex.size, ex.flags, err = infoExport(data)
			gotExport = true
		case nbdproto.InfoBlockSize:
			ex.minBlock, ex.prefBlock, ex.maxBlock, err = infoBlockSize(data)
		}
		if err != nil {
			return ex, err
		}
	}
	if !gotExport {
		return ex, errors.New("the server ended NBD_OPT_GO without NBD_INFO_EXPORT")
	}
	if ex.size < 0 {
		return ex, fmt.Errorf("export size %d out of range", uint64(ex.size))
	}
	if m := ex.minBlock; m != 0 && (m&(m-1) != 0 || m > 64<<10) {
		return ex, fmt.Errorf("unusable minimum block size %d", m)
	}
	return ex, nil
}

func nameData(name string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	return append(b, name...)
}

type opts struct{ nc net.Conn }

func (o *opts) send(opt uint32, data []byte) error {
	b := binary.BigEndian.AppendUint64(nil, nbdproto.MagicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	_, err := o.nc.Write(append(b, data...))
	return err
}

// reply reads one option reply to opt.
func (o *opts) reply(opt uint32) (uint32, []byte, error) {
	var h [20]byte
	if _, err := io.ReadFull(o.nc, h[:]); err != nil {
		return 0, nil, fmt.Errorf("reading an option reply: %w", err)
	}
	if binary.BigEndian.Uint64(h[:]) != nbdproto.MagicRepOpt {
		return 0, nil, errors.New("option reply with a bad magic number")
	}
	if got := binary.BigEndian.Uint32(h[8:]); got != opt {
		return 0, nil, fmt.Errorf("reply to option %d while waiting for option %d", got, opt)
	}
	typ, n := binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
	if n > maxOptReply {
		return 0, nil, fmt.Errorf("option reply of %d bytes", n)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(o.nc, data); err != nil {
		return 0, nil, fmt.Errorf("reading an option reply: %w", err)
	}
	return typ, data, nil
}

// infoExport reads an NBD_INFO_EXPORT reply: size and transmission flags.
func infoExport(data []byte) (int64, uint16, error) {
	if len(data) != 12 {
		return 0, 0, fmt.Errorf("malformed NBD_INFO_EXPORT of %d bytes", len(data))
	}
	return int64(binary.BigEndian.Uint64(data[2:])), binary.BigEndian.Uint16(data[10:]), nil
}

// infoBlockSize reads an NBD_INFO_BLOCK_SIZE reply: minimum, preferred
// and maximum block sizes.
func infoBlockSize(data []byte) (minB, pref, maxB uint32, err error) {
	if len(data) != 14 {
		return 0, 0, 0, fmt.Errorf("malformed NBD_INFO_BLOCK_SIZE of %d bytes", len(data))
	}
	return binary.BigEndian.Uint32(data[2:]), binary.BigEndian.Uint32(data[6:]), binary.BigEndian.Uint32(data[10:]), nil
}
