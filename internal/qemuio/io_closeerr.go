package qemuio

import (
	"errors"
	"fmt"
	"io"

	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/internal/cli"
)

// closeWriteBackLines prints, as the qemu-io drop-in, qemu-io's lines for
// a qcow2 close whose metadata write-back failed (one per cache flush
// that failed, qcow2.CloseWriteBackError) and reports whether it did.
// The close still fails: the caller's exit status says so.
func closeWriteBackLines(w io.Writer, err error) bool {
	var wb *qcow2.CloseWriteBackError
	if cli.Prog != "qemu-io" || !errors.As(err, &wb) {
		return false
	}
	fmt.Fprintf(w, "qemu-io: Failed to flush the L2 table cache: %s\n", errText(wb.WriteBack))
	if wb.Retry != nil {
		fmt.Fprintf(w, "qemu-io: Failed to flush the refcount block cache: %s\n", errText(wb.Retry))
	}
	return true
}
