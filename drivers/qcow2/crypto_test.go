package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/crypto/luks"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// openKey opens an encrypted image with a key secret (nil: none).
func (e *testEnv) openKey(path string, key []byte, readOnly bool) (*block.Node, error) {
	file, err := raw.NewNode(e.g, path, raw.Options{ReadOnly: readOnly, Locking: raw.LockingOff}, block.Options{})
	if err != nil {
		return nil, err
	}
	drv := New(file, DriverOptions{KeySecret: key})
	n, err := e.g.Open(drv, block.Options{ReadOnly: readOnly})
	if err != nil {
		drv.Release()
	}
	return n, err
}

// createEncrypted makes an empty LUKS-encrypted image the way
// qemu-img create -o encrypt.format=luks does here.
func createEncrypted(t *testing.T, e *testEnv, path string, size int64, co format.CreateOptions, pw string) {
	t.Helper()
	os.WriteFile(path, nil, 0o644)
	file, err := raw.NewNode(e.g, path, raw.Options{Locking: raw.LockingOff}, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := Create(file, size, co); err != nil {
		t.Fatal(err)
	}
	n, err := e.g.Open(New(file, DriverOptions{}), block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := SetupEncryption(n, luks.CreateOptions{Password: []byte(pw), Iterations: 1000}); err != nil {
		t.Fatal(err)
	}
	// Until reopened with the key, data I/O fails.
	if _, err := n.WriteAt(make([]byte, 512), 0); err == nil {
		t.Fatal("a write right after the setup, without the key, succeeded")
	}
	if err := n.Unref(); err != nil {
		t.Fatal(err)
	}
}

func qemuLuksIO(t *testing.T, img string, cmds ...string) string {
	t.Helper()
	args := []string{"--object", "secret,id=s0,data=abc", "--image-opts", "driver=qcow2,encrypt.key-secret=s0,file.filename=" + img}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.Command("qemu-io", args...).CombinedOutput()
	if err != nil || bytes.Contains(out, []byte("failed")) || bytes.Contains(out, []byte("can't open")) {
		t.Fatalf("qemu-io %q: %v\n%s", cmds, err, out)
	}
	return string(out)
}

func qemuLuksCheck(t *testing.T, img string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "check", "--object", "secret,id=s0,data=abc", "--image-opts",
		"driver=qcow2,encrypt.key-secret=s0,file.filename="+img).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "No errors were found") {
		t.Fatalf("qemu-img check: %v\n%s", err, out)
	}
}

// TestQcow2LUKSReadsQEMUImage: what qemu-io wrote into an encrypted image
// qemu-img 7.2 made (whole clusters, a partial cluster, across clusters)
// reads back the same through the driver, with 64k and 4k clusters.
func TestQcow2LUKSReadsQEMUImage(t *testing.T) {
	needQemu(t)
	for _, cs := range []string{"65536", "4096"} {
		img := filepath.Join(t.TempDir(), "q.qcow2")
		clitest.QEMUCreateLUKS(t, "qcow2", img, "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10,cluster_size="+cs, "2M")
		qemuLuksIO(t, img, "write -P 0x11 0 64k", "write -P 0x22 70000 3000", "write -P 0x33 130560 8192")
		want := make([]byte, 2<<20)
		copy(want[0:], bytes.Repeat([]byte{0x11}, 65536))
		copy(want[70000:], bytes.Repeat([]byte{0x22}, 3000))
		copy(want[130560:], bytes.Repeat([]byte{0x33}, 8192))
		e := newTestEnv(t)
		n, err := e.openKey(img, []byte("abc"), true)
		if err != nil {
			t.Fatal(err)
		}
		checkSame(t, readAll(t, n, 1<<20), want)
		checkSame(t, readAll(t, n, 12345), want)
		n.Unref()
		if _, err := e.openKey(img, []byte("abd"), true); !errors.Is(err, luks.ErrBadPassword) {
			t.Fatalf("wrong password: %v", err)
		}
		if _, err := e.openKey(img, nil, true); !errors.Is(err, ErrKeySecretRequired) {
			t.Fatalf("no key: %v", err)
		}
	}
}

