package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

// ExportInfo is what a server tells of one of its exports (List).
type ExportInfo struct {
	Name        string
	Description string
	// Size and Flags (transmission flags) are known when HasInfo.
	HasInfo                       bool
	Size                          int64
	Flags                         uint16
	MinBlock, PrefBlock, MaxBlock uint32 // 0: the server sent none
	Contexts                      []string
}

// maxListed bounds the exports and contexts List takes from a server.
const maxListed = 4096

// List asks the server u names (its export name is not used) for its
// exports (NBD_OPT_LIST) and, for each, its size, flags and block sizes
// (NBD_OPT_INFO) and its metadata contexts (NBD_OPT_LIST_META_CONTEXT),
// then ends the negotiation (NBD_OPT_ABORT): what qemu-nbd --list shows.
// A server may refuse the listing; the error says so.
func List(u URI) ([]ExportInfo, error) {
	nc, err := dial(u, 0)
	if err != nil {
		return nil, err
	}
	defer func() { nc.Close() }()
	nc.SetDeadline(time.Now().Add(HandshakeTimeout))
	o, err := greet(&nc, u)
	if err != nil {
		return nil, err
	}
	structured, err := o.structured()
	if err != nil {
		return nil, err
	}
	if err := o.send(nbdproto.OptList, nil); err != nil {
		return nil, err
	}
	var out []ExportInfo
	for {
		typ, data, err := o.reply(nbdproto.OptList)
		if err != nil {
			return nil, err
		}
		if typ == nbdproto.RepAck {
			break
		}
		if typ&nbdproto.RepErrBit != 0 {
			return nil, optError("NBD_OPT_LIST", typ, data)
		}
		if typ != nbdproto.RepServer {
			return nil, fmt.Errorf("unexpected reply %#x to NBD_OPT_LIST", typ)
		}
		if len(data) < 4 || uint64(binary.BigEndian.Uint32(data)) > uint64(len(data)-4) {
			return nil, errors.New("malformed NBD_REP_SERVER")
		}
		n := binary.BigEndian.Uint32(data)
		if len(out) == maxListed {
			return nil, fmt.Errorf("the server lists more than %d exports", maxListed)
		}
		out = append(out, ExportInfo{Name: string(data[4 : 4+n]), Description: string(data[4+n:])})
	}
	for i := range out {
		if err := o.info(&out[i]); err != nil {
			return nil, err
		}
		if structured {
			if err := o.listContexts(&out[i]); err != nil {
				return nil, err
			}
		}
	}
	_ = o.send(nbdproto.OptAbort, nil)
	return out, nil
}

// info fills e's size, flags, description and block sizes (NBD_OPT_INFO).
// An export the server will not describe keeps what the list said.
func (o *opts) info(e *ExportInfo) error {
	d := nameData(e.Name)
	d = binary.BigEndian.AppendUint16(d, 2)
	d = binary.BigEndian.AppendUint16(d, nbdproto.InfoDesc)
	d = binary.BigEndian.AppendUint16(d, nbdproto.InfoBlockSize)
	if err := o.send(nbdproto.OptInfo, d); err != nil {
		return err
	}
	for {
		typ, data, err := o.reply(nbdproto.OptInfo)
		if err != nil {
			return err
		}
		if typ == nbdproto.RepAck || typ&nbdproto.RepErrBit != 0 {
			return nil
		}
		if typ != nbdproto.RepInfo || len(data) < 2 {
			continue
		}
		switch binary.BigEndian.Uint16(data) {
		case nbdproto.InfoExport:
			e.HasInfo = true
			e.Size, e.Flags, err = infoExport(data)
		case nbdproto.InfoDesc:
			e.Description = string(data[2:])
		case nbdproto.InfoBlockSize:
			e.MinBlock, e.PrefBlock, e.MaxBlock, err = infoBlockSize(data)
		}
		if err != nil {
			return err
		}
	}
}

// listContexts fills e's metadata contexts: all the server has for it
// (NBD_OPT_LIST_META_CONTEXT without queries).
func (o *opts) listContexts(e *ExportInfo) error {
	d := nameData(e.Name)
	d = binary.BigEndian.AppendUint32(d, 0)
	if err := o.send(nbdproto.OptListMeta, d); err != nil {
		return err
	}
	for {
		typ, data, err := o.reply(nbdproto.OptListMeta)
		if err != nil {
			return err
		}
		if typ == nbdproto.RepAck || typ&nbdproto.RepErrBit != 0 {
			return nil
		}
		if typ == nbdproto.RepMetaContext && len(data) >= 4 {
			if len(e.Contexts) == maxListed {
				return fmt.Errorf("the server lists more than %d metadata contexts", maxListed)
			}
			e.Contexts = append(e.Contexts, string(data[4:]))
		}
	}
}

// optError words an error reply to an option.
func optError(name string, typ uint32, data []byte) error {
	msg := string(data)
	if msg == "" {
		switch typ {
		case nbdproto.RepErrUnsup:
			msg = "not supported"
		case nbdproto.RepErrPolicy:
			msg = "refused by the server's policy"
		case nbdproto.RepErrTLSReqd:
			msg = "TLS is required"
		default:
			msg = fmt.Sprintf("error %#x", typ)
		}
	}
	return fmt.Errorf("the server refused %s: %s", name, msg)
}
