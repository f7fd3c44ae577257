package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

// The wire constants are in internal/nbdproto, shared with the client
// driver.

// Metadata contexts this server offers, with the ids it gives them.
const (
	ctxDepth     = "qemu:allocation-depth"
	idAllocation = 1
	idDepth      = 2
	// ctxBitmapPrefix + NAME is an exported dirty bitmap (flag 1: dirty);
	// bitmap i of the export has id idBitmap0+i.
	ctxBitmapPrefix = "qemu:dirty-bitmap:"
	idBitmap0       = 3
	stateDirty      = 1
)

// Sizes and limits.
const (
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
	_ = b[nbdproto.ReqHeaderLen-1]
	if binary.BigEndian.Uint32(b) != nbdproto.MagicReq {
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
	if r.cmd == nbdproto.CmdWrite && r.length > MaxPayload {
		return nbdproto.ErrOverflow, true
	}
	if r.flags&^nbdproto.CmdFlagsKnown != 0 {
		return nbdproto.ErrInval, false
	}
	switch r.cmd {
	case nbdproto.CmdRead, nbdproto.CmdCache:
		if r.flags&(nbdproto.CmdFlagNoHole|nbdproto.CmdFlagReqOne|nbdproto.CmdFlagFastZero) != 0 {
			return nbdproto.ErrInval, false
		}
		if r.flags&nbdproto.CmdFlagDF != 0 && (r.cmd != nbdproto.CmdRead || !v.structured) {
			return nbdproto.ErrInval, false
		}
		if r.cmd == nbdproto.CmdRead && r.length > MaxPayload {
			return nbdproto.ErrOverflow, false
		}
	case nbdproto.CmdWrite, nbdproto.CmdTrim, nbdproto.CmdWriteZeroes:
		if r.flags&(nbdproto.CmdFlagDF|nbdproto.CmdFlagReqOne) != 0 {
			return nbdproto.ErrInval, false
		}
		if r.cmd != nbdproto.CmdWriteZeroes && r.flags&(nbdproto.CmdFlagNoHole|nbdproto.CmdFlagFastZero) != 0 {
			return nbdproto.ErrInval, false
		}
		if v.readOnly {
			return nbdproto.ErrPerm, false
		}
	case nbdproto.CmdFlush:
		if r.flags&^nbdproto.CmdFlagFUA != 0 || r.off != 0 || r.length != 0 {
			return nbdproto.ErrInval, false
		}
		return 0, false
	case nbdproto.CmdBlockStatus:
		if r.flags&^(nbdproto.CmdFlagReqOne|nbdproto.CmdFlagFUA) != 0 || !v.structured || v.metaCount == 0 || r.length == 0 {
			return nbdproto.ErrInval, false
		}
	case nbdproto.CmdDisc:
		return 0, false
	default:
		return nbdproto.ErrInval, false
	}
	if r.off > uint64(v.size) || uint64(r.length) > uint64(v.size)-r.off {
		// The protocol: ENOSPC for writes past the end, EINVAL for reads
		// and trims (a trim is a hint, not a write), as qemu-nbd answers.
		if r.cmd == nbdproto.CmdWrite || r.cmd == nbdproto.CmdWriteZeroes {
			return nbdproto.ErrNoSpc, false
		}
		return nbdproto.ErrInval, false
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
	case nbdproto.CtxAllocation, ctxDepth:
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
		out = append(out, nbdproto.CtxAllocation)
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
	case nbdproto.CtxAllocation:
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
