// Package chain opens an image file by name as a node stack: a raw file
// node, and for qcow2 a qcow2 node over it with its whole backing chain.
// It is the one place that turns a path and a format into nodes, shared by
// the operator commands, the benchmark and embedders that want qemu-img's
// way of opening images without writing the backing opener themselves.
//
// Policy (docs/design/chain-open.md): the top image's format may be probed
// when the caller asks for it (Format ""), because the operator named that
// file; a backing file is always opened with the format its overlay
// records, read-only, and never probed. Relative backing names resolve
// against the directory of the image that names them, as QEMU does.
package chain

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/cache"
	"github.com/ringblk/ringblk/crypto/luks"
	"github.com/ringblk/ringblk/drivers/blkdebug"
	luksdrv "github.com/ringblk/ringblk/drivers/luks"
	"github.com/ringblk/ringblk/drivers/nbd"
	"github.com/ringblk/ringblk/drivers/null"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/drivers/rbd"
)

// Options say how to open an image.
type Options struct {
	// Format is "raw", "qcow2" or "null"; "" probes the top image (the
	// qcow2 magic means qcow2, anything else raw).
	Format string
	// Probed says Format was guessed by the caller's Probe (as when
	// Format is ""): a raw image is then guarded against writes that
	// would make it probe as another format (raw.Options.Probed).
	Probed   bool
	ReadOnly bool
	// AutoReadOnly opens read-only what can only be opened so (an NBD
	// export the server offers read-only) instead of failing: QEMU's
	// auto-read-only, for option trees.
	AutoReadOnly bool
	// Cache, Discard and DetectZeroes apply to the top image's file node.
	Cache        raw.Cache
	Discard      raw.Discard
	DetectZeroes raw.DetectZeroes
	// ForceShare is qemu-img's -U: open read-only without claiming the
	// image against writers, so it works beside a running VM. Implies
	// ReadOnly.
	ForceShare bool
	// ShareRW lets other processes write and resize the top image while
	// it is open (QEMU's share-rw=on; raw.Options.ShareRW). Backing files
	// never share writes.
	ShareRW bool
	// Fadvise is the access-pattern hint of the top image's file node.
	Fadvise raw.Fadvise
	// NoAtime opens every file node with O_NOATIME (raw.Options.NoAtime).
	NoAtime bool
	// Locking is the locking mode of every file node (default auto).
	Locking raw.Locking
	// NoBacking opens the top image alone: unallocated clusters read as
	// zeros (qemu-img's backing-less opens, e.g. rebase -u, info).
	NoBacking bool
	// KeySecrets are the passwords of encrypted images (format luks, or
	// qcow2 with LUKS encryption): [0] for the top image, [i] for the
	// i-th backing file. A missing or nil entry opens an encrypted
	// image's header only when HeaderOnly is set, and fails otherwise.
	KeySecrets [][]byte
	// HeaderOnly opens a luks image without unlocking it (qemu-img info):
	// its reads and writes fail.
	HeaderOnly bool
	// Secret looks up a secret object by id, for the key-secret options
	// of option trees (OpenSpec); nil: no secrets.
	Secret func(id string) ([]byte, error)
	// NullSize is the size of a "null" image.
	NullSize int64
	// WritableDepth opens the backing image at this depth (1: the top
	// image's backing file) read-write, whatever ReadOnly says: the base
	// that qemu-img commit writes into. 0 (the default) keeps every
	// backing image read-only.
	WritableDepth int
	// AllowRBDBacking follows rbd: backing file names recorded in qcow2
	// images (they reach a Ceph cluster with this host's credentials, so
	// an image from elsewhere must not get to choose: off by default).
	// RINGBLK_RBD_BACKING=1 in the environment turns it on for every
	// open, so that each command need not grow a flag.
	AllowRBDBacking bool
	// Name is the top node's name; backing nodes get Name+"-backing-N".
	Name string
	// FileName names the top qcow2 image's file node ("": Name+"-file"),
	// e.g. after the file node a QMP client added and named.
	FileName string
	// BackingNode, when set, is the top qcow2 image's backing node (QMP's
	// blockdev-add "backing": a node's name): the image's backing file
	// name is not followed, this node is attached in its place (with a
	// reference of the image's own). An image whose header names no
	// backing file takes it too (qcow2.DriverOptions.AttachBacking): its
	// unallocated clusters read through to it, the header stays as it is.
	BackingNode *block.Node
	// debugConfig is the blkdebug configuration of a "blkdebug:CFG:IMAGE"
	// name (set by Open): the top image's file node goes under a
	// blkdebug filter.
	debugConfig string
	debug       bool
	// QcowOptions is passed to every qcow2 driver of the chain (its
	// Backing, ID, Chain and Depth fields are set here). A nil SharedCache
	// becomes one clean L2 cache (qcow2.DefaultSharedCacheBytes) for the
	// images of this chain; pass one to share it among chains.
	QcowOptions qcow2.DriverOptions
}

