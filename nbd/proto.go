package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// Wire constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md),
// the fixed newstyle handshake and the transmission phase.
const (
	magicNBD    uint64 = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt    uint64 = 0x49484156454f5054 // "IHAVEOPT"
	magicRepOpt uint64 = 0x0003e889045565a9 // option reply
	magicReq    uint32 = 0x25609513
	magicSimple uint32 = 0x67446698
	magicChunk  uint32 = 0x668e33ef

	// Handshake flags (server) and client flags.
	flagFixedNewstyle uint16 = 1 << 0
	flagNoZeroes      uint16 = 1 << 1
	cflagFixed        uint32 = 1 << 0
	cflagNoZeroes     uint32 = 1 << 1

	// Transmission flags.
	tflagHasFlags   uint16 = 1 << 0
	tflagReadOnly   uint16 = 1 << 1
	tflagFlush      uint16 = 1 << 2
	tflagFUA        uint16 = 1 << 3
	tflagTrim       uint16 = 1 << 5
	tflagZeroes     uint16 = 1 << 6
	tflagDF         uint16 = 1 << 7
	tflagMultiConn  uint16 = 1 << 8
	tflagCache      uint16 = 1 << 10
	tflagFastZero   uint16 = 1 << 11
	tflagStatusPayl uint16 = 1 << 12

	// Options.
	optExportName   uint32 = 1
	optAbort        uint32 = 2
	optList         uint32 = 3
	optStartTLS     uint32 = 5
	optInfo         uint32 = 6
	optGo           uint32 = 7
	optStructured   uint32 = 8
	optListMeta     uint32 = 9
	optSetMeta      uint32 = 10
	optExtendedHdrs uint32 = 11

	// Option replies.
	repAck         uint32 = 1
	repServer      uint32 = 2
	repInfo        uint32 = 3
	repMetaContext uint32 = 4
	repErrUnsup    uint32 = 1<<31 + 1
	repErrPolicy   uint32 = 1<<31 + 2
	repErrInvalid  uint32 = 1<<31 + 3
	repErrTLSReqd  uint32 = 1<<31 + 5
	repErrUnknown  uint32 = 1<<31 + 6
	repErrTooBig   uint32 = 1<<31 + 9

	// NBD_INFO types.
	infoExport    uint16 = 0
	infoName      uint16 = 1
	infoDesc      uint16 = 2
	infoBlockSize uint16 = 3

	// Commands.
	cmdRead        uint16 = 0
	cmdWrite       uint16 = 1
	cmdDisc        uint16 = 2
	cmdFlush       uint16 = 3
	cmdTrim        uint16 = 4
	cmdCache       uint16 = 5
	cmdWriteZeroes uint16 = 6
	cmdBlockStatus uint16 = 7

	// Command flags.
	cmdFlagFUA      uint16 = 1 << 0
	cmdFlagNoHole   uint16 = 1 << 1
	cmdFlagDF       uint16 = 1 << 2
	cmdFlagReqOne   uint16 = 1 << 3
	cmdFlagFastZero uint16 = 1 << 4
	cmdFlagsKnown          = cmdFlagFUA | cmdFlagNoHole | cmdFlagDF | cmdFlagReqOne | cmdFlagFastZero

	// Structured reply chunk flags and types.
	chunkDone        uint16 = 1 << 0
	chunkNone        uint16 = 0
	chunkOffsetData  uint16 = 1
	chunkOffsetHole  uint16 = 2
	chunkBlockStatus uint16 = 5
	chunkError       uint16 = 1<<15 + 1

	// base:allocation flags.
	stateHole uint32 = 1 << 0
	stateZero uint32 = 1 << 1

	// Errors (transmission phase).
	errPerm     uint32 = 1
	errIO       uint32 = 5
	errNoMem    uint32 = 12
	errInval    uint32 = 22
	errNoSpc    uint32 = 28
	errOverflow uint32 = 75
	errNotSup   uint32 = 95
	errShutdown uint32 = 108
)

