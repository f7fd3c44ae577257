package raw_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/raw"
)

// TestCharacterDevice: a character device opens as an image (QEMU's
// host_device and host_cdrom take one, iotest 226): /dev/null has length
// 0 and is data as far as block status goes.
func TestCharacterDevice(t *testing.T) {
	if _, err := os.Stat("/dev/null"); err != nil {
		t.Skip("no /dev/null:", err)
	}
	for _, ro := range []bool{true, false} {
		e := newEnv(t, nil, 0)
		n, err := raw.NewNode(e.g, "/dev/null", raw.Options{ReadOnly: ro, Locking: raw.LockingOff}, block.Options{Name: "null", ReadOnly: ro})
		if err != nil {
			t.Fatalf("read-only %v: open /dev/null: %v", ro, err)
		}
		if l, err := n.Length(); err != nil || l != 0 {
			t.Errorf("read-only %v: Length %d, %v; want 0", ro, l, err)
		}
		n.Unref()
	}
}

// TestBlockStatusPartialLastSector: a file of 1 MiB - 1 bytes is an
// image of 1 MiB; block status reports its last 64 KiB of data as data
// through the end of the image, not data and a one-byte hole (iotest
// 253 -raw).
func TestBlockStatusPartialLastSector(t *testing.T) {
	const size = 1<<20 - 1
	path := filepath.Join(dataDir(t), "tail.raw")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{1}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{2}, 65535), size-65535); err != nil {
		t.Fatal(err)
	}
	f.Close()
	e := newEnv(t, nil, 0)
	// O_DIRECT (iotest 253): the last, partial unit is data to its end.
	n := e.node(path, raw.Options{Cache: raw.CacheNone})
	l, err := n.Length()
	if err != nil || l != 1<<20 {
		t.Fatalf("Length %d, %v; want %d", l, err, 1<<20)
	}
	st, pnum, err := n.BlockStatus(1<<20-65536, 65536)
	if err != nil || st&block.StatusData == 0 || pnum != 65536 {
		t.Errorf("O_DIRECT: block status of the last 64 KiB: status %v, pnum %d, %v; want data for 65536", st, pnum, err)
	}
	// Buffered (iotest 221): data ends at the file's last byte; the rest
	// of the rounded-up sector is a hole.
	buffered := path + ".b"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(buffered, data, 0o644); err != nil {
		t.Fatal(err)
	}
	b := e.node(buffered, raw.Options{})
	st, pnum, err = b.BlockStatus(1<<20-65536, 65536)
	if err != nil || st&block.StatusData == 0 || pnum != 65535 {
		t.Errorf("buffered: block status of the last 64 KiB: status %v, pnum %d, %v; want data for 65535", st, pnum, err)
	}
}
