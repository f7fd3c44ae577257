package qcow2

// External data files (incompatible feature bit 2), as QEMU 7.2 uses
// them: the qcow2 file holds the metadata, a second node (the "data-file"
// child) holds every guest data cluster at the host offset its L2 entry
// names, which is always the guest offset. So:
//
//   - d.data is the data-file child; metadata still goes to d.file.
//   - A new data cluster is not allocated from the refcounts: its host
//     offset is the guest cluster's offset (allocData), and giving it back
//     or freeing it changes no refcount (abortData, freeDataLocked).
//   - The overlap check (R5) protects the qcow2 file's metadata; data
//     writes go to another file, so they are not checked (dataOverlaps).
//   - A flush flushes the data file before the qcow2 file (fileSync),
//     so data is durable before the metadata that points at it (R4).
//   - With data_file_raw (autoclear bit 1) the data file must read as the
//     disk: write-zeroes are passed to it as well (zeroDataRaw).
//   - Compressed clusters (corrupt in such an image, format.DecodeL2Entry)
//     and internal snapshots are refused.
//
// The data file's name comes from the image and is as untrusted as a
// backing file name: the driver checks it with format.CheckDataFileName
// (plain paths only) and leaves opening it to the caller's opener
// (drivers/chain resolves it against the image's directory, opens it as
// a plain file, never probes it). docs/design/qcow2-datafile.md.

