package imgcmd

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"syscall"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/blkdebug"
	"github.com/ringblk/ringblk/drivers/nbd"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/drivers/rbd"
	"github.com/ringblk/ringblk/internal/cli"
)

const infoHelp = `usage: ringblk info [-f fmt] [--output=human|json] [--backing-chain] [-U] FILE

Show what a raw or qcow2 image is: virtual size, disk size, format,
cluster size, backing file, snapshots and qcow2 details. The output
matches qemu-img info (7.2), including --output=json.

  -f fmt           image format (raw, qcow2, null); without it the file is
                   probed (qcow2 magic, else raw). A null image is named
                   null-co:// or json:{"driver":"null-co","size":N}
                   (1 GiB unless a size is given)
  --output=FMT     human (default) or json
  --backing-chain  show the whole backing chain, top first (JSON: an array)
  -U, --force-share
                   read the image even if another process has it open for
                   writing (no locks taken; the figures may be stale)
  -h, --help       this help
`

var infoSpec = cli.WithObjects(cli.OptSpec{
	Short: map[byte]bool{'f': true, 'U': false, 'h': false},
	Long:  map[string]bool{"output": true, "force-share": false, "backing-chain": false, "help": false},
})

// Info is "ringblk info" (qemu-img info): args are what follows the
// command name; the result is the exit status.
func Info(args []string, stdout, stderr io.Writer) int {
	return cli.Run(infoHelp, stdout, stderr, func() (int, error) {
		args, imageOpts, err := cli.TakeGlobalOpts(args)
		if err != nil {
			return 1, err
		}
		opts, files, err := cli.ParseOpts(args, infoSpec)
		if err != nil {
			return 1, err
		}
		format, output, chain, share := "", "human", false, false
		ia := cli.ImageArgs{ImageOpts: imageOpts}
		for _, o := range opts {
			if took, err := ia.Take(o); took {
				if err != nil {
					return 1, err
				}
				continue
			}
			switch o.Name {
			case "U", "force-share":
				share = true
			case "backing-chain":
				chain = true
			case "f":
				format = o.Val
			case "output":
				output = o.Val
			}
		}
		if err := checkOutput(output); err != nil {
			return 1, err
		}
		if err := checkSourceFormat(format); err != nil {
			return 1, err
		}
		if len(files) != 1 {
			return 1, cli.Usagef("info: expecting one image file name (got %d; see 'ringblk info --help')", len(files))
		}
		display := ""
		if ia.ImageOpts {
			// info reads headers only: key secrets are not looked up.
			display = imageOptsName(files[0])
		}
		given := files[0]
		if files[0], format, err = cli.ImageFile(files[0], format, ia.ImageOpts); err != nil {
			if cli.IsWholeTree(err) {
				return infoTree(&ia, given, format, output, share, stdout)
			}
			return 1, err
		}
		if nbd.IsURI(files[0]) {
			return infoNBD(files[0], format, output, stdout)
		}
		if rbd.IsName(files[0]) {
			return infoRBD(files[0], format, output, stdout)
		}
		if done, err := infoNull(files[0], format, output, stdout); err != nil {
			return 1, err
		} else if done {
			return 0, nil
		}
		var imgs []*openedImage
		defer func() {
			for _, img := range imgs {
				img.Close()
			}
		}()
		seen := map[[2]uint64]bool{}
		path := files[0]
		for {
			img, err := openImage(path, format)
			if err != nil {
				return 1, err
			}
			imgs = append(imgs, img)
			if len(imgs) == 1 {
				img.display = display
			}
			if err := img.lockForRead(share); err != nil {
				return 1, err
			}
			if id, ok := fileID(img.f); ok {
				if seen[id] {
					return 1, fmt.Errorf("Backing file '%s' creates an infinite loop.", path)
				}
				seen[id] = true
			}
			if !chain || img.qcow == nil || img.qcow.Header.BackingFile == "" {
				break
			}
			if len(imgs) > qcow2.MaxBackingDepth {
				return 1, fmt.Errorf("%s: backing chain deeper than %d images", files[0], qcow2.MaxBackingDepth)
			}
			h := img.qcow.Header
			path, format = combinePath(img.path, h.BackingFile), h.BackingFormat
		}
		var infos []*object
		for _, img := range imgs {
			infos = append(infos, imageInfo(img))
		}
		if output == "json" {
			if chain {
				return 0, writeJSON(stdout, infos)
			}
			return 0, writeJSON(stdout, infos[0])
		}
		for i, img := range imgs {
			if i > 0 {
				fmt.Fprintln(stdout)
			}
			if err := printInfoHuman(stdout, img, infos[i]); err != nil {
				return 1, err
			}
		}
		return 0, nil
	})
}

