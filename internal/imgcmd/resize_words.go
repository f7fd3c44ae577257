package imgcmd

import (
	"errors"
	"strings"

	qcow2fmt "github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/internal/cli"
)

// qemuResizeWords is a refused resize as qemu-img resize prints it in
// drop-in mode: the format driver's own words alone ("Can't resize a v2
// image which has snapshots", iotest 061), without ringblk's "Could not
// resize FILE to N bytes" and field prefix. nil as ringblk, or when the
// driver gave no words of its own. A second line of the words is
// qemu-img's hint, printed on its own line ("Try block-dirty-bitmap-remove
// to delete this bitmap from disk" after an inconsistent bitmap).
func qemuResizeWords(err error) error {
	var fe *qcow2fmt.FormatError
	if cli.Prog == "ringblk" || !errors.As(err, &fe) || fe.Reason == "" {
		return nil
	}
	if msg, hint, ok := strings.Cut(fe.Reason, "\n"); ok {
		return &cli.HintError{Err: errors.New(msg), Hint: hint + "\n"}
	}
	return errors.New(fe.Reason)
}
