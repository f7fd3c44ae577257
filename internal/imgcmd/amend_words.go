package imgcmd

import (
	"errors"
	"strings"

	"github.com/ringblk/ringblk/internal/cli"
)

// Two of qemu-img amend's refusals are an error line and a hint line
// (iotest 061): cli.HintError prints them so in drop-in mode, and on one
// line (the hint in parentheses) as ringblk.

// amendBackingErr refuses a backing file change: qemu-img amend leaves
// that to rebase.
func amendBackingErr() error {
	return &cli.HintError{Err: errors.New("Cannot amend the backing file"), Hint: "You can use 'qemu-img rebase' instead.\n"}
}

// dropInHint puts the format layer's "Invalid parameter 'KEY': This
// option is only supported for image creation" on qemu-img's two lines.
func dropInHint(err error) error {
	const sep = ": This option is only supported for image creation"
	msg, ok := strings.CutSuffix(err.Error(), sep)
	if !ok {
		return err
	}
	return &cli.HintError{Err: errors.New(msg), Hint: "This option is only supported for image creation\n"}
}