// fileID identifies an open file (device and inode) for loop detection.
func fileID(f *os.File) ([2]uint64, bool) {
	st, err := f.Stat()
	if err != nil {
		return [2]uint64{}, false
	}
	s, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return [2]uint64{}, false
	}
	return [2]uint64{uint64(s.Dev), s.Ino}, true
}

// imageInfo builds qemu-img's ImageInfo object for img (7.2 keys).
func imageInfo(img *openedImage) *object {
	o := newObject()
	var h *format.Header
	if img.qcow != nil {
		h = img.qcow.Header
		if len(img.qcow.Snapshots) > 0 {
			var snaps []*object
			for i := range img.qcow.Snapshots {
				snaps = append(snaps, snapshotInfo(&img.qcow.Snapshots[i]))
			}
			o.set("snapshots", snaps)
		}
		if h.BackingFormat != "" {
			o.set("backing-filename-format", h.BackingFormat)
		}
	}
	if h != nil {
		o.set("virtual-size", int64(h.Size))
	} else {
		o.set("virtual-size", img.size)
	}
	o.set("filename", img.name())
	if h != nil {
		o.set("cluster-size", h.ClusterSize())
	}
	o.set("format", img.format)
	if !img.remote {
		o.set("actual-size", img.blocks)
	}
	if h != nil {
		compat := "1.1"
		if h.Version == 2 {
			compat = "0.10"
		}
		data := newObject()
		data.set("compat", compat)
		ct := "zlib"
		if h.CompressionType == format.CompressionZstd {
			ct = "zstd"
		}
		data.set("compression-type", ct)
		if h.Version >= 3 {
			data.set("lazy-refcounts", h.CompatibleFeatures&format.CompatLazyRefcounts != 0)
		}
		if bms := bitmapsInfo(img); len(bms) > 0 {
			data.set("bitmaps", bms)
		}
		data.set("refcount-bits", 1<<h.RefcountOrder)
		if img.luks != nil {
			data.set("encrypt", luksInfo(img.luks, true))
		} else if h.CryptMethod == format.CryptAES { // aes.go
			aes := newObject()
			aes.set("format", "aes")
			data.set("encrypt", aes)
		}
		if h.HasDataFile() { // datafile.go
			if h.DataFile != "" {
				data.set("data-file", h.DataFile)
			}
			data.set("data-file-raw", h.DataFileRaw())
		}
		if h.Version >= 3 {
			data.set("corrupt", h.IncompatibleFeatures&format.IncompatCorrupt != 0)
			data.set("extended-l2", h.ExtendedL2())
		}
		fs := newObject()
		fs.set("type", "qcow2")
		fs.set("data", data)
		o.set("format-specific", fs)
		if h.BackingFile != "" && img.path != "" {
			o.set("full-backing-filename", combinePath(img.path, h.BackingFile))
		}
		if h.Encrypted() {
			o.set("encrypted", true)
		}
		if h.BackingFile != "" {
			o.set("backing-filename", h.BackingFile)
		}
		o.set("dirty-flag", h.IncompatibleFeatures&format.IncompatDirty != 0)
	} else if img.luks != nil {
		fs := newObject()
		fs.set("type", "luks")
		fs.set("data", luksInfo(img.luks, false))
		o.set("format-specific", fs)
		o.set("encrypted", true)
		o.set("dirty-flag", false)
	} else {
		o.set("dirty-flag", false)
	}
	return o
}

func snapshotInfo(s *format.Snapshot) *object {
	o := newObject()
	// An icount of all ones means "not recorded": qemu-img leaves it out.
	if s.ExtraDataSize >= 24 && s.Icount != ^uint64(0) {
		o.set("icount", s.Icount)
	}
	o.set("vm-clock-nsec", s.VMClockNsec%1e9)
	o.set("name", cString(s.Name))
	o.set("date-sec", s.DateSec)
	o.set("date-nsec", s.DateNsec)
	o.set("vm-clock-sec", s.VMClockNsec/1e9)
	o.set("id", cString(s.ID))
	o.set("vm-state-size", s.VMStateSize)
	return o
}

