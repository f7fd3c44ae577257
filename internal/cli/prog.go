package cli

import (
	"fmt"
	"os"

	"github.com/ringblk/ringblk/drivers/qcow2"
)

// Prog is the program name that starts every message ("qemu-img: …").
// It is "ringblk" unless the dispatcher was run through a link named as a
// QEMU tool (qemu-img, qemu-io, qemu-nbd, qemu-storage-daemon): then it is that tool's name, so
// scripts that match QEMU's messages see the same prefix.
var Prog = "ringblk"

// Tools are the QEMU program names ringblk answers to when its argv[0]'s
// base name is one of them (the multi-call binary, docs/design/iotests.md).
var Tools = []string{"qemu-img", "qemu-io", "qemu-nbd", "qemu-storage-daemon"}

// QEMUVersion is the QEMU release whose command lines and output the
// drop-in mode follows; --version in that mode names it first, as QEMU's
// own tools do, so version-sniffing scripts parse it.
const QEMUVersion = "7.2.0"

// In drop-in mode the qcow2 driver's corruption events are printed on
// stderr in QEMU's words, as QEMU prints them (iotests 060, 305); as
// ringblk the failed request's error names the damage instead.
func init() {
	qcow2.CorruptionReport = func(msg string) {
		if Prog != "ringblk" {
			fmt.Fprintln(os.Stderr, msg)
		}
	}
}
