package host

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/raw"
)

// StageOptions say how to stage an external snapshot.
type StageOptions struct {
	// Path is the overlay's qcow2 file.
	Path string
	// Existing opens Path as it is (QMP's mode "existing") instead of
	// creating it; its backing file name is not followed: the device's
	// current image becomes its backing node.
	Existing bool
	// NodeName names the overlay node ("" picks one).
	NodeName string
	// ReadOnly opens the overlay read-only (QMP's blockdev-snapshot-sync
	// of a read-only node: QEMU opens the overlay with the flags of the
	// node it covers).
	ReadOnly bool
}

// SnapshotStage is an external snapshot taken in the steps of a
// transaction (QEMU's blockdev-snapshot-sync action): StageSnapshot
// prepares, then Commit or Abort. The caller holds a drained section of
// the device's node from before StageSnapshot until after Commit or Abort
// (seed 001), and should drain the overlay too (Overlay) so that the front
// ends moved onto it stay quiesced until the transaction's clean step.
type SnapshotStage struct {
	d       *Device
	old     *block.Node
	oldFile *raw.Driver // the old image's file, reopened read-only on commit
	overlay *block.Node
	drv     *qcow2.Driver
	path    string
	created bool
	done    bool
	// oldRO: the image was read-only already; it was neither inactivated
	// nor is its file reopened, and nothing is undone on abort.
	oldRO bool
}

// StageSnapshot flushes the device's image and makes it read-only
// (inactive), creates the overlay file (unless o.Existing) and opens it
// over the image. Nothing the device's users see changes until Commit. On
// error everything is undone: the image is active again and a file it
// created is removed.
func (d *Device) StageSnapshot(o StageOptions) (s *SnapshotStage, err error) {
	if !d.h.enter() {
		return nil, ErrClosed
	}
	defer d.h.leave()
	if d.inContext() {
		return nil, ErrInContext
	}
	h := d.h
	old := d.fe.Root()
	if old == nil || d.isClosed() {
		return nil, ErrClosed
	}
	if o.Path == "" {
		return nil, fmt.Errorf("ringblk: %s: snapshot: no overlay file named", d.name)
	}
	d.mu.Lock()
	curPath, curFormat, curFile := d.path, d.format, d.file
	d.mu.Unlock()
	if curPath == "" || (curFormat != "raw" && curFormat != "qcow2") {
		return nil, fmt.Errorf("ringblk: %s: a live snapshot needs a raw or qcow2 image file (this is %s): %w", d.name, curFormat, ErrUnsupported)
	}
	// A read-only image is taken as QEMU takes it: nothing to flush or
	// freeze, the overlay goes on top (read-only too when o.ReadOnly).
	oldRO := old.ReadOnly()
	if o.NodeName != "" && h.g.NodeByName(o.NodeName) != nil {
		return nil, fmt.Errorf("ringblk: %s: snapshot: a node named %q exists already", d.name, o.NodeName)
	}
	s = &SnapshotStage{d: d, old: old, oldFile: curFile, path: o.Path, oldRO: oldRO}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.Abort())
			s = nil
		}
	}()
	if !o.Existing {
		// Never overwrite a file: abort must leave the directory as it was.
		if _, serr := os.Lstat(o.Path); serr == nil {
			return s, fmt.Errorf("ringblk: %s: snapshot: overlay file %s exists already (use mode existing)", d.name, o.Path)
		}
		g, err := d.Geometry()
		if err != nil {
			return s, err
		}
		base, err := filepath.Abs(curPath)
		if err != nil {
			return s, err
		}
		if err := h.Create(o.Path, CreateOptions{Format: "qcow2", Size: g.Size, BackingFile: base, BackingFormat: curFormat}); err != nil {
			s.created = true // Create may have left a partial file
			return s, fmt.Errorf("ringblk: %s: snapshot: %w", d.name, err)
		}
		s.created = true
	} else if _, serr := os.Stat(o.Path); serr != nil {
		return s, fmt.Errorf("ringblk: %s: snapshot: overlay %w", d.name, serr)
	}
	// Flush first so a write-back error is reported as such; Inactivate
	// then makes the node refuse writes (a qcow2 node writes back its
	// metadata again there, finding nothing left).
	if !oldRO {
		if err := old.Flush(); err != nil {
			return s, fmt.Errorf("ringblk: %s: snapshot: flush the image: %w", d.name, err)
		}
		if err := old.Inactivate(); err != nil {
			return s, fmt.Errorf("ringblk: %s: snapshot: flush and freeze the image: %w", d.name, err)
		}
	}
	fopts := raw.Options{ReadOnly: o.ReadOnly}
	if curFile != nil {
		fo := curFile.Options()
		fopts.Cache, fopts.Discard, fopts.Locking = fo.Cache, fo.Discard, fo.Locking
	}
	name := o.NodeName
	if name == "" {
		name = h.uniqueName(d.name + "-overlay")
	}
	file, err := raw.NewNode(h.g, o.Path, fopts, block.Options{Name: h.uniqueName(name + "-file"), Context: old.Context(), ReadOnly: o.ReadOnly})
	if err != nil {
		return s, fmt.Errorf("ringblk: %s: snapshot: %w", d.name, err)
	}
	// AttachBacking: an existing overlay whose header names no backing
	// file takes the image all the same, as in QEMU (its header is not
	// rewritten).
	drv := qcow2.New(file, qcow2.DriverOptions{ID: chain.FileID(o.Path), AttachBacking: true,
		Backing: func(qcow2.BackingRequest) (*block.Node, error) {
			old.Ref() // on the main Context: the driver opens there
			return old, nil
		}})
	// The overlay lives where the image does (an IOThread's Context).
	n, err := h.g.Open(drv, block.Options{Name: name, Context: old.Context(), ReadOnly: o.ReadOnly})
	if err != nil {
		drv.Release()
		return s, fmt.Errorf("ringblk: %s: snapshot: open the overlay: %w", d.name, err)
	}
	if n.Child(block.RoleBacking) == nil || n.Child(block.RoleBacking).Node() != old {
		s.overlay = n
		return s, fmt.Errorf("ringblk: %s: snapshot: overlay %s did not take the image as its backing", d.name, o.Path)
	}
	s.overlay, s.drv = n, drv
	return s, nil
}