// TestQcow2LUKSWritesForQEMU: an image made and written by the driver
// (a partial cluster into a fresh cluster, an unaligned write, a write
// across clusters, a rewrite in place) reads back the same in qemu-io,
// the untouched rest of every written cluster as zeros, and qemu-img
// check finds it clean.
func TestQcow2LUKSWritesForQEMU(t *testing.T) {
	needQemu(t)
	img := filepath.Join(t.TempDir(), "r.qcow2")
	e := newTestEnv(t)
	createEncrypted(t, e, img, 4<<20, format.CreateOptions{}, "abc")
	n, err := e.openKey(img, []byte("abc"), false)
	if err != nil {
		t.Fatal(err)
	}
	writes := []struct {
		off int64
		n   int
		p   byte
	}{{4096, 4096, 0x41}, {100000, 3000, 0x42}, {1<<20 - 512, 8192, 0x43}, {4096, 512, 0x44}}
	for _, w := range writes {
		if _, err := n.WriteAt(bytes.Repeat([]byte{w.p}, w.n), w.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Unref(); err != nil {
		t.Fatal(err)
	}
	qemuLuksCheck(t, img)
	qemuLuksIO(t, img,
		"read -P 0 0 4096", "read -P 0x44 4096 512", "read -P 0x41 4608 3584", "read -P 0 8192 57344",
		"read -P 0 65536 34464", "read -P 0x42 100000 3000", "read -P 0 103000 28072",
		"read -P 0x43 1048064 8192", "read -P 0 1056256 8192")
	// The data clusters hold ciphertext.
	raw, _ := os.ReadFile(img)
	if bytes.Contains(raw, bytes.Repeat([]byte{0x42}, 64)) {
		t.Fatal("plaintext in the image file")
	}
}

// TestQcow2LUKSHostile: an encryption extension that points outside the
// file, claims key material beyond its area, or a LUKS header with
// damage fails the open with an error naming it.
func TestQcow2LUKSHostile(t *testing.T) {
	dir := t.TempDir()
	e := newTestEnv(t)
	good := filepath.Join(dir, "g.qcow2")
	createEncrypted(t, e, good, 1<<20, format.CreateOptions{}, "abc")
	orig, _ := os.ReadFile(good)
	h, err := format.ParseHeader(orig[:65536])
	if err != nil {
		t.Fatal(err)
	}
	extAt := bytes.Index(orig[:4096], []byte{0x05, 0x37, 0xbe, 0x77}) + 8
	area := int(h.CryptoOffset)
	cases := []struct {
		name string
		mut  func(b []byte)
		want string
	}{
		{"area past EOF", func(b []byte) { binary.BigEndian.PutUint64(b[extAt:], 1<<40) }, "encryption header"},
		{"area unaligned", func(b []byte) { binary.BigEndian.PutUint64(b[extAt:], uint64(area+512)) }, "not a multiple of the cluster size"},
		{"area too long", func(b []byte) { binary.BigEndian.PutUint64(b[extAt+8:], 1<<40) }, "length is out of range"},
		{"area shorter than the key slots", func(b []byte) { binary.BigEndian.PutUint64(b[extAt+8:], 8192) }, "outside the encryption header area"},
		{"LUKS magic", func(b []byte) { b[area] = 'X' }, "not in LUKS format"},
		{"stripes", func(b []byte) { binary.BigEndian.PutUint32(b[area+208+44:], 1<<31) }, "stripes"},
		{"iterations", func(b []byte) { binary.BigEndian.PutUint32(b[area+208+4:], 0xffffffff) }, "iteration count"},
	}
	for _, c := range cases {
		b := append([]byte(nil), orig...)
		c.mut(b)
		p := filepath.Join(dir, "h.qcow2")
		os.WriteFile(p, b, 0o644)
		_, err := e.openKey(p, []byte("abc"), true)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
}

// TestQcow2LUKSSmallClusters: the 2 MiB encryption area is one contiguous
// run even where a refcount block covers only 128 KiB (512-byte
// clusters): its refcount blocks go in front of it. qemu-img check
// finds the image clean and qemu-io reads what the driver wrote.
func TestQcow2LUKSSmallClusters(t *testing.T) {
	needQemu(t)
	for _, cs := range []int64{512, 2048, 1 << 16} {
		img := filepath.Join(t.TempDir(), "s.qcow2")
		e := newTestEnv(t)
		createEncrypted(t, e, img, 1<<20, format.CreateOptions{ClusterSize: cs}, "abc")
		n, err := e.openKey(img, []byte("abc"), false)
		if err != nil {
			t.Fatalf("cluster size %d: %v", cs, err)
		}
		if _, err := n.WriteAt(bytes.Repeat([]byte{0x5c}, 4096), 65024); err != nil {
			t.Fatal(err)
		}
		if err := n.Unref(); err != nil {
			t.Fatal(err)
		}
		qemuLuksCheck(t, img)
		qemuLuksIO(t, img, "read -P 0 0 65024", "read -P 0x5c 65024 4096", "read -P 0 69120 4096")
	}
}
