// Package nbdproto holds the wire constants of the NBD protocol
// (NetworkBlockDevice/nbd doc/proto.md): the fixed newstyle handshake and
// the transmission phase. The server (package nbd) and the client driver
// (drivers/nbd) both speak it; drivers may not import the server, so the
// numbers live here, once.
package nbdproto

// Magics.
const (
	MagicNBD    uint64 = 0x4e42444d41474943 // "NBDMAGIC"
	MagicOpt    uint64 = 0x49484156454f5054 // "IHAVEOPT"
	MagicRepOpt uint64 = 0x0003e889045565a9 // option reply
	MagicReq    uint32 = 0x25609513
	MagicSimple uint32 = 0x67446698
	MagicChunk  uint32 = 0x668e33ef
)

// Handshake flags (server) and client flags.
const (
	FlagFixedNewstyle uint16 = 1 << 0
	FlagNoZeroes      uint16 = 1 << 1
	CFlagFixed        uint32 = 1 << 0
	CFlagNoZeroes     uint32 = 1 << 1
)

// Transmission flags.
const (
	TFlagHasFlags   uint16 = 1 << 0
	TFlagReadOnly   uint16 = 1 << 1
	TFlagFlush      uint16 = 1 << 2
	TFlagFUA        uint16 = 1 << 3
	TFlagTrim       uint16 = 1 << 5
	TFlagZeroes     uint16 = 1 << 6
	TFlagDF         uint16 = 1 << 7
	TFlagMultiConn  uint16 = 1 << 8
	TFlagCache      uint16 = 1 << 10
	TFlagFastZero   uint16 = 1 << 11
	TFlagStatusPayl uint16 = 1 << 12
)

// Options.
const (
	OptExportName   uint32 = 1
	OptAbort        uint32 = 2
	OptList         uint32 = 3
	OptStartTLS     uint32 = 5
	OptInfo         uint32 = 6
	OptGo           uint32 = 7
	OptStructured   uint32 = 8
	OptListMeta     uint32 = 9
	OptSetMeta      uint32 = 10
	OptExtendedHdrs uint32 = 11
)

// Option replies; the error replies have RepErrBit set.
const (
	RepAck         uint32 = 1
	RepServer      uint32 = 2
	RepInfo        uint32 = 3
	RepMetaContext uint32 = 4
	RepErrBit      uint32 = 1 << 31
	RepErrUnsup    uint32 = RepErrBit + 1
	RepErrPolicy   uint32 = RepErrBit + 2
	RepErrInvalid  uint32 = RepErrBit + 3
	RepErrTLSReqd  uint32 = RepErrBit + 5
	RepErrUnknown  uint32 = RepErrBit + 6
	RepErrTooBig   uint32 = RepErrBit + 9
)

// NBD_INFO types.
const (
	InfoExport    uint16 = 0
	InfoName      uint16 = 1
	InfoDesc      uint16 = 2
	InfoBlockSize uint16 = 3
)

// Commands.
const (
	CmdRead        uint16 = 0
	CmdWrite       uint16 = 1
	CmdDisc        uint16 = 2
	CmdFlush       uint16 = 3
	CmdTrim        uint16 = 4
	CmdCache       uint16 = 5
	CmdWriteZeroes uint16 = 6
	CmdBlockStatus uint16 = 7
)

// Command flags.
const (
	CmdFlagFUA      uint16 = 1 << 0
	CmdFlagNoHole   uint16 = 1 << 1
	CmdFlagDF       uint16 = 1 << 2
	CmdFlagReqOne   uint16 = 1 << 3
	CmdFlagFastZero uint16 = 1 << 4
	CmdFlagsKnown          = CmdFlagFUA | CmdFlagNoHole | CmdFlagDF | CmdFlagReqOne | CmdFlagFastZero
)

// Structured reply chunk flags and types; error types have ChunkErrBit set.
const (
	ChunkDone        uint16 = 1 << 0
	ChunkNone        uint16 = 0
	ChunkOffsetData  uint16 = 1
	ChunkOffsetHole  uint16 = 2
	ChunkBlockStatus uint16 = 5
	ChunkErrBit      uint16 = 1 << 15
	ChunkError       uint16 = ChunkErrBit + 1
)

// The base:allocation metadata context and its flags.
const (
	CtxAllocation        = "base:allocation"
	StateHole     uint32 = 1 << 0
	StateZero     uint32 = 1 << 1
)

// Errors of the transmission phase.
const (
	ErrPerm     uint32 = 1
	ErrIO       uint32 = 5
	ErrNoMem    uint32 = 12
	ErrInval    uint32 = 22
	ErrNoSpc    uint32 = 28
	ErrOverflow uint32 = 75
	ErrNotSup   uint32 = 95
	ErrShutdown uint32 = 108
)

// ReqHeaderLen is the size of a request header (simple, not extended).
const ReqHeaderLen = 28
