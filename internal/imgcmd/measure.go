package imgcmd

import (
	"fmt"
	"io"
	"math/bits"
	"strconv"
	"strings"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/internal/cli"
	"github.com/ringblk/ringblk/internal/units"
)

const measureHelp = `usage: ringblk measure [--output=human|json] [-O fmt] [-o opts] [--size N | [-f fmt] [-U] FILE]

Compute how much space an image of format fmt needs, as qemu-img measure
does: for a new image of N bytes (--size), or to hold a copy of FILE
(ringblk convert -O fmt FILE …). "required size" is what the image takes
with its data as it is, "fully allocated size" what it takes when every
cluster is allocated; "bitmaps size" (qcow2 v3 from a qcow2 v3 source)
is what persistent dirty bitmaps would add.

  -O fmt               target format: raw (default) or qcow2
  -o options           target creation options: cluster_size, compat,
                       refcount_bits, extended_l2, preallocation,
                       backing_file… (see 'ringblk create --help')
  --size N             size of a new image (k, M, G… suffixes)
  -f fmt               FILE's format: raw, qcow2 or null (probed when absent)
  -U, --force-share    read FILE even if another process has it open for
                       writing (no locks taken)
  --output=human|json  output format (default human)
  -h, --help           this help
`

var measureSpec = cli.OptSpec{
	Short: map[byte]bool{'f': true, 'O': true, 'o': true, 'U': false, 'h': false},
	Long:  map[string]bool{"output": true, "size": true, "force-share": false, "help": false},
}

// measureInfo is qemu-img's BlockMeasureInfo.
type measureInfo struct {
	required, fullyAllocated int64
	hasBitmaps               bool
	bitmaps                  int64
}

// Measure is "ringblk measure" (qemu-img measure): args are what follows the
// command name; the result is the exit status.
func Measure(args []string, stdout, stderr io.Writer) int {
	return cli.Run(measureHelp, stdout, stderr, func() (int, error) {
		opts, operands, err := cli.ParseOpts(args, measureSpec)
		if err != nil {
			return 1, err
		}
		srcFmt, outFmt, output := "", "raw", "human"
		var olist []string
		var forceShare, hasSize bool
		var size int64
		for _, o := range opts {
			switch o.Name {
			case "f":
				srcFmt = o.Val
			case "O":
				outFmt = o.Val
			case "o":
				olist = append(olist, o.Val)
			case "U", "force-share":
				forceShare = true
			case "output":
				output = o.Val
			case "size":
				if size, err = units.ParseSize(o.Val); err != nil || size < 0 {
					return 1, cli.Usagef("Invalid image size specified: '%s' (use k, M, G, T, P or E suffixes)", o.Val)
				}
				hasSize = true
			}
		}
		if err := checkOutput(output); err != nil {
			return 1, err
		}
		if err := checkSourceFormat(srcFmt); err != nil {
			return 1, err
		}
		if outFmt != "raw" && outFmt != "qcow2" {
			return 1, cli.Usagef("Unknown file format '%s' (measure supports raw and qcow2)", outFmt)
		}
		switch {
		case len(operands) > 1:
			return 1, cli.Usagef("Unexpected argument '%s' (see 'ringblk measure --help')", operands[1])
		case hasSize && len(operands) == 1:
			return 1, cli.Usagef("--size N cannot be used together with a filename.")
		case !hasSize && len(operands) == 0:
			return 1, cli.Usagef("Either --size N or one filename must be specified.")
		}
		kv := map[string]string{}
		for _, l := range olist {
			for _, p := range strings.Split(l, ",") {
				if p == "" {
					continue
				}
				k, v, ok := strings.Cut(p, "=")
				if !ok {
					return 1, cli.Usagef("Invalid parameter '%s' in -o (expected key=value)", p)
				}
				kv[k] = v
			}
		}
		var src *imageChain
		if len(operands) == 1 {
			img, err := cli.OpenBlk(operands[0], cli.BlkOptions{Format: srcFmt, ReadOnly: true, ForceShare: forceShare})
			if err != nil {
				return 1, err
			}
			defer img.Close()
			if src, err = newImageChain(img, false); err != nil {
				return 1, err
			}
			defer src.Close()
		}
		var info *measureInfo
		if outFmt == "raw" {
			info, err = measureRaw(kv, size, src)
		} else {
			info, err = measureQcow2(kv, size, src)
		}
		if err != nil {
			return 1, err
		}
		if output == "json" {
			o := newObject()
			if info.hasBitmaps {
				o.set("bitmaps", info.bitmaps)
			}
			o.set("required", info.required)
			o.set("fully-allocated", info.fullyAllocated)
			return 0, writeJSON(stdout, o)
		}
		fmt.Fprintf(stdout, "required size: %d\nfully allocated size: %d\n", info.required, info.fullyAllocated)
		if info.hasBitmaps {
			fmt.Fprintf(stdout, "bitmaps size: %d\n", info.bitmaps)
		}
		return 0, nil
	})
}

func roundUp(v, to int64) int64 { return (v + to - 1) / to * to }

// measureRaw: a raw image is as large as its guest, allocated or not.
func measureRaw(kv map[string]string, size int64, src *imageChain) (*measureInfo, error) {
	for k, v := range kv {
		switch k {
		case "preallocation":
			if v != "off" && v != "falloc" && v != "full" {
				return nil, cli.Usagef("Invalid parameter value for 'preallocation': '%s' (off, falloc, full)", v)
			}
		default:
			return nil, cli.Usagef("Invalid parameter '%s' for format raw", k)
		}
	}
	if src != nil {
		size = src.size()
	}
	req := roundUp(size, 512)
	return &measureInfo{required: req, fullyAllocated: req}, nil
}