// Metadata contexts this server offers, with the ids it gives them.
const (
	ctxAllocation = "base:allocation"
	ctxDepth      = "qemu:allocation-depth"
	idAllocation  = 1
	idDepth       = 2
	// ctxBitmapPrefix + NAME is an exported dirty bitmap (flag 1: dirty);
	// bitmap i of the export has id idBitmap0+i.
	ctxBitmapPrefix = "qemu:dirty-bitmap:"
	idBitmap0       = 3
	stateDirty      = 1
)

// Sizes and limits.
const (
	reqHeaderLen = 28
	// MaxPayload is the largest READ or WRITE the server takes (the maximum
	// block size it advertises): 32 MiB, the size QEMU and libnbd assume.
	MaxPayload = 32 << 20
	// maxOptionLen bounds one handshake option's data; a longer one is
	// refused with ERR_TOO_BIG (and its data skipped) up to
	// maxOptionSkip, beyond which the connection is closed.
	maxOptionLen  = 64 << 10
	maxOptionSkip = 16 << 20
	maxStringLen  = 4096 // the protocol's limit on names and queries
)

// request is one transmission-phase request header.
type request struct {
	flags  uint16
	cmd    uint16
	cookie uint64
	off    uint64
	length uint32
}

var errBadMagic = errors.New("nbd: request with a bad magic number")

// parseRequest decodes a 28-byte request header. It fails only on a bad
// magic number, after which the stream cannot be trusted (the connection
// is closed); everything else is checked per command (checkRequest).
func parseRequest(b []byte) (request, error) {
	_ = b[reqHeaderLen-1]
	if binary.BigEndian.Uint32(b) != magicReq {
		return request{}, errBadMagic
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:]),
		cmd:    binary.BigEndian.Uint16(b[6:]),
		cookie: binary.BigEndian.Uint64(b[8:]),
		off:    binary.BigEndian.Uint64(b[16:]),
		length: binary.BigEndian.Uint32(b[24:]),
	}, nil
}

// exportView is what checkRequest needs to know about the connection.
type exportView struct {
	size       int64
	readOnly   bool
	structured bool
	metaCount  int
}

// checkRequest validates a request against the export and the negotiated
// features, returning the NBD error to answer with (0: valid). Writes whose
// payload is too large to skip are reported by fatal (close the
// connection): the stream position is lost otherwise.
func checkRequest(r request, v exportView) (nbdErr uint32, fatal bool) {
	if r.cmd == cmdWrite && r.length > MaxPayload {
		return errOverflow, true
	}
	if r.flags&^cmdFlagsKnown != 0 {
		return errInval, false
	}
	switch r.cmd {
	case cmdRead, cmdCache:
		if r.flags&(cmdFlagNoHole|cmdFlagReqOne|cmdFlagFastZero) != 0 {
			return errInval, false
		}
		if r.flags&cmdFlagDF != 0 && (r.cmd != cmdRead || !v.structured) {
			return errInval, false
		}
		if r.cmd == cmdRead && r.length > MaxPayload {
			return errOverflow, false
		}
	case cmdWrite, cmdTrim, cmdWriteZeroes:
		if r.flags&(cmdFlagDF|cmdFlagReqOne) != 0 {
			return errInval, false
		}
		if r.cmd != cmdWriteZeroes && r.flags&(cmdFlagNoHole|cmdFlagFastZero) != 0 {
			return errInval, false
		}
		if v.readOnly {
			return errPerm, false
		}
	case cmdFlush:
		if r.flags&^cmdFlagFUA != 0 || r.off != 0 || r.length != 0 {
			return errInval, false
		}
		return 0, false
	case cmdBlockStatus:
		if r.flags&^(cmdFlagReqOne|cmdFlagFUA) != 0 || !v.structured || v.metaCount == 0 || r.length == 0 {
			return errInval, false
		}
	case cmdDisc:
		return 0, false
	default:
		return errInval, false
	}
	if r.off > uint64(v.size) || uint64(r.length) > uint64(v.size)-r.off {
		if r.cmd == cmdWrite || r.cmd == cmdWriteZeroes || r.cmd == cmdTrim {
			return errNoSpc, false
		}
		return errInval, false
	}
	return 0, false
}

