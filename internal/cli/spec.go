package cli

// Opening an image named by options instead of a path: json: filenames,
// --image-opts strings and qemu-io's open -o (drivers/chain.OpenSpec), and
// qemu-io's snapshot mode (-s), a temporary qcow2 overlay that takes the
// writes and is deleted at close.

import (
	"fmt"
	"os"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
)

// IsSpecName reports whether name is a json: filename, which OpenBlkName
// opens as a Spec.
func IsSpecName(name string) bool { return chain.IsJSONFilename(name) }

// NameSpec turns an image name and a -f format into a Spec: a json:
// filename's options (with driver set from -f when the name has none),
// or driver and filename. ok is false for a plain name with nothing to
// add, which callers open by path.
func NameSpec(name, fmtName string) (chain.Spec, error) {
	if chain.IsJSONFilename(name) {
		s, err := chain.ParseJSONFilename(name)
		if err != nil {
			return nil, fmt.Errorf("Could not open '%s': %v", name, err)
		}
		if fmtName != "" {
			if d, ok := s["driver"]; ok && d != fmtName && !(fmtName == "null" && d == "null-co") {
				return nil, fmt.Errorf("Cannot use '%s' as the driver: the json: filename names '%s'", fmtName, d)
			}
			if _, ok := s["driver"]; !ok {
				s["driver"] = fmtName
			}
		}
		return s, nil
	}
	s := chain.Spec{"filename": name}
	if fmtName != "" {
		s["driver"] = fmtName
	}
	return s, nil
}

// ImageOptsSpec reads an --image-opts string ("driver=qcow2,file.filename=x").
func ImageOptsSpec(opts string) (chain.Spec, error) {
	s := chain.Spec{}
	if err := chain.ParseKeyValues(opts, "file", s); err != nil {
		return nil, err
	}
	if fn, ok := s["file"]; ok {
		// The implied key names the file, as -drive file=… does.
		if _, dup := s["filename"]; !dup {
			delete(s, "file")
			s["filename"] = fn
		}
	}
	return s, nil
}

// OpenBlkSpec opens the image s describes in a Context and graph of its
// own; o supplies what s does not say.
func OpenBlkSpec(s chain.Spec, o BlkOptions) (*BlkImage, error) {
	c, g, err := NewBlkEnv()
	if err != nil {
		return nil, err
	}
	img, err := OpenBlkSpecIn(c, g, s, o)
	if err != nil {
		c.Stop()
		return nil, err
	}
	img.owned = true
	return img, nil
}

// OpenBlkSpecIn opens the image s describes as a node of graph g.
func OpenBlkSpecIn(c *aio.Context, g *block.Graph, s chain.Spec, o BlkOptions) (*BlkImage, error) {
	co := chain.Options{
		ReadOnly:    o.ReadOnly,
		ForceShare:  o.ForceShare,
		NoBacking:   o.NoBacking,
		Discard:     o.Discard,
		QcowOptions: withRepairLog(o.QcowOptions),
		Name:        NodeNameFor(g, ""),
		KeySecrets:  o.KeySecrets,
		HeaderOnly:  o.HeaderOnly,
		Secret:      Secret,
	}
	if o.Cache != "" {
		m, ok := raw.ParseCache(o.Cache)
		if !ok {
			return nil, Usagef("Invalid cache option: %s", o.Cache)
		}
		co.Cache = m
	}
	img, err := chain.OpenSpec(g, s, co)
	if err != nil {
		return nil, err
	}
	return &BlkImage{Ctx: c, Graph: g, Node: img.Node, Path: img.Path, Format: img.Format, Qcow2: img.Qcow2}, nil
}

// Snapshot puts a temporary qcow2 overlay on top of b (qemu-io -s,
// QEMU's snapshot=on): reads fall through to the image, writes stay in
// the overlay, which is created in $TMPDIR (default /var/tmp), unlinked
// at once and gone at close. b.Node becomes the overlay.
func (b *BlkImage) Snapshot() error {
	size, err := b.Node.Length()
	if err != nil {
		return err
	}
	dir := os.Getenv("TMPDIR")
	if dir == "" {
		dir = "/var/tmp"
	}
	f, err := os.CreateTemp(dir, "vl.")
	if err != nil {
		return fmt.Errorf("Could not get temporary filename: %v", UnwrapPathErr(err))
	}
	tmp := f.Name()
	f.Close()
	defer os.Remove(tmp)
	file, err := raw.NewNode(b.Graph, tmp, raw.Options{}, block.Options{Name: b.Node.Name() + "-snapshot-file"})
	if err != nil {
		return err
	}
	// The overlay records a backing name only so that the driver asks
	// for its backing node; the opener below hands it b's node.
	err = qcow2.Create(file, size, format.CreateOptions{BackingFile: "snapshot-base", BackingFormat: "raw"})
	if err != nil {
		file.Unref()
		return fmt.Errorf("Could not create temporary overlay '%s': %v", tmp, PlainErr(err))
	}
	base := b.Node
	drv := qcow2.New(file, qcow2.DriverOptions{
		Backing: func(qcow2.BackingRequest) (*block.Node, error) {
			// The driver gets a reference of its own on b's node.
			base.Ref()
			return base, nil
		},
	})
	n, err := b.Graph.Open(drv, block.Options{Name: base.Name() + "-snapshot"})
	if err != nil {
		drv.Release()
		return fmt.Errorf("Could not open temporary overlay '%s': %v", tmp, PlainErr(err))
	}
	base.Unref() // the overlay holds its own reference now
	b.Node = n
	b.Qcow2 = nil
	return nil
}
