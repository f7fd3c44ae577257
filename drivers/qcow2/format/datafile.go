package format

import (
	"strings"
)

// External data files (incompatible feature bit 2, header extension
// ExtDataFile, autoclear bit 1), docs/spec/qcow2.md §1.9.
//
// With the bit set, the qcow2 file holds only metadata: every guest data
// cluster lives in a second file at the host offset its L2 entry gives,
// and that offset is the guest offset (writers never place it elsewhere).
// The refcounts describe the qcow2 file alone, so data clusters have no
// refcount, compressed clusters are impossible and internal snapshots are
// refused. With AutoclearRawExternal also set the data file is a valid
// raw image of the disk: every cluster is mapped to its own offset and
// zeroes are written through.

// MaxDataFileNameLen bounds the data file name a writer records; QEMU
// keeps the name in a header extension of at most a cluster, ringblk
// keeps it to the backing file's limit.
const MaxDataFileNameLen = MaxBackingNameLen

// HasDataFile reports whether the image keeps its data in an external
// data file.
func (h *Header) HasDataFile() bool { return h.IncompatibleFeatures&IncompatDataFile != 0 }

// DataFileRaw reports whether the external data file is a valid raw image
// (AutoclearRawExternal, meaningful only with a data file).
func (h *Header) DataFileRaw() bool {
	return h.HasDataFile() && h.AutoclearFeatures&AutoclearRawExternal != 0
}

// CheckDataFileName decides whether a data file name recorded in an image
// may be opened: a plain path, nothing QEMU would read as an option tree
// or a protocol. The name comes from an untrusted image, like a backing
// file name (docs/design/chain-open.md): "json:{...}" could name any
// driver and child, "nbd:host:port" or "ssh://..." a network resource.
// Refused: the empty name, a NUL byte, a name longer than
// MaxDataFileNameLen, a "json:" prefix, and any name whose part before the
// first '/' contains ':' (QEMU's protocol syntax). A path with a colon
// after a slash ("./a:b", "/srv/a:b") is a plain path.
func CheckDataFileName(name string) error {
	switch {
	case name == "":
		return Corrupt("data_file_ext", 0, "empty data file name")
	case len(name) > MaxDataFileNameLen:
		return Limit("data_file_ext", uint64(len(name)), "data file name too long")
	case strings.IndexByte(name, 0) >= 0:
		return Corrupt("data_file_ext", uint64(len(name)), "NUL byte in data file name")
	case strings.HasPrefix(name, "json:"):
		return Unsupported("data_file_ext", uint64(len(name)), "a json: data file name recorded in an image is not followed (give the data file with data-file on the command line)")
	}
	first, _, _ := strings.Cut(name, "/")
	if strings.IndexByte(first, ':') >= 0 {
		return Unsupported("data_file_ext", uint64(len(name)), "a protocol data file name ("+first+") recorded in an image is not followed: only plain paths are")
	}
	return nil
}

// validateDataFile checks the data file fields of a header: the name, if
// any, must be one CheckDataFileName allows. A data file image without a
// name is valid (the opener must then be given the data file).
func (h *Header) validateDataFile() error {
	if !h.HasDataFile() || h.DataFile == "" {
		return nil
	}
	return CheckDataFileName(h.DataFile)
}

// SetDataFile records name as the image's external data file (bit 2 and
// the extension) with raw meaning AutoclearRawExternal; name "" keeps the
// bit and drops the name, as qemu-img amend -o data_file= does.
func (h *Header) SetDataFile(name string, raw bool) error {
	if name != "" {
		if err := CheckDataFileName(name); err != nil {
			return err
		}
	}
	h.IncompatibleFeatures |= IncompatDataFile
	h.DataFile = name
	if raw {
		h.AutoclearFeatures |= AutoclearRawExternal
	} else {
		h.AutoclearFeatures &^= AutoclearRawExternal
	}
	return nil
}

// dataPastEOF is PastEOF for the host offset of a data cluster: with an
// external data file it is an offset in that file, which the qcow2 file's
// size says nothing about.
func (g *Geometry) dataPastEOF(off uint64) bool {
	return !g.ExternalData && g.PastEOF(off)
}

// layoutDataFile applies CreateOptions' data file fields to a new header,
// with qemu-img 7.2's refusals in its order.
func layoutDataFile(h *Header, o CreateOptions) error {
	if o.DataFileRaw && o.DataFile == "" {
		return Unsupported("data_file_raw", 1, "data-file-raw requires data-file")
	}
	if o.DataFileRaw && o.BackingFile != "" {
		return Unsupported("data_file_raw", 1, "Backing file and data-file-raw cannot be used at the same time")
	}
	if o.DataFile == "" {
		return nil
	}
	if h.Version < 3 {
		return Unsupported("data_file", 1, "External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)")
	}
	if len(o.DataFile) > MaxDataFileNameLen || strings.IndexByte(o.DataFile, 0) >= 0 {
		return Limit("data_file", uint64(len(o.DataFile)), "data file name too long or with a NUL byte")
	}
	// The name is recorded as given; CheckDataFileName applies when an
	// image is opened (a name the operator chose may still be refused
	// then, which is the safe direction).
	h.IncompatibleFeatures |= IncompatDataFile
	h.DataFile = o.DataFile
	if o.DataFileRaw {
		h.AutoclearFeatures |= AutoclearRawExternal
	}
	return nil
}

// refData counts the reference of an L2 entry to its data cluster: none
// in the image file when the data lives in an external data file.
func (c *checker) refData(off, n int64) {
	if c.im.Geometry.ExternalData {
		return
	}
	c.ref(off, n, "data cluster")
}

// dataAtZero reports whether L2 entry e (first word, not compressed, zero
// flag clear) with host offset 0 maps a data cluster at offset 0 of the
// external data file: only with a data file, and only with COPIED set
// (every data cluster there has refcount 1, so COPIED tells it from an
// unallocated entry), as QEMU reads it.
func (g *Geometry) dataAtZero(e uint64) bool {
	return g.ExternalData && e&EntryCopied != 0 && e&EntryZero == 0
}
