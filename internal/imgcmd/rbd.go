package imgcmd

// The image commands on Ceph RBD images (rbd:pool/image[@snap][:opt=val]):
// the branches where RBD is not just a node (create, info, snapshot,
// resize). Reading and writing go through chain.Open like any image.

import (
	"fmt"
	"io"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/rbd"
	"github.com/ringblk/ringblk/internal/cli"
)

// createRBD makes a raw RBD image (QEMU's rbd protocol create).
func createRBD(file string, size int64, preallocated bool) error {
	s, err := rbd.ParseName(file)
	if err != nil {
		return cli.Usagef("%v", err)
	}
	if preallocated {
		return cli.Usagef("%s: preallocation is not supported on RBD images (they are thin)", file)
	}
	if err := rbd.Create(s, size); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	return nil
}

// writeQcow2RBD creates a qcow2 image inside a new RBD image: the RBD
// image starts empty and grows as qcow2 writes its metadata and clusters
// past its end (the driver resizes it, as QEMU's rbd driver does).
func writeQcow2RBD(file string, size int64, co format.CreateOptions) (err error) {
	s, err := rbd.ParseName(file)
	if err != nil {
		return err
	}
	if err := rbd.Create(s, 0); err != nil {
		return err
	}
	c, g, err := cli.NewBlkEnv()
	if err != nil {
		return err
	}
	defer func() {
		if _, serr := c.Stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	n, err := rbd.NewNode(g, s, false, block.Options{Name: "qcow2-file"})
	if err != nil {
		return err
	}
	err = qcow2.Create(n, size, co)
	if cerr := n.Unref(); err == nil {
		err = cerr
	}
	return err
}

// openNodeQcow2 reads the qcow2 metadata of a qcow2 node's file child (a
// qcow2 image stored in RBD) for map's host offsets.
func openNodeQcow2(n *block.Node, path string) (*openedImage, error) {
	c := n.Child(block.RoleFile)
	if c == nil {
		return nil, fmt.Errorf("Could not open '%s': the qcow2 node has no file child", path)
	}
	file := c.Node()
	size, err := file.Length()
	if err != nil {
		return nil, cli.OpenError(path, err)
	}
	im, err := format.ReadImage(file, size, format.Options{})
	if err != nil {
		return nil, cli.OpenError(path, err)
	}
	return &openedImage{path: path, format: "qcow2", size: size, qcow: im}, nil
}

// rbdSize is the virtual size of the RBD image a name points to (a
// backing file given without a size).
func rbdSize(file string) (int64, error) {
	s, err := rbd.ParseName(file)
	if err != nil {
		return 0, err
	}
	info, err := rbd.Stat(s)
	return info.Size, err
}

// infoRBD prints qemu-img info for an RBD image: raw, its size, the
// object size as the cluster size, and its snapshots; or, when it holds a
// qcow2 image (probed, or -f qcow2), that image's qcow2 information read
// through the RBD node.
func infoRBD(path, fmtName, output string, w io.Writer) (int, error) {
	s, err := rbd.ParseName(path)
	if err != nil {
		return 1, cli.Usagef("%v", err)
	}
	info, err := rbd.Stat(s)
	if err != nil {
		return 1, err
	}
	img, err := cli.OpenBlk(path, cli.BlkOptions{Format: fmtName, ReadOnly: true, NoBacking: true})
	if err != nil {
		return 1, err
	}
	defer img.Close()
	if img.Format == "qcow2" {
		oi, err := openNodeQcow2(img.Node, path)
		if err != nil {
			return 1, err
		}
		oi.remote = true
		o := imageInfo(oi)
		if output == "json" {
			return 0, writeJSON(w, o)
		}
		return 0, printInfoHuman(w, oi, o)
	}
	snaps, err := rbd.Snapshots(s)
	if err != nil {
		return 1, err
	}
	list := rbdSnapList(snaps)
	o := newObject()
	if len(list) > 0 {
		var js []*object
		for _, sn := range snaps {
			j := newObject()
			j.set("icount", 0)
			j.set("vm-clock-nsec", 0)
			j.set("name", sn.Name)
			j.set("date-sec", 0)
			j.set("date-nsec", 0)
			j.set("vm-clock-sec", 0)
			j.set("id", sn.Name)
			j.set("vm-state-size", sn.Size)
			js = append(js, j)
		}
		o.set("snapshots", js)
	}
	o.set("virtual-size", info.Size)
	o.set("filename", path)
	o.set("cluster-size", info.ObjectSize)
	o.set("format", "raw")
	o.set("dirty-flag", false)
	if output == "json" {
		return 0, writeJSON(w, o)
	}
	if _, err := fmt.Fprintf(w, "image: %s\nfile format: raw\nvirtual size: %s (%d bytes)\ndisk size: unavailable\ncluster_size: %d\n",
		path, sizeToStr(info.Size), info.Size, info.ObjectSize); err != nil {
		return 1, err
	}
	return 0, printSnapshotList(w, list)
}

// rbdSnapList shows RBD snapshots in qemu-img's table as QEMU's rbd
// driver reports them: the name as ID and tag, the image size at the
// snapshot as the VM state size, no date, clock or instruction count (0).
func rbdSnapList(snaps []rbd.SnapInfo) []format.Snapshot {
	var out []format.Snapshot
	for _, sn := range snaps {
		out = append(out, format.Snapshot{ID: sn.Name, Name: sn.Name, VMStateSize: uint64(sn.Size), ExtraDataSize: 24})
	}
	return out
}

// snapshotRBD is "snapshot" on an RBD image: RBD's own snapshots.
func snapshotRBD(file, action, name string, stdout io.Writer) (int, error) {
	s, err := rbd.ParseName(file)
	if err != nil {
		return 1, cli.Usagef("%v", err)
	}
	if s.Snap != "" {
		return 1, fmt.Errorf("Could not open '%s': name the image, not one of its snapshots", file)
	}
	switch action {
	case "l":
		snaps, err := rbd.Snapshots(s)
		if err != nil {
			return 1, err
		}
		return 0, printSnapshotList(stdout, rbdSnapList(snaps))
	case "c":
		err = rbd.SnapCreate(s, name)
	case "a":
		err = rbd.SnapRollback(s, name)
	case "d":
		err = rbd.SnapRemove(s, name)
	}
	if err != nil {
		return 1, err
	}
	return 0, nil
}
