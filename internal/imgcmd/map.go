package imgcmd

import (
	"bufio"
	"errors"
	"fmt"
	"io"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/nbd"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/drivers/rbd"
	"github.com/ringblk/ringblk/internal/cli"
	"github.com/ringblk/ringblk/internal/units"
)

const mapHelp = `usage: ringblk map [-f fmt] [--output=human|json] [-U] [--start-offset=N] [--max-length=N] FILE

Dump the allocation of FILE's guest ranges over its whole backing chain,
as qemu-img map does: one entry per run of ranges with the same status
(depth in the chain, present, zero, data, and the host offset where the
data lives in a file).

  -f fmt               raw, qcow2 or null (probed from FILE when absent;
                       backing files are never probed)
  --output=human|json  human: a table of the ranges with data and their host
                       offsets; json: every range (default human)
  -U, --force-share    read an image another process has open for writing
                       (no locks taken)
  --start-offset=N     begin at guest offset N (k, M, G… suffixes)
  --max-length=N       stop after N bytes
  -h, --help           this help
`

var mapSpec = cli.WithObjects(cli.OptSpec{
	Short: map[byte]bool{'f': true, 'U': false, 'h': false},
	Long:  map[string]bool{"output": true, "force-share": false, "start-offset": true, "max-length": true, "help": false},
})

// Map is "ringblk map" (qemu-img map): args are what follows the
// command name; the result is the exit status.
func Map(args []string, stdout, stderr io.Writer) int {
	return cli.Run(mapHelp, stdout, stderr, func() (int, error) {
		args, imageOpts, err := cli.TakeGlobalOpts(args)
		if err != nil {
			return 1, err
		}
		opts, operands, err := cli.ParseOpts(args, mapSpec)
		if err != nil {
			return 1, err
		}
		format, output := "", "human"
		var forceShare bool
		start, maxLen := int64(0), int64(-1)
		ia := cli.ImageArgs{ImageOpts: imageOpts}
		for _, o := range opts {
			if took, err := ia.Take(o); took {
				if err != nil {
					return 1, err
				}
				continue
			}
			switch o.Name {
			case "f":
				format = o.Val
			case "output":
				output = o.Val
			case "U", "force-share":
				forceShare = true
			case "start-offset":
				if start, err = units.ParseSize(o.Val); err != nil || start < 0 {
					return 1, cli.Usagef("Invalid start offset specified: '%s' (use k, M, G, T, P or E suffixes)", o.Val)
				}
			case "max-length":
				if maxLen, err = units.ParseSize(o.Val); err != nil || maxLen < 0 {
					return 1, cli.Usagef("Invalid max length specified: '%s' (use k, M, G, T, P or E suffixes)", o.Val)
				}
			}
		}
		if err := checkOutput(output); err != nil {
			return 1, err
		}
		if err := checkSourceFormat(format); err != nil {
			return 1, err
		}
		if len(operands) != 1 {
			return 1, cli.Usagef("Expecting one image file name (see 'ringblk map --help')")
		}
		img, err := ia.Open(operands[0], cli.BlkOptions{Format: format, ReadOnly: true, ForceShare: forceShare})
		if err != nil {
			return 1, err
		}
		defer img.Close()
		ch, err := newImageChain(img, true)
		if err != nil {
			return 1, err
		}
		defer ch.Close()
		w := bufio.NewWriter(stdout)
		defer w.Flush()
		return dumpMap(w, ch, start, maxLen, output == "json")
	})
}

// chainLevel is one image of an opened backing chain.
type chainLevel struct {
	node   *block.Node
	path   string // as QEMU names it: the backing name joined to the overlay's directory
	format string
	size   int64
	// qimg reads the qcow2 mapping for host offsets (map only); nil
	// otherwise. The node's driver does not expose host offsets.
	qimg *openedImage
	// dataPath is the external data file holding the level's data
	// (datafile.go); "" when the data is in the image itself.
	dataPath string
}

// imageChain is an image with its backing chain, top first.
type imageChain struct {
	levels []chainLevel
}

// newImageChain lists img's chain. withOffsets also opens each qcow2
// file read-only for its mapping tables (qemu-img map's "offset").
func newImageChain(img *cli.BlkImage, withOffsets bool) (*imageChain, error) {
	ch := &imageChain{}
	n, path, format := img.Node, img.Path, img.Format
	for n != nil {
		if f := skipFilters(n); f != n {
			// A filter (blkdebug) maps as the node it filters, as
			// QEMU's block status skips filters.
			n = f
			if _, ok := n.Driver().(*raw.Driver); ok {
				format = "raw"
			}
		}
		size, err := n.Length()
		if err != nil {
			ch.Close()
			return nil, fmt.Errorf("Could not get the size of '%s': %v", path, cli.PlainErr(err))
		}
		l := chainLevel{node: n, path: path, format: format, size: size}
		var next *block.Node
		var nextPath, nextFormat string
		if d, ok := n.Driver().(*qcow2.Driver); ok {
			l.format = "qcow2"
			l.dataPath = dataFilePath(d, path) // datafile.go
			if c := n.Child(block.RoleBacking); c != nil {
				h := d.Header()
				next, nextPath, nextFormat = c.Node(), combinePath(path, h.BackingFile), h.BackingFormat
			}
			if withOffsets && rbd.IsName(path) {
				// qcow2 in RBD: the mapping tables read through the RBD node.
				if l.qimg, err = openNodeQcow2(n, path); err != nil {
					ch.Close()
					return nil, err
				}
			} else if withOffsets {
				if l.qimg, err = openImage(path, "qcow2"); err != nil {
					ch.Close()
					return nil, err
				}
			}
		}
		ch.levels = append(ch.levels, l)
		n, path, format = next, nextPath, nextFormat
	}
	return ch, nil
}

