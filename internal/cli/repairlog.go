package cli

import (
	"fmt"
	"os"

	"github.com/ringblk/ringblk/drivers/qcow2"
)

// withRepairLog gives the commands' qcow2 opens QEMU's behaviour for a
// dirty image opened read-write: the automatic repair's messages ("ERROR
// cluster …", "Rebuilding refcount structure", "Repairing …") go to
// stderr, so an operator sees what the open changed. A caller that logs
// checks itself (check -r) keeps its own log.
func withRepairLog(o qcow2.DriverOptions) qcow2.DriverOptions {
	if o.RepairLog == nil && o.CheckLog == nil {
		o.RepairLog = func(msg string) { fmt.Fprintln(os.Stderr, msg) }
	}
	return o
}
