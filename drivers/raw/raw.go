package raw

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
)

// Driver serves one raw image — a regular file, a block device or a
// character device — to one node. Its request methods run on whichever
// Context submitted the request and touch only immutable fields and
// atomics, so any number of Contexts may use the node at once.
type Driver struct {
	block.DriverBase

	path string
	opts Options
	file *aio.File
	fd   int
	// fdMu orders Length (any goroutine) against a reopen's swap of fd
	// (main Context, nothing in flight); the I/O paths, on the node's
	// Context, never take it.
	fdMu     sync.RWMutex
	blockdev bool
	// chardev: a character device (/dev/null, /dev/zero), which QEMU's
	// host_device and host_cdrom open; its length is what seeking to its
	// end says (0 for /dev/null).
	chardev bool
	direct  bool
	// reqAlign is the offset and length alignment every transfer must
	// meet (1 when buffered); memAlign the buffer address alignment.
	// INVARIANT: both are powers of two; memAlign <= reqAlign when direct.
	reqAlign int64
	memAlign uintptr
	// logical is the logical block size (BLKSSZGET for block devices,
	// the DIO offset alignment or 512 for files): what a guest device
	// built on the node should advertise.
	logical int64
	locked  bool // QEMU-compatible locks are held on fd

	// Capabilities learnt from the kernel, shared by all Contexts. Each
	// flips once, from false to true, when an operation reports
	// EOPNOTSUPP, so later requests take the fallback at once.
	noPunch     atomic.Bool // no hole punching / BLKDISCARD
	noZeroRange atomic.Bool // no FALLOC_FL_ZERO_RANGE / BLKZEROOUT

	zeroOnce sync.Once
	zeroBuf  []byte // aligned, all zero, never written

	attached bool
	closed   bool
}

// Open opens path as a raw image: the file with the flags the cache mode
// asks for, its DIO alignment, and QEMU-compatible locks. The result is
// handed to Graph.Open (NewNode does both); a driver that never becomes a
// node must be released with Release. Errors are *block.Error with Op
// OpOpen; a lock conflict wraps a *LockError (errors.Is(err, ErrLocked)).
func Open(path string, opts Options) (*Driver, error) {
	flags := unix.O_CLOEXEC
	if opts.ReadOnly {
		flags |= os.O_RDONLY
	} else {
		flags |= os.O_RDWR
	}
	switch opts.Cache {
	case CacheNone:
		flags |= unix.O_DIRECT
	case CacheWritethrough:
		flags |= unix.O_DSYNC
	case CacheWriteback:
	default:
		return nil, openError(path, fmt.Errorf("unknown cache mode %d", opts.Cache))
	}
	f, err := openFile(path, flags, opts.NoAtime)
	if err != nil {
		return nil, openError(path, err)
	}
	d := &Driver{path: path, opts: opts, fd: int(f.Fd()), direct: opts.Cache == CacheNone, reqAlign: 1, memAlign: 1}
	if err := d.probe(); err != nil {
		f.Close()
		return nil, openError(path, err)
	}
	if err := fadvise(d.fd, opts.Fadvise); err != nil {
		f.Close()
		return nil, openError(path, &os.PathError{Op: "fadvise", Path: path, Err: err})
	}
	if opts.Locking != LockingOff {
		held, unshared := lockPerms(opts.ReadOnly, opts.ShareRW)
		err := applyLocks(d.fd, path, held, unshared)
		switch {
		case err == nil:
			d.locked = true
		case errors.Is(err, errLockUnsupported) && opts.Locking == LockingAuto:
			// A filesystem without OFD locks: QEMU's locking=auto opens
			// unlocked too.
		default:
			f.Close()
			return nil, openError(path, err)
		}
	}
	d.file = aio.NewFile(f)
	return d, nil
}

