package cli

// The commands' way onto the block layer: one main Context, a graph, and
// an image chain opened through drivers/chain. Commands do their I/O with
// the node's synchronous helpers (ReadAt, WriteAt, Flush, BlockStatus…)
// from the command's goroutine.

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/internal/units"
)

// BlkOptions say how a command opens an image (qemu-img's -f, -U, -t, …).
type BlkOptions struct {
	Format     string // "", "raw", "qcow2", "null"
	Probed     bool   // Format was probed by the caller (chain.Options.Probed)
	ReadOnly   bool
	ForceShare bool // -U
	NoBacking  bool // open the top image alone
	// WritableDepth opens the backing image at this depth (1: the top's
	// backing file) read-write (commit's base; chain.Options).
	WritableDepth int
	Cache         string // "" (writeback), "none", "writeback", "writethrough"
	NullSize      int64
	// QcowOptions is handed to every qcow2 driver of the chain.
	QcowOptions qcow2.DriverOptions

	// Discard is what the top image's file node does with discards
	// (qemu-io's -d; the zero value ignores them).
	Discard raw.Discard

	// KeySecrets are the passwords of encrypted images, [0] the top
	// image's, [i] the i-th backing file's (chain.Options.KeySecrets).
	KeySecrets [][]byte
	// HeaderOnly opens a luks image without its password (info).
	HeaderOnly bool
}

// BlkImage is an image opened for a command, with the Context and graph
// it lives in. Close releases everything.
type BlkImage struct {
	Ctx    *aio.Context
	Graph  *block.Graph
	Node   *block.Node
	Path   string
	Format string
	Qcow2  *qcow2.Driver // nil unless Format is "qcow2"
	// owned is false for images opened into another BlkImage's graph.
	owned bool
}

// NewBlkEnv starts a main Context and a graph for one command.
func NewBlkEnv() (*aio.Context, *block.Graph, error) {
	return newBlkEnv(false)
}

// NewServerEnv is NewBlkEnv for a server whose clients are local
// processes that wake its loop with every request (ringblk nbd): the
// main Context's thread runs under SCHED_BATCH (aio Options.Batch), so a
// client is not preempted by each wake-up it causes and the loop takes
// its requests in batches (docs/design/nbd.md).
func NewServerEnv() (*aio.Context, *block.Graph, error) {
	return newBlkEnv(true)
}

func newBlkEnv(batch bool) (*aio.Context, *block.Graph, error) {
	c, err := aio.New(aio.Options{Name: "main", Main: true, CPU: aio.NoCPU, Entries: 256, ArenaSize: 4 << 20, Batch: batch})
	if err != nil {
		return nil, nil, fmt.Errorf("cannot create an io_uring Context: %v", err)
	}
	if err := c.Start(); err != nil {
		return nil, nil, fmt.Errorf("cannot start an io_uring Context: %v", err)
	}
	return c, block.NewGraph(c), nil
}

// OpenBlk opens path in a Context and graph of its own.
func OpenBlk(path string, o BlkOptions) (*BlkImage, error) {
	c, g, err := NewBlkEnv()
	if err != nil {
		return nil, err
	}
	img, err := OpenBlkIn(c, g, path, o)
	if err != nil {
		c.Stop()
		return nil, err
	}
	img.owned = true
	return img, nil
}

// NewBlkImage is an image a command opened itself (a node in graph g of
// Context c, which the image owns: Close stops c).
func NewBlkImage(c *aio.Context, g *block.Graph, n *block.Node, path, format string) *BlkImage {
	return &BlkImage{Ctx: c, Graph: g, Node: n, Path: path, Format: format, owned: true}
}

// OpenBlkIn opens path as another image of an existing graph (convert and
// compare open two images in one graph). Close drops only the node.
func OpenBlkIn(c *aio.Context, g *block.Graph, path string, o BlkOptions) (*BlkImage, error) {
	if err := ResolveNull(path, &o); err != nil {
		return nil, err
	}
	co := chain.Options{
		Format:        o.Format,
		Probed:        o.Probed,
		ReadOnly:      o.ReadOnly,
		ForceShare:    o.ForceShare,
		NoBacking:     o.NoBacking,
		WritableDepth: o.WritableDepth,
		NullSize:      o.NullSize,
		Discard:       o.Discard,
		QcowOptions:   withRepairLog(o.QcowOptions),
		Name:          NodeNameFor(g, path),
		KeySecrets:    o.KeySecrets,
		HeaderOnly:    o.HeaderOnly,
	}
	if o.Cache != "" {
		m, ok := raw.ParseCache(o.Cache)
		if !ok {
			return nil, Usagef("Invalid cache option: %s", o.Cache)
		}
		co.Cache = m
	}
	img, err := chain.Open(g, path, co)
	if err != nil {
		if !o.ReadOnly && errors.Is(err, syscall.EISDIR) {
			// QEMU's read-write open of a directory fails in open(2)
			// itself (a read-only one reaches its regular-file check).
			return nil, DirOpenError(path)
		}
		return nil, OpenError(path, err)
	}
	if o.Format == "" && img.Format == "raw" && !o.ReadOnly && Prog != "ringblk" {
		// QEMU's raw driver says so when it opens a probed image for
		// writing (its writes to block 0 are guarded, raw.Options.Probed).
		fmt.Fprint(os.Stderr, ProbedRawWarning(path))
	}
	return &BlkImage{Ctx: c, Graph: g, Node: img.Node, Path: path, Format: img.Format, Qcow2: img.Qcow2}, nil
}

