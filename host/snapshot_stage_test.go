package host_test

import (
	"testing"

	"github.com/ringblk/ringblk/host"
)

// TestLiveSnapshotOnIOThreadAfterWrites: a qcow2 device on an I/O
// Context, with fresh allocations (dirty metadata in the driver's cache),
// takes a live snapshot. The overlay lives on the device's Context, and
// the old image closes without error: its metadata was written before it
// became read-only.
func TestLiveSnapshotOnIOThreadAfterWrites(t *testing.T) {
	h := newHost(t, host.Options{Contexts: 2})
	p := image(t, h, "qcow2", 4<<20)
	d, err := h.OpenDevice(p, host.OpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.SetContext(1); err != nil {
		t.Fatal(err)
	}
	buf := pattern(make([]byte, 65536), 3)
	for off := int64(0); off < 1<<20; off += 65536 {
		if _, err := d.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.LiveSnapshot(p + ".top"); err != nil {
		t.Fatal(err)
	}
	if got, want := d.Root().Context(), h.Context(1); got != want {
		t.Errorf("overlay on Context %s, want the device's %s", got.Name(), want.Name())
	}
	got := make([]byte, len(buf))
	if _, err := d.ReadAt(got, 65536); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "read through the overlay", got, buf)
	if err := d.Close(); err != nil {
		t.Fatalf("close after the snapshot: %v", err)
	}
}