// Image is an opened image: the caller holds one reference on Node.
type Image struct {
	Node   *block.Node
	Path   string
	Format string
	// Qcow2 is the top node's driver when Format is "qcow2".
	Qcow2 *qcow2.Driver
	// Luks is the top node's driver when Format is "luks".
	Luks *luksdrv.Driver
}

// secret is the key secret of the image at depth (nil when not given).
func (o *Options) secret(depth int) []byte {
	if depth < len(o.KeySecrets) {
		return o.KeySecrets[depth]
	}
	return nil
}

// Probe decides the format of a local image the user named: "qcow2" when
// it starts with the qcow2 magic, "luks" with the LUKS1 magic and version,
// "raw" otherwise. Never use it on backing
// files or on images from untrusted sources. An NBD URI is "raw" without
// looking: the export is the guest's view, whatever serves it.
func Probe(path string) (string, error) {
	path = LocalPath(path)
	if nbd.IsURI(path) || rbd.IsName(path) {
		return "raw", nil // an RBD image is probed once opened (Open)
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var b [8]byte
	n, err := f.ReadAt(b[:], 0)
	if err != nil && err != io.EOF {
		return "", err
	}
	if probesQcow2(b[:n]) {
		return "qcow2", nil
	}
	if n == 8 && luks.IsLUKS(b[:]) {
		return "luks", nil
	}
	return "raw", nil
}

// probesQcow2 is QEMU's probe on an image's first bytes: the qcow2
// magic and a nonzero version (1 is its qcow driver's, which the qcow2
// driver here refuses by name). Version 0, or a file too short for one,
// is raw, which raw.ProbesAsOtherFormat (the probed-raw guard) agrees
// with.
func probesQcow2(b []byte) bool {
	return len(b) >= 8 && string(b[:4]) == "QFI\xfb" && binary.BigEndian.Uint32(b[4:]) != 0
}

// LocalPath is the file a name opens: IMAGE for "blkdebug:CONFIG:IMAGE",
// the name itself otherwise.
func LocalPath(name string) string {
	if rest, ok := strings.CutPrefix(name, "blkdebug:"); ok {
		if _, img, ok := strings.Cut(rest, ":"); ok {
			return img
		}
	}
	return name
}

// FileID identifies a file for backing-chain cycle detection
// ("dev:inode"); the path when it cannot be stat'ed.
func FileID(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return path
	}
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return fmt.Sprintf("%d:%d", s.Dev, s.Ino)
	}
	return path
}

// ResolveBacking returns where a backing name recorded in the image at
// imagePath points: absolute names as they are, relative ones against the
// image's directory.
func ResolveBacking(imagePath, name string) string {
	if name == "" || filepath.IsAbs(name) || rbd.IsName(name) || nbd.IsURI(name) {
		return name
	}
	return filepath.Join(filepath.Dir(imagePath), name)
}