// ProbedRawWarning is QEMU's warning for a raw image opened for writing
// without a format.
func ProbedRawWarning(path string) string {
	return "WARNING: Image format was not specified for '" + path + "' and probing guessed raw.\n" +
		"         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n" +
		"         Specify the 'raw' format explicitly to remove the restrictions.\n"
}

// defaultNullSize is the size of a null image nobody gave a size: 1 GiB,
// as QEMU's null-co driver.
const defaultNullSize = 1 << 30

// nullFilename parses the one json: filename we understand, QEMU's way of
// naming a null image with its size: json:{"driver":"null-co","size":N}
// (size a number or a string with a suffix, "4M"). ok is false when path
// is not a json: filename.
func nullFilename(path string) (size int64, ok bool, err error) {
	rest, ok := strings.CutPrefix(path, "json:")
	if !ok {
		return 0, false, nil
	}
	_ = rest
	m, err := chain.ParseJSONFilename(path)
	if err != nil {
		return 0, true, fmt.Errorf("Could not open '%s': %v", path, err)
	}
	switch m["driver"] {
	case "null-co", "null-aio", "null":
	default:
		return 0, true, fmt.Errorf("Could not open '%s': ringblk reads json: filenames for the null-co driver only", path)
	}
	size = defaultNullSize
	for k, v := range m {
		switch k {
		case "driver", "read-zeroes":
		case "size":
			if size, err = ParseSize(v); err != nil {
				return 0, true, fmt.Errorf("Could not open '%s': %v", path, err)
			}
		default:
			return 0, true, fmt.Errorf("Could not open '%s': the null driver has no option '%s'", path, k)
		}
	}
	if size < 0 {
		return 0, true, fmt.Errorf("Could not open '%s': size must not be negative", path)
	}
	return size, true, nil
}

// ResolveNull turns the ways of naming a null image into BlkOptions:
// -f null or -f null-co (any name; the size is NullSize, or 1 GiB), or a
// json: null-co filename (which then needs no -f).
func ResolveNull(path string, o *BlkOptions) error {
	if o.Format == "null-co" {
		o.Format = "null"
	}
	size, ok, err := nullFilename(path)
	switch {
	case err != nil:
		return err
	case ok && o.Format != "" && o.Format != "null":
		return fmt.Errorf("Could not open '%s': a null-co filename with -f %s", path, o.Format)
	case ok:
		o.Format, o.NullSize = "null", size
	case o.Format == "" && (strings.HasPrefix(path, "null-co://") || strings.HasPrefix(path, "null-aio://")):
		// QEMU's protocol names for the null driver; never a local file.
		o.Format = "null"
		if o.NullSize <= 0 {
			o.NullSize = defaultNullSize
		}
	case o.Format == "null" && o.NullSize <= 0:
		o.NullSize = defaultNullSize
	}
	return nil
}

// NodeNameFor gives each image of a graph its own node name.
func NodeNameFor(g *block.Graph, path string) string {
	_ = g
	blkSeq++
	return fmt.Sprintf("img%d", blkSeq)
}

var blkSeq int

// OpenError words an open failure as qemu-img does: "Could not open
// 'FILE': cause", unless the cause already names the file. A missing or
// unreadable file and a -f qcow2 on something else are reported in
// qemu-img's words, without the block layer's context.
func OpenError(path string, err error) error {
	if cause := openCause(err); cause != "" {
		we := &wordedError{msg: fmt.Sprintf("Could not open '%s': %s", path, cause), err: err}
		var ste *format.SnapshotTableError
		if Prog != "ringblk" && errors.As(err, &ste) && ste.Hint != "" {
			// qemu-img's second line: how check -r all repairs it.
			return &HintError{Err: we, Hint: ste.Hint + "\n"}
		}
		return we
	}
	msg := err.Error()
	if strings.HasPrefix(msg, "Could not open") || strings.HasPrefix(msg, "Unknown file format") {
		return err
	}
	// The cause without the block layer's context (operation, node
	// name, offset, kind): the user named a file, not a node.
	return &wordedError{msg: fmt.Sprintf("Could not open '%s': %v", path, PlainErr(err)), err: err}
}

// wordedError is an error reworded for the user that keeps its cause for
// errors.Is and errors.As.
type wordedError struct {
	msg string
	err error
}

func (e *wordedError) Error() string { return e.msg }
func (e *wordedError) Unwrap() error { return e.err }

