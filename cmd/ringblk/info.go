package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/ringblk/ringblk/drivers/qcow2"
)

const infoHelp = `usage: ringblk info [-f fmt] [--output=human|json] [-U] FILE

Show what a raw or qcow2 image is: virtual size, disk size, format,
cluster size, backing file, snapshots and qcow2 details. The output
matches qemu-img info (7.2), including --output=json.

  -f fmt           image format (raw, qcow2); without it the file is probed
                   (qcow2 magic, else raw)
  --output=FMT     human (default) or json
  --backing-chain  show the whole backing chain, top first (JSON: an array)
  -U, --force-share
                   accepted for compatibility (the image is only read)
  -h, --help       this help
`

var infoSpec = optSpec{
	short: map[byte]bool{'f': true, 'U': false, 'h': false},
	long:  map[string]bool{"output": true, "force-share": false, "backing-chain": false, "help": false},
}

func infoMain(args []string) int { return infoCmd(args, os.Stdout, os.Stderr) }

func infoCmd(args []string, stdout, stderr io.Writer) int {
	return runImg(infoHelp, stdout, stderr, func() (int, error) {
		opts, files, err := parseOpts(args, infoSpec)
		if err != nil {
			return 1, err
		}
		format, output, chain := "", "human", false
		for _, o := range opts {
			switch o.name {
			case "backing-chain":
				chain = true
			case "f":
				format = o.val
			case "output":
				output = o.val
			}
		}
		if err := checkOutput(output); err != nil {
			return 1, err
		}
		if err := checkFormat(format); err != nil {
			return 1, err
		}
		if len(files) != 1 {
			return 1, usagef("info: expecting one image file name (got %d; see 'ringblk info --help')", len(files))
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
			if id, ok := fileID(img.f); ok {
				if seen[id] {
					return 1, fmt.Errorf("Backing file '%s' creates a loop in the backing chain", path)
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
	var h *qcow2.Header
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
	o.set("filename", img.path)
	if h != nil {
		o.set("cluster-size", h.ClusterSize())
	}
	o.set("format", img.format)
	o.set("actual-size", img.blocks)
	if h != nil {
		compat := "1.1"
		if h.Version == 2 {
			compat = "0.10"
		}
		data := newObject()
		data.set("compat", compat)
		ct := "zlib"
		if h.CompressionType == qcow2.CompressionZstd {
			ct = "zstd"
		}
		data.set("compression-type", ct)
		if h.Version >= 3 {
			data.set("lazy-refcounts", h.CompatibleFeatures&qcow2.CompatLazyRefcounts != 0)
		}
		data.set("refcount-bits", 1<<h.RefcountOrder)
		if h.Version >= 3 {
			data.set("corrupt", h.IncompatibleFeatures&qcow2.IncompatCorrupt != 0)
			data.set("extended-l2", h.ExtendedL2())
		}
		fs := newObject()
		fs.set("type", "qcow2")
		fs.set("data", data)
		o.set("format-specific", fs)
		if h.BackingFile != "" {
			o.set("full-backing-filename", combinePath(img.path, h.BackingFile))
			o.set("backing-filename", h.BackingFile)
		}
		o.set("dirty-flag", h.IncompatibleFeatures&qcow2.IncompatDirty != 0)
	} else {
		o.set("dirty-flag", false)
	}
	return o
}

func snapshotInfo(s *qcow2.Snapshot) *object {
	o := newObject()
	if s.ExtraDataSize >= 24 {
		o.set("icount", s.Icount)
	}
	o.set("vm-clock-nsec", s.VMClockNsec%1e9)
	o.set("name", s.Name)
	o.set("date-sec", s.DateSec)
	o.set("date-nsec", s.DateNsec)
	o.set("vm-clock-sec", s.VMClockNsec/1e9)
	o.set("id", s.ID)
	o.set("vm-state-size", s.VMStateSize)
	return o
}

func printInfoHuman(w io.Writer, img *openedImage, info *object) error {
	var b strings.Builder
	vs := info.vals["virtual-size"].(int64)
	fmt.Fprintf(&b, "image: %s\nfile format: %s\n", img.path, img.format)
	fmt.Fprintf(&b, "virtual size: %s (%d bytes)\n", sizeToStr(vs), vs)
	fmt.Fprintf(&b, "disk size: %s\n", sizeToStr(img.blocks))
	if img.qcow == nil {
		_, err := io.WriteString(w, b.String())
		return err
	}
	h := img.qcow.Header
	fmt.Fprintf(&b, "cluster_size: %d\n", h.ClusterSize())
	if h.BackingFile != "" {
		full := combinePath(img.path, h.BackingFile)
		if full != h.BackingFile {
			fmt.Fprintf(&b, "backing file: %s (actual path: %s)\n", h.BackingFile, full)
		} else {
			fmt.Fprintf(&b, "backing file: %s\n", h.BackingFile)
		}
		if h.BackingFormat != "" {
			fmt.Fprintf(&b, "backing file format: %s\n", h.BackingFormat)
		}
	}
	if h.IncompatibleFeatures&qcow2.IncompatDirty != 0 {
		b.WriteString("dirty flag: yes\n")
	}
	if len(img.qcow.Snapshots) > 0 {
		b.WriteString("Snapshot list:\n")
		fmt.Fprintf(&b, "%-10s%-18s%7s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")
		for i := range img.qcow.Snapshots {
			s := &img.qcow.Snapshots[i]
			date := time.Unix(int64(s.DateSec), 0).Format("2006-01-02 15:04:05")
			ns := s.VMClockNsec
			clock := fmt.Sprintf("%02d:%02d:%02d.%03d", ns/3600e9, ns/60e9%60, ns/1e9%60, ns/1e6%1000)
			icount := ""
			if s.ExtraDataSize >= 24 {
				icount = fmt.Sprint(s.Icount)
			}
			fmt.Fprintf(&b, "%-10s%-18s%7s%20s%13s%11s\n", s.ID, s.Name, sizeToStr(int64(s.VMStateSize)), date, clock, icount)
		}
	}
	b.WriteString("Format specific information:\n")
	data := info.vals["format-specific"].(*object).vals["data"].(*object)
	for _, k := range data.keys {
		fmt.Fprintf(&b, "    %s: %v\n", strings.ReplaceAll(k, "-", " "), data.vals[k])
	}
	_, err := io.WriteString(w, b.String())
	return err
}
