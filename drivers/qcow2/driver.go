package qcow2

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/cache"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// MaxBackingDepth caps the backing chain below an image: a deeper chain is
// refused at open (style B5: "limits are errors"), whatever the opener does.
const MaxBackingDepth = 16

// BackingRequest asks a BackingOpener for the backing node of an image.
// The format is always explicit ("raw" or "qcow2", from the image's backing
// format extension): nothing is probed, because the image is untrusted.
type BackingRequest struct {
	Name   string // backing_file as stored in the image (not resolved)
	Format string // "raw" or "qcow2"
	// Depth is the depth the backing node will have (1 for the backing
	// file of the top image). A qcow2 opener passes Depth and Chain on to
	// the backing qcow2 driver's DriverOptions.
	Depth int
	// Chain lists the IDs of every image above the backing node, top
	// first, for cycle detection.
	Chain []string
}

// BackingOpener opens the backing node of an image. It is supplied by the
// caller (block never imports a driver, and this package does not open
// files by name). The returned node's reference passes to the driver.
type BackingOpener func(req BackingRequest) (*block.Node, error)

// DriverOptions configure a qcow2 driver.
type DriverOptions struct {
	// Backing opens the backing file. Nil: an image with a backing file
	// fails to open (Unsupported) unless IgnoreBacking is set.
	Backing BackingOpener
	// BackingFormat, when set, is the backing file's format instead of
	// the one the image records (QEMU's backing.driver option): "raw" or
	// "qcow2"; anything else fails the open (BackingFormatError). It
	// applies to this image's backing file only.
	BackingFormat string
	// IgnoreBacking reads unallocated clusters as zeros even when the
	// image names a backing file (qemu-img's -U-less "no backing" mode).
	IgnoreBacking bool
	// AttachBacking asks Backing for a backing node even when the header
	// names no backing file (QMP's blockdev-add with "backing" naming a
	// node, on an image without one: unallocated clusters read through
	// to that node, and the header is not rewritten). The request then
	// has an empty Name and Format.
	AttachBacking bool
	// ID identifies the image file for cycle detection (for example
	// "dev:inode"); Chain and Depth are where the image sits in a backing
	// chain (see BackingRequest). An image whose ID is in Chain is refused.
	ID    string
	Chain []string
	Depth int
	// L2CacheBytes bounds this image's own L2 tables (tier 1: every
	// dirty or pinned table, plus recently used clean ones), allocated at
	// open: default 32 MiB (QEMU's default maximum), at most twice the
	// tables the L1 table can point at plus 8, at least 4 tables. Dirty
	// tables are written back at a flush, or when they fill 7/8 of it.
	L2CacheBytes int64
	// SharedCache receives the clean L2 tables this image evicts and is
	// looked up on a miss (tier 2). It may be shared by any number of
	// images: keys carry a per-open image ID and a per-table generation.
	// The caller owns it and decides who shares it (drivers/chain gives
	// the images of one chain one cache). Nil: a private cache of
	// DefaultSharedCacheBytes for this image alone.
	SharedCache cache.Clean
	// Image tightens the open-time limits of ReadImage (ReadWrite is set
	// from the node's read-only option).
	Image format.Options
	// CheckOpen opens the image for `check -r` (QEMU's BDRV_O_CHECK): a
	// dirty or corrupt image opens read-write without the automatic
	// repair, and refuses writes until a repair (Check) succeeds.
	CheckOpen bool
	// InactiveL2Check checks every metadata write against the L2 tables
	// of all snapshots, reading their L1 tables each time (QEMU's
	// overlap-check.inactive-l2; off by default, it is expensive). A
	// snapshot L1 table that cannot be read fails the write
	// (overlap_inactive.go).
	InactiveL2Check bool
	// LazyRefcounts overrides the image's lazy refcounts bit for this open
	// (QEMU's lazy-refcounts runtime option; lazy.go): 0 the header's,
	// LazyOn or LazyOff. Version 3 images only.
	LazyRefcounts LazyMode
	// RepairLog receives the messages of the repair a read-write open of
	// a dirty image runs (QEMU prints them on stderr); nil: CheckLog.
	RepairLog func(msg string)
	// CheckLog receives the messages of checks and repairs, one line each
	// (qemu-img check prints them on stderr). Nil drops them.
	CheckLog func(msg string)
	// KeySecret is the password of a LUKS-encrypted image
	// (encrypt.key-secret). Without it such an image opens only with
	// HeaderOnly, and then fails reads and writes of data.
	KeySecret  []byte
	HeaderOnly bool
	// DataFile opens the external data file an image names
	// (datafile.go); DataFileNode is one the caller gives instead (an
	// option tree's data-file; its reference passes to the driver, which
	// drops it if Open fails).
	DataFile     DataFileOpener
	DataFileNode *block.Node
}

