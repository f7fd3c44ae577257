package imgcmd

import (
	"fmt"
	"io"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/internal/cli"
)

const measureHelp = `usage: ringblk measure [--output=human|json] [-O fmt] [-o opts] [--size N | [-f fmt] [-l snapshot] [-U] FILE]

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
  -l snapshot          measure FILE's internal snapshot (ID or name, or
                       snapshot.id=ID,snapshot.name=NAME) instead of its
                       active disk
  -U, --force-share    read FILE even if another process has it open for
                       writing (no locks taken)
  --output=human|json  output format (default human)
  -h, --help           this help
`

var measureSpec = cli.WithObjects(cli.OptSpec{
	Short: map[byte]bool{'f': true, 'O': true, 'o': true, 'l': true, 'U': false, 'h': false},
	Long:  map[string]bool{"output": true, "size": true, "force-share": false, "help": false},
})

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
		args, imageOpts, err := cli.TakeGlobalOpts(args)
		if err != nil {
			return 1, err
		}
		opts, operands, err := cli.ParseOpts(args, measureSpec)
		if err != nil {
			return 1, err
		}
		srcFmt, outFmt, output := "", "raw", "human"
		var olist []string
		var forceShare, hasSize, hasFmt bool
		var size int64
		var snap *cli.SnapshotRef
		ia := cli.ImageArgs{ImageOpts: imageOpts}
		// Each option is checked as it comes, then the operands, in
		// qemu-img measure's order (iotest 178).
		for _, o := range opts {
			if took, err := ia.Take(o); took {
				if err != nil {
					return 1, err
				}
				continue
			}
			switch o.Name {
			case "f":
				srcFmt, hasFmt = o.Val, true
			case "O":
				outFmt = o.Val
			case "o":
				if _, _, err := format.SplitOptionList([]string{o.Val}); err != nil {
					return 1, cli.Usagef("%v", err)
				}
				olist = append(olist, o.Val)
			case "l":
				if snap, err = cli.ParseSnapshotRef(o.Val); err != nil {
					return 1, err
				}
			case "U", "force-share":
				forceShare = true
			case "output":
				if err := checkOutput(o.Val); err != nil {
					return 1, err
				}
				output = o.Val
			case "size":
				if size, err = cli.ParseSize(o.Val); err != nil {
					return 1, err
				}
				hasSize = true
			}
		}
		if err := checkSourceFormat(srcFmt); err != nil {
			return 1, err
		}
		switch {
		case len(operands) > 1 && cli.Prog == "ringblk":
			return 1, cli.Usagef("Unexpected argument '%s' (see 'ringblk measure --help')", operands[1])
		case len(operands) > 1:
			return 1, cli.Usagef("At most one filename argument is allowed.")
		case len(operands) == 0 && (ia.ImageOpts || hasFmt || snap != nil):
			return 1, cli.Usagef("--image-opts, -f, and -l require a filename argument.")
		case hasSize && len(operands) == 1:
			return 1, cli.Usagef("--size N cannot be used together with a filename.")
		case !hasSize && len(operands) == 0:
			return 1, cli.Usagef("Either --size N or one filename must be specified.")
		}
		var pairs []format.OptionPair
		if len(olist) > 0 {
			var help bool
			if pairs, help, err = format.SplitOptionList(olist); err != nil {
				return 1, cli.Usagef("%v", err)
			}
			if help {
				// qemu-img measure has no option help either.
				return 1, cli.Usagef("Invalid parameter 'help'")
			}
		}
		var src *imageChain
		if len(operands) == 1 {
			img, err := ia.Open(operands[0], cli.BlkOptions{Format: srcFmt, ReadOnly: true, ForceShare: forceShare})
			if err != nil {
				return 1, err
			}
			defer img.Close()
			if snap != nil {
				// A loaded snapshot: the tables read by name would be the
				// active disk's, so the node's own mapping counts.
				if err := snap.Load(img.Qcow2, img.Format); err != nil {
					return 1, err
				}
				if src, err = newImageChain(img, false); err != nil {
					return 1, err
				}
			} else if src, err = newImageChain(img, true); err != nil {
				// With the mapping tables (as map): a data cluster over a
				// hole of the file reads as zero and needs no space, as in
				// QEMU's measure (a preallocated, never written source).
				// Without them (a source the tables cannot be read from by
				// name) every data cluster counts.
				if src, err = newImageChain(img, false); err != nil {
					return 1, err
				}
			}
			defer src.Close()
		}
		if outFmt != "raw" && outFmt != "qcow2" && outFmt != "luks" {
			if cli.Prog != "ringblk" {
				return 1, cli.Usagef("Unknown file format '%s'", outFmt)
			}
			return 1, cli.Usagef("Unknown file format '%s' (measure supports raw, qcow2 and luks)", outFmt)
		}
		var info *measureInfo
		switch outFmt {
		case "raw":
			info, err = measureRaw(pairs, size, src)
		case "luks":
			info, err = measureLuks(pairs, size, src)
		default:
			info, err = measureQcow2(pairs, size, src)
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
func measureRaw(pairs []format.OptionPair, size int64, src *imageChain) (*measureInfo, error) {
	for _, p := range pairs {
		k, v := p.Key, p.Value
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
func measureQcow2(pairs []format.OptionPair, size int64, src *imageChain) (*measureInfo, error) {
	// The encryption area (QEMU: the LUKS payload offset, in clusters).
	cr := &createReq{pairs: pairs}
	enc, err := takeQcowEncrypt(cr)
	if err != nil {
		return nil, err
	}
	pairs = cr.pairs
	var luksArea int64
	switch enc.format {
	case "aes": // nothing stored: measured as a plain image (aes.go)
		if err := enc.setup(nil); err != nil {
			return nil, err
		}
	case "luks":
		if luksArea, err = enc.lo.area("encrypt."); err != nil {
			return nil, err
		}
	}
	o, err := format.ParseOptionPairs(pairs, format.ForMeasure)
	if err != nil {
		return nil, cli.OptionErr("", err)
	}
	co := o.Create
	cs := co.EffectiveClusterSize()
	hasBacking := o.Has("backing_file")
	version := co.Version
	if version == 0 {
		version = 3
	}
	if err := format.MeasureCheckSize(size, co); err != nil {
		return nil, err
	}
	virtual := roundUp(size, cs)

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
				info.bitmaps = measureBitmaps(d.PersistentBitmaps(), ssize, cs)
			}
		}
	}
	if co.Preallocation == format.PreallocFull || co.Preallocation == format.PreallocFalloc {
		required = virtual
	}
	info.fullyAllocated = roundUp(luksArea, cs) + format.MeasureFullyAllocated(virtual, co)
	info.required = info.fullyAllocated - virtual + required
	return info, nil
}

// measureBitmaps is what the persistent bitmaps of a source of size bytes
// take in a target with clusters of cs bytes, as QEMU counts it: every
// bitmap fully allocated (its data clusters and its table, each rounded
// up to clusters), plus the directory rounded up to clusters.
func measureBitmaps(list []qcow2.BitmapInfo, size, cs int64) int64 {
	var total, dir int64
	for _, b := range list {
		bits := (size + b.Granularity - 1) / b.Granularity
		clusters := ((bits+7)/8 + cs - 1) / cs
		total += clusters*cs + roundUp(clusters*8, cs)
		dir += (24 + int64(len(b.Name)) + 7) &^ 7
	}
	return total + roundUp(dir, cs)
}
