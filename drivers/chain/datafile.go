package chain

// External data files of qcow2 images (drivers/qcow2/datafile.go): where
// a recorded name points and how it is opened. The name comes from the
// image, so it gets the backing file's treatment (chain-open.md): the
// qcow2 driver has already refused anything but a plain path
// (format.CheckDataFileName); here it is resolved against the image's
// directory and opened as a plain file, never probed, read-only when the
// image is. An operator who wants anything else gives the data file on
// the command line (an option tree's data-file, spec.go).

import (
	"errors"
	"fmt"
	"path/filepath"
	"syscall"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/raw"
)

// ResolveDataFile returns the file a data file name recorded in the image
// at imagePath names: an absolute name as it is, a relative one against
// the image's directory (as backing names; QEMU 7.2 takes it relative to
// its working directory, which is the same when run from the image's
// directory, see docs/design/qcow2-datafile.md).
func ResolveDataFile(imagePath, name string) string {
	if name == "" || filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(filepath.Dir(imagePath), name)
}

// dataFileOpener opens the data file of the qcow2 image at path as a raw
// file node; top says whether the image is the top of its chain (its
// cache and discard options apply).
func dataFileOpener(g *block.Graph, path string, o Options, top bool, name string) qcow2.DataFileOpener {
	return func(req qcow2.DataFileRequest) (*block.Node, error) {
		p := ResolveDataFile(path, req.Name)
		fo := fileOptions(o, top)
		fo.ReadOnly = fo.ReadOnly || req.ReadOnly
		n, err := raw.NewNode(g, p, fo, block.Options{Name: name + "-data-file", ReadOnly: req.ReadOnly})
		if err != nil {
			return nil, &DataFileError{Name: req.Name, Err: err}
		}
		return n, nil
	}
}

// dataFileChild opens the data-file child of a qcow2 option tree
// (data-file.* options or a filename string), nil when there is none.
// It comes from the operator's command line, so any node spec.go can
// build is allowed (QEMU's iotests put null-co and blkdebug there).
func (b *SpecBuilder) dataFileChild(s Spec, prefix string) (*block.Node, error) {
	_, sub := s.Sub("data-file")
	v, str := s["data-file"]
	if !sub && !str {
		return nil, nil
	}
	if str && v == Null {
		delete(s, "data-file")
		return nil, nil
	}
	fn := specFilename(Spec{"filename": s["data-file.filename"], "file": s["data-file"]})
	n, _, err := b.Child(s, "data-file", prefix+"data-file.")
	var errno syscall.Errno
	if err != nil && fn != "" && errors.As(err, &errno) {
		err = &DataFileError{Name: fn, Err: errno}
	}
	return n, err
}

// DataFileError is a qcow2 image's data file that could not be opened;
// it reads as QEMU words it ("Could not open 'NAME': cause", the name as
// recorded or given).
type DataFileError struct {
	Name string
	Err  error
}

func (e *DataFileError) Error() string {
	return fmt.Sprintf("Could not open '%s': %s", e.Name, causeText(e.Err))
}

func (e *DataFileError) Unwrap() error { return e.Err }