// Driver is the qcow2 block.Driver: one image on a "file" child node.
//
// Threading: Open, Close and Length run on the main Context; request
// methods run on any Context. mu guards every piece of in-memory metadata
// (L1 copy, L2 cache, refcount blocks, dirty sets, geometry) and is never
// held across I/O or a coroutine yield. Everything that changes metadata
// runs in a coroutine holding metaLock, a coroutine mutex held across
// metadata I/O: flushes, discards, zero writes, resizes and the
// allocation and linking steps of allocating writes. An allocating write
// drops metaLock while it writes the new cluster's data, with the guest
// clusters marked in flight (inflight); anything else that would change
// their L2 entries waits for it (rule R8). Reads and in-place writes to
// COPIED clusters take neither.
type Driver struct {
	block.DriverBase
	opts DriverOptions

	node *block.Node
	file *block.Child
	dbg  block.DebugEventer // the file's, when it is a debug filter (debugevents.go)
	// data is the child data clusters are read and written through: file,
	// or for an encrypted image a LUKS payload filter over file (crypto.go).
	data   *block.Child
	crypto cryptoState
	aes    *aesState // legacy AES (crypt_method 1), nil otherwise (aes.go)
	// dataFile is the external data file's child (also d.data), nil
	// for an image that keeps its data inside; dataRaw: data_file_raw
	// (datafile.go). Fixed at Open.
	dataFile *block.Child
	dataRaw  bool
	dataDbg  block.DebugEventer
	backing  *block.Child
	// backingSize is the backing node's length, read at open.
	backingSize int64

	readOnly bool

	// mu guards the metadata object: the in-memory tables and their dirty
	// state. They change only under metaLock (held across metadata I/O)
	// and are read or changed only with mu held, which is never held
	// across I/O or a yield. The image's shape (hdr.Version, the geometry's
	// ClusterBits, RefcountOrder, ExtendedL2 and ZeroFlag, hdr's
	// compression type) is fixed at Open and read without mu. The fast
	// paths read none of this: they read the published view (fast.go).
	mu struct {
		sync.Mutex
		hdr    *format.Header
		geo    format.Geometry // FileSize tracks the end of allocated space
		l1     []uint64        // entries stored with storeL1 (fast.go)
		rt     []uint64        // refcount table
		snaps  []format.Snapshot
		snapSz int64
		rb     map[int64]*refBlock // loaded refcount blocks, by host offset
		// dirty state, flushed in dependency order (flush.go)
		dirtyRT      map[int64]bool // refcount table indexes to write
		dirtyL1      map[int64]bool // L1 indexes to write
		pendingFrees []hostFree     // host ranges to decrement after the next flush (R2)
		newL2        []int64        // L2 tables allocated since the last stage C (debug events only)
		failedWrite  bool           // a write or flush of the file failed since its last sync (close_report.go)
		cowPending   bool           // data or COW written since the last fsync (R4)
		freeIdx      int64          // first cluster index that may be free
		corruptErr   error          // set once an overlap check fired: every request fails (setCorruptLocked)
		// nonFatalSignaled: a read-only image reported damage once (read_damage.go)
		nonFatalSignaled bool
		// damage describes the L1 and refcount table entries found
		// damaged at open (nil: none); see damage.go.
		damage *format.Image
		// damageTargets holds the clusters damaged entries point into;
		// the allocator skips them (damage.go).
		damageTargets map[int64]struct{}
		lazy          lazyState // lazy refcounts and the dirty bit (lazy.go)
		// inflight maps guest cluster indexes to the allocating write
		// that is writing their new host cluster without metaLock
		// (write.go).
		inflight map[int64]*inflightAlloc
		// freeWaiter is the one coroutine (under metaLock) waiting for
		// I/O epoch parity freeParity to drain (read.go).
		freeWaiter *aio.Co
		freeParity uint32
		// zcache holds the last inflated compressed cluster. Dropped
		// when a cluster is freed (its host bytes may be reused).
		zcache struct {
			desc format.CompressedDescriptor
			buf  []byte
		}
		// flushAt is the flush stage running (invariants builds).
		flushAt flushStage
		// inSnapshotOp is set while a snapshot operation runs: its
		// flushes write intermediate states (refcounts raised before
		// COPIED is cleared), which the tests' after-flush check must not
		// judge alone.
		inSnapshotOp bool
		// pbm is the persistent bitmaps' directory state (bitmaps.go).
		pbm persistentBitmaps
		// allocRun: allocations the current caller makes in a row
		// (alloc_place.go).
		allocRun int64

		// untrusted: the header, L1 or refcount table has refcount 0;
		// allocations are refused (untrusted.go).
		untrusted error
	}
	// l2 is the image's L2 cache (l2cache.go; its own locking rules),
	// set at Open.
	l2 *l2Cache
	// pack is the compressed-write state (compress_pack.go), guarded by
	// metaLock.
	pack packState
	// meta holds the offsets of every refcount block and active L2 table,
	// for the overlap check (R5) of data writes (metaset.go): changed
	// under mu, read without it.
	meta metaSet

	metaLock coMutex

	// What the lock-free fast paths read (fast.go): the published view,
	// the end of the file, and the corrupt and header-ready (R10) flags,
	// which mirror corruptErr and the first write's header update.
	view        atomic.Pointer[fastView]
	fileEnd     atomic.Int64
	corrupt     atomic.Bool
	headerReady atomic.Bool

	// I/O epochs (read.go): requests in flight per epoch parity;
	// freeWaiting mirrors mu.freeWaiter != nil for unhold, which takes mu
	// only then.
	ioEpoch     atomic.Uint32
	ioActive    [2][epochStripes]epochCount
	freeWaiting atomic.Bool

	states    stateFreeList
	oneDone   oneDone // completes single-extent fast reads (read.go)
	batches   batches // per-Context read batches and hit counters (batch.go)
	otherHits atomic.Uint64

	pendingFile *block.Node // between New and Open
	// noFileZeroes: the file node answered a write-zeroes with
	// Unsupported once; partial allocating writes copy zeros instead.
	noFileZeroes atomic.Bool
}

