package imgcmd

import (
	"errors"
	"fmt"

	"github.com/ringblk/ringblk/bitmap"
	"github.com/ringblk/ringblk/internal/cli"
)

// convert --bitmaps, as qemu-img 7.2 does it: the persistent bitmaps of
// the source's top image are checked before the target is created (a
// source without bitmap support, or an inconsistent bitmap without
// --skip-broken-bitmaps, is refused), and after the data is copied each
// is added to the target with its name, granularity and enabled state,
// persistent, and given the source's dirty bits. An inconsistent bitmap
// is skipped with a warning under --skip-broken-bitmaps. The target
// stores them when it is closed (docs/design/qcow2-bitmaps.md).

// checkSourceBitmaps is qemu-img's convert_check_bitmaps.
func checkSourceBitmaps(src *cli.BlkImage, skipBroken bool) error {
	d := src.Qcow2
	if d == nil {
		return errors.New("Source lacks bitmap support")
	}
	if skipBroken {
		return nil
	}
	// QEMU lists an image's bitmaps newest first: the last inconsistent
	// one of the directory is the one it names.
	list := d.PersistentBitmaps()
	for i := len(list) - 1; i >= 0; i-- {
		if name := list[i].Name; d.InconsistentBitmap(name) {
			return &cli.HintError{
				Err:  fmt.Errorf("Cannot copy inconsistent bitmap '%s'", name),
				Hint: "Try --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it\n",
			}
		}
	}
	return nil
}

// copyBitmaps is qemu-img's convert_copy_bitmaps: the source's persistent
// bitmaps become persistent bitmaps of dst with the same bits. QEMU
// visits them newest first (the last of the directory first): its
// warnings and its first refusal come in that order, and the bitmaps it
// visited before a refusal are added. So a first pass walks them newest
// first; those that pass are then added in directory order, which is the
// order both tools' targets store them in.
func copyBitmaps(src, dst *cli.BlkImage, skipBroken bool, warn *warnings) error {
	d := src.Qcow2
	var copies []*bitmap.Bitmap // newest first
	var refused error
	list := d.PersistentBitmaps()
	for i := len(list) - 1; i >= 0; i-- {
		name := list[i].Name
		if d.InconsistentBitmap(name) {
			if skipBroken {
				warn.printf("Skipping inconsistent bitmap '%s'", name)
			}
			continue
		}
		sb := src.Node.Bitmap(name)
		if sb == nil || !sb.Persistent {
			continue
		}
		if dst.Node.Bitmap(name) != nil || dst.Qcow2.InconsistentBitmap(name) {
			// qemu-img stops here, with the newer ones added.
			refused = fmt.Errorf("Failed to create bitmap %s: Bitmap already exists: %s", name, name)
			break
		}
		copies = append(copies, sb)
	}
	for i := len(copies) - 1; i >= 0; i-- {
		sb := copies[i]
		name := sb.Name()
		if err := bitmapAdd(dst, name, sb.Granularity()); err != nil { // bitmap.go
			return fmt.Errorf("Failed to create bitmap %s: %w", name, err)
		}
		db := dst.Node.Bitmap(name)
		db.SetEnabled(sb.Enabled())
		if err := mergeBitmap(db, sb); err != nil {
			if rerr := dst.Node.RemoveBitmap(name); rerr != nil {
				err = errors.Join(err, rerr)
			}
			return fmt.Errorf("Failed to populate bitmap %s: %w", name, err)
		}
	}
	return refused
}

// mergeBitmap adds src's dirty bits to dst; bitmaps of images of
// different sizes do not merge (QEMU's words).
func mergeBitmap(dst, src *bitmap.Bitmap) error {
	if dst.Size() != src.Size() {
		return errors.New("Bitmaps are incompatible and can't be merged")
	}
	return dst.Merge(src)
}
