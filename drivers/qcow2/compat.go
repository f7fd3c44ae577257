package qcow2

import "github.com/ringblk/ringblk/drivers/qcow2/format"

// Transition aliases: the names cmd/ringblk still spells qcow2.X after the
// format layer moved to package format. They go once the commands (moving
// to internal/imgcmd) import format directly.

type (
	CreateOptions = format.CreateOptions
	FormatError   = format.FormatError
	Header        = format.Header
	Image         = format.Image
	Options       = format.Options
	Snapshot      = format.Snapshot
)

const (
	AutoclearBitmaps    = format.AutoclearBitmaps
	CompatLazyRefcounts = format.CompatLazyRefcounts
	CompressionZstd     = format.CompressionZstd
	ExtentCompressed    = format.ExtentCompressed
	ExtentData          = format.ExtentData
	ExtentZero          = format.ExtentZero
	IncompatCorrupt     = format.IncompatCorrupt
	IncompatDirty       = format.IncompatDirty
	Magic               = format.Magic
	MaxL1Bytes          = format.MaxL1Bytes
	PreallocOff         = format.PreallocOff
)

var (
	ErrNotQcow2         = format.ErrNotQcow2
	AppendSnapshotTable = format.AppendSnapshotTable
	Layout              = format.Layout
	ParsePrealloc       = format.ParsePrealloc
	ReadImage           = format.ReadImage
)
