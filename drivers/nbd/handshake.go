package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Wire constants (NetworkBlockDevice/nbd doc/proto.md). The server
// package has its own copy: drivers may not import it.
const (
	magicNBD    uint64 = 0x4e42444d41474943
	magicOpt    uint64 = 0x49484156454f5054
	magicRepOpt uint64 = 0x0003e889045565a9
	magicReq    uint32 = 0x25609513
	magicSimple uint32 = 0x67446698
	magicChunk  uint32 = 0x668e33ef

	hflagFixed    uint16 = 1 << 0
	hflagNoZeroes uint16 = 1 << 1
	cflagFixed    uint32 = 1 << 0
	cflagNoZeroes uint32 = 1 << 1

	tflagReadOnly  uint16 = 1 << 1
	tflagFlush     uint16 = 1 << 2
	tflagFUA       uint16 = 1 << 3
	tflagTrim      uint16 = 1 << 5
	tflagZeroes    uint16 = 1 << 6
	tflagMultiConn uint16 = 1 << 8
	tflagFastZero  uint16 = 1 << 11

	optStartTLS   uint32 = 5
	optGo         uint32 = 7
	optStructured uint32 = 8
	optSetMeta    uint32 = 10
	optAbort      uint32 = 2

	repAck         uint32 = 1
	repInfo        uint32 = 3
	repMetaContext uint32 = 4
	repErrBit      uint32 = 1 << 31

	infoExport    uint16 = 0
	infoBlockSize uint16 = 3

	cmdRead        uint16 = 0
	cmdWrite       uint16 = 1
	cmdDisc        uint16 = 2
	cmdFlush       uint16 = 3
	cmdTrim        uint16 = 4
	cmdWriteZeroes uint16 = 6
	cmdBlockStatus uint16 = 7

	cmdFlagFUA      uint16 = 1 << 0
	cmdFlagNoHole   uint16 = 1 << 1
	cmdFlagReqOne   uint16 = 1 << 3
	cmdFlagFastZero uint16 = 1 << 4

	chunkDone        uint16 = 1 << 0
	chunkNone        uint16 = 0
	chunkOffsetData  uint16 = 1
	chunkOffsetHole  uint16 = 2
	chunkBlockStatus uint16 = 5
	chunkErrBit      uint16 = 1 << 15

	stateHole uint32 = 1 << 0
	stateZero uint32 = 1 << 1

	ctxAllocation = "base:allocation"

	// maxOptReply bounds one option reply's data during the handshake.
	maxOptReply = 1 << 20
)

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
func handshake(nc net.Conn, u URI) (export, net.Conn, error) {
	ex, err := handshake1(&nc, u)
	return ex, nc, err
}

func handshake1(ncp *net.Conn, u URI) (export, error) {
	nc := *ncp
	var ex export
	var g [18]byte
	if _, err := io.ReadFull(nc, g[:]); err != nil {
		return ex, fmt.Errorf("reading the server greeting: %w", err)
	}
	if binary.BigEndian.Uint64(g[:]) != magicNBD {
		return ex, errors.New("not an NBD server (bad greeting magic)")
	}
	if binary.BigEndian.Uint64(g[8:]) != magicOpt {
		return ex, errors.New("the server speaks the oldstyle handshake, which is not supported")
	}
	hf := binary.BigEndian.Uint16(g[16:])
	if hf&hflagFixed == 0 {
		return ex, errors.New("the server does not speak fixed newstyle negotiation")
	}
	cf := cflagFixed
	if hf&hflagNoZeroes != 0 {
		cf |= cflagNoZeroes
	}
	if _, err := nc.Write(binary.BigEndian.AppendUint32(nil, cf)); err != nil {
		return ex, err
	}
	if u.TLS {
		tc, err := startTLS(nc, u)
		if err != nil {
			return ex, err
		}
		nc, *ncp = tc, tc
	}
	o := &opts{nc: nc}

	// Structured replies (sparse reads, block status); servers that refuse
	// get simple replies and no block status.
	if err := o.send(optStructured, nil); err != nil {
		return ex, err
	}
	for {
		typ, _, err := o.reply(optStructured)
		if err != nil {
			return ex, err
		}
		if typ == repAck {
			ex.structured = true
		}
		if typ == repAck || typ&repErrBit != 0 {
			break
		}
	}
	if ex.structured {
		d := nameData(u.Export)
		d = binary.BigEndian.AppendUint32(d, 1)
		d = binary.BigEndian.AppendUint32(d, uint32(len(ctxAllocation)))
		d = append(d, ctxAllocation...)
		if err := o.send(optSetMeta, d); err != nil {
			return ex, err
		}
		for {
			typ, data, err := o.reply(optSetMeta)
			if err != nil {
				return ex, err
			}
			if typ == repMetaContext && len(data) >= 4 && string(data[4:]) == ctxAllocation {
				ex.metaID, ex.hasMeta = binary.BigEndian.Uint32(data), true
			}
			if typ == repAck || typ&repErrBit != 0 {
				break
			}
		}
	}
	d := nameData(u.Export)
	d = binary.BigEndian.AppendUint16(d, 1)
	d = binary.BigEndian.AppendUint16(d, infoBlockSize)
	if err := o.send(optGo, d); err != nil {
		return ex, err
	}
	gotExport := false
	for {
		typ, data, err := o.reply(optGo)
		if err != nil {
			return ex, err
		}
		if typ&repErrBit != 0 {
			msg := string(data)
			if msg == "" {
				msg = fmt.Sprintf("error %#x", typ)
			}
			return ex, fmt.Errorf("the server refused export %q: %s", u.Export, msg)
		}
		if typ == repAck {
			break
		}
		if typ != repInfo || len(data) < 2 {
			continue
		}
		switch binary.BigEndian.Uint16(data) {
		case infoExport:
			if len(data) != 12 {
				return ex, fmt.Errorf("malformed NBD_INFO_EXPORT of %d bytes", len(data))
			}
			ex.size = int64(binary.BigEndian.Uint64(data[2:]))
			ex.flags = binary.BigEndian.Uint16(data[10:])
			gotExport = true
		case infoBlockSize:
			if len(data) != 14 {
				return ex, fmt.Errorf("malformed NBD_INFO_BLOCK_SIZE of %d bytes", len(data))
			}
			ex.minBlock = binary.BigEndian.Uint32(data[2:])
			ex.prefBlock = binary.BigEndian.Uint32(data[6:])
			ex.maxBlock = binary.BigEndian.Uint32(data[10:])
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
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
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
	if binary.BigEndian.Uint64(h[:]) != magicRepOpt {
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
