package chain

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
)

func needQemu(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (make test installs qemu-utils)", tool)
		}
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func newGraph(t *testing.T) *block.Graph {
	t.Helper()
	c, err := aio.New(aio.Options{Name: "main", Main: true, CPU: aio.NoCPU, Entries: 64, ArenaSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	return block.NewGraph(c)
}

// TestOpenBackingChain: raw base ← qcow2 mid ← qcow2 top, with relative
// backing names; each layer's writes show through where the layers above
// left the range unallocated, exactly as qemu-io reads the same chain.
func TestOpenBackingChain(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	mid := filepath.Join(dir, "mid.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "raw", base, "4M")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 1M", base)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", mid)
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x22 512K 1M", mid)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top)
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x33 1M 64K", top)

	flat := filepath.Join(dir, "flat.raw")
	run(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", top, flat)
	want, err := os.ReadFile(flat)
	if err != nil {
		t.Fatal(err)
	}
	g := newGraph(t)
	img, err := Open(g, top, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.Format != "qcow2" || img.Qcow2 == nil {
		t.Fatalf("probed format %q, driver %v", img.Format, img.Qcow2)
	}
	got := make([]byte, 4<<20)
	if _, err := img.Node.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want[:len(got)]) {
		t.Fatal("chain contents differ from qemu-img convert's")
	}
	if got[0] != 0x11 || got[600<<10] != 0x22 || got[1<<20] != 0x33 || got[3<<20] != 0 {
		t.Fatalf("layer bytes: %x %x %x %x", got[0], got[600<<10], got[1<<20], got[3<<20])
	}

	// NoBacking: only the top layer's own clusters.
	g2 := newGraph(t)
	alone, err := Open(g2, top, Options{ReadOnly: true, NoBacking: true})
	if err != nil {
		t.Fatal(err)
	}
	defer alone.Close()
	p := make([]byte, 4096)
	if _, err := alone.Node.ReadAt(p, 0); err != nil || p[0] != 0 {
		t.Fatalf("backing-less read at 0: %x, %v", p[0], err)
	}
}

func TestProbe(t *testing.T) {
	dir := t.TempDir()
	q := filepath.Join(dir, "q")
	r := filepath.Join(dir, "r")
	v0 := filepath.Join(dir, "v0")
	short := filepath.Join(dir, "short")
	os.WriteFile(q, []byte("QFI\xfb\x00\x00\x00\x03"), 0o644)
	os.WriteFile(r, []byte("QF"), 0o644)
	// The qcow2 magic with version 0, or without a version, is raw, as
	// QEMU probes it (and as the probed-raw guard lets a guest write it).
	os.WriteFile(v0, []byte("QFI\xfb\x00\x00\x00\x00"), 0o644)
	os.WriteFile(short, []byte("QFI\xfb\x00\x00"), 0o644)
	for _, c := range []struct{ path, want string }{{q, "qcow2"}, {r, "raw"}, {v0, "raw"}, {short, "raw"}} {
		got, err := Probe(c.path)
		if err != nil || got != c.want {
			t.Errorf("Probe(%s) = %q, %v; want %q", filepath.Base(c.path), got, err, c.want)
		}
	}
	if _, err := Probe(filepath.Join(dir, "missing")); err == nil {
		t.Error("Probe of a missing file: no error")
	}
	if _, err := Open(nil, filepath.Join(dir, "missing"), Options{}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("Open of a missing file: %v", err)
	}
}

// TestBackingNodeUnderHeaderlessImage: Options.BackingNode on a qcow2
// image whose header names no backing file attaches the node all the
// same (qcow2.DriverOptions.AttachBacking): unallocated clusters read
// from it, the image's own ones from the image, and the header still
// names no backing file afterwards. Before, the node was not attached
// and the base's range read as zeros.
func TestBackingNodeUnderHeaderlessImage(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	top := filepath.Join(dir, "top.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "raw", base, "4M")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 1M", base)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", top, "4M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x33 512K 64K", top)
	g := newGraph(t)
	bimg, err := Open(g, base, Options{Format: "raw", ReadOnly: true, Name: "base"})
	if err != nil {
		t.Fatal(err)
	}
	defer bimg.Close()
	img, err := Open(g, top, Options{Format: "qcow2", ReadOnly: true, Name: "top", BackingNode: bimg.Node})
	if err != nil {
		t.Fatal(err)
	}
	c := img.Node.Child(block.RoleBacking)
	if c == nil || c.Node() != bimg.Node {
		img.Close()
		t.Fatalf("backing child %v, want node %s", c, bimg.Node.Name())
	}
	got := make([]byte, 4<<20)
	if _, err := img.Node.ReadAt(got, 0); err != nil {
		img.Close()
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if got[0] != 0x11 || got[(512<<10)-1] != 0x11 || got[512<<10] != 0x33 || got[(576<<10)-1] != 0x33 || got[576<<10] != 0x11 || got[1<<20] != 0 {
		t.Fatalf("bytes at 0, 512K-1, 512K, 576K-1, 576K, 1M: %x %x %x %x %x %x",
			got[0], got[(512<<10)-1], got[512<<10], got[(576<<10)-1], got[576<<10], got[1<<20])
	}
	if out, err := exec.Command("qemu-img", "info", top).CombinedOutput(); err != nil || strings.Contains(string(out), "backing file") {
		t.Fatalf("qemu-img info after: %v\n%s", err, out)
	}
}
