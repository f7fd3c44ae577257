//go:build rbd

package rbd

import "fmt"

// Create makes a new image of size bytes (librbd's default features and
// object size; the snapshot part of s must be empty).
func Create(s Spec, size int64) error {
	if s.Snap != "" {
		return fmt.Errorf("Could not create '%s': a snapshot cannot be created as an image", s)
	}
	if size < 0 {
		return fmt.Errorf("Could not create '%s': negative size %d", s, size)
	}
	c, err := connect(s)
	if err != nil {
		return fmt.Errorf("Could not create '%s': %w", s, err)
	}
	defer c.close()
	if err := createImage(c, s.Image, size); err != nil {
		return fmt.Errorf("Could not create '%s': %w", s, err)
	}
	return nil
}

// Remove deletes the image (it must have no snapshots).
func Remove(s Spec) error {
	c, err := connect(s)
	if err != nil {
		return fmt.Errorf("Could not remove '%s': %w", s, err)
	}
	defer c.close()
	if err := removeImage(c, s.Image); err != nil {
		return fmt.Errorf("Could not remove '%s': %w", s, err)
	}
	return nil
}

// withImage opens the image s names for a short control operation.
func withImage(s Spec, readOnly bool, fn func(*image) error) error {
	im, err := openImage(s, readOnly)
	if err != nil {
		return fmt.Errorf("Could not open '%s': %w", s, err)
	}
	err = fn(im)
	if cerr := im.close(); err == nil {
		err = cerr
	}
	return err
}

// Stat describes the image.
func Stat(s Spec) (Info, error) {
	var info Info
	err := withImage(s, true, func(im *image) error {
		var err error
		if info, err = im.info(); err != nil {
			return err
		}
		snaps, err := im.snaps()
		info.Snapshots = len(snaps)
		return err
	})
	return info, err
}

// Snapshots lists the image's snapshots.
func Snapshots(s Spec) ([]SnapInfo, error) {
	var out []SnapInfo
	err := withImage(s.WithSnap(""), true, func(im *image) (err error) {
		out, err = im.snaps()
		return err
	})
	return out, err
}

// SnapCreate makes snapshot name of the image.
func SnapCreate(s Spec, name string) error {
	return withImage(s.WithSnap(""), false, func(im *image) error {
		if err := im.snapCreate(name); err != nil {
			return fmt.Errorf("Could not create snapshot '%s': %w", name, err)
		}
		return nil
	})
}

// SnapRemove deletes snapshot name.
func SnapRemove(s Spec, name string) error {
	return withImage(s.WithSnap(""), false, func(im *image) error {
		if err := im.snapRemove(name); err != nil {
			return fmt.Errorf("Could not delete snapshot '%s': %w", name, err)
		}
		return nil
	})
}

// SnapRollback reverts the image to snapshot name.
func SnapRollback(s Spec, name string) error {
	return withImage(s.WithSnap(""), false, func(im *image) error {
		if err := im.snapRollback(name); err != nil {
			return fmt.Errorf("Could not apply snapshot '%s': %w", name, err)
		}
		return nil
	})
}