// New returns a driver for the image on file. The node built around it
// (Graph.Open) attaches file as its "file" child; the caller's reference
// on file passes to the driver, which drops it once the edge holds its
// own, or when Open fails. If Graph.Open fails before it calls Open (bad
// options, duplicate name), call Release to drop it.
func New(file *block.Node, opts DriverOptions) *Driver {
	d := &Driver{opts: opts}
	d.pendingFile = file
	return d
}

// Release drops the file reference of a driver whose Open never ran.
func (d *Driver) Release() {
	if f := d.pendingFile; f != nil {
		d.pendingFile = nil
		f.Unref()
	}
	if f := d.opts.DataFileNode; f != nil {
		d.opts.DataFileNode = nil
		f.Unref()
	}
}

// NewNode opens a qcow2 node over file in g, taking over the caller's
// reference on file (dropped on failure). nopts.ReadOnly decides a
// read-only or read-write open. The caller holds the node's reference.
func NewNode(g *block.Graph, file *block.Node, opts DriverOptions, nopts block.Options) (*block.Node, error) {
	d := New(file, opts)
	n, err := g.Open(d, nopts)
	if err != nil {
		d.Release()
	}
	return n, err
}

// errMiss reports an L2 table that is not in the cache (the locked
// mapping's L2Func, l2Mapper).
var errMiss = errors.New("qcow2: l2 cache miss")