// skipFilters is the first node at or below n that is not a filter
// (a node whose data is its RoleFiltered child's).
func skipFilters(n *block.Node) *block.Node {
	for depth := 0; depth < 64; depth++ {
		c := n.Child(block.RoleFiltered)
		if c == nil || c.Node() == nil {
			break
		}
		n = c.Node()
	}
	return n
}

func (ch *imageChain) Close() {
	for _, l := range ch.levels {
		if l.qimg != nil {
			l.qimg.Close()
		}
	}
}

// size is the guest size of the top image.
func (ch *imageChain) size() int64 { return ch.levels[0].size }

// levelStatus is level i's own status of [off, off+n): its flags, how
// many bytes share them, and the host offset of off where QEMU reports
// one (raw files always; qcow2 data and preallocated zero clusters).
func (ch *imageChain) levelStatus(i int, off, n int64) (st block.Status, pnum, hostOff int64, hasOff bool, err error) {
	l := &ch.levels[i]
	st, pnum, err = l.node.BlockStatus(off, n)
	if err != nil {
		return 0, 0, 0, false, fmt.Errorf("Could not read file metadata of '%s' at offset %d: %v", l.path, off, cli.PlainErr(err))
	}
	if pnum <= 0 || pnum > n {
		return 0, 0, 0, false, fmt.Errorf("Could not read file metadata of '%s' at offset %d: block status covered %d of %d bytes", l.path, off, pnum, n)
	}
	_, isNBD := l.node.Driver().(*nbd.Driver)
	switch {
	case l.format == "raw":
		return st, pnum, off, true, nil
	case isNBD:
		// An NBD node opened as the image itself (--image-opts
		// driver=nbd): QEMU's client gives every extent its own offset,
		// and qemu-img prints it for what is present (qemu-iotests
		// nbd-qemu-allocation). Before, no offset was printed.
		return st, pnum, off, st&block.StatusAllocated != 0, nil
	case l.qimg != nil && st&block.StatusAllocated != 0:
		ext, err := l.qimg.qcow.Map(nil, off, min(pnum, l.qimg.qcow.Geometry.Size-off))
		if err != nil || len(ext) == 0 {
			return 0, 0, 0, false, fmt.Errorf("Could not read file metadata of '%s' at offset %d: %v", l.path, off, cli.PlainErr(err))
		}
		x := ext[0]
		pnum = min(pnum, x.Len)
		switch x.Kind {
		case format.ExtentData:
			if l.qimg.qcow.Header.Encrypted() {
				// Encrypted clusters have no offset to show (qemu-img).
				return st, pnum, 0, false, nil
			}
			if l.dataPath != "" {
				// An external data file: QEMU does not ask it (iotest 244),
				// and the image file holds no data at these offsets.
				return st, pnum, x.HostOff, true, nil
			}
			if zero, fp := l.fileReadsZero(x.HostOff, pnum); zero {
				st, pnum = st|block.StatusZero, fp // map_holes.go
			} else {
				pnum = fp
			}
			return st, pnum, x.HostOff, true, nil
		case format.ExtentZero:
			return st, pnum, x.HostOff, x.HostOff != 0, nil
		case format.ExtentCompressed:
			// Several compressed clusters are one run of "data without
			// an offset"; the merge in dumpMap joins them again.
			return st, pnum, 0, false, nil
		}
	case l.qimg != nil && l.qimg.qcow.Geometry.ExtendedL2 && !l.qimg.qcow.Header.Encrypted():
		// Not allocated here, but an unallocated subcluster of a cluster
		// with a host offset has one in QEMU's block status.
		host, cnt, ok, err := l.qimg.qcow.UnallocatedAllocRun(off, min(pnum, l.qimg.qcow.Geometry.Size-off))
		if err != nil {
			return 0, 0, 0, false, fmt.Errorf("Could not read file metadata of '%s' at offset %d: %v", l.path, off, cli.PlainErr(err))
		}
		if cnt > 0 {
			pnum = min(pnum, cnt)
		}
		return st, pnum, host, ok, nil
	}
	return st, pnum, 0, false, nil
}

