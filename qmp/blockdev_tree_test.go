package qmp

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func i64(v int64) *int64 { return &v }
func ptrue() *bool       { b := true; return &b }

// TestBlockdevAddRawOverBlkdebugInjects: a raw node added over a
// blkdebug node (by name, as in QEMU iotests) raises read_aio before its
// reads, so the filter's rule fails the read that covers its sector and
// (once) only that one; deleting the raw node gives the blkdebug node,
// and under it the file node, their own devices back.
func TestBlockdevAddRawOverBlkdebugInjects(t *testing.T) {
	d, dir := testDaemon(t, 1)
	img := filepath.Join(dir, "r.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.blockdevAdd(&AddOptions{Driver: "file", NodeName: "f", Filename: img}); err != nil {
		t.Fatal(err)
	}
	dbg := &AddOptions{Driver: "blkdebug", NodeName: "dbg"}
	dbg.Image = &FileRef{Ref: "f"}
	dbg.InjectError = []BlkdebugInject{{Event: "read_aio", Errno: i64(5), Sector: i64(4), Once: ptrue()}}
	if err := d.blockdevAdd(dbg); err != nil {
		t.Fatal(err)
	}
	if err := d.blockdevAdd(&AddOptions{Driver: "raw", NodeName: "r", File: &FileRef{Ref: "dbg"}}); err != nil {
		t.Fatal(err)
	}
	dev := d.nodes["r"].dev
	buf := make([]byte, 4096)
	if _, err := dev.ReadAt(buf, 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read over the injected sector: %v, want EIO", err)
	}
	if _, err := dev.ReadAt(buf, 0); err != nil {
		t.Fatalf("second read (the rule was once): %v", err)
	}
	wrong := &AddOptions{Driver: "raw", NodeName: "r2", File: &FileRef{Ref: "f"}}
	wrong.Export = "x"
	var qe *Error
	if err := d.blockdevAdd(wrong); !errors.As(err, &qe) || qe.Desc != "Parameter 'export' is unexpected" {
		t.Fatalf("raw with an nbd member: %v", err)
	}
	if err := d.blockdevDel("r"); err != nil {
		t.Fatal(err)
	}
	if d.nodes["dbg"] == nil || d.nodes["dbg"].usedBy != "" || d.nodes["f"] == nil || d.nodes["f"].dev != d.nodes["dbg"].dev {
		t.Fatalf("after deleting r: dbg %+v, f %+v", d.nodes["dbg"], d.nodes["f"])
	}
	if err := d.blockdevDel("f"); err == nil {
		t.Fatal("f, the image of dbg, deleted on its own")
	}
	if err := d.blockdevDel("dbg"); err != nil {
		t.Fatal(err)
	}
	if err := d.blockdevDel("f"); err != nil {
		t.Fatal(err)
	}
	if len(d.nodes) != 0 || len(d.h.Graph().Nodes()) != 0 {
		t.Fatalf("left: %v, graph %d nodes", d.nodes, len(d.h.Graph().Nodes()))
	}
}