// Open opens path as nodes of g. Call it from outside g's Contexts (it
// waits for the main Context), like raw.NewNode.
func Open(g *block.Graph, path string, o Options) (*Image, error) {
	if o.ForceShare {
		o.ReadOnly = true
	}
	if os.Getenv("RINGBLK_RBD_BACKING") == "1" {
		o.AllowRBDBacking = true
	}
	if rest, ok := strings.CutPrefix(path, "blkdebug:"); ok {
		return openBlkdebug(g, path, rest, o)
	}
	if rbd.IsName(path) {
		return openRBD(g, path, o)
	}
	format := o.Format
	if format == "" {
		var err error
		if format, err = Probe(path); err != nil {
			return nil, &ProbeError{Path: path, Err: err}
		}
		o.Probed = true
	}
	if nbd.IsURI(path) {
		// An NBD export (nbd://, nbd+unix://): a client node. The
		// server applies the image format; only raw is read over it.
		if format != "raw" {
			return nil, fmt.Errorf("Could not open '%s': ringblk reads NBD exports as raw only, not %s", path, format)
		}
		if o.Name == "" {
			o.Name = "nbd"
		}
		n, err := nbd.NewNode(g, path, o.ReadOnly, block.Options{Name: o.Name})
		if err != nil {
			return nil, err
		}
		return &Image{Node: n, Path: path, Format: "raw"}, nil
	}
	if o.Name == "" {
		o.Name = filepath.Base(path)
	}
	img := &Image{Path: path, Format: format}
	switch format {
	case "null":
		if o.NullSize <= 0 {
			return nil, errors.New("null: a size is required (for example -o size=1G)")
		}
		n, err := g.Open(null.New(o.NullSize, null.Options{}), block.Options{Name: o.Name, ReadOnly: o.ReadOnly})
		if err != nil {
			return nil, err
		}
		img.Node = n
	case "raw":
		fo := fileOptions(o, true)
		fo.Probed = o.Probed // raw.ProbesAsOtherFormat guards its first sector
		n, err := raw.NewNode(g, path, fo, block.Options{Name: o.Name, ReadOnly: o.ReadOnly})
		if err != nil {
			return nil, err
		}
		img.Node = n
	case "luks":
		file, err := raw.NewNode(g, path, fileOptions(o, true), block.Options{Name: o.Name + "-file", ReadOnly: o.ReadOnly})
		if err != nil {
			return nil, err
		}
		drv := luksdrv.New(file, luksdrv.Options{Password: o.secret(0), NoIO: o.HeaderOnly})
		n, err := g.Open(drv, luksdrv.NodeOptions(block.Options{Name: o.Name, ReadOnly: o.ReadOnly}))
		if err != nil {
			return nil, err
		}
		img.Node, img.Luks = n, drv
	case "qcow2":
		if o.QcowOptions.SharedCache == nil {
			// One clean L2 tier for the whole chain, not one per image.
			o.QcowOptions.SharedCache = cache.NewLRU(qcow2.DefaultSharedCacheBytes)
		}
		n, drv, err := openQcow2(g, path, o, o.Name, 0, nil, true)
		if err != nil {
			return nil, err
		}
		img.Node, img.Qcow2 = n, drv
	default:
		return nil, fmt.Errorf("Unknown file format '%s'", format)
	}
	return img, nil
}

// Close drops the caller's reference on the image's node and returns the
// errors of the node closes that caused (a failed metadata write-back).
func (i *Image) Close() error {
	if i.Node == nil {
		return nil
	}
	err := i.Node.Unref()
	i.Node = nil
	return err
}

func fileOptions(o Options, top bool) raw.Options {
	fo := raw.Options{ReadOnly: o.ReadOnly || !top, Locking: o.Locking, NoAtime: o.NoAtime}
	if top {
		fo.Cache, fo.Discard, fo.DetectZeroes, fo.Fadvise = o.Cache, o.Discard, o.DetectZeroes, o.Fadvise
	} else if o.Cache == raw.CacheNone {
		fo.Cache = raw.CacheNone
	}
	if o.ForceShare || (top && o.ShareRW) {
		fo.ShareRW = true
	}
	return fo
}

// openQcow2 opens one qcow2 image of the chain; depth 0 is the top.
func openQcow2(g *block.Graph, path string, o Options, name string, depth int, chain []string, top bool) (*block.Node, *qcow2.Driver, error) {
	fname := name + "-file"
	if depth == 0 && o.FileName != "" {
		fname = o.FileName
	}
	file, err := fileNode(g, path, o, top, fname)
	if err != nil {
		return nil, nil, err
	}
	if depth == 0 && o.debug { // the top image only (top also means "writable" here)
		if file, err = blkdebug.NewNode(g, file, o.debugConfig, block.Options{Name: name + "-blkdebug", ReadOnly: o.ReadOnly}); err != nil {
			return nil, nil, err
		}
	}
	return openQcow2On(g, file, path, o, name, depth, chain, top)
}

// fileNode opens the protocol node of an image: an RBD image for an rbd:
// name, a local file otherwise.
func fileNode(g *block.Graph, path string, o Options, top bool, name string) (*block.Node, error) {
	ro := o.ReadOnly || !top
	fo := fileOptions(o, top)
	if rbd.IsName(path) {
		s, err := rbd.ParseName(path)
		if err != nil {
			return nil, err
		}
		s.Cache = RBDCache(fo.Cache)
		return rbd.NewNode(g, s, ro, block.Options{Name: name})
	}
	return raw.NewNode(g, path, fo, block.Options{Name: name, ReadOnly: ro})
}

