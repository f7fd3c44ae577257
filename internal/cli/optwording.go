package cli

import (
	"errors"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// OptionErr is a refused -o list or value as a usage error, prefix (a
// file name and ": ", or "") first. In drop-in mode a value that is not a
// size is qemu-img's message: the 2^64 line, then its two lines on the
// suffixes (iotest 049); as ringblk the format layer's one line.
func OptionErr(prefix string, err error) error {
	var oe *format.OptionError
	if Prog != "ringblk" && errors.As(err, &oe) && oe.SizeSyntax {
		return &HintError{
			Err:  Usagef("%sParameter '%s' expects a non-negative number below 2^64", prefix, oe.Key),
			Hint: "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.\n",
		}
	}
	return Usagef("%s%v", prefix, err)
}
