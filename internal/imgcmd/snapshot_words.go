package imgcmd

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	qcow2fmt "github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/internal/cli"
)

// snapshotL1Words is cli.SnapshotL1Words (snapshot apply and delete
// here, -l loads in cli.SnapshotRef).
func snapshotL1Words(err error) (string, syscall.Errno) { return cli.SnapshotL1Words(err) }

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
