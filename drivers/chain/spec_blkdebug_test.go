package chain

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/drivers/blkdebug"
)

// TestSpecBlkdebug: an option tree naming driver=blkdebug opens the
// filter over its image child, with QEMU's inline inject-error rules
// (a json: array) failing the read whose L2 table load they name, and
// the filename form with align= (qemu-io's open -o).
func TestSpecBlkdebug(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "t.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "4M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 42 0x38000 512", img)
	g := newGraph(t)

	s, err := ParseJSONFilename(`json:{"driver":"qcow2","file":{"driver":"blkdebug",
		"inject-error":[{"event":"l2_load"}],"image.filename":"` + img + `"}}`)
	if err != nil {
		t.Fatal(err)
	}
	im, err := OpenSpec(g, s, Options{Name: "j", ReadOnly: true})
	if err != nil {
		t.Fatalf("open json blkdebug: %v", err)
	}
	if blkdebug.Find(im.Node) == nil {
		t.Fatal("no blkdebug node under the qcow2 node")
	}
	buf := make([]byte, 512)
	if _, err := im.Node.ReadAt(buf, 0x38000); err == nil || !strings.Contains(err.Error(), "input/output error") {
		t.Errorf("read with an l2_load rule: %v, want an I/O error", err)
	}
	im.Node.Unref()

	s = Spec{"driver": "blkdebug", "image.driver": "qcow2", "align": "4k", "max-transfer": "64k",
		"filename": "blkdebug::" + img}
	im, err = OpenSpec(g, s, Options{Name: "o", ReadOnly: true})
	if err != nil {
		t.Fatalf("open -o blkdebug: %v", err)
	}
	if _, err := im.Node.ReadAt(buf, 0x38000); err != nil || buf[0] != 42 || buf[511] != 42 {
		t.Errorf("read through blkdebug: %v %x", err, buf[:2])
	}
	im.Node.Unref()

	// driver=blkdebug over a plain name: the name is the image.
	s = Spec{"driver": "blkdebug", "image.driver": "qcow2", "filename": img}
	if im, err = OpenSpec(g, s, Options{Name: "p", ReadOnly: true}); err != nil {
		t.Fatalf("open -o driver=blkdebug over a plain name: %v", err)
	}
	im.Node.Unref()

	for _, bad := range []Spec{
		{"driver": "blkdebug", "image.filename": img, "align": "3"},
		{"driver": "blkdebug", "image.filename": img, "inject-error.0.event": "nosuch"},
		{"driver": "blkdebug", "image.filename": img, "bogus": "1"},
		{"driver": "blkdebug", "filename": "blkdebug:" + img},
	} {
		if im, err := OpenSpec(g, bad, Options{Name: "b", ReadOnly: true}); err == nil {
			im.Node.Unref()
			t.Errorf("%v opened", bad)
		}
	}
}
