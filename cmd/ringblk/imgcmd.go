package main

// Shared helpers for the qemu-img style image commands (create, info,
// check): a small getopt-like parser, format probing, error reporting and
// qemu-img's output conventions (size strings, ordered JSON objects).

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/raw"
)

// UsageError is a command-line mistake: reported in one line, exit 1.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

func Usagef(format string, a ...any) error { return &UsageError{fmt.Sprintf(format, a...)} }

// ErrHelp asks the caller to print the command's help and exit 0.
var ErrHelp = errors.New("help requested")

// OptSpec describes one command's options: short letters and long names,
// each either a flag or taking a value.
type OptSpec struct {
	Short map[byte]bool   // letter → takes a value
	Long  map[string]bool // name → takes a value
}

type Opt struct {
	Name string // "f", "o", "output", …
	Val  string
}

// ParseOpts splits args into options (in order) and operands, the way
// qemu-img's getopt_long does: "-fqcow2", "-f qcow2", "--output=json",
// "--output json", grouped flags "-qU", and "--" ending the options.
func ParseOpts(args []string, spec OptSpec) (opts []Opt, operands []string, err error) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return opts, append(operands, args[i+1:]...), nil
		case a == "-h" || a == "--help" || a == "-help":
			return nil, nil, ErrHelp
		case strings.HasPrefix(a, "--"):
			name, val, has := strings.Cut(a[2:], "=")
			takes, ok := spec.Long[name]
			if !ok {
				return nil, nil, Usagef("unrecognized option '%s'", a)
			}
			if takes && !has {
				if i+1 >= len(args) {
					return nil, nil, Usagef("option '--%s' requires an argument", name)
				}
				i++
				val = args[i]
			} else if !takes && has {
				return nil, nil, Usagef("option '--%s' doesn't allow an argument", name)
			}
			opts = append(opts, Opt{name, val})
		case len(a) > 1 && a[0] == '-':
			for j := 1; j < len(a); j++ {
				c := a[j]
				takes, ok := spec.Short[c]
				if !ok {
					return nil, nil, Usagef("invalid option -- '%c'", c)
				}
				if !takes {
					opts = append(opts, Opt{string(c), ""})
					continue
				}
				val := a[j+1:]
				if val == "" {
					if i+1 >= len(args) {
						return nil, nil, Usagef("option requires an argument -- '%c'", c)
					}
					i++
					val = args[i]
				}
				opts = append(opts, Opt{string(c), val})
				break
			}
		default:
			operands = append(operands, a)
		}
	}
	return opts, operands, nil
}

// Run runs one image command body and turns its error into qemu-img's
// conventions: help on stdout (exit 0), "ringblk: …" on stderr (exit 1).
func Run(help string, stdout, stderr io.Writer, body func() (int, error)) int {
	code, err := body()
	if err == nil {
		return code
	}
	if errors.Is(err, ErrHelp) {
		fmt.Fprint(stdout, help)
		return 0
	}
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	fmt.Fprintf(stderr, "ringblk: %s\n", msg)
	if code == 0 {
		code = 1
	}
	return code
}

// checkOutput validates --output.
func checkOutput(v string) error {
	if v != "human" && v != "json" {
		return Usagef("--output must be used with human or json as argument")
	}
	return nil
}

// checkFormat validates a -f value against the formats we know, for the
// commands that work on image files (create, check, resize, snapshot, …).
// The null format has no file: they refuse it in so many words.
func checkFormat(f string) error {
	switch f {
	case "", "raw", "qcow2":
		return nil
	case "null", "null-co":
		return Usagef("The null format has no image file to work on; this command takes raw or qcow2")
	}
	return Usagef("Unknown file format '%s'", f)
}

// checkSourceFormat validates a -f value for a command that only reads
// the image (info, map, compare, convert's source, measure's source):
// those take the null format as well ("null" or qemu's "null-co").
func checkSourceFormat(f string) error {
	switch f {
	case "", "raw", "qcow2", "null", "null-co":
		return nil
	}
	return Usagef("Unknown file format '%s'", f)
}

// openedImage is a local image file opened read-only, with its format
// decided (given or probed) and, for qcow2, its metadata read.
type openedImage struct {
	path   string
	f      *os.File
	format string
	size   int64 // file size
	blocks int64 // allocated bytes (st_blocks × 512)
	qcow   *qcow2.Image
}

func (o *openedImage) Close() { o.f.Close() }

// openImage opens path read-only. format "" probes: the qcow2 magic means
// qcow2, anything else raw.
func openImage(path, format string) (*openedImage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("Could not open '%s': %v", path, UnwrapPathErr(err))
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("Could not open '%s': %v", path, UnwrapPathErr(err))
	}
	if st.IsDir() {
		f.Close()
		return nil, fmt.Errorf("Could not open '%s': Is a directory", path)
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
		if n, _ := f.ReadAt(magic[:], 0); n == 4 && binary.BigEndian.Uint32(magic[:]) == qcow2.Magic {
			o.format = "qcow2"
		} else {
			o.format = "raw"
		}
	}
	if o.format == "qcow2" {
		im, err := qcow2.ReadImage(f, o.size, qcow2.Options{})
		if err != nil {
			f.Close()
			return nil, OpenError(path, err)
		}
		o.qcow = im
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
		return fmt.Errorf("Could not open '%s': %v", o.path, err)
	}
	return nil
}

func UnwrapPathErr(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		if errno, ok := pe.Err.(syscall.Errno); ok {
			// qemu-img spells errno strings with a capital letter.
			s := errno.Error()
			return errors.New(strings.ToUpper(s[:1]) + s[1:])
		}
		return pe.Err
	}
	return err
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
	if backing == "" || filepath.IsAbs(backing) {
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
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// checkOutputFormat validates the format of an image a command creates
// (create's -f, convert's -O): raw or qcow2.
func checkOutputFormat(f string) error {
	switch f {
	case "raw", "qcow2":
		return nil
	case "null", "null-co":
		return Usagef("The null format stores nothing: it cannot be created (use raw or qcow2)")
	}
	return Usagef("Unknown file format '%s' (supported: raw, qcow2)", f)
}
