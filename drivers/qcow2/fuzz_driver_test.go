package qcow2

import (
	"errors"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
)

// FuzzQcow2DriverOps: a fuzzed image (sparse encoding, as FuzzQcow2Open)
// on an in-memory file, opened read-only or read-write through the block
// layer, then a few fuzzed operations (read, write, discard, write-zeroes,
// compressed write, flush, grow, check): nothing panics or hangs, and
// every error is a *block.Error.
func FuzzQcow2DriverOps(f *testing.F) {
	ops := []byte{0, 0, 8, 1, 1, 0x10, 4, 2, 2, 0x40, 8, 3, 3, 0x20, 2, 4, 5, 0, 0, 0, 6, 0x80, 0, 7, 0, 0}
	for _, name := range testImages {
		b := loadImage(f, name)
		f.Add(encodeSparse(b, metadataRanges(f, b)), ops, uint8(1))
	}
	for _, c := range hostileImages {
		orig := loadImage(f, c.Image)
		p := c.Patch(&testing.T{}, append([]byte(nil), orig...))
		f.Add(encodeSparse(p, metadataRanges(f, orig)), ops, uint8(1))
	}
	e := newTestEnv(f)
	f.Fuzz(func(t *testing.T, data, ops []byte, flags uint8) {
		watchdog := time.AfterFunc(30*time.Second, func() { panic("fuzz execution hung") }) // a hang becomes a crasher
		defer watchdog.Stop()
		file := decodeSparse(data)
		if file.Size > 32<<20 {
			return // keep the in-memory file small
		}
		img := make([]byte, file.Size)
		for _, c := range file.Chunks {
			copy(img[c.Off:], c.Data)
		}
		rf := &recFile{data: img}
		fn, err := e.g.Open(rf, block.Options{})
		if err != nil {
			t.Fatal(err)
		}
		readOnly := flags&1 == 0
		n, err := NewNode(e.g, fn, DriverOptions{Image: fuzzOpts}, block.Options{ReadOnly: readOnly})
		isBlockError(t, err)
		if err != nil {
			return
		}
		defer n.Unref()
		size, _ := n.Length()
		buf := make([]byte, 256<<10)
		for len(ops) >= 3 {
			op, a, b := ops[0]%8, int64(ops[1]), int64(ops[2])
			ops = ops[3:]
			off := size * a / 256
			ln := min(max(size-off, 0), int64(len(buf)), b*4096+b)
			switch op {
			case 0:
				_, err = n.ReadAt(buf[:ln], off)
			case 1:
				_, err = n.WriteAt(buf[:ln], off)
			case 2:
				err = n.Discard(off, ln)
			case 3:
				err = n.WriteZeroes(off, ln, block.Flags(b&1)*block.MayUnmap)
			case 4:
				err = n.Flush()
			case 5:
				cs := int64(1) << 16
				_, err = n.WriteCompressed(buf[:min(cs, ln)], off&^(cs-1))
			case 6:
				err = n.Truncate(size + b*512)
			case 7:
				_, err = n.Check(0)
			}
			isBlockError(t, err)
		}
	})
}

func isBlockError(t *testing.T, err error) {
	t.Helper()
	var be *block.Error
	if err != nil && !errors.As(err, &be) {
		t.Fatalf("%T %v is not a *block.Error", err, err)
	}
}
