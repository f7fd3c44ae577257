package cli

import (
	"errors"
	"os"
	"syscall"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/drivers/raw"
)

// PlainErr words err for a user, as qemu-img would: the block layer's
// context (operation, node name, offset, kind) is dropped and the cause
// kept. A lock conflict is QEMU's sentence with the image's path; a path
// error is its errno text. Other errors keep their message minus the
// outermost *block.Error prefixes.
func PlainErr(err error) error {
	if err == nil {
		return nil
	}
	var le *raw.LockError
	if errors.As(err, &le) {
		return le
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		return UnwrapPathErr(pe)
	}
	for {
		be, ok := err.(*block.Error)
		if !ok || be.Err == nil {
			break
		}
		err = be.Err
	}
	if en, ok := err.(syscall.Errno); ok {
		return chain.Strerror{Errno: en}
	}
	return err
}
