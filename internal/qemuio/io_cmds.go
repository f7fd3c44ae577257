package qemuio

// The synchronous commands of ringblk io: read, write, discard, flush,
// length, map and info. Each runs one request through the node's
// synchronous helpers (block/sync.go) from the command goroutine.

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/internal/cli"
)

var readCmd = &ioCommand{
	name: "read", alt: "r", argmin: 2, argmax: -1,
	args:    "[-abCqv] [-P pattern [-s off] [-l len]] off len",
	oneline: "reads a number of bytes at a specified offset",
	help: `
 reads a range of bytes from the given offset

 Example:
 'read -v 512 1k' - dumps 1 kilobyte read from 512 bytes into the image

 Reads a segment of the open image, optionally dumping it to standard
 output (-v) for inspection.
 -b, -- read from the VM state rather than the virtual disk (where the
        driver supports it)
 -C, -- report statistics in a machine parsable format
 -l, -- length for pattern verification (only with -P)
 -p, -- ignored (qemu-io compatibility)
 -P, -- verify that the data read is this byte
 -q, -- quiet mode, do not show I/O statistics
 -s, -- start offset for pattern verification (only with -P)
 -v, -- dump the buffer to standard output

`,
	run: readRun,
}

func readRun(s *ioSession, argv []string) bool {
	opts, ops, ok := s.getopt(argv, "abCl:pP:qs:v")
	if !ok {
		return s.usage()
	}
	var cflag, qflag, vflag, pflag, sflag, lflag, bflag bool
	var pattern byte
	var patOff, patLen int64
	for _, o := range opts {
		switch o.Name {
		case "a", "p":
			// qemu-io accepts both and ignores them
		case "b":
			bflag = true
		case "C":
			cflag = true
		case "q":
			qflag = true
		case "v":
			vflag = true
		case "P":
			v, ok := parsePattern(o.Val)
			if !ok {
				fmt.Fprintf(s.out, "%s is not a valid pattern byte\n", o.Val)
				return false
			}
			pflag, pattern = true, v
		case "s":
			if patOff, ok = s.num(o.Val); !ok {
				return false
			}
			sflag = true
		case "l":
			if patLen, ok = s.num(o.Val); !ok {
				return false
			}
			lflag = true
		}
	}
	if len(ops) != 2 {
		return s.usage()
	}
	off, ok := s.num(ops[0])
	if !ok {
		return false
	}
	count, ok := s.num(ops[1])
	if !ok {
		return false
	}
	if count > ioMaxRequest {
		fmt.Fprintf(s.out, "length cannot exceed %d, given %s\n", ioMaxRequest, ops[1])
		return false
	}
	if !pflag && (sflag || lflag) {
		return s.usage()
	}
	if !lflag {
		patLen = count - patOff
	}
	if patLen < 0 || patOff+patLen > count {
		fmt.Fprintln(s.out, "pattern verification range exceeds end of read data")
		return false
	}
	if bflag && (off%512 != 0 || count%512 != 0) {
		if off%512 != 0 {
			fmt.Fprintf(s.out, "%d is not a sector-aligned value for 'offset'\n", off)
		} else {
			fmt.Fprintf(s.out, "%d is not a sector-aligned value for 'count'\n", count)
		}
		return false
	}
	buf := bytes.Repeat([]byte{0xab}, int(count))
	start := time.Now()
	var err error
	if bflag {
		_, err = s.img.Node.LoadVMState(buf, off)
	} else {
		err = s.readAt(buf, off)
	}
	d := time.Since(start)
	if err != nil {
		fmt.Fprintf(s.out, "read failed: %s\n", errText(err))
		return false
	}
	good := true
	if pflag && !allBytes(buf[patOff:patOff+patLen], pattern) {
		fmt.Fprintf(s.out, "Pattern verification failed at offset %d, %d bytes\n", off+patOff, patLen)
		good = false
	}
	if qflag {
		return good
	}
	if vflag {
		dumpBuffer(s.out, buf, off)
	}
	printReport(s.out, "read", d, off, count, count, 1, cflag)
	return good
}