// openCause returns qemu-img's wording for the commonest open failures, or
// "" to keep the error as it is.
func openCause(err error) string {
	var pe *os.PathError
	var le *raw.LockError
	var be *chain.BackingError
	var bfe *qcow2.BackingFormatError
	var dfe *chain.DataFileError
	switch {
	case errors.As(err, &be):
		return be.Error()
	case errors.As(err, &dfe): // qcow2 data files (drivers/chain/datafile.go)
		return dfe.Error()
	case errors.Is(err, qcow2.ErrDataFileRequired) || errors.Is(err, qcow2.ErrDataFileNotExternal):
		return OpenCause(err).Error()
	case errors.As(err, &bfe):
		return BackingFormatErr(bfe).Error()
	case errors.As(err, &le):
		return le.Error()
	case errors.Is(err, format.ErrNotQcow2):
		return "Image is not in qcow2 format"
	case Prog != "ringblk" && qemuFormatWording(err) != "":
		return qemuFormatWording(err)
	case errors.As(err, &pe) && errors.Is(pe.Err, syscall.EISDIR):
		return NotRegularFile(pe.Path)
	case errors.As(err, &pe):
		// qemu-img nests the file driver's own "Could not open" in the
		// image's: the same sentence twice for a missing top image.
		return fmt.Sprintf("Could not open '%s': %v", pe.Path, UnwrapPathErr(pe))
	}
	return ""
}

// Close drops the node and, for an image that owns them, stops the
// Context. Dirty metadata is written back by the drivers' Close.
// A failed write-back is returned (and so reaches the exit status).
func (b *BlkImage) Close() error {
	var err error
	if b.Node != nil {
		err = b.Node.Unref()
		b.Node = nil
	}
	if !b.owned {
		return err
	}
	b.owned = false
	if _, serr := b.Ctx.Stop(); serr != nil && err == nil {
		err = serr
	}
	return err
}

// ParseSize reads an image size as qemu-img does: a decimal number (a
// fraction allowed before a suffix), an optional suffix k, M, G, T, P, E
// (powers of 1024), or a hex number. A mistake is qemu-img's two-line
// "Invalid image size specified" message in drop-in mode, one line
// naming the value as ringblk.
func ParseSize(s string) (int64, error) {
	if n, err := chain.ParseQemuSize(s); err == nil {
		return n, nil
	}
	n, err := units.ParseSize(s)
	if err != nil || n < 0 || !strings.HasPrefix(strings.ToLower(s), "0x") {
		if Prog == "ringblk" {
			return 0, Usagef("Invalid image size specified: '%s' (use k, M, G, T, P or E suffixes)", s)
		}
		return 0, &HintError{
			Err:  Usagef("Invalid image size specified. You may use k, M, G, T, P or E suffixes for"),
			Hint: Prog + ": kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.\n",
		}
	}
	return n, nil
}

// NotRegularFile is QEMU's file driver refusing a directory as an image.
func NotRegularFile(path string) string {
	return "'file' driver requires '" + path + "' to be a regular file"
}

// DirOpenError is a read-write open of a directory as qemu-img words it:
// open(2) itself fails, nested as FileOpenError nests it.
func DirOpenError(path string) error {
	return FileOpenError(path, &os.PathError{Op: "open", Path: path, Err: syscall.EISDIR})
}

// FileOpenError words a failure to open an image's file as qemu-img does:
// the file driver's "Could not open" inside the image's, the same path
// twice ("Could not open 'x': Could not open 'x': No such file or
// directory").
func FileOpenError(path string, err error) error {
	return &wordedError{msg: fmt.Sprintf("Could not open '%s': Could not open '%s': %v", path, path, UnwrapPathErr(err)), err: err}
}

// qemuFormatWording is, in drop-in mode, QEMU's sentence for a qcow2
// header QEMU refuses in so few words (scripts match them); ringblk's own
// message names the field and value. "" for the others.
func qemuFormatWording(err error) string {
	var fe *format.FormatError
	if !errors.As(err, &fe) {
		return ""
	}
	var ste *format.SnapshotTableError
	if errors.As(err, &ste) {
		return ste.Text // its hint: OpenError
	}
	var feat *format.FeatureError
	if errors.As(err, &feat) {
		return "Unsupported qcow2 feature(s): " + feat.QEMUText()
	}
	return qemuHeaderWording(fe)
}

// QemuFormatWording is qemuFormatWording for the commands that word an
// open failure themselves (qemu-io prints the cause without qemu-img's
// "Could not open" prefix).
func QemuFormatWording(err error) string { return qemuFormatWording(err) }

// BackingFormatErr words a backing format no driver has: qemu-img's
// sentence in drop-in mode, the driver's (naming the format) as ringblk.
func BackingFormatErr(e *qcow2.BackingFormatError) error {
	if Prog == "ringblk" {
		return e
	}
	return &wordedError{msg: "Could not open backing file: Unknown driver '" + e.Format + "'", err: e}
}
