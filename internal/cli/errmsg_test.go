package cli

import (
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/block"
)

// TestPlainErrErrnoAsStrerror: an errno under the block layer's context is
// worded as glibc's strerror, which qemu-img prints ("Input/output
// error", iotest 074), and still unwraps to the errno.
func TestPlainErrErrnoAsStrerror(t *testing.T) {
	err := &block.Error{Kind: block.Io, Op: block.OpRead, Node: "n", Err: syscall.EIO}
	p := PlainErr(err)
	if got := fmt.Sprint(p); got != "Input/output error" {
		t.Errorf("PlainErr = %q, want %q", got, "Input/output error")
	}
	if !errors.Is(p, syscall.EIO) {
		t.Error("the worded errno no longer unwraps to EIO")
	}
	if got := fmt.Sprint(PlainErr(errors.New("plain cause"))); got != "plain cause" {
		t.Errorf("a non-errno cause changed: %q", got)
	}
}