// readAt reads buf at off after QEMU's range check (EIO past the end).
func (s *ioSession) readAt(buf []byte, off int64) error {
	ok, err := s.inRange(off, int64(len(buf)))
	if err != nil {
		return err
	}
	if !ok {
		return errIO
	}
	if len(buf) == 0 {
		return nil
	}
	if _, err = s.img.Node.ReadAt(buf, off); err != nil || !s.cor {
		return err
	}
	return s.copyOnRead(off, int64(len(buf)))
}

// copyOnRead is qemu-io -C after a read of [off, off+n): the clusters of
// that range the top image does not allocate itself are read through the
// chain and written into it (all-zero ones as write-zeroes), as QEMU's
// copy-on-read does, cluster by cluster.
func (s *ioSession) copyOnRead(off, n int64) error {
	node := s.img.Node
	size, err := node.Length()
	if err != nil {
		return err
	}
	cs := int64(64 << 10)
	if s.img.Qcow2 != nil {
		h := s.img.Qcow2.Header()
		cs = h.ClusterSize()
	}
	start, end := off/cs*cs, min((off+n+cs-1)/cs*cs, size)
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	for pos := start; pos < end; {
		alloc, num, err := node.IsAllocated(pos, end-pos)
		if err != nil {
			return err
		}
		if num <= 0 {
			return errIO
		}
		if !alloc {
			for p := pos; p < pos+num; p += chunk {
				b := buf[:min(chunk, pos+num-p)]
				if _, err := node.ReadAt(b, p); err != nil {
					return err
				}
				if allBytes(b, 0) {
					err = node.WriteZeroes(p, int64(len(b)), 0)
				} else {
					_, err = node.WriteAt(b, p)
				}
				if err != nil {
					return err
				}
			}
		}
		pos += num
	}
	return nil
}

func allBytes(b []byte, v byte) bool {
	for _, c := range b {
		if c != v {
			return false
		}
	}
	return true
}

var writeCmd = &ioCommand{
	name: "write", alt: "w", argmin: 2, argmax: -1, write: true,
	args:    "[-bcCfnquz] [-P pattern | -s source_file] off len",
	oneline: "writes a number of bytes at a specified offset",
	help: `
 writes a range of bytes from the given offset

 Example:
 'write 512 1k' - writes 1 kilobyte at 512 bytes into the open image

 Writes into a segment of the open image, from a buffer filled with one
 byte (0xcd unless -P says otherwise).
 -b, -- write to the VM state rather than the virtual disk (where the
        driver supports it)
 -c, -- write compressed data (qcow2, whole clusters)
 -f, -- use Force Unit Access semantics
 -n, -- with -z, don't allow slow fallback (accepted, no effect)
 -p, -- ignored (qemu-io compatibility)
 -P, -- use a different byte to fill the buffer
 -s, -- fill the buffer from this file (repeated as needed)
 -C, -- report statistics in a machine parsable format
 -q, -- quiet mode, do not show I/O statistics
 -u, -- with -z, allow unmapping
 -z, -- write zeroes (a write-zeroes request, no data buffer)

`,
	run: writeRun,
}

