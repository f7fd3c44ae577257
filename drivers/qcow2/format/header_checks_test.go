package format_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// TestQcow2ExtensionHeaderStraddlingEnd: an extension header that does
// not fit before the backing file name is refused, as QEMU refuses it
// (iotest 080), not taken as the end of the extensions.
func TestQcow2ExtensionHeaderStraddlingEnd(t *testing.T) {
	b := firstCluster(t, "v3")
	put64(b, 8, 0x74) // backing_file_offset inside the first extension header
	put32(b, 16, 0)
	put32(b, 112, 0x12345678)
	put32(b, 116, 0x7fffffff)
	_, err := format.ParseHeader(b)
	var fe *format.FormatError
	if !errors.As(err, &fe) || !errors.Is(err, format.ErrCorrupt) || fe.Reason != "header extension too large" {
		t.Fatalf("got %v", err)
	}
}

// TestQcow2L1TooSmallOrImageTooBig: an L1 table too small for the size
// is refused with a reason that tells a size no L1 table can cover
// (more than 2^31-1 entries, QEMU's "Image is too big") from a short one.
func TestQcow2L1TooSmallOrImageTooBig(t *testing.T) {
	b := firstCluster(t, "v3")
	put32(b, 36, 0) // l1_size
	_, err := format.ParseHeader(b)
	if err == nil || !strings.Contains(err.Error(), "L1 table is too small") {
		t.Fatalf("short L1: %v", err)
	}
	put64(b, 24, 1<<60) // 1 EiB with 64 KiB clusters: 2^31 entries
	put32(b, 20, 16)
	_, err = format.ParseHeader(b)
	if err == nil || !strings.Contains(err.Error(), "image is too big") {
		t.Fatalf("1 EiB: %v", err)
	}
}
