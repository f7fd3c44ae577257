// Package imgcmd holds ringblk's qemu-img style commands: create, info,
// check, map, compare, convert, measure, resize, snapshot and amend. Each
// is a function of its arguments and output streams returning the exit
// status; cmd/ringblk dispatches to them. Their output, messages and exit
// codes follow qemu-img 7.2 (the tests run qemu-img as the oracle). This
// file holds what only they share: format checks and probing, qemu-img's
// size strings and ordered JSON objects.
package imgcmd

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/ringblk/ringblk/crypto/luks"
	qcow2fmt "github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/drivers/rbd"
	"github.com/ringblk/ringblk/internal/cli"
)

// checkOutput validates --output.
func checkOutput(v string) error {
	if v != "human" && v != "json" {
		if cli.Prog != "ringblk" {
			return cli.Usagef("--output must be used with human or json as argument.")
		}
		return cli.Usagef("--output must be used with human or json as argument")
	}
	return nil
}

// checkFormat validates a -f value against the formats we know, for the
// commands that work on image files (create, check, resize, snapshot, …).
// The null format has no file: they refuse it in so many words.
func checkFormat(f string) error {
	switch f {
	case "", "raw", "qcow2", "luks":
		return nil
	case "null", "null-co":
		return cli.Usagef("The null format has no image file to work on; this command takes raw or qcow2")
	}
	return cli.Usagef("Unknown file format '%s'", f)
}

// checkSourceFormat validates a -f value for a command that only reads
// the image (info, map, compare, convert's source, measure's source):
// those take the null format as well ("null" or qemu's "null-co").
func checkSourceFormat(f string) error {
	switch f {
	case "", "raw", "qcow2", "null", "null-co", "luks":
		return nil
	}
	return cli.Usagef("Unknown file format '%s'", f)
}

// openedImage is a local image file opened read-only, with its format
// decided (given or probed) and, for qcow2, its metadata read.
type openedImage struct {
	path   string
	f      *os.File
	format string
	size   int64 // file size
	blocks int64 // allocated bytes (st_blocks × 512)
	qcow   *qcow2fmt.Image
	luks   *luks.Header // format luks, or a qcow2 image's LUKS header
	// display is the name info shows when not path (--image-opts).
	display string
	// remote: no local file (a qcow2 image in RBD): no disk size.
	remote bool
}

func (o *openedImage) name() string {
	if o.display != "" {
		return o.display
	}
	return o.path
}

func (o *openedImage) Close() {
	if o.f != nil {
		o.f.Close()
	}
}

// openImage opens path read-only. format "" probes: the qcow2 magic means
// qcow2, anything else raw.
func openImage(path, format string) (*openedImage, error) {
	return openImageOpts(path, format, qcow2fmt.Options{})
}

// openImageOpts is openImage with ReadImage's options for a qcow2 image
// (check opens in CheckMode).
func openImageOpts(path, format string, qopts qcow2fmt.Options) (*openedImage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, cli.FileOpenError(path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, cli.FileOpenError(path, err)
	}
	if st.IsDir() {
		f.Close()
		return nil, fmt.Errorf("Could not open '%s': %s", path, cli.NotRegularFile(path))
	}
	o := &openedImage{path: path, f: f, format: format, size: st.Size()}
	if st.Mode()&os.ModeDevice != 0 {
		// Block devices report size 0 in stat; the end offset is the size.
		if end, err := f.Seek(0, io.SeekEnd); err == nil {
			o.size = end
		}
	}
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		o.blocks = s.Blocks * 512
	}
	if o.format == "" {
		var magic [4]byte
		var lm [8]byte
		if n, _ := f.ReadAt(magic[:], 0); n == 4 && binary.BigEndian.Uint32(magic[:]) == qcow2fmt.Magic {
			o.format = "qcow2"
		} else if n, _ := f.ReadAt(lm[:], 0); n == 8 && luks.IsLUKS(lm[:]) {
			o.format = "luks"
		} else {
			o.format = "raw"
		}
	}
	if o.format == "qcow2" {
		im, err := qcow2fmt.ReadImage(f, o.size, qopts)
		if err != nil {
			f.Close()
			return nil, cli.OpenError(path, err)
		}
		o.qcow = im
		if err := o.readQcowLuks(); err != nil {
			f.Close()
			return nil, cli.OpenError(path, err)
		}
	} else if o.format == "luks" {
		hb := make([]byte, luks.HeaderLen)
		n, _ := f.ReadAt(hb, 0)
		h, err := luks.Parse(hb[:n])
		if err != nil {
			f.Close()
			return nil, cli.OpenError(path, err)
		}
		o.luks = h
		o.size = max(0, o.size-h.PayloadBytes())
	} else {
		// A raw image's size in whole 512-byte sectors, as QEMU (and the
		// raw driver) count it: the tail of a partial sector reads as
		// zeroes.
		o.size = (o.size + 511) &^ 511
	}
	return o, nil
}