func printInfoHuman(w io.Writer, img *openedImage, info *object) error {
	var b strings.Builder
	vs := info.vals["virtual-size"].(int64)
	fmt.Fprintf(&b, "image: %s\nfile format: %s\n", img.name(), img.format)
	fmt.Fprintf(&b, "virtual size: %s (%d bytes)\n", sizeToStr(vs), vs)
	if img.remote {
		b.WriteString("disk size: unavailable\n")
	} else {
		fmt.Fprintf(&b, "disk size: %s\n", sizeToStr(img.blocks))
	}
	if img.luks != nil || (img.qcow != nil && img.qcow.Header.CryptMethod == format.CryptAES) {
		b.WriteString("encrypted: yes\n")
	}
	if img.qcow == nil {
		if img.luks != nil {
			b.WriteString("Format specific information:\n")
			dumpObject(&b, info.vals["format-specific"].(*object).vals["data"].(*object), 4)
		}
		_, err := io.WriteString(w, b.String())
		return err
	}
	h := img.qcow.Header
	fmt.Fprintf(&b, "cluster_size: %d\n", h.ClusterSize())
	if h.BackingFile != "" {
		full := combinePath(img.path, h.BackingFile)
		if img.path == "" {
			// An option tree with no one file (quorum): no directory
			// to take a relative name from.
			fmt.Fprintf(&b, "backing file: %s (cannot determine actual path)\n", h.BackingFile)
		} else if full != h.BackingFile {
			fmt.Fprintf(&b, "backing file: %s (actual path: %s)\n", h.BackingFile, full)
		} else {
			fmt.Fprintf(&b, "backing file: %s\n", h.BackingFile)
		}
		if h.BackingFormat != "" {
			fmt.Fprintf(&b, "backing file format: %s\n", h.BackingFormat)
		}
	}
	if h.IncompatibleFeatures&format.IncompatDirty != 0 {
		b.WriteString("dirty flag: yes\n")
	}
	// The snapshot table is the one "snapshot -l" prints (qemu-img info
	// and qemu-img snapshot -l share it).
	if err := printSnapshotList(&b, img.qcow.Snapshots); err != nil {
		return err
	}
	b.WriteString("Format specific information:\n")
	dumpObject(&b, info.vals["format-specific"].(*object).vals["data"].(*object), 4)
	_, err := io.WriteString(w, b.String())
	return err
}

// infoNull shows a null image (-f null, -f null-co, a null-co:// name or a
// json: null-co filename) as qemu-img does: size, name, format and no
// file. done is false when the image is not a null image.
func infoNull(path, format, output string, w io.Writer) (done bool, err error) {
	bo := cli.BlkOptions{Format: format}
	if err := cli.ResolveNull(path, &bo); err != nil {
		return true, err
	}
	if bo.Format != "null" {
		return false, nil
	}
	shown := "null-co"
	if format == "" && !strings.HasPrefix(path, "json:") {
		// A null-co:// name without -f: QEMU puts its raw format on the
		// null-co protocol driver.
		shown = "raw"
	}
	name := qemuJSONName(path)
	o := newObject()
	o.set("virtual-size", bo.NullSize)
	o.set("filename", name)
	o.set("format", shown)
	o.set("actual-size", int64(0))
	if output == "json" {
		return true, writeJSON(w, o)
	}
	_, err = fmt.Fprintf(w, "image: %s\nfile format: %s\nvirtual size: %s (%d bytes)\ndisk size: 0 B\n",
		name, shown, sizeToStr(bo.NullSize), bo.NullSize)
	return true, err
}

// infoNBD describes an NBD export: its size, as qemu-img does (the disk
// size of a remote export is unknown).
func infoNBD(path, format, output string, w io.Writer) (int, error) {
	u, err := nbd.ParseURI(path)
	if err != nil {
		return 1, err
	}
	img, err := cli.OpenBlk(path, cli.BlkOptions{Format: format, ReadOnly: true})
	if err != nil {
		return 1, err
	}
	defer img.Close()
	size, err := img.Node.Length()
	if err != nil {
		return 1, err
	}
	o := newObject()
	o.set("virtual-size", size)
	o.set("filename", u.Canonical())
	o.set("format", "raw")
	if output == "json" {
		return 0, writeJSON(w, o)
	}
	_, err = fmt.Fprintf(w, "image: %s\nfile format: raw\nvirtual size: %s (%d bytes)\ndisk size: unavailable\n",
		u.Canonical(), sizeToStr(size), size)
	return 0, err
}