// probe learns the file type, the logical block size and the DIO
// alignment.
func (d *Driver) probe() error {
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		return &os.PathError{Op: "fstat", Path: d.path, Err: err}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFBLK:
		d.blockdev = true
	case unix.S_IFCHR:
		d.chardev = true
	default:
		return &os.PathError{Op: "open", Path: d.path, Err: errors.New("not a regular file or a device")}
	}
	d.logical = 512
	if d.blockdev {
		if n, err := unix.IoctlGetInt(d.fd, unix.BLKSSZGET); err == nil && n > 0 {
			d.logical = int64(n)
		}
	}
	if !d.direct {
		return nil
	}
	// The kernel's own answer (Linux 6.1+): STATX_DIOALIGN. Files on
	// filesystems that cannot do O_DIRECT report zero.
	var sx unix.Statx_t
	err := unix.Statx(d.fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &sx)
	switch {
	case err == nil && sx.Mask&unix.STATX_DIOALIGN != 0:
		if sx.Dio_offset_align == 0 {
			return &os.PathError{Op: "open", Path: d.path, Err: errors.New("O_DIRECT is not supported on this file (cache=none)")}
		}
		d.reqAlign = int64(sx.Dio_offset_align)
		d.memAlign = uintptr(sx.Dio_mem_align)
	case d.blockdev:
		d.reqAlign, d.memAlign = d.logical, uintptr(d.logical)
	default:
		// No STATX_DIOALIGN: assume the strictest common case.
		d.reqAlign, d.memAlign = 4096, 4096
	}
	if d.memAlign == 0 || d.memAlign&(d.memAlign-1) != 0 || d.reqAlign&(d.reqAlign-1) != 0 {
		return &os.PathError{Op: "open", Path: d.path, Err: fmt.Errorf("odd DIO alignment: offset %d, memory %d", d.reqAlign, d.memAlign)}
	}
	if !d.blockdev {
		d.logical = max(d.logical, d.reqAlign)
	}
	return nil
}

// fadvise gives the kernel the access-pattern hint h for the open file fd
// (the whole file: Linux keeps RANDOM and SEQUENTIAL per open file).
func fadvise(fd int, h Fadvise) error {
	var advice int
	switch h {
	case FadviseNone:
		return nil
	case FadviseNormal:
		advice = unix.FADV_NORMAL
	case FadviseSequential:
		advice = unix.FADV_SEQUENTIAL
	case FadviseRandom:
		advice = unix.FADV_RANDOM
	default:
		return fmt.Errorf("unknown fadvise hint %d", h)
	}
	return unix.Fadvise(fd, 0, 0, advice)
}

func openError(path string, err error) error {
	var pe *os.PathError
	if !errors.As(err, &pe) && !errors.Is(err, ErrLocked) {
		err = &os.PathError{Op: "open", Path: path, Err: err}
	}
	kind := block.Io
	if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOTSUP) {
		kind = block.Unsupported
	}
	return &block.Error{Kind: kind, Op: block.OpOpen, Node: path, Offset: 0, Err: err}
}

// NewNode opens path and makes it a node of g: nopts.ReadOnly follows
// opts.ReadOnly, nopts.Align is raised to the driver's request alignment
// (so the block layer pads and read-modify-writes unaligned requests on
// O_DIRECT), and discard=ignore completes discards in the block layer. The
// caller holds the node's one reference.
func NewNode(g *block.Graph, path string, opts Options, nopts block.Options) (*block.Node, error) {
	d, err := Open(path, opts)
	if err != nil {
		return nil, err
	}
	nopts.ReadOnly = nopts.ReadOnly || opts.ReadOnly
	if int64(nopts.Align) < d.reqAlign {
		nopts.Align = int(d.reqAlign)
	}
	if opts.Probed && nopts.Align < ProbeSize {
		nopts.Align = ProbeSize // whole first sectors for the probe guard
	}
	if nopts.MaxTransfer > 0 && nopts.MaxTransfer%int64(nopts.Align) != 0 {
		nopts.MaxTransfer -= nopts.MaxTransfer % int64(nopts.Align)
	}
	nopts.IgnoreDiscard = nopts.IgnoreDiscard || opts.Discard == DiscardIgnore
	n, err := g.Open(d, nopts)
	if err != nil {
		d.Release()
		return nil, err
	}
	return n, nil
}