func writeRun(s *ioSession, argv []string) bool {
	opts, ops, ok := s.getopt(argv, "bcCfnpP:qs:uz")
	if !ok {
		return s.usage()
	}
	var bflag, cflag, Cflag, fflag, nflag, pflag, qflag, uflag, zflag bool
	var srcFile string
	pattern := byte(0xcd)
	for _, o := range opts {
		switch o.Name {
		case "b":
			bflag = true
		case "c":
			cflag = true
		case "C":
			Cflag = true
		case "f":
			fflag = true
		case "n":
			nflag = true
		case "p":
		case "P":
			v, ok := parsePattern(o.Val)
			if !ok {
				fmt.Fprintf(s.out, "%s is not a valid pattern byte\n", o.Val)
				return false
			}
			pflag, pattern = true, v
		case "q":
			qflag = true
		case "s":
			srcFile = o.Val
		case "u":
			uflag = true
		case "z":
			zflag = true
		}
	}
	if len(ops) != 2 {
		return s.usage()
	}
	switch {
	case bflag && zflag:
		fmt.Fprintln(s.out, "-b and -z cannot be specified at the same time")
		return false
	case fflag && (bflag || cflag):
		fmt.Fprintln(s.out, "-f and -b or -c cannot be specified at the same time")
		return false
	case uflag && !zflag:
		fmt.Fprintln(s.out, "-u requires -z to be specified")
		return false
	case nflag && !zflag:
		fmt.Fprintln(s.out, "-n requires -z to be specified")
		return false
	case countTrue(zflag, pflag, srcFile != "") > 1:
		fmt.Fprintln(s.out, "Only one of -z, -P, and -s can be specified at the same time")
		return false
	}
	off, ok := s.num(ops[0])
	if !ok {
		return false
	}
	count, ok := s.num(ops[1])
	if !ok {
		return false
	}
	if count > ioMaxRequest && !nflag {
		fmt.Fprintf(s.out, "length cannot exceed %d without -n, given %s\n", ioMaxRequest, ops[1])
		return false
	}
	if (bflag || cflag) && (off%512 != 0 || count%512 != 0) {
		if off%512 != 0 {
			fmt.Fprintf(s.out, "%d is not a sector-aligned value for 'offset'\n", off)
		} else {
			fmt.Fprintf(s.out, "%d is not a sector-aligned value for 'count'\n", count)
		}
		return false
	}
	var buf []byte
	if !zflag {
		if srcFile != "" {
			var err error
			if buf, err = fillFromFile(srcFile, count); err != nil {
				fmt.Fprintf(s.errw, "%s: %s\n", srcFile, errText(cli.UnwrapPathErr(err)))
				return false
			}
		} else {
			buf = bytes.Repeat([]byte{pattern}, int(count))
		}
	}
	start := time.Now()
	var err error
	if ok, rerr := s.inRange(off, count); rerr != nil {
		err = rerr
	} else if !ok && !bflag {
		err = errIO
	} else if count > 0 || bflag {
		n := s.img.Node
		switch {
		case bflag:
			// As qemu-io's blk_save_vmstate: flushed when the device's
			// write cache is off.
			if _, err = n.SaveVMState(buf, off); err == nil && s.writeThrough() {
				err = n.Flush()
			}
		case zflag:
			var fl block.Flags
			if uflag {
				fl |= block.MayUnmap
			}
			if fflag || s.writeThrough() {
				fl |= block.FUA
			}
			err = n.WriteZeroes(off, count, fl)
		case cflag:
			if _, err = n.WriteCompressed(buf, off); err == nil && s.writeThrough() {
				err = n.Flush()
			}
		case fflag || s.writeThrough():
			err = n.Writev([][]byte{buf}, off, block.FUA)
		default:
			_, err = n.WriteAt(buf, off)
		}
	}
	d := time.Since(start)
	if err != nil {
		fmt.Fprintf(s.out, "write failed: %s\n", errText(err))
		return false
	}
	if !qflag {
		printReport(s.out, "wrote", d, off, count, count, 1, Cflag)
	}
	return true
}

func countTrue(b ...bool) int {
	n := 0
	for _, v := range b {
		if v {
			n++
		}
	}
	return n
}

// fillFromFile returns count bytes of the file's contents, repeated as
// often as needed.
func fillFromFile(path string, count int64) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(data) == 0 && count > 0 {
		return nil, fmt.Errorf("the file is empty")
	}
	buf := make([]byte, count)
	for i := int64(0); i < count; i += int64(len(data)) {
		copy(buf[i:], data)
	}
	return buf, nil
}

