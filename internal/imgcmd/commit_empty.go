package imgcmd

import (
	"errors"
	"fmt"

	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/internal/cli"
)

// emptyTop empties FILE after a commit, as qemu-img's bdrv_make_empty
// does: FILE is opened read-write by the name the user gave (a blkdebug:
// name keeps its filter, so injected errors reach the emptying, iotest
// 098) and the qcow2 driver drops every cluster in place (MakeEmpty).
// Layouts the driver does not empty in place (version 2, LUKS) are
// re-created with the same options instead (empty). A failure is
// qemu-img's "Failed to empty FILE: cause"; a half-done emptying leaves a
// dirty image that the next read-write open repairs.
func (c *committer) emptyTop() error {
	img, err := cli.OpenBlk(c.path, cli.BlkOptions{Format: c.format, NoBacking: true, Cache: c.cache, KeySecrets: c.keys})
	if err != nil {
		return fmt.Errorf("Failed to empty %s: %v", c.path, cli.PlainErr(err))
	}
	d := img.Qcow2
	if d == nil {
		img.Close()
		return c.empty()
	}
	err = d.MakeEmpty()
	if cerr := img.Close(); err == nil && cerr != nil {
		err = cerr
	}
	switch {
	case errors.Is(err, qcow2.ErrMakeEmptyUnsupported):
		return c.empty()
	case err != nil:
		return fmt.Errorf("Failed to empty %s: %v", c.path, cli.PlainErr(err))
	}
	return nil
}