// Release closes a driver that was never attached to a node (after Open,
// when Graph.Open was not called or failed). Nodes close their driver.
func (d *Driver) Release() error {
	if d.attached || d.closed {
		return nil
	}
	d.closed = true
	if err := d.file.Close(); err != nil {
		return err
	}
	return d.file.Wait()
}

// Path returns the image path.
func (d *Driver) Path() string { return d.path }

// Filename implements block.FileNamer: the path the file was opened by.
func (d *Driver) Filename() string { return d.path }

// RequestAlign returns the offset/length alignment transfers need (1 when
// buffered).
func (d *Driver) RequestAlign() int { return int(d.reqAlign) }

// MemAlign returns the buffer address alignment O_DIRECT needs (1 when
// buffered); buffers that miss it are bounced.
func (d *Driver) MemAlign() int { return int(d.memAlign) }

// LogicalBlockSize returns the logical block size of the image's device.
func (d *Driver) LogicalBlockSize() int { return int(d.logical) }

// BlockDevice reports whether the image is a block device.
func (d *Driver) BlockDevice() bool { return d.blockdev }

// Locked reports whether the QEMU-compatible locks are held.
func (d *Driver) Locked() bool { return d.locked }

// Options returns the options the driver was opened with.
func (d *Driver) Options() Options {
	d.fdMu.RLock() // a reopen changes ReadOnly on the main Context
	defer d.fdMu.RUnlock()
	return d.opts
}

// Open checks that the node suits the file: its alignment covers the DIO
// alignment (so no unaligned transfer reaches the driver), and a read-only
// file backs only a read-only node.
func (d *Driver) Open(n *block.Node) error {
	if d.closed {
		return &block.Error{Kind: block.Io, Op: block.OpOpen, Node: n.Name(), Err: block.ErrClosed}
	}
	if int64(n.Options().Align) < d.reqAlign {
		return &block.Error{Kind: block.Unsupported, Op: block.OpOpen, Node: n.Name(),
			Err: fmt.Errorf("%s needs request alignment %d (cache=none); node has %d", d.path, d.reqAlign, n.Options().Align)}
	}
	if d.opts.ReadOnly && !n.ReadOnly() {
		return &block.Error{Kind: block.Io, Op: block.OpOpen, Node: n.Name(),
			Err: &os.PathError{Op: "open", Path: d.path, Err: syscall.EROFS}}
	}
	d.attached = true
	return nil
}

// Close closes the file (and so drops the locks) and returns the close's
// error (on NFS and FUSE, close can report a failed write-back). The block
// layer calls it inside a drained section: nothing is in flight.
func (d *Driver) Close(n *block.Node) error {
	if d.closed {
		return nil
	}
	d.closed = true
	if err := d.file.Close(); err != nil {
		return err
	}
	if err := d.file.Wait(); err != nil {
		return &os.PathError{Op: "close", Path: d.path, Err: err}
	}
	return nil
}

// Length reports the image size: the file size, or the device size.
func (d *Driver) Length(n *block.Node) (int64, error) {
	size, err := d.length()
	if err != nil {
		return 0, d.opError(n, block.OpLength, 0, err)
	}
	return size, nil
}

func (d *Driver) length() (int64, error) {
	// Length may run on any goroutine (an export's refresh) while a
	// reopen swaps the descriptor on the main Context.
	d.fdMu.RLock()
	defer d.fdMu.RUnlock()
	if d.blockdev || d.chardev {
		// The device size; the fd's offset is never used (every transfer
		// names its offset), so moving it is harmless.
		return unix.Seek(d.fd, 0, unix.SEEK_END)
	}
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		return 0, err
	}
	// QEMU counts images in 512-byte sectors: a file whose size is not a
	// multiple of 512 is an image rounded up, whose tail reads as zeroes
	// (a read reaching EOF is zero-filled) and which a write in the tail
	// extends to the whole sector.
	return (st.Size + sectorSize - 1) &^ (sectorSize - 1), nil
}

// sectorSize is QEMU's BDRV_SECTOR_SIZE, the unit of image lengths.
const sectorSize = 512