// qemuJSONName spells a json: filename the way qemu-img prints it (driver
// first, ": " and ", " separators); other names are returned as they are.
func qemuJSONName(path string) string {
	rest, ok := strings.CutPrefix(path, "json:")
	if !ok {
		return path
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(rest), &m); err != nil {
		return path
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		if k != "driver" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	if _, ok := m["driver"]; ok {
		keys = append([]string{"driver"}, keys...)
	}
	var b strings.Builder
	b.WriteString("json:{")
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		kb, _ := json.Marshal(k)
		var v any
		json.Unmarshal(m[k], &v)
		vb, _ := json.Marshal(v)
		fmt.Fprintf(&b, "%s: %s", kb, vb)
	}
	b.WriteString("}")
	return b.String()
}

// bitmapsInfo lists the persistent bitmaps of a qcow2 image as qemu-img
// info does: only while autoclear bit 0 vouches for the extension, each
// with its flags ("in-use", "auto"), name and granularity. A directory
// that does not decode lists nothing (qemu-img would fail the open).
func bitmapsInfo(img *openedImage) []*object {
	h := img.qcow.Header
	if h.Version < 3 || !h.BitmapsConsistent() {
		return nil
	}
	ents, err := format.ReadBitmapDirectory(img.f, h, img.size)
	if err != nil {
		return nil
	}
	var out []*object
	for i := range ents {
		o := newObject()
		o.set("flags", ents[i].FlagNames())
		o.set("name", ents[i].Name)
		o.set("granularity", ents[i].Granularity())
		out = append(out, o)
	}
	return out
}

// infoTree is info for an image named by an option tree that is more
// than a format over a file (a blkdebug filter, …): the tree is opened
// whole, without its backing file, and the top node's header read
// through its own file child. The image is named by its options
// (json:{…}); a backing file's actual path comes from the one file the
// tree reads, if it has one.
func infoTree(ia *cli.ImageArgs, name, fmtName, output string, share bool, w io.Writer) (int, error) {
	img, err := ia.Open(name, cli.BlkOptions{Format: fmtName, ReadOnly: true, ForceShare: share, NoBacking: true, HeaderOnly: true})
	if err != nil {
		return 1, err
	}
	defer img.Close()
	var oi *openedImage
	if _, ok := img.Node.Driver().(*qcow2.Driver); ok {
		if oi, err = openNodeQcow2(img.Node, img.Path); err != nil {
			return 1, err
		}
	} else {
		size, err := img.Node.Length()
		if err != nil {
			return 1, cli.OpenError(name, err)
		}
		oi = &openedImage{path: img.Path, format: img.Format, size: size}
	}
	oi.path = img.Path
	// The disk size is the file's when the image sits on a file node;
	// over a filter or another driver it is unavailable, as qemu-img
	// reports it (blkdebug counts as a protocol there).
	fileNode := img.Node
	if c := img.Node.Child(block.RoleFile); c != nil && c.Node() != nil {
		fileNode = c.Node()
	}
	oi.blocks, oi.remote = allocatedSize(fileNode, 0)
	oi.remote = !oi.remote
	if ia.ImageOpts {
		oi.display = imageOptsName(name)
	} else if s, err := cli.NameSpec(name, ""); err == nil {
		keys := make([]string, 0, len(s))
		for k := range s {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		kvs := make([]cli.KeyValue, 0, len(keys))
		for _, k := range keys {
			kvs = append(kvs, cli.KeyValue{Key: k, Value: s[k]})
		}
		oi.display = jsonName(kvs)
	}
	o := imageInfo(oi)
	if output == "json" {
		return 0, writeJSON(w, o)
	}
	return 0, printInfoHuman(w, oi, o)
}

// allocatedSize is the disk space below n as qemu-img counts it: a file's
// allocated bytes, the sum over the children of a node with several (a
// quorum); none (ok false) for a blkdebug filter, which QEMU counts as a
// protocol without the figure, or a node without a file below.
func allocatedSize(n *block.Node, depth int) (size int64, ok bool) {
	switch d := n.Driver().(type) {
	case *raw.Driver:
		st, err := os.Stat(d.Path())
		if err != nil {
			return 0, false
		}
		sys, isStat := st.Sys().(*syscall.Stat_t)
		return sys.Blocks * 512, isStat
	case *blkdebug.Driver:
		return 0, false
	}
	children := n.Children()
	if len(children) == 0 || depth > 16 {
		return 0, false
	}
	for _, c := range children {
		if c.Node() == nil {
			return 0, false
		}
		s, ok := allocatedSize(c.Node(), depth+1)
		if !ok {
			return 0, false
		}
		size += s
	}
	return size, true
}
