package qcow2

import (
	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Check runs Image.Check on the open image (block.Checker): dirty metadata
// is written back first (read-write nodes), then the metadata is read and
// checked through the file child in a coroutine, under metaLock so no
// allocation runs meanwhile. A repair mode runs a repair instead
// (repair.go). Messages go to DriverOptions.CheckLog.
func (d *Driver) Check(r *block.Request) {
	r.Context().Go(func(co *aio.Co) {
		d.metaLock.lock(co)
		var err error
		if r.CheckMode() != 0 {
			err = maintOf(d).repair(co, r)
		} else {
			err = maintOf(d).checkLocked(co, r)
		}
		d.metaLock.unlock()
		r.CompleteLater(d.formatErr(r.Op, 0, err))
	})
}

func (d maintOps) checkLocked(co *aio.Co, r *block.Request) error {
	if !d.readOnly {
		if err := d.flushAllMetadata(co, r); err != nil {
			return err
		}
	}
	size, err := d.file.Node().Length()
	if err != nil {
		return err
	}
	im, err := format.ReadImage(coReader{d.Driver, co, r}, size, format.Options{CheckMode: true})
	if err != nil {
		return err
	}
	if _, err := im.ReadSnapshotsForCheck(false); err != nil {
		return err // a *format.SnapshotTableError: the caller words it
	}
	im.CheckLog = d.checkLog // every message, as qemu-img prints them
	res, err := im.Check()
	if err != nil {
		return err
	}
	out := r.CheckResult()
	*out = block.CheckResult{
		Corruptions: int(res.Corruptions), Leaks: int(res.Leaks), CheckErrors: int(res.CheckErrors),
		ImageEndOffset: res.ImageEndOffset, AllocatedClusters: res.AllocatedClusters,
		TotalClusters: res.TotalClusters, FragmentedClusters: res.FragmentedClusters,
		CompressedClusters: res.CompressedClusters,
	}
	return nil
}

// coReader reads the image file from a coroutine (for ReadImage and Check).
type coReader struct {
	d  *Driver
	co *aio.Co
	r  *block.Request
}

func (c coReader) ReadAt(p []byte, off int64) (int, error) {
	if err := c.d.fileRead(c.co, c.r, p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}