// opError builds the typed error of a failed operation: kind, op, node,
// offset, and the cause wrapped with the image path. Failure path only.
func (d *Driver) opError(n *block.Node, op block.Op, off int64, err error) error {
	kind := block.Io
	switch {
	case errors.Is(err, syscall.ENOTSUP), errors.Is(err, syscall.EOPNOTSUPP):
		kind = block.Unsupported
	case errors.Is(err, syscall.EFBIG):
		kind = block.OutOfBounds
	}
	var pe *os.PathError
	if !errors.As(err, &pe) {
		err = &os.PathError{Op: op.String(), Path: d.path, Err: err}
	}
	name := ""
	if n != nil {
		name = n.Name()
	}
	return &block.Error{Kind: kind, Op: op, Node: name, Offset: off, Err: err}
}

// Create makes a raw image of size bytes at path (replacing a file there),
// backed as prealloc says. An existing file is opened without O_TRUNC and
// locked as a read-write Driver locks it (locking=auto) before a byte of it
// changes: an image another process holds (a running VM, qemu-io, another
// ringblk) is refused with a *LockError and left as it was. QEMU's create
// takes fewer locks (write and resize, refusing only resize) and so
// truncates a raw image a raw qemu-io holds read-write; we refuse that
// too.
func Create(path string, size int64, prealloc Prealloc) error {
	if size < 0 {
		return &block.Error{Kind: block.OutOfBounds, Op: block.OpOpen, Node: path, Offset: size, Err: syscall.EINVAL}
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return openError(path, err)
	}
	defer f.Close()
	if err := LockFile(f, path, Options{}); err != nil {
		return openError(path, err)
	}
	err = unix.Ftruncate(int(f.Fd()), 0)
	if err == nil {
		err = grow(f, path, 0, size, prealloc)
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return &block.Error{Kind: block.Io, Op: block.OpTruncate, Node: path, Offset: size, Err: err}
	}
	return nil
}

// ReopenReadOnly turns a read-write image file into a read-only one, as
// QEMU's reopen of a node to read-only does for file-posix: the file is
// flushed (fdatasync), reopened O_RDONLY with the same cache flags, and
// the QEMU-compatible locks move to the new descriptor as a read-only
// opener's — the write and resize bytes (101, 103) are dropped, so another
// process may now open the image for reading without force-share, while
// writers are still refused (201, 203, unless ShareRW). The old
// descriptor is closed. The caller guarantees nothing is in flight on the
// node (a drained section) and that the node no longer writes (read-only
// or inactive). On error the file stays open read-write with its locks.
// Reopening a read-only file does nothing.
func (d *Driver) ReopenReadOnly() error {
	if d.closed {
		return &os.PathError{Op: "reopen", Path: d.path, Err: os.ErrClosed}
	}
	if d.opts.ReadOnly {
		return nil
	}
	if err := retryEINTR(func() error { return unix.Fdatasync(d.fd) }); err != nil && !d.blockdev {
		return &os.PathError{Op: "reopen: fdatasync", Path: d.path, Err: err}
	}
	f, err := d.reopenSame(os.O_RDONLY, "reopen read-only")
	if err != nil {
		return err
	}
	nfd := int(f.Fd())
	if d.locked {
		// Old descriptor first: the new one's check would otherwise see
		// our own write lock (another open file description) as a
		// conflict.
		if err := downgradeLocks(d.fd); err != nil {
			f.Close()
			return &os.PathError{Op: "reopen: drop the write locks", Path: d.path, Err: err}
		}
		held, unshared := lockPerms(true, d.opts.ShareRW)
		if err := applyLocks(nfd, d.path, held, unshared); err != nil {
			f.Close()
			return errors.Join(&os.PathError{Op: "reopen: lock read-only", Path: d.path, Err: err}, upgradeLocks(d.fd))
		}
	}
	old := d.file
	d.fdMu.Lock() // a Length on another goroutine is done with the old fd
	d.file, d.fd = aio.NewFile(f), nfd
	d.opts.ReadOnly = true
	d.fdMu.Unlock()
	if err := old.Close(); err != nil {
		return err
	}
	if err := old.Wait(); err != nil {
		return &os.PathError{Op: "reopen: close the read-write descriptor", Path: d.path, Err: err}
	}
	return nil
}

