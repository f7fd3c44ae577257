package raw_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/raw"
)

// loopDevice attaches a 16 MiB file (filled with data) to a loop device and
// returns the device and the backing file; skipped unless root with
// losetup.
func loopDevice(t *testing.T) (dev, backing string, model []byte) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("block-device tests need root (losetup); skipped")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("losetup not installed; block-device tests skipped")
	}
	backing = filepath.Join(dataDir(t), "loop.img")
	model = pattern(16<<20, 50)
	if err := os.WriteFile(backing, model, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	if err != nil {
		t.Skipf("losetup failed (no loop devices here?): %v: %s", err, out)
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev, backing, model
}

// TestBlockDevice runs the driver on a loop device: size and logical block
// size from the device, O_DIRECT and buffered I/O, BLKDISCARD (the loop
// driver punches the backing file), BLKZEROOUT, write-zeroes with unmap,
// truncate rules, and block status.
func TestBlockDevice(t *testing.T) {
	dev, backing, model := loopDevice(t)
	for _, mode := range []raw.Cache{raw.CacheNone, raw.CacheWriteback} {
		t.Run(mode.String(), func(t *testing.T) {
			e := newEnv(t, nil, 0)
			n, err := raw.NewNode(e.g, dev, raw.Options{Cache: mode, Discard: raw.DiscardUnmap}, block.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer n.Unref()
			d := n.Driver().(*raw.Driver)
			if !d.BlockDevice() || d.LogicalBlockSize() != 512 {
				t.Fatalf("block device %v, logical block %d", d.BlockDevice(), d.LogicalBlockSize())
			}
			if size, err := n.Length(); err != nil || size != 16<<20 {
				t.Fatalf("length %d %v", size, err)
			}
			data := pattern(8192, 51)
			if _, err := n.WriteAt(data, 1000); err != nil { // unaligned: RMW on O_DIRECT
				t.Fatal(err)
			}
			copy(model[1000:], data)
			if err := n.Discard(1<<20, 1<<20); err != nil {
				t.Fatal(err)
			}
			clear(model[1<<20 : 2<<20]) // loop punches a hole in the backing file
			if err := n.WriteZeroes(4<<20, 65536, 0); err != nil {
				t.Fatal(err)
			}
			clear(model[4<<20 : 4<<20+65536])
			if err := n.WriteZeroes(5<<20, 65536, block.MayUnmap); err != nil {
				t.Fatal(err)
			}
			clear(model[5<<20 : 5<<20+65536])
			if err := n.Flush(); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, 16<<20)
			if _, err := n.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			mustEqual(t, "device", got, model)
			if st, pnum, err := n.BlockStatus(0, 1<<20); err != nil || st&block.StatusData == 0 || pnum != 1<<20 {
				t.Fatalf("status %v %d %v", st, pnum, err)
			}
			err = n.WriteZeroes(100, 512, 0)
			wantOpError(t, err, block.OpWriteZeroes, 100, syscall.EINVAL, dev)
			if err := n.Truncate(16 << 20); err != nil {
				t.Fatalf("truncate to the device size: %v", err)
			}
			if err := n.Truncate(32 << 20); err == nil {
				t.Fatal("growing a block device succeeded")
			}
		})
	}
	mustEqual(t, "backing file", fileBytes(t, backing), model)
	if a := allocated(t, backing); a > 16<<20-(1<<20) {
		t.Fatalf("backing file has %d bytes allocated: the discard did not reach it", a)
	}
	// Locks work on devices too.
	d1, err := raw.Open(dev, raw.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Release()
	if _, err := raw.Open(dev, raw.Options{}); !errors.Is(err, raw.ErrLocked) {
		t.Fatalf("second writer on the device: %v", err)
	}
}