// Open attaches the file child, reads and validates the image's metadata
// through it, and opens the backing chain.
func (d *Driver) Open(n *block.Node) error {
	d.node = n
	d.readOnly = n.ReadOnly()
	file := d.pendingFile
	d.pendingFile = nil
	dataNode := d.opts.DataFileNode // datafile.go: attached or dropped below
	d.opts.DataFileNode = nil
	defer func() {
		if dataNode != nil {
			dataNode.Unref()
		}
	}()
	if file == nil {
		return d.openErr(block.InvalidFormat, errors.New("qcow2: no file node"))
	}
	for _, id := range d.opts.Chain {
		if d.opts.ID != "" && id == d.opts.ID {
			file.Unref()
			return d.openErr(block.InvalidFormat, errors.New("qcow2: backing chain loops back to "+id))
		}
	}
	c, err := n.Graph().Attach(n, file, block.ChildSpec{Name: "file", Role: block.RoleFile | block.RolePrimary})
	// Attach took its own reference; drop the one handed to us.
	file.Unref()
	if err != nil {
		return err
	}
	d.file, d.data = c, c
	d.dbg = block.DebugEventerOf(file)
	size, err := file.Length()
	if err != nil {
		return err
	}
	iopts := d.opts.Image
	iopts.ReadWrite = !d.readOnly
	iopts.DeferMetadataRefcounts = true // untrusted.go
	if !d.readOnly {
		// A dirty image is repaired first (lazy.go, repair.go).
		relaxed, err := maintOf(d).openRepair(file)
		if err != nil {
			return err
		}
		if relaxed {
			iopts.ReadWrite = false
		}
		if size, err = file.Length(); err != nil {
			return err
		}
	}
	im, err := format.ReadImage(nodeReader{file}, size, d.imageOptions(iopts))
	if err != nil {
		return d.formatErr(block.OpOpen, 0, err)
	}
	d.checkModeSnapshots(im) // snapshot_check.go
	d.mu.hdr, d.mu.geo, d.mu.l1, d.mu.rt = im.Header, im.Geometry, im.L1, im.RefcountTable
	d.mu.snaps, d.mu.snapSz = im.Snapshots, im.SnapshotTableSize
	d.setDamage(im)
	if iopts.ReadWrite {
		if d.mu.untrusted, err = d.untrustedOf(im); err != nil { // untrusted.go
			return d.formatErr(block.OpOpen, 0, err)
		}
	}
	d.initLazy()
	// The L1 table may be longer than the disk needs; never map past it.
	if err := d.initL2(); err != nil {
		return err
	}
	d.mu.rb = make(map[int64]*refBlock)
	d.mu.dirtyRT = make(map[int64]bool)
	d.mu.dirtyL1 = make(map[int64]bool)
	d.oneDone.d = d
	d.mu.inflight = make(map[int64]*inflightAlloc)
	d.resetMetaClusters()
	d.mu.freeIdx = 0
	d.publishLocked()
	given := dataNode
	dataNode = nil
	if err := d.openDataFile(n, given); err != nil { // datafile.go
		return err
	}
	if err := d.openCrypto(n, file); err != nil {
		return err
	}
	if err := d.openAES(n); err != nil { // aes.go
		return err
	}
	// Persistent bitmaps (bitmaps.go): loaded and attached to the node.
	bms, err := d.loadBitmaps(nodeReader{file})
	if err != nil {
		return d.formatErr(block.OpOpen, 0, err)
	}
	if err := d.attachBitmaps(bms); err != nil {
		return err
	}
	if err := d.openBacking(); err != nil {
		return err
	}
	if afterOpenHook != nil {
		afterOpenHook(d)
	}
	return nil
}

// resetMetaClusters rebuilds the set of refcount blocks and active L2
// tables the overlap check (R5) protects, from the L1 and refcount tables.
// REQUIRES: mu held, or the driver not yet shared (Open).
func (d *Driver) resetMetaClusters() {
	d.meta.reset()
	dm := d.mu.damage
	for i, e := range d.mu.l1 {
		if off := int64(e & format.OffsetMask); off != 0 && (dm == nil || !dm.DamagedL1.Has(int64(i))) {
			d.meta.add(off)
		}
	}
	for i, e := range d.mu.rt {
		if e != 0 && (dm == nil || !dm.DamagedRT.Has(int64(i))) {
			d.meta.add(int64(e))
		}
	}
}

func (d *Driver) openBacking() error {
	h := d.mu.hdr
	if d.opts.IgnoreBacking || h.BackingFile == "" && !d.opts.AttachBacking {
		return nil
	}
	if h.BackingFile == "" {
		return d.attachBacking(BackingRequest{Depth: d.opts.Depth + 1})
	}
	if d.opts.Backing == nil {
		return d.openErr(block.Unsupported, errors.New("qcow2: image has a backing file ("+h.BackingFile+") and no backing opener was given"))
	}
	bf := h.BackingFormat
	if d.opts.BackingFormat != "" {
		bf = d.opts.BackingFormat // backing.driver (backingfmt.go)
	}
	switch bf {
	case "raw", "qcow2":
	case "":
		return d.openErr(block.Unsupported, errors.New("qcow2: backing file without a backing format; refusing to probe an untrusted image"))
	default:
		return d.openErr(block.Unsupported, &BackingFormatError{Format: bf})
	}
	if d.opts.Depth+1 > MaxBackingDepth {
		return d.openErr(block.Overflow, errors.New("qcow2: backing chain deeper than the limit"))
	}
	chain := append(append([]string(nil), d.opts.Chain...), d.opts.ID)
	return d.attachBacking(BackingRequest{Name: h.BackingFile, Format: bf, Depth: d.opts.Depth + 1, Chain: chain})
}

