package bench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ioengine=io_uring_cmd is fio's NVMe passthrough engine: NVMe commands
// through io_uring on a namespace's generic character device
// (/dev/ngXnY). bench has no passthrough path. What it does is what fio
// 3.33 does on a machine without such a device: a job whose file is not
// an NVMe generic character device fails at its start with fio's message
// ("ioengine io_uring_cmd only works with nvme ns generic char devices
// (/dev/ngXnY)"), does no I/O, is left out of the normal report but
// listed in JSON with zeros and error 0, and counts in the exit status;
// the other jobs run. On a real NVMe generic device bench refuses the
// job (not implemented) rather than read or write it some other way.

// errUringCmdFile is fio's message for io_uring_cmd on another file.
var errUringCmdFile = errors.New("ioengine io_uring_cmd only works with nvme ns generic char devices (/dev/ngXnY)")

// uringCmdSetup checks an io_uring_cmd job's file: errUringCmdFile when
// fio would fail the job at its start, a refusal on a device bench could
// only fake.
func uringCmdSetup(j *Job) error {
	st, err := os.Stat(j.Filename)
	if err != nil || st.Mode()&os.ModeCharDevice == 0 || !strings.HasPrefix(filepath.Base(j.Filename), "ng") {
		return errUringCmdFile
	}
	return fmt.Errorf("job %q: ioengine=io_uring_cmd on %s: NVMe passthrough commands are not implemented (use ioengine=io_uring or ringblk on the block device)", j.Name, j.Filename)
}