// mapEntry is one run of qemu-img map's output.
type mapEntry struct {
	start, length, depth int64
	present, zero, data  bool
	offset               int64
	hasOffset            bool
	file                 string // the file holding the data, when hasOffset
}

// mapStatus finds the status of [off, off+n) the way qemu-img map does:
// down the chain to the first image that has data or zeroes for it.
func (ch *imageChain) mapStatus(off, n int64) (mapEntry, error) {
	for i := range ch.levels {
		st, pnum, hostOff, hasOff, err := ch.levelStatus(i, off, n)
		if err != nil {
			return mapEntry{}, err
		}
		n = pnum
		last := i == len(ch.levels)-1
		if !last && st&(block.StatusData|block.StatusZero) == 0 && off >= ch.levels[i+1].size {
			// Past the end of a shorter backing file: zeroes, decided at
			// this level although it has nothing allocated.
			st = block.StatusZero
		}
		if st&(block.StatusData|block.StatusZero) != 0 || last {
			e := mapEntry{
				start: off, length: pnum, depth: int64(i),
				present:   st&block.StatusAllocated != 0,
				zero:      st&block.StatusZero != 0,
				data:      st&block.StatusData != 0,
				offset:    hostOff,
				hasOffset: hasOff,
			}
			if hasOff {
				e.file = ch.levels[i].path
				if p := ch.levels[i].dataPath; p != "" {
					e.file = p
				}
			}
			return e, nil
		}
	}
	return mapEntry{}, errors.New("assertion failed: empty image chain")
}

// mergeable says whether next continues cur in the same output entry.
func mergeable(cur, next *mapEntry) bool {
	if cur.length == 0 {
		return false
	}
	if cur.zero != next.zero || cur.data != next.data || cur.depth != next.depth ||
		cur.present != next.present || cur.hasOffset != next.hasOffset || cur.file != next.file {
		return false
	}
	return !cur.hasOffset || cur.offset+cur.length == next.offset
}

func dumpMap(w io.Writer, ch *imageChain, start, maxLen int64, asJSON bool) (int, error) {
	length := ch.size()
	if maxLen >= 0 {
		length = min(length, start+maxLen)
	}
	if asJSON {
		fmt.Fprint(w, "[")
	} else {
		fmt.Fprintf(w, "%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File")
	}
	cur := mapEntry{start: start}
	for cur.start+cur.length < length {
		off := cur.start + cur.length
		next, err := ch.mapStatus(off, length-off)
		if err != nil {
			return 1, err
		}
		if mergeable(&cur, &next) {
			cur.length += next.length
			continue
		}
		if cur.length > 0 {
			if err := dumpMapEntry(w, &cur, true, asJSON); err != nil {
				return 1, err
			}
		}
		cur = next
	}
	if err := dumpMapEntry(w, &cur, false, asJSON); err != nil {
		return 1, err
	}
	return 0, nil
}

func dumpMapEntry(w io.Writer, e *mapEntry, more, asJSON bool) error {
	if !asJSON {
		if e.data && !e.hasOffset {
			return errors.New("File contains external, encrypted or compressed clusters.")
		}
		if e.data && !e.zero {
			fmt.Fprintf(w, "%-16s%-16s%-16s%s\n", hex0(e.start), hex0(e.length), hex0(e.offset), e.file)
		}
		return nil
	}
	fmt.Fprintf(w, `{ "start": %d, "length": %d, "depth": %d, "present": %t, "zero": %t, "data": %t`,
		e.start, e.length, e.depth, e.present, e.zero, e.data)
	if e.hasOffset {
		fmt.Fprintf(w, `, "offset": %d`, e.offset)
	}
	fmt.Fprint(w, "}")
	if more {
		fmt.Fprint(w, ",\n")
	} else {
		fmt.Fprint(w, "]\n")
	}
	return nil
}

// hex0 is C's "%#x": "0" for zero, "0x…" otherwise.
func hex0(v int64) string {
	if v == 0 {
		return "0"
	}
	return fmt.Sprintf("%#x", v)
}

// chainStatus is the status of a range over the whole chain
// (block.StatusAbove), with QEMU's OFFSET_VALID for the image it is the
// status of (known only when the chain was opened withOffsets).
type chainStatus struct {
	block.ChainStatus
	hasOff bool
}

// statusAbove returns the status of [off, off+n) over the chain, or of
// the top image alone when topOnly (convert -B copies only what the top
// allocates).
func (ch *imageChain) statusAbove(off, n int64, topOnly bool) (chainStatus, error) {
	images := len(ch.levels)
	if topOnly {
		images = 1
	}
	var hasOff bool // of the last image asked
	cs, err := block.StatusAbove(images, func(i int) int64 { return ch.levels[i].size },
		func(i int, off, n int64) (block.Status, int64, error) {
			st, pnum, _, h, err := ch.levelStatus(i, off, n)
			hasOff = h
			return st, pnum, err
		}, off, n)
	return chainStatus{ChainStatus: cs, hasOff: hasOff && err == nil && !cs.PastEnd}, err
}