var discardCmd = &ioCommand{
	name: "discard", alt: "d", argmin: 2, argmax: -1, write: true,
	args:    "[-Cq] off len",
	oneline: "discards a number of bytes at a specified offset",
	help: `
 discards a range of bytes from the given offset

 Example:
 'discard 512 1k' - discards 1 kilobyte from 512 bytes into the image

 Discards a segment of the open image.
 -C, -- report statistics in a machine parsable format
 -q, -- quiet mode, do not show I/O statistics

`,
	run: func(s *ioSession, argv []string) bool {
		opts, ops, ok := s.getopt(argv, "Cq")
		if !ok || len(ops) != 2 {
			return s.usage()
		}
		var cflag, qflag bool
		for _, o := range opts {
			cflag = cflag || o.Name == "C"
			qflag = qflag || o.Name == "q"
		}
		off, ok := s.num(ops[0])
		if !ok {
			return false
		}
		count, ok := s.num(ops[1])
		if !ok {
			return false
		}
		if count > ioMaxRequest {
			fmt.Fprintf(s.out, "length cannot exceed %d, given %s\n", ioMaxRequest, ops[1])
			return false
		}
		start := time.Now()
		inside, err := s.inRange(off, count)
		if err == nil && !inside {
			err = errIO
		}
		if err == nil && count > 0 {
			err = s.img.Node.Discard(off, count)
		}
		d := time.Since(start)
		if err != nil {
			fmt.Fprintf(s.out, "discard failed: %s\n", errText(err))
			return false
		}
		if !qflag {
			printReport(s.out, "discard", d, off, count, count, 1, cflag)
		}
		return true
	},
}

var flushCmd = &ioCommand{
	name: "flush", alt: "f", argmin: 0, argmax: 0,
	oneline: "flush all in-core file state to disk",
	run: func(s *ioSession, argv []string) bool {
		if err := s.img.Node.Flush(); err != nil {
			fmt.Fprintf(s.out, "flush failed: %s\n", errText(err))
			return false
		}
		return true
	},
}

var lengthCmd = &ioCommand{
	name: "length", alt: "l", argmin: 0, argmax: 0,
	oneline: "gets the length of the current file",
	run: func(s *ioSession, argv []string) bool {
		size, err := s.img.Node.Length()
		if err != nil {
			fmt.Fprintf(s.out, "getlength: %s\n", errText(err))
			return false
		}
		fmt.Fprintln(s.out, cvtstr(float64(size)))
		return true
	},
}

var mapCmd = &ioCommand{
	name: "map", argmin: 0, argmax: 0,
	oneline: "prints the allocated areas of a file",
	run:     mapRun,
}

// mapRun prints the runs of ranges this node allocates (rather than its
// backing file), merged as qemu-io merges them.
func mapRun(s *ioSession, argv []string) bool {
	n := s.img.Node
	size, err := n.Length()
	if err != nil {
		fmt.Fprintf(s.errw, "%s: Failed to query image length: %s\n", cli.Prog, errText(err))
		return false
	}
	var b strings.Builder
	defer func() { fmt.Fprint(s.out, b.String()) }()
	for off := int64(0); off < size; {
		alloc, num, err := n.IsAllocated(off, size-off)
		if err != nil {
			fmt.Fprintf(s.errw, "%s: Failed to get allocation status: %s\n", cli.Prog, errText(err))
			return false
		}
		for num > 0 && off+num < size {
			a, more, err := n.IsAllocated(off+num, size-off-num)
			if err != nil || a != alloc || more == 0 {
				break
			}
			num += more
		}
		if num == 0 {
			fmt.Fprintln(s.errw, cli.Prog+": Unexpected end of image")
			return false
		}
		state := "not allocated"
		if alloc {
			state = "    allocated"
		}
		fmt.Fprintf(&b, "%s (0x%x) bytes %s at offset %s (0x%x)\n", cvtstr(float64(num)), num, state, cvtstr(float64(off)), off)
		off += num
	}
	return true
}