// attachBacking opens the backing node req asks for and attaches it as
// the image's backing child.
func (d *Driver) attachBacking(req BackingRequest) error {
	if d.opts.Backing == nil {
		return d.openErr(block.Unsupported, errors.New("qcow2: a backing node was asked for and no backing opener was given"))
	}
	bn, err := d.opts.Backing(req)
	if err != nil {
		return d.formatErr(block.OpOpen, 0, err)
	}
	c, err := d.node.Graph().Attach(d.node, bn, block.ChildSpec{Name: "backing", Role: block.RoleBacking})
	bn.Unref()
	if err != nil {
		return err
	}
	// The backing node is read-only under us: its length is fixed.
	if d.backingSize, err = bn.Length(); err != nil {
		return err
	}
	d.backing = c
	return nil
}

// Close writes back dirty metadata (a read-write image) and lets block
// detach the children. A failed write-back is returned: the caller that
// closed without a flush first must learn that the mapping is not on disk.
func (d *Driver) Close(n *block.Node) error {
	if d.readOnly || d.file == nil || d.mu.hdr == nil || n.Inactive() {
		// An inactive image was written back by Inactivate and may belong
		// to another process now: nothing may be written.
		return nil
	}
	// Close runs on the main Context inside a drained section: run a flush
	// as a coroutine and wait for it there.
	var done atomic.Bool
	var err error
	main := n.Graph().Main()
	n.Context().Go(func(co *aio.Co) {
		d.metaLock.lock(co)
		err = maintOf(d).storeBitmaps(co)                     // bitmaps.go
		if cerr := metaOf(d).closeWriteBack(co); err == nil { // close_report.go
			err = cerr
		}
		d.metaLock.unlock()
		done.Store(true)
		main.Kick()
	})
	main.WaitWhile(func() bool { return !done.Load() })
	return err
}

// Length reports the virtual disk size.
func (d *Driver) Length(*block.Node) (int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.mu.geo.Size, nil
}

// Header returns a copy of the image header as last read or written.
func (d *Driver) Header() format.Header {
	d.mu.Lock()
	defer d.mu.Unlock()
	return *d.mu.hdr
}

func (d *Driver) nodeName() string {
	if d.node == nil {
		return ""
	}
	return d.node.Name()
}

func (d *Driver) openErr(k block.Kind, err error) error {
	return &block.Error{Kind: k, Op: block.OpOpen, Node: d.nodeName(), Err: err}
}

// formatErr wraps an error of this package or of I/O in a *block.Error,
// choosing the Kind from the format sentinel.
func (d *Driver) formatErr(op block.Op, off int64, err error) error {
	if err == nil {
		return nil
	}
	var be *block.Error
	if errors.As(err, &be) {
		return err
	}
	k := block.Io
	switch {
	case errors.Is(err, format.ErrCorrupt):
		k = block.Corrupt
	case errors.Is(err, format.ErrNotQcow2):
		k = block.InvalidFormat
	case errors.Is(err, format.ErrUnsupported):
		k = block.Unsupported
	case errors.Is(err, format.ErrLimit):
		k = block.Overflow
	case errors.Is(err, format.ErrRange):
		k = block.OutOfBounds
	}
	return &block.Error{Kind: k, Op: op, Node: d.nodeName(), Offset: off, Err: err}
}

// errNoSpace tells allocCluster that the refcount table does not cover
// the cluster it looked at: the table must grow first.
var errNoSpace = &format.FormatError{Field: "refcount_table_clusters", Reason: "refcount table too small", Err: format.ErrLimit}

// nodeReader reads a node synchronously (open time only, on the main
// Context).
type nodeReader struct{ n *block.Node }

func (r nodeReader) ReadAt(p []byte, off int64) (int, error) { return r.n.ReadAt(p, off) }
