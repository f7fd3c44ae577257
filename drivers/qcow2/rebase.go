package qcow2

import (
	"errors"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
)

// ChangeBackingFile implements block.BackingFileChanger: it records name
// as the image's backing file, with base's format ("raw" or "qcow2") in
// the backing format extension, or removes both when name is "" (what
// `qemu-img rebase -u` writes). With a nil base and a non-empty name the
// recorded format is kept. The header goes through Amend's path: dirty
// metadata is written and synced, then the header cluster is rewritten
// in one write and synced (R6), so a crash leaves either the old header
// or the new one. A name over format.MaxBackingNameLen, or one that does
// not fit in the header cluster with the extensions, is refused and
// nothing is written.
//
// The driver's backing edge follows: with name "" it is forgotten (the
// caller detaches it, as job.Stream does); with a base, the edge is the
// one block.DropIntermediate already pointed at base, whose length is
// read again. Called on the main Context inside a drained section of n.
func (d *Driver) ChangeBackingFile(n *block.Node, name string, base *block.Node) error {
	if d.readOnly {
		return &block.Error{Kind: block.Unsupported, Op: block.OpWrite, Node: n.Name(), Err: errors.New("qcow2: changing the backing file needs a read-write node")}
	}
	var bf, bfmt *string
	var baseLen int64
	bf = &name
	if name == "" {
		empty := ""
		bfmt = &empty
	} else if base != nil {
		// Drivers are siblings (no import of drivers/raw): a qcow2 node
		// is "qcow2", a leaf node (a file read as bytes) is "raw".
		var f string
		switch _, isQcow2 := base.Driver().(*Driver); {
		case isQcow2:
			f = "qcow2"
		case len(base.Children()) == 0:
			f = "raw"
		default:
			return &block.Error{Kind: block.Unsupported, Op: block.OpWrite, Node: n.Name(), Err: errors.New("qcow2: backing node " + base.Name() + " is neither raw nor qcow2; its format cannot be recorded")}
		}
		bfmt = &f
		l, err := base.Length()
		if err != nil {
			return err
		}
		baseLen = l
	}
	return d.formatErr(block.OpWrite, 0, d.runLocked(n, func(co *aio.Co) error {
		if err := maintOf(d).amendLocked(co, AmendOptions{BackingFile: bf, BackingFormat: bfmt}); err != nil {
			return err
		}
		switch {
		case name == "":
			d.backing, d.backingSize = nil, 0
		case base != nil && d.backing != nil:
			d.backingSize = baseLen
		}
		return nil
	}))
}

// Filename implements block.FileNamer: the name of the image file under
// the qcow2 node (its file child's), "" if that child does not say.
func (d *Driver) Filename() string {
	if d.file == nil {
		return ""
	}
	if f := d.file.Node(); f != nil {
		return f.Filename()
	}
	return ""
}

var (
	_ block.BackingFileChanger = (*Driver)(nil)
	_ block.FileNamer          = (*Driver)(nil)
)
