package imgcmd

import (
	"errors"

	qcow2fmt "github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/internal/cli"
)

// qemuResizeWords is a refused resize as qemu-img resize prints it in
// drop-in mode: the format driver's own words alone ("Can't resize a v2
// image which has snapshots", iotest 061), without ringblk's "Could not
// resize FILE to N bytes" and field prefix. nil as ringblk, or when the
// driver gave no words of its own.
func qemuResizeWords(err error) error {
	var fe *qcow2fmt.FormatError
	if cli.Prog == "ringblk" || !errors.As(err, &fe) || fe.Reason == "" {
		return nil
	}
	return errors.New(fe.Reason)
}