// RBDCache is the librbd cache mode for a node opened with cache mode c:
// write-back stays write-back; none and writethrough turn librbd's cache
// off, so a completed write is on the OSDs (docs/design/rbd.md §"Cache mode").
func RBDCache(c raw.Cache) rbd.Cache {
	if c == raw.CacheWriteback {
		return rbd.CacheWriteback
	}
	return rbd.CacheOff
}

// openQcow2On opens a qcow2 driver over file (whose reference it takes);
// path is where relative backing names resolve.
func openQcow2On(g *block.Graph, file *block.Node, path string, o Options, name string, depth int, chain []string, top bool) (*block.Node, *qcow2.Driver, error) {
	dopts := o.QcowOptions
	dopts.ID, dopts.Depth, dopts.Chain = FileID(path), depth, chain
	dopts.IgnoreBacking = o.NoBacking
	// A backing node given by the caller is attached even where the
	// header names no backing file.
	dopts.AttachBacking = depth == 0 && o.BackingNode != nil
	dopts.KeySecret, dopts.HeaderOnly = o.secret(depth), o.HeaderOnly
	dopts.DataFile = dataFileOpener(g, path, o, top, name) // datafile.go
	o.QcowOptions.DataFileNode = nil                       // the top's alone
	dopts.Backing = func(req qcow2.BackingRequest) (n *block.Node, err error) {
		if depth == 0 && o.BackingNode != nil {
			o.BackingNode.Ref()
			return o.BackingNode, nil
		}
		p := ResolveBacking(path, req.Name)
		if rbd.IsName(p) && !o.AllowRBDBacking {
			return nil, &BackingError{Path: p, Err: errors.New("rbd: backing files are followed only when allowed (RINGBLK_RBD_BACKING=1): the image names a Ceph image to read with this host's credentials")}
		}
		bname := fmt.Sprintf("%s-backing-%d", o.Name, req.Depth)
		bo, writable := o, req.Depth == o.WritableDepth
		bo.QcowOptions.BackingFormat = "" // an override is for one level
		if writable {
			bo.ReadOnly, bo.ForceShare = false, false
		}
		switch req.Format {
		case "raw":
			n, err = fileNode(g, p, bo, writable, bname)
		case "qcow2":
			n, _, err = openQcow2(g, p, bo, bname, req.Depth, req.Chain, writable)
		default:
			return nil, fmt.Errorf("backing file '%s': unsupported format '%s'", p, req.Format)
		}
		if err != nil {
			var be *BackingError
			if !errors.As(err, &be) { // a deeper level already says which
				err = &BackingError{Path: p, Err: err}
			}
		}
		return n, err
	}
	drv := qcow2.New(file, dopts)
	n, err := g.Open(drv, block.Options{Name: name, ReadOnly: o.ReadOnly || !top})
	if err != nil {
		drv.Release()
		return nil, nil, err
	}
	return n, drv, nil
}

// openRBD opens an rbd: name: the RBD image as a node, and a qcow2 node
// over it when the format is (or probes as) qcow2.
func openRBD(g *block.Graph, path string, o Options) (*Image, error) {
	switch o.Format {
	case "", "raw", "qcow2":
	default:
		return nil, fmt.Errorf("Could not open '%s': ringblk opens RBD images as raw or qcow2, not %s", path, o.Format)
	}
	if o.Name == "" {
		o.Name = "rbd"
	}
	fname := o.Name
	if o.Format == "qcow2" {
		fname += "-file"
	}
	file, err := fileNode(g, path, o, true, fname)
	if err != nil {
		return nil, err
	}
	format := o.Format
	if format == "" {
		b := make([]byte, 512)
		format = "raw"
		if l, _ := file.Length(); l >= 4 {
			if _, err := file.ReadAt(b[:min(l, 512)], 0); err != nil {
				file.Unref()
				return nil, fmt.Errorf("Could not open '%s': probing the format: %w", path, err)
			}
			if probesQcow2(b[:min(l, 512)]) {
				format = "qcow2"
			}
		}
	}
	if format == "raw" {
		return &Image{Node: file, Path: path, Format: "raw"}, nil
	}
	if o.QcowOptions.SharedCache == nil {
		o.QcowOptions.SharedCache = cache.NewLRU(qcow2.DefaultSharedCacheBytes)
	}
	name := o.Name
	if fname == name {
		name += "-fmt" // probed: the RBD node already has the name
	}
	n, drv, err := openQcow2On(g, file, path, o, name, 0, nil, true)
	if err != nil {
		return nil, err
	}
	return &Image{Node: n, Path: path, Format: "qcow2", Qcow2: drv}, nil
}

