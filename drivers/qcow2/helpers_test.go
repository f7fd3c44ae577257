package qcow2

import (
	"encoding/binary"

	"github.com/ringblk/ringblk/drivers/qcow2/format/formattest"
)

// The fixtures shared with the format tests live in formattest; these
// names keep the driver tests' spelling.

var (
	testImages     = formattest.Images
	hostileImages  = formattest.HostileImages
	fuzzOpts       = formattest.FuzzOpts
	at64           = formattest.At64
	fieldIs        = formattest.FieldIs
	decodeSparse   = formattest.DecodeSparse
	encodeSparse   = formattest.EncodeSparse
	metadataRanges = formattest.MetadataRanges
	parseQemuMap   = formattest.ParseQemuMap
	appendRun      = formattest.AppendRun
	normalizeQemu  = formattest.NormalizeQemu
	normalizeOurs  = formattest.NormalizeOurs
	runsString     = formattest.RunsString
	compareMaps    = formattest.CompareMaps
	loadImage      = formattest.Load
	openBytes      = formattest.Open
	needQemu       = formattest.NeedQemu
	qemuImg        = formattest.QemuImg
	openFile       = formattest.OpenFile
)

type (
	qemuMapEntry = formattest.QemuMapEntry
	run          = formattest.Run
)

func put32(b []byte, off int, v uint32) { binary.BigEndian.PutUint32(b[off:], v) }
func put64(b []byte, off int, v uint64) { binary.BigEndian.PutUint64(b[off:], v) }