// measureQcow2 computes QEMU's qcow2 estimate: the metadata of a fully
// allocated image of the (cluster-rounded) size, plus the data clusters
// the source really uses (all of them with preallocation or a backing
// file, since then nothing can be left out).
func measureQcow2(kv map[string]string, size int64, src *imageChain) (*measureInfo, error) {
	cs := int64(65536)
	version := 3
	refcountBits := int64(-1)
	extL2 := false
	hasBacking := false
	prealloc := "off"
	for k, v := range kv {
		switch k {
		case "cluster_size":
			n, err := units.ParseSize(v)
			if err != nil || n < 512 || n > 2<<20 || bits.OnesCount64(uint64(n)) != 1 {
				return nil, cli.Usagef("Cluster size must be a power of two between 512 and 2048k (got '%s')", v)
			}
			cs = n
		case "compat":
			switch v {
			case "0.10", "v2":
				version = 2
			case "1.1", "v3":
				version = 3
			default:
				return nil, cli.Usagef("Invalid parameter value for 'compat': '%s' (0.10, 1.1, v2, v3)", v)
			}
		case "refcount_bits":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 64 || bits.OnesCount(uint(n)) != 1 {
				return nil, cli.Usagef("Refcount width must be a power of two and may not exceed 64 bits (got '%s')", v)
			}
			refcountBits = int64(n)
		case "extended_l2":
			switch v {
			case "on":
				extL2 = true
			case "off":
				extL2 = false
			default:
				return nil, cli.Usagef("Invalid parameter value for 'extended_l2': '%s' (on, off)", v)
			}
		case "preallocation":
			switch v {
			case "off", "metadata", "falloc", "full":
				prealloc = v
			default:
				return nil, cli.Usagef("Invalid parameter value for 'preallocation': '%s' (off, metadata, falloc, full)", v)
			}
		case "backing_file":
			hasBacking = true
		case "backing_fmt", "lazy_refcounts", "compression_type":
		default:
			return nil, cli.Usagef("Invalid parameter '%s' for format qcow2", k)
		}
	}
	if extL2 && cs < 16384 {
		return nil, cli.Usagef("Extended L2 entries are only supported with cluster sizes of at least 16384 bytes")
	}
	if refcountBits < 0 {
		refcountBits = 16
	} else if version < 3 && refcountBits != 16 {
		return nil, cli.Usagef("Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)")
	}
	l2e := int64(8)
	if extL2 {
		l2e = 16
	}
	virtual := roundUp(size, cs)
	l2Tables := (virtual/cs + cs/l2e - 1) / (cs / l2e)
	if l2Tables*8 > qcow2.MaxL1Bytes {
		return nil, fmt.Errorf("The image size is too large (try using a larger cluster size)")
	}

	var required int64
	info := &measureInfo{}
	if src != nil {
		ssize := src.size()
		virtual = roundUp(ssize, cs)
		if hasBacking {
			// Nothing says what the new backing file shares with the
			// source: count every cluster.
			required = virtual
		} else {
			var pnum int64
			for off := int64(0); off < ssize; off += pnum {
				s, err := src.statusAbove(off, ssize-off, false)
				if err != nil {
					return nil, err
				}
				pnum = s.Pnum
				if s.Status&block.StatusZero != 0 {
					continue
				}
				if s.Status&(block.StatusData|block.StatusAllocated) == block.StatusData|block.StatusAllocated {
					// Count to the end of the cluster and start the next
					// look at the following one (QEMU's exact sum).
					pnum = roundUp(off+pnum, cs) - off
					required += off%cs + pnum
				}
			}
		}
		if top := src.levels[0]; version >= 3 && top.format == "qcow2" {
			d := top.node.Driver().(*qcow2.Driver)
			h := d.Header()
			if h.Version >= 3 {
				info.hasBitmaps = true
				if h.Bitmaps != nil && h.AutoclearFeatures&qcow2.AutoclearBitmaps != 0 && h.Bitmaps.Count > 0 {
					return nil, fmt.Errorf("%s: measuring persistent dirty bitmaps is not supported yet (%d bitmaps)", top.path, h.Bitmaps.Count)
				}
			}
		}
	}
	if prealloc == "full" || prealloc == "falloc" {
		required = virtual
	}
	info.fullyAllocated = qcow2PreallocSize(virtual, cs, int64(bits.TrailingZeros64(uint64(refcountBits))), l2e)
	info.required = info.fullyAllocated - virtual + required
	return info, nil
}

// qcow2PreallocSize is the file size of a fully allocated qcow2 image of
// size bytes: header cluster, L2 tables, L1 table, refcount structures
// (which count themselves), and the data.
func qcow2PreallocSize(size, cs, refcountOrder, l2e int64) int64 {
	aligned := roundUp(size, cs)
	meta := cs
	nl2e := roundUp(aligned/cs, cs/l2e)
	meta += nl2e * l2e
	nl1e := roundUp(nl2e*l2e/cs, cs/8)
	meta += nl1e * 8
	meta += refcountMetadataSize((meta+aligned)/cs, cs, refcountOrder)
	return meta + aligned
}

// refcountMetadataSize finds the fixed point of refcount blocks and table
// clusters needed to count clusters host clusters and themselves.
func refcountMetadataSize(clusters, cs, refcountOrder int64) int64 {
	perTable := cs / 8
	perBlock := cs * 8 / (int64(1) << refcountOrder)
	var table, blocks, n, last int64
	for {
		last = n
		blocks = (clusters + table + blocks + perBlock - 1) / perBlock
		table = (blocks + perTable - 1) / perTable
		n = clusters + blocks + table
		if n == last {
			break
		}
	}
	return (blocks + table) * cs
}