// ProbeError is an image whose format could not be probed because its
// file could not be opened or read. It keeps the *os.PathError, so a
// caller can word it as qemu-img does (internal/cli's OpenError: the
// file driver's "Could not open" nested in the image's).
type ProbeError struct {
	Path string // the image as named
	Err  error
}

func (e *ProbeError) Error() string {
	return "Could not open '" + e.Path + "': " + unwrapPath(e.Err).Error()
}

func (e *ProbeError) Unwrap() error { return e.Err }

// unwrapPath returns the cause of a failed system call (the errno of an
// *os.PathError), worded as QEMU prints strerror: capitalised ("No such
// file or directory"; Go's text is lower case). errors.Is still finds the
// errno.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	if en, ok := err.(syscall.Errno); ok {
		return Strerror{en}
	}
	return err
}

// Strerror is an errno worded as glibc's strerror, which QEMU prints
// ("Input/output error"; Go's text starts lower-case). errors.Is and
// errors.As still find the errno.
type Strerror struct{ syscall.Errno }

func (e Strerror) Error() string {
	s := e.Errno.Error()
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func (e Strerror) Unwrap() error { return e.Errno }

// BackingError is a backing file of the chain that could not be opened:
// the overlay is unopenable because of it. Its message is QEMU's: "Could
// not open backing file: Could not open 'PATH': cause", naming the file
// that failed (missing, unreadable, locked, not the recorded format).
type BackingError struct {
	Path string // as resolved against the overlay's directory
	Err  error
}

func (e *BackingError) Error() string {
	var le *raw.LockError
	if errors.As(e.Err, &le) {
		// QEMU's file driver words a lock conflict without naming the
		// file (its hint does).
		return "Could not open backing file: " + le.Error()
	}
	return "Could not open backing file: Could not open '" + e.Path + "': " + causeText(e.Err)
}

func (e *BackingError) Unwrap() error { return e.Err }

// causeText is err as qemu-img words an open failure: an errno as
// strerror (capitalised), a lock conflict as QEMU's sentence, anything
// else without the block layer's context.
func causeText(err error) string {
	var le *raw.LockError
	if errors.As(err, &le) {
		return le.Error()
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return Strerror{errno}.Error()
	}
	for {
		be, ok := err.(*block.Error)
		if !ok || be.Err == nil {
			return err.Error()
		}
		err = be.Err
	}
}

// openBlkdebug opens "blkdebug:CONFIG:IMAGE" (QEMU's filename form; rest
// is what follows the prefix): IMAGE with its format, the top image's
// file node under a blkdebug filter with CONFIG's rules (an empty CONFIG:
// no rules). A raw image is QEMU's shape: the raw format over the filter
// over the file node, the format raising read_aio and write_aio.
func openBlkdebug(g *block.Graph, name, rest string, o Options) (*Image, error) {
	cfg, path, ok := strings.Cut(rest, ":")
	if !ok || path == "" {
		return nil, fmt.Errorf("Could not open '%s': blkdebug requires both config file and image path", name)
	}
	format := o.Format
	if format == "" {
		var err error
		if format, err = Probe(path); err != nil {
			return nil, &ProbeError{Path: name, Err: err}
		}
	}
	if o.Name == "" {
		o.Name = filepath.Base(path)
	}
	o.debugConfig, o.debug = cfg, true
	img := &Image{Path: name, Format: format}
	switch format {
	case "raw":
		file, err := raw.NewNode(g, path, fileOptions(o, true), block.Options{Name: o.Name + "-file", ReadOnly: o.ReadOnly})
		if err != nil {
			return nil, err
		}
		dbg, err := blkdebug.NewNode(g, file, cfg, block.Options{Name: o.Name + "-blkdebug", ReadOnly: o.ReadOnly})
		if err != nil {
			return nil, err
		}
		if img.Node, err = rawOver(g, dbg, o.Name, o.ReadOnly); err != nil {
			return nil, err
		}
	case "qcow2":
		if o.QcowOptions.SharedCache == nil {
			o.QcowOptions.SharedCache = cache.NewLRU(qcow2.DefaultSharedCacheBytes)
		}
		n, drv, err := openQcow2(g, path, o, o.Name, 0, nil, true)
		if err != nil {
			return nil, err
		}
		img.Node, img.Qcow2 = n, drv
	default:
		return nil, fmt.Errorf("Could not open '%s': blkdebug over a %s image is not supported", name, format)
	}
	return img, nil
}