import (
	"errors"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// DataFileRequest asks a DataFileOpener for the data file of an image.
type DataFileRequest struct {
	// Name is the name recorded in the image, checked by
	// format.CheckDataFileName, not resolved.
	Name string
	// ReadOnly: the image is opened read-only.
	ReadOnly bool
}

// DataFileOpener opens the external data file of an image (a raw node
// over a plain file). The returned node's reference passes to the driver.
type DataFileOpener func(req DataFileRequest) (*block.Node, error)

// ErrDataFileRequired is QEMU's wording for an image with the data file
// bit, no data file name and no data file given.
var ErrDataFileRequired = errors.New("'data-file' is required for this image")

// ErrDataFileNotExternal is QEMU's wording for a data file given for an
// image that keeps its data inside.
var ErrDataFileNotExternal = errors.New("'data-file' can only be set for images with an external data file")

// ErrDataFileUnsupported is returned for what such images cannot do
// (compressed writes, internal snapshots): QEMU's -ENOTSUP.
var ErrDataFileUnsupported = errors.New("Operation not supported")

// openDataFile attaches the data-file child of an image with the data
// file bit: the node the caller gave (given, whose reference passes here)
// or the one the opener makes from the recorded name. Main Context,
// during Open, after the header was read.
func (d *Driver) openDataFile(n *block.Node, given *block.Node) error {
	h := d.mu.hdr
	if !h.HasDataFile() {
		if given != nil {
			given.Unref()
			return d.openErr(block.InvalidFormat, ErrDataFileNotExternal)
		}
		return nil
	}
	if h.CryptMethod != format.CryptNone {
		if given != nil {
			given.Unref()
		}
		return d.openErr(block.Unsupported, errors.New("qcow2: an encrypted image with an external data file is not supported"))
	}
	if given == nil {
		if h.DataFile == "" {
			return d.openErr(block.InvalidFormat, ErrDataFileRequired)
		}
		if err := format.CheckDataFileName(h.DataFile); err != nil {
			return d.formatErr(block.OpOpen, 0, err)
		}
		if d.opts.DataFile == nil {
			return d.formatErr(block.OpOpen, 0, format.Unsupported("data_file_ext", 0, "image has an external data file ("+h.DataFile+") and no data file opener was given"))
		}
		var err error
		if given, err = d.opts.DataFile(DataFileRequest{Name: h.DataFile, ReadOnly: d.readOnly}); err != nil {
			return d.openErr(block.Io, err)
		}
	}
	c, err := n.Graph().Attach(n, given, block.ChildSpec{Name: "data-file", Role: block.RolePrimary})
	given.Unref()
	if err != nil {
		return err
	}
	d.data, d.dataFile, d.dataRaw = c, c, h.DataFileRaw()
	// A debug filter as the data file sees the data reads and writes, as
	// under QEMU's raw node over it (raw raises them on its file).
	d.dataDbg = block.DebugEventerOf(c.Node())
	return nil
}

// DataFileNode is the node of the image's external data file; nil when
// the image keeps its data inside.
func (d *Driver) DataFileNode() *block.Node {
	if d.dataFile == nil {
		return nil
	}
	return d.dataFile.Node()
}

// allocData returns the host cluster for a new data cluster of the guest
// cluster at guest (cluster aligned): with an external data file that
// offset itself, no refcount involved; otherwise a newly allocated
// cluster of the image file. REQUIRES: metaLock held.
func (d metaIO) allocData(co *aio.Co, guest int64) (int64, error) {
	if d.mu.geo.ExternalData {
		d.event(block.DbgClusterAlloc)
		return guest &^ (d.mu.geo.ClusterSize() - 1), nil
	}
	return d.allocCluster(co)
}

// abortData is abortAlloc for a data cluster from allocData: with an
// external data file nothing was allocated, so nothing is given back
// (freeing the guest offset as a qcow2 cluster would hit the metadata
// there).
func (d metaIO) abortData(off int64, err error) error {
	if d.mu.geo.ExternalData {
		return err
	}
	return d.abortAlloc(off, err)
}

// freeDataLocked queues the host storage of an old L2 entry le for a free
// after the next flush (R2); with an external data file there is nothing
// to free in the qcow2 file. REQUIRES: mu held.
func (d metaIO) freeDataLocked(le format.L2Entry) {
	if d.mu.geo.ExternalData {
		return
	}
	switch le.Type {
	case format.Normal, format.ZeroAlloc:
		d.mu.pendingFrees = append(d.mu.pendingFrees, hostFree{le.HostOff, 1})
	case format.Compressed:
		d.mu.pendingFrees = append(d.mu.pendingFrees, hostFree{le.Compressed.HostOff, le.Compressed.Size()})
	}
}

// dataOverlaps is the overlap check (R5) of a data write to host range
// [off, off+n): the image file's metadata, unless the data lives in an
// external data file.
func (d metaIO) dataOverlaps(off, n int64) bool {
	return !d.mu.geo.ExternalData && d.overlapsMetadata(off, n)
}

// dataOverlapsLocked is dataOverlaps with mu held.
func (d metaIO) dataOverlapsLocked(off, n int64) bool {
	return !d.mu.geo.ExternalData && d.overlapsMetadataLocked(off, n)
}

// dataSync flushes the external data file, if any.
func (d *Driver) dataSync(co *aio.Co, parent *block.Request) error {
	if d.dataFile == nil {
		return nil
	}
	return d.childIO(co, parent, d.dataFile, block.OpFlush, 0, nil, 0)
}

// zeroDataRaw passes a write-zeroes of guest range [off, off+n) to a raw
// external data file, which must read as the disk (QEMU writes the zeros
// there before it changes the metadata). Other images: nothing.
func (d writer) zeroDataRaw(co *aio.Co, r *block.Request, off, n int64) error {
	if d.dataFile == nil || !d.dataRaw {
		return nil
	}
	return d.childIO(co, r, d.dataFile, block.OpWriteZeroes, off, nil, n)
}

// truncateData sets the external data file's length to the new disk
// size, as QEMU's resize without preallocation does (its file driver
// truncates a regular file to exactly that length): a raw data file stays
// a complete raw image of the disk, and a shrink leaves no guest bytes
// past the new end. Called before the header's size changes, as QEMU
// orders it; a crash in between leaves a data file of the new length
// under the old size, whose clusters past it are unmapped already
// (shrink) or were never mapped (growth). Other images: nothing.
func (d maintOps) truncateData(co *aio.Co, r *block.Request, size int64) error {
	if d.dataFile == nil {
		return nil
	}
	return d.childIO(co, r, d.dataFile, block.OpTruncate, size, nil, 0)
}

// refuseDataFile is the error of operations an image with an external
// data file cannot do (compressed clusters, internal snapshots).
func (d *Driver) refuseDataFile() error {
	if d.dataFile == nil {
		return nil
	}
	return &block.Error{Kind: block.Unsupported, Op: block.OpWrite, Node: d.nodeName(), Err: ErrDataFileUnsupported}
}

// CreateWithDataFile writes a new, empty image of size bytes to file whose
// data lives in data (both writable nodes; o.DataFile is the name
// recorded): qemu-img create -o data_file=... The data file is emptied and
// sized to the disk first (preallocated with falloc or full, as QEMU
// creates it with the same options), then the image is written; every
// preallocation mode preallocates only the mapping in the image file, with
// each cluster at its own offset in the data file. data_file_raw implies
// metadata preallocation, so the data file reads as the disk at once.
func CreateWithDataFile(file, data *block.Node, size int64, o format.CreateOptions) error {
	if o.DataFile == "" {
		return &block.Error{Kind: block.InvalidFormat, Op: block.OpOpen, Node: file.Name(), Err: errors.New("qcow2: no data file name given")}
	}
	h, offs, err := format.LayoutRefblocks(size, o)
	if err != nil {
		return &block.Error{Kind: kindOf(err), Op: block.OpOpen, Node: file.Name(), Err: err}
	}
	vsize := int64(h.Size)
	if err := data.Truncate(0); err != nil && !block.IsKind(err, block.Unsupported) {
		return err
	}
	if err := data.Truncate(vsize); err != nil && !block.IsKind(err, block.Unsupported) {
		return err
	}
	mode := o.Preallocation
	if mode == format.PreallocFalloc || mode == format.PreallocFull {
		if err := preallocData(data, mode, 0, vsize); err != nil {
			return err
		}
	}
	if err := data.Flush(); err != nil {
		return err
	}
	if o.DataFileRaw && mode == format.PreallocOff {
		mode = format.PreallocMetadata
	}
	if mode != format.PreallocOff && h.L1Entries > 0 {
		return createPrealloc(file, h, offs, mode)
	}
	o.Preallocation = format.PreallocOff
	return Create(file, size, o)
}

// checkDataFileAmend refuses amend's data file changes qemu-img 7.2
// refuses, in its words and its order (the keys first, the downgrade
// after): a data file name for an image without one, setting
// data_file_raw (only a new image can promise a raw data file; clearing
// a flag that is not set changes nothing, with or without a data file),
// a downgrade of a data file image.
func checkDataFileAmend(h *format.Header, o AmendOptions, newVer int) error {
	if o.DataFile != nil {
		if !h.HasDataFile() {
			return format.Unsupported("data_file", 0, "data-file can only be set for images that use an external data file")
		}
		if *o.DataFile != "" {
			if err := format.CheckDataFileName(*o.DataFile); err != nil {
				return err
			}
		}
	}
	if o.DataFileRaw != nil && *o.DataFileRaw && !h.DataFileRaw() {
		return format.Unsupported("data_file_raw", 1, "data-file-raw cannot be set on existing images")
	}
	if newVer == 2 && h.Version >= 3 && h.HasDataFile() {
		return format.Unsupported("incompatible_features", h.IncompatibleFeatures, "Cannot downgrade an image with a data file")
	}
	return nil
}

// applyDataFileAmend makes the checked data file changes in nh.
func applyDataFileAmend(nh *format.Header, o AmendOptions) error {
	if (o.DataFile == nil && o.DataFileRaw == nil) || !nh.HasDataFile() {
		return nil // data_file_raw=off on an image without a data file
	}
	name, raw := nh.DataFile, nh.DataFileRaw()
	if o.DataFile != nil {
		name = *o.DataFile
	}
	if o.DataFileRaw != nil {
		raw = *o.DataFileRaw
	}
	return nh.SetDataFile(name, raw)
}
