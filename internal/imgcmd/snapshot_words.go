package imgcmd

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	qcow2fmt "github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/internal/cli"
)

// QEMU 7.2 opens an image whose snapshot table has an entry with invalid
// L1 table fields and refuses only the operations that need that table
// (qcow2_validate_table in snapshot apply, delete, load and the zero
// expansion of a downgrade; iotest 080). These are its words for them, in
// drop-in mode; ringblk's own message names the field and value.

// snapshotL1Words returns QEMU's sentence for a refused snapshot L1 table
// and the errno QEMU's callers report it with; "" when err is not one or
// ringblk runs under its own name.
func snapshotL1Words(err error) (string, syscall.Errno) {
	var fe *qcow2fmt.FormatError
	if cli.Prog == "ringblk" || !errors.As(err, &fe) || !strings.HasPrefix(fe.Field, "snapshot[") {
		return "", 0
	}
	switch {
	case strings.HasSuffix(fe.Field, ".l1_table_offset") && strings.HasPrefix(fe.Reason, "offset invalid"):
		return "Snapshot L1 table offset invalid", syscall.EINVAL
	case strings.HasSuffix(fe.Field, ".l1_size") && fe.Reason == "snapshot L1 table too large":
		return "Snapshot L1 table too large", syscall.EFBIG
	}
	return "", 0
}

// strerror is the C library's text of an errno ("Invalid argument").
func strerror(e syscall.Errno) string {
	s := e.Error()
	return strings.ToUpper(s[:1]) + s[1:]
}

// snapshotCreateErrno is the errno qemu-img's snapshot -c reports for a
// refused creation ("-27 (File too large)" for a full table), 0 when it
// words the failure otherwise here.
func snapshotCreateErrno(err error) syscall.Errno {
	if cli.Prog != "ringblk" && errors.Is(err, qcow2fmt.ErrLimit) {
		return syscall.EFBIG
	}
	return 0
}

// qemuErrnoCause is "-N (text)", qemu-img snapshot -c's form.
func qemuErrnoCause(e syscall.Errno) string {
	return fmt.Sprintf("%d (%s)", -int(e), strerror(e))
}

// wordsErr is an error in qemu-img's words that keeps its cause.
type wordsErr struct {
	msg string
	err error
}

func (e *wordsErr) Error() string { return e.msg }
func (e *wordsErr) Unwrap() error { return e.err }

// cString is s as QEMU's C string of it: up to the first NUL byte (an id
// or name of NUL bytes, as iotest 261 writes them, prints as empty).
func cString(s string) string {
	if i := strings.IndexByte(s, 0); i >= 0 {
		return s[:i]
	}
	return s
}