// Overlay returns the overlay node (nil after Abort).
func (s *SnapshotStage) Overlay() *block.Node { return s.overlay }

// Commit swaps the overlay in: every front end on the image (the
// device's, exports') now sees the overlay, whose backing node is the
// image; then the image's file is reopened read-only.
func (s *SnapshotStage) Commit() error {
	if s.done || s.overlay == nil {
		return errors.New("ringblk: snapshot: commit of a stage that was not prepared")
	}
	s.done = true
	d, h := s.d, s.d.h
	if err := h.g.ReplaceNode(s.old, s.overlay); err != nil {
		return fmt.Errorf("ringblk: %s: snapshot: %w", d.name, err)
	}
	f := findRaw(h.g, s.overlay)
	d.mu.Lock()
	d.path, d.format, d.qcow, d.file = s.path, "qcow2", s.drv, f
	d.mu.Unlock()
	// As QEMU reopens the old top read-only: inside a drained section of
	// the whole chain, the old image's file gets a read-only descriptor
	// and a reader's locks. Failing that, the snapshot stands.
	var rerr error
	if s.oldFile != nil && !s.oldRO {
		s.overlay.SubtreeDrainedBegin()
		h.g.Control(func() { rerr = s.oldFile.ReopenReadOnly() })
		s.overlay.SubtreeDrainedEnd()
		if rerr != nil {
			rerr = fmt.Errorf("ringblk: %s: snapshot taken (the device runs on %s), but the old image's file stays open read-write: %w", d.name, s.path, rerr)
		}
	}
	return errors.Join(rerr, s.overlay.Unref()) // the front ends hold it now
}

// Abort closes the overlay, removes its file if StageSnapshot created it
// and makes the image writable again.
func (s *SnapshotStage) Abort() error {
	if s.done {
		return nil
	}
	s.done = true
	var errs []error
	if s.overlay != nil {
		errs = append(errs, s.overlay.Unref())
		s.overlay = nil
	}
	if s.created {
		if err := os.Remove(s.path); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		}
	}
	if !s.oldRO {
		errs = append(errs, s.old.Activate())
	}
	return errors.Join(errs...)
}

// Root returns the device's current top node (nil once closed).
func (d *Device) Root() *block.Node { return d.fe.Root() }

// Path returns the device's top image file ("" for a node device).
func (d *Device) Path() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.path
}

// Format returns the top image's format: raw, qcow2, null or node.
func (d *Device) Format() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.format
}