// optReader decodes an option's data, remembering the first shortfall.
type optReader struct {
	b   []byte
	bad bool
}

func (o *optReader) u16() uint16 {
	if len(o.b) < 2 {
		o.bad = true
		return 0
	}
	v := binary.BigEndian.Uint16(o.b)
	o.b = o.b[2:]
	return v
}

func (o *optReader) u32() uint32 {
	if len(o.b) < 4 {
		o.bad = true
		return 0
	}
	v := binary.BigEndian.Uint32(o.b)
	o.b = o.b[4:]
	return v
}

// str reads a 32-bit length and that many bytes.
func (o *optReader) str() string {
	n := o.u32()
	if o.bad || uint64(n) > uint64(len(o.b)) || n > maxStringLen {
		o.bad = true
		return ""
	}
	s := string(o.b[:n])
	o.b = o.b[n:]
	return s
}

// infoRequest is the data of NBD_OPT_INFO and NBD_OPT_GO.
type infoRequest struct {
	name  string
	infos []uint16
}

func parseInfoRequest(data []byte) (infoRequest, error) {
	o := optReader{b: data}
	var ir infoRequest
	ir.name = o.str()
	n := o.u16()
	for i := 0; i < int(n) && !o.bad; i++ {
		ir.infos = append(ir.infos, o.u16())
	}
	if o.bad || len(o.b) != 0 {
		return ir, fmt.Errorf("malformed info request (%d bytes)", len(data))
	}
	return ir, nil
}

// metaRequest is the data of NBD_OPT_LIST_META_CONTEXT and _SET_.
type metaRequest struct {
	name    string
	queries []string
}

func parseMetaRequest(data []byte) (metaRequest, error) {
	o := optReader{b: data}
	var mr metaRequest
	mr.name = o.str()
	n := o.u32()
	if !o.bad && uint64(n)*4 > uint64(len(o.b)) {
		o.bad = true
	}
	for i := 0; i < int(n) && !o.bad; i++ {
		mr.queries = append(mr.queries, o.str())
	}
	if o.bad || len(o.b) != 0 {
		return mr, fmt.Errorf("malformed meta context request (%d bytes)", len(data))
	}
	return mr, nil
}

// matchContexts returns the contexts a query selects (list: wildcards
// allowed) among those the export offers.
func (x *Export) matchContexts(q string, list bool) []string {
	switch q {
	case ctxAllocation, ctxDepth:
		return []string{q}
	}
	if strings.HasPrefix(q, ctxBitmapPrefix) && q != ctxBitmapPrefix {
		for _, b := range x.bitmaps {
			if ctxBitmapPrefix+b.Name() == q {
				return []string{q}
			}
		}
		return nil
	}
	if !list {
		return nil
	}
	var out []string
	switch q {
	case "base:":
		out = append(out, ctxAllocation)
	case "qemu:":
		out = append(out, ctxDepth)
		fallthrough
	case ctxBitmapPrefix:
		for _, b := range x.bitmaps {
			out = append(out, ctxBitmapPrefix+b.Name())
		}
	}
	return out
}

// contextID is the id of a context the export offers.
func (x *Export) contextID(name string) uint32 {
	switch name {
	case ctxAllocation:
		return idAllocation
	case ctxDepth:
		return idDepth
	}
	for i, b := range x.bitmaps {
		if ctxBitmapPrefix+b.Name() == name {
			return idBitmap0 + uint32(i)
		}
	}
	return 0
}