// Reopen changes the file between read-only and read-write for
// block.Node.SetReadOnly (block.Reopener): ReopenReadOnly or
// ReopenReadWrite.
func (d *Driver) Reopen(_ *block.Node, readOnly bool) error {
	if readOnly {
		return d.ReopenReadOnly()
	}
	return d.ReopenReadWrite()
}

var _ block.Reopener = (*Driver)(nil)

// reopenSame opens the image's path again with mode and the cache flags it
// was opened with, and checks that the path still names the open file (a
// path renamed or replaced since the open would swap another file in).
func (d *Driver) reopenSame(mode int, op string) (*os.File, error) {
	flags := unix.O_CLOEXEC | mode
	switch d.opts.Cache {
	case CacheNone:
		flags |= unix.O_DIRECT
	case CacheWritethrough:
		flags |= unix.O_DSYNC
	}
	f, err := openFile(d.path, flags, d.opts.NoAtime)
	if err != nil {
		return nil, &os.PathError{Op: op, Path: d.path, Err: err}
	}
	var a, b unix.Stat_t
	if err := unix.Fstat(d.fd, &a); err != nil {
		f.Close()
		return nil, &os.PathError{Op: "reopen: fstat", Path: d.path, Err: err}
	}
	if err := unix.Fstat(int(f.Fd()), &b); err != nil || a.Dev != b.Dev || a.Ino != b.Ino || a.Rdev != b.Rdev {
		f.Close()
		if err == nil {
			err = errors.New("the path names another file than the open image now")
		}
		return nil, &os.PathError{Op: op, Path: d.path, Err: err}
	}
	return f, nil
}

// ReopenReadWrite makes a read-only image file read-write, as QEMU
// reopens a backing file read-write for a commit into it: the file is
// reopened O_RDWR with the same cache flags and takes a writer's
// QEMU-compatible locks, checked against every other process (a reader
// that does not share writes refuses it, with a LockError naming the
// "write" permission). It undoes ReopenReadOnly, and promotes a file
// opened read-only alike (block.Node.SetReadOnly, through Reopen). The
// caller guarantees nothing is in flight on the node (a drained section).
// A file that is read-write already is left alone. On error the file
// stays open read-only with a reader's locks.
func (d *Driver) ReopenReadWrite() error {
	if d.closed {
		return &os.PathError{Op: "reopen", Path: d.path, Err: os.ErrClosed}
	}
	if !d.opts.ReadOnly {
		return nil
	}
	f, err := d.reopenSame(os.O_RDWR, "reopen read-write")
	if err != nil {
		return err
	}
	nfd := int(f.Fd())
	if d.locked {
		// The old descriptor's bytes go first: its "write not shared"
		// byte would otherwise count as another user refusing our write.
		roHeld, unshared := lockPerms(true, d.opts.ShareRW)
		if err := unlockAll(d.fd); err != nil {
			f.Close()
			return &os.PathError{Op: "reopen: drop the read-only locks", Path: d.path, Err: err}
		}
		held, _ := lockPerms(false, d.opts.ShareRW)
		if err := applyLocks(nfd, d.path, held, unshared); err != nil {
			f.Close()
			return errors.Join(&os.PathError{Op: "reopen: lock read-write", Path: d.path, Err: err},
				applyLocks(d.fd, d.path, roHeld, unshared))
		}
	}
	old := d.file
	d.fdMu.Lock() // a Length on another goroutine is done with the old fd
	d.file, d.fd = aio.NewFile(f), nfd
	d.opts.ReadOnly = false
	d.fdMu.Unlock()
	if err := old.Close(); err != nil {
		return err
	}
	if err := old.Wait(); err != nil {
		return &os.PathError{Op: "reopen: close the read-only descriptor", Path: d.path, Err: err}
	}
	return nil
}