var infoCmdIO = &ioCommand{
	name: "info", alt: "i", argmin: 0, argmax: 0,
	oneline: "prints information about the current file",
	run: func(s *ioSession, argv []string) bool {
		img := s.img
		switch img.Format {
		case "null", "file", "host_device", "host_cdrom":
			// Protocol drivers: QEMU names the driver twice (format and
			// protocol name) and then fails, having no image info.
			name := img.Format
			if name == "null" {
				name = "null-co"
			}
			fmt.Fprintf(s.out, "format name: %s\nformat name: %s\n", name, name)
			return false
		case "raw":
			fmt.Fprintln(s.out, "format name: raw")
			fmt.Fprintln(s.out, "cluster size: 0 bytes")
			fmt.Fprintln(s.out, "vm state offset: 0 bytes")
			return true
		}
		if img.Qcow2 == nil {
			// A filter on top (blkdebug): QEMU names it twice and has
			// no cluster size.
			fmt.Fprintf(s.out, "format name: %s\nformat name: %s\n", img.Format, img.Format)
			fmt.Fprintln(s.out, "cluster size: 0 bytes")
			fmt.Fprintln(s.out, "vm state offset: 0 bytes")
			return true
		}
		h := img.Qcow2.Header()
		fmt.Fprintln(s.out, "format name: qcow2")
		fmt.Fprintf(s.out, "cluster size: %s\n", cvtstr(float64(h.ClusterSize())))
		fmt.Fprintf(s.out, "vm state offset: %s\n", cvtstr(float64(vmStateOffset(&h))))
		fmt.Fprintln(s.out, "Format specific information:")
		for _, l := range qcow2SpecificLines(&h) {
			fmt.Fprintf(s.out, "    %s\n", l)
		}
		return true
	},
}

// vmStateOffset is where qcow2 keeps VM state: the first byte that the
// L1 entries covering the disk do not reach.
func vmStateOffset(h *format.Header) int64 {
	l2Bits := int64(h.ClusterBits) - 3
	if h.ExtendedL2() {
		l2Bits--
	}
	span := int64(1) << (int64(h.ClusterBits) + l2Bits)
	return (int64(h.Size) + span - 1) / span * span
}

// qcow2SpecificLines are the "Format specific information" lines of a
// qcow2 image, in qemu's order and words.
func qcow2SpecificLines(h *format.Header) []string {
	compat := "1.1"
	if h.Version == 2 {
		compat = "0.10"
	}
	ct := "zlib"
	if h.CompressionType == format.CompressionZstd {
		ct = "zstd"
	}
	l := []string{"compat: " + compat, "compression type: " + ct}
	if h.Version >= 3 {
		l = append(l, fmt.Sprintf("lazy refcounts: %t", h.CompatibleFeatures&format.CompatLazyRefcounts != 0))
	}
	l = append(l, fmt.Sprintf("refcount bits: %d", 1<<h.RefcountOrder))
	if h.Version >= 3 {
		l = append(l, fmt.Sprintf("corrupt: %t", h.IncompatibleFeatures&format.IncompatCorrupt != 0),
			fmt.Sprintf("extended l2: %t", h.ExtendedL2()))
	}
	return l
}

var allocCmd = &ioCommand{
	name: "alloc", alt: "a", argmin: 1, argmax: 2,
	args:    "offset [count]",
	oneline: "checks if offset is allocated in the file",
	help: `
 counts the bytes of [offset, offset+count) (count: 512 by default) that
 this image allocates itself rather than its backing file; a range
 reaching past the end is cut there

`,
	run: allocRun,
}

func allocRun(s *ioSession, argv []string) bool {
	start, ok := s.num(argv[1])
	if !ok {
		return false
	}
	count := int64(512)
	if len(argv) == 3 {
		if count, ok = s.num(argv[2]); !ok {
			return false
		}
	}
	n := s.img.Node
	var sum int64
	for off, remaining := start, count; remaining > 0; {
		alloc, num, err := n.IsAllocated(off, remaining)
		if err != nil {
			fmt.Fprintf(s.out, "is_allocated failed: %s\n", errText(err))
			return false
		}
		if num <= 0 {
			count -= remaining
			break
		}
		num = min(num, remaining)
		if alloc {
			sum += num
		}
		off += num
		remaining -= num
	}
	fmt.Fprintf(s.out, "%d/%d bytes allocated at offset %s\n", sum, count, cvtstr(float64(start)))
	return true
}
