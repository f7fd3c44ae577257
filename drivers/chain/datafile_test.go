package chain

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestOpenDataFileRelativeToImage: a relative data file name resolves
// against the image's directory, whatever the working directory (qemu-img
// made the image from its directory); an option tree's data-file gives the
// data file instead; a data file name recorded as a protocol name is
// refused before anything is opened.
func TestOpenDataFileRelativeToImage(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	t.Chdir(dir)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file=t.data", "t.qcow2", "1M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", "t.qcow2")
	t.Chdir(t.TempDir()) // elsewhere
	img := filepath.Join(dir, "t.qcow2")
	g := newGraph(t)
	i, err := Open(g, img, Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("open from another directory: %v", err)
	}
	buf := make([]byte, 64<<10)
	if _, err := i.Node.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, bytes.Repeat([]byte{0x5a}, len(buf))) {
		t.Fatalf("read through the data file: %v", err)
	}
	i.Close()

	// The data file given on the command line (a copy elsewhere).
	b, err := os.ReadFile(filepath.Join(dir, "t.data"))
	if err != nil {
		t.Fatal(err)
	}
	b[0] = 0x77
	other := filepath.Join(t.TempDir(), "copy.data")
	if err := os.WriteFile(other, b, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := ParseJSONFilename(`json:{"driver":"qcow2","file":{"driver":"file","filename":"` + img + `"},"data-file":{"driver":"file","filename":"` + other + `"}}`)
	if err != nil {
		t.Fatal(err)
	}
	i, err = OpenSpec(g, s, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := i.Node.ReadAt(buf[:1], 0); err != nil || buf[0] != 0x77 {
		t.Fatalf("read through the given data file: %#x %v", buf[0], err)
	}
	i.Close()

	// A protocol name recorded in the image (qemu-img opens the data
	// file by the recorded name from its working directory).
	t.Chdir(dir)
	run(t, "qemu-img", "amend", "-o", "data_file=nbd:localhost:1", img)
	if _, err := Open(g, img, Options{ReadOnly: true}); err == nil || !strings.Contains(err.Error(), "not followed") {
		t.Fatalf("protocol data file name: %v", err)
	}
}
