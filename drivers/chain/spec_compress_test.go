package chain

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSpecCompress: driver=compress over a qcow2 image writes every
// write as compressed clusters (iotest 214): 3.5 clusters of data at 0
// become 4 compressed clusters, the half cluster past the data reads as
// zeroes, and the filter over a raw image is refused in QEMU's words.
func TestSpecCompress(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "t.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=64k", img, "2M")
	g := newGraph(t)
	im, err := OpenSpec(g, Spec{"driver": "compress", "file.driver": "qcow2", "file.file.driver": "file", "file.file.filename": img}, Options{Name: "c"})
	if err != nil {
		t.Fatalf("open compress: %v", err)
	}
	data := bytes.Repeat([]byte{0xbb}, 3*65536+32768)
	if _, err := im.Node.WriteAt(data, 0); err != nil {
		t.Fatalf("write through compress: %v", err)
	}
	got := make([]byte, 4*65536)
	if _, err := im.Node.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(data)], data) || !bytes.Equal(got[len(data):], make([]byte, 32768)) {
		t.Errorf("read back through compress differs")
	}
	im.Node.Unref()
	out, _ := exec.Command("qemu-img", "check", "--output=json", img).CombinedOutput()
	if !strings.Contains(string(out), `"compressed-clusters": 4`) {
		t.Errorf("qemu-img check after the write: want 4 compressed clusters:\n%s", out)
	}

	rawImg := filepath.Join(dir, "r.raw")
	run(t, "qemu-img", "create", "-q", "-f", "raw", rawImg, "1M")
	_, err = OpenSpec(g, Spec{"driver": "compress", "file.driver": "raw", "file.file.filename": rawImg}, Options{Name: "r"})
	if err == nil || err.Error() != "Compression is not supported for underlying format: raw" {
		t.Errorf("compress over raw: %v", err)
	}
}