// lockForRead takes on an image a read-only command opened (info, check
// without -r) the locks qemu-img's read-only open takes: it holds
// "consistent read" and refuses to share "write" and "resize", so an image
// another process has open read-write is refused with QEMU's `Failed to
// get shared "write" lock`. With -U (share) nothing is locked. The locks
// go with the image's Close.
func (o *openedImage) lockForRead(share bool) error {
	if share {
		return nil
	}
	if err := raw.LockFile(o.f, o.path, raw.Options{ReadOnly: true}); err != nil {
		return fmt.Errorf("Could not open '%s': %w", o.path, err)
	}
	return nil
}

// sizeToStr formats a byte count as qemu-img's human output does:
// three significant digits and a binary unit ("196 KiB", "1.5 GiB").
func sizeToStr(v int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i := 0
	for i < len(units)-1 && v>>(10*(i+1)) > 0 {
		i++
	}
	f := float64(v) / float64(int64(1)<<(10*i))
	return strconv.FormatFloat(f, 'g', 3, 64) + " " + units[i]
}

// combinePath resolves a backing file name as QEMU does: relative names
// are relative to the directory of the image that names them.
func combinePath(image, backing string) string {
	if backing == "" || filepath.IsAbs(backing) || rbd.IsName(backing) {
		return backing
	}
	i := strings.LastIndexByte(image, '/')
	if i < 0 {
		return backing
	}
	return image[:i+1] + backing
}

// object is a JSON object that keeps its keys in insertion order (qemu-img
// prints a fixed order; tests compare parsed values).
type object struct {
	keys []string
	vals map[string]any
}

func newObject() *object { return &object{vals: map[string]any{}} }

func (o *object) set(k string, v any) {
	if _, ok := o.vals[k]; !ok {
		o.keys = append(o.keys, k)
	}
	o.vals[k] = v
}

func (o *object) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, k := range o.keys {
		if i > 0 {
			b.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		b.Write(kb)
		b.WriteByte(':')
		vb, err := json.Marshal(o.vals[k])
		if err != nil {
			return nil, err
		}
		b.Write(vb)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// writeJSON prints v as qemu-img does: 4-space indentation, newline.
func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "    ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", qemuEmptyArrays(b))
	return err
}

// qemuEmptyArrays spells empty arrays as qemu-img's JSON printer does:
// the opening bracket, a newline, and the closing one at the line's
// indentation ("flags": [ / ]).
func qemuEmptyArrays(b []byte) []byte {
	if !bytes.Contains(b, []byte("[]")) {
		return b
	}
	lines := strings.Split(string(b), "\n")
	var out []string
	for _, l := range lines {
		t := strings.TrimRight(l, ",")
		if strings.HasSuffix(t, "[]") {
			ind := l[:len(l)-len(strings.TrimLeft(l, " "))]
			out = append(out, strings.TrimSuffix(t, "]"), ind+"]"+l[len(t):])
			continue
		}
		out = append(out, l)
	}
	return []byte(strings.Join(out, "\n"))
}

// checkOutputFormat validates the format of an image a command creates
// (create's -f, convert's -O): raw or qcow2.
func checkOutputFormat(f string) error {
	switch f {
	case "raw", "qcow2", "luks":
		return nil
	case "null", "null-co":
		return cli.Usagef("The null format stores nothing: it cannot be created (use raw or qcow2)")
	}
	return cli.Usagef("Unknown file format '%s' (supported: raw, qcow2)", f)
}
