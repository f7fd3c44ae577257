package qcow2

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
)

// Legacy AES (crypt_method 1) tests: aes.go.

// openAESKey opens an AES image with key (nil: none) and a backing opener
// that opens qcow2 backing files with the same key.
func (e *testEnv) openAESKey(path string, key []byte, readOnly bool) (*block.Node, error) {
	file, err := raw.NewNode(e.g, path, raw.Options{ReadOnly: readOnly, Locking: raw.LockingOff}, block.Options{})
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	drv := New(file, DriverOptions{KeySecret: key, Backing: func(req BackingRequest) (*block.Node, error) {
		p := req.Name
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		return e.openAESKey(p, key, true)
	}})
	n, err := e.g.Open(drv, block.Options{ReadOnly: readOnly})
	if err != nil {
		drv.Release()
	}
	return n, err
}

// createAES makes an empty AES image the way qemu-img create -o
// encryption=on does here: Create, then SetupAES.
func createAES(t *testing.T, e *testEnv, path string, size int64, co format.CreateOptions) {
	t.Helper()
	os.WriteFile(path, nil, 0o644)
	file, err := raw.NewNode(e.g, path, raw.Options{Locking: raw.LockingOff}, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := Create(file, size, co); err != nil {
		t.Fatal(err)
	}
	n, err := e.g.Open(New(file, DriverOptions{IgnoreBacking: true}), block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := SetupAES(n); err != nil {
		t.Fatal(err)
	}
	if _, err := n.WriteAt(make([]byte, 512), 0); err == nil {
		t.Fatal("a write right after the setup, without the key, succeeded")
	}
	if err := n.Unref(); err != nil {
		t.Fatal(err)
	}
}

const aesPW = "astrochicken"

func qemuAESArgs(img string) []string {
	return []string{"--object", "secret,id=s0,data=" + aesPW, "--image-opts", "driver=qcow2,encrypt.key-secret=s0,file.filename=" + img}
}

func qemuAESIO(t *testing.T, img string, cmds ...string) {
	t.Helper()
	args := qemuAESArgs(img)
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.Command("qemu-io", args...).CombinedOutput()
	if err != nil || bytes.Contains(out, []byte("failed")) || bytes.Contains(out, []byte("can't open")) {
		t.Fatalf("qemu-io %q: %v\n%s", cmds, err, out)
	}
}

// TestAESKey: the key is the password's bytes up to a NUL, at most 16,
// zero padded (QEMU's crypto/block-qcow.c takes the secret as a C string).
func TestAESKey(t *testing.T) {
	for _, tc := range []struct{ pw, want string }{
		{"astrochicken", "astrochicken\x00\x00\x00\x00"},
		{"0123456789abcdefXYZ", "0123456789abcdef"},
		{"ab\x00cd", "ab\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"},
		{"", strings.Repeat("\x00", 16)},
	} {
		if got := AESKey([]byte(tc.pw)); string(got) != tc.want {
			t.Errorf("AESKey(%q) = %q, want %q", tc.pw, got, tc.want)
		}
	}
}

// TestAESSectorCipher: a sector encrypted by the driver's cipher is the
// standard library's AES-128-CBC with the little-endian sector number as
// IV, per sector, also when the sector straddles iovec elements.
func TestAESSectorCipher(t *testing.T) {
	st := &aesState{key: AESKey([]byte(aesPW))}
	w, err := st.get()
	if err != nil {
		t.Fatal(err)
	}
	plain := make([]byte, 3*aesSector)
	for i := range plain {
		plain[i] = byte(i * 7)
	}
	guest := int64(1234 * aesSector)
	// Reference: each sector on its own with IV = its guest sector number.
	blk, _ := aes.NewCipher(AESKey([]byte(aesPW)))
	want := append([]byte(nil), plain...)
	for s := 0; s < 3; s++ {
		var iv [16]byte
		binary.LittleEndian.PutUint64(iv[:], uint64(guest/aesSector)+uint64(s))
		cipher.NewCBCEncrypter(blk, iv[:]).CryptBlocks(want[s*aesSector:(s+1)*aesSector], want[s*aesSector:(s+1)*aesSector])
	}
	// Odd iovec splits: 100 | 700 | 748 bytes, and skip 0.
	buf := append([]byte(nil), plain...)
	iov := [][]byte{buf[:100], buf[100:800], buf[800:]}
	if err := w.crypt(iov, 0, int64(len(buf)), guest, true); err != nil {
		t.Fatal(err)
	}
	checkSame(t, buf, want)
	if err := w.crypt(iov, 0, int64(len(buf)), guest, false); err != nil {
		t.Fatal(err)
	}
	checkSame(t, buf, plain)
	if err := w.crypt(iov, 0, 100, guest, true); err == nil {
		t.Fatal("a length that is not whole sectors was accepted")
	}
}

// TestQcow2AESReadsQEMUImage: what qemu-io wrote into an AES image
// qemu-img 7.2 made (a whole cluster, a partial cluster, across clusters)
// and a compressed cluster, stored in clear) reads back the same through
// the driver, in aligned and unaligned
// chunks; a wrong password reads other bytes (AES has no key check, as in
// QEMU); no password fails the open with QEMU's message.
func TestQcow2AESReadsQEMUImage(t *testing.T) {
	needQemu(t)
	for _, cs := range []string{"65536", "4096"} {
		img := filepath.Join(t.TempDir(), "q.qcow2")
		args := []string{"create", "-q", "-f", "qcow2", "--object", "secret,id=s0,data=" + aesPW, "-o",
			"encrypt.format=aes,encrypt.key-secret=s0,cluster_size=" + cs, img, "2M"}
		if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		// A compressed cluster: QEMU stores it in clear, and reads it so.
		qemuAESIO(t, img, "write -P 0x11 0 64k", "write -P 0x22 70000 3000", "write -P 0x33 130560 8192", "write -c -P 0x44 192k 64k")
		want := make([]byte, 2<<20)
		copy(want[192<<10:], bytes.Repeat([]byte{0x44}, 65536))
		copy(want[0:], bytes.Repeat([]byte{0x11}, 65536))
		copy(want[70000:], bytes.Repeat([]byte{0x22}, 3000))
		copy(want[130560:], bytes.Repeat([]byte{0x33}, 8192))
		e := newTestEnv(t)
		n, err := e.openAESKey(img, []byte(aesPW), true)
		if err != nil {
			t.Fatal(err)
		}
		checkSame(t, readAll(t, n, 1<<20), want)
		checkSame(t, readAll(t, n, 12345), want)
		n.Unref()
		n, err = e.openAESKey(img, []byte("platypus"), true)
		if err != nil {
			t.Fatalf("wrong password: %v", err)
		}
		got := make([]byte, 512)
		if _, err := n.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(got, want[:512]) {
			t.Fatal("a wrong password read the plaintext")
		}
		n.Unref()
		if _, err := e.openAESKey(img, nil, true); !errors.Is(err, ErrKeySecretRequired) {
			t.Fatalf("no key: %v", err)
		}
	}
}

// TestQcow2AESWritesForQEMU: an AES image made and written by the driver
// (a partial cluster into a fresh cluster, an unaligned write, a write
// across clusters, a run of whole clusters, a rewrite in place) reads back
// the same in qemu-io, the untouched rest of every written cluster as
// zeros; qemu-img check finds it clean and no plaintext is in the file.
func TestQcow2AESWritesForQEMU(t *testing.T) {
	needQemu(t)
	img := filepath.Join(t.TempDir(), "r.qcow2")
	e := newTestEnv(t)
	createAES(t, e, img, 4<<20, format.CreateOptions{})
	n, err := e.openAESKey(img, []byte(aesPW), false)
	if err != nil {
		t.Fatal(err)
	}
	writes := []struct {
		off int64
		n   int
		p   byte
	}{{4096, 4096, 0x41}, {100000, 3000, 0x42}, {1<<20 - 512, 8192, 0x43}, {4096, 512, 0x44}, {2 << 20, 256 << 10, 0x45}}
	for _, w := range writes {
		if _, err := n.WriteAt(bytes.Repeat([]byte{w.p}, w.n), w.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Unref(); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("qemu-img", append([]string{"check"}, qemuAESArgs(img)...)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "No errors were found") {
		t.Fatalf("qemu-img check: %v\n%s", err, out)
	}
	qemuAESIO(t, img,
		"read -P 0 0 4096", "read -P 0x44 4096 512", "read -P 0x41 4608 3584", "read -P 0 8192 57344",
		"read -P 0 65536 34464", "read -P 0x42 100000 3000", "read -P 0 103000 28072",
		"read -P 0x43 1048064 8192", "read -P 0 1056256 8192", "read -P 0x45 2M 256k", "read -P 0 2304k 64k")
	raw, _ := os.ReadFile(img)
	if bytes.Contains(raw, bytes.Repeat([]byte{0x42}, 64)) || bytes.Contains(raw, bytes.Repeat([]byte{0x45}, 64)) {
		t.Fatal("plaintext in the image file")
	}
	// qemu-img info as 7.2 prints it.
	out, err = exec.Command("qemu-img", "info", "--output=json", img).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"format": "aes"`) || !strings.Contains(string(out), `"encrypted": true`) {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
}

// TestQcow2AESBackingCOW: a partial write into an AES overlay of an AES
// base copies the rest of the cluster from the base (decrypted with the
// base's key, encrypted again at the same guest sectors), as iotest 158.
func TestQcow2AESBackingCOW(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	base, top := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	e := newTestEnv(t)
	createAES(t, e, base, 1<<20, format.CreateOptions{})
	n, err := e.openAESKey(base, []byte(aesPW), false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.WriteAt(bytes.Repeat([]byte{0xa}, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	if err := n.Unref(); err != nil {
		t.Fatal(err)
	}
	createAES(t, e, top, 1<<20, format.CreateOptions{BackingFile: "base.qcow2", BackingFormat: "qcow2"})
	n, err = e.openAESKey(top, []byte(aesPW), false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.WriteAt(bytes.Repeat([]byte{0xe}, 1024), 0); err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte{0xa}, 1<<20)
	copy(want, bytes.Repeat([]byte{0xe}, 1024))
	checkSame(t, readAll(t, n, 4096), want)
	if err := n.Unref(); err != nil {
		t.Fatal(err)
	}
	args := append(qemuAESArgs(top), "-c", "read -P 0xe 0 1024", "-c", "read -P 0xa 1024 1047552")
	args[3] += ",backing.driver=qcow2,backing.encrypt.key-secret=s0,backing.file.filename=" + base
	out, err := exec.Command("qemu-io", args...).CombinedOutput()
	if err != nil || bytes.Contains(out, []byte("failed")) || bytes.Contains(out, []byte("can't open")) {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
}

// TestQcow2AESHotPathAllocs: a read of allocated data of an AES image
// (decrypted in place) and an in-place write (encrypted into a pooled
// bounce buffer) allocate nothing per request, in one cluster and across
// two; the data reads back.
func TestQcow2AESHotPathAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	img := filepath.Join(t.TempDir(), "a.qcow2")
	e := newTestEnv(t)
	createAES(t, e, img, 1<<20, format.CreateOptions{})
	n, err := e.openAESKey(img, []byte(aesPW), false)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Unref()
	buf := make([]byte, 8192)
	if _, err := n.WriteAt(bytes.Repeat([]byte{7}, 256<<10), 0); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		op  block.Op
		off int64
	}{{block.OpRead, 4096}, {block.OpRead, 60 << 10}, {block.OpWrite, 8192}, {block.OpWrite, 124 << 10}} {
		off := tc.off
		allocs, rerr := submitAllocs(e, n, tc.op, off, buf)
		if rerr != nil {
			t.Fatal(rerr)
		}
		got := make([]byte, len(buf))
		if _, err := n.ReadAt(got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, bytes.Repeat([]byte{7}, len(buf))) || !bytes.Equal(got, buf) {
			t.Fatalf("%v at %d: wrong data", tc.op, off)
		}
		if allocs != 0 {
			t.Errorf("%v at %d: %v allocations per request, want 0", tc.op, off, allocs)
		}
	}
}

// TestQcow2AESHostile: damaged AES images (the malformed catalogue and
// damaged L2 entries, each with crypt_method 1) opened with a key, read
// whole in odd chunks, written (unaligned, across clusters), discarded and
// flushed: no panic, every error a *block.Error.
func TestQcow2AESHostile(t *testing.T) {
	var imgs [][]byte
	for _, c := range hostileImages {
		b := c.Patch(t, append([]byte(nil), loadImage(t, c.Image)...))
		if len(b) >= 36 {
			binary.BigEndian.PutUint32(b[32:], format.CryptAES)
		}
		imgs = append(imgs, b)
	}
	for _, p := range []struct {
		off int
		v   uint64
	}{
		{0x40000, format.EntryCopied | 0x50200}, {0x40008, format.EntryCopied | 0x10000000000},
		{0x40000, format.EntryCompressed | 0x50000}, {0x40000, format.EntryCopied | 0x20000}, {0x40000, format.EntryCopied},
	} {
		b := append([]byte(nil), loadImage(t, "base64m")...)
		binary.BigEndian.PutUint32(b[32:], format.CryptAES)
		binary.BigEndian.PutUint64(b[p.off:], p.v)
		imgs = append(imgs, b)
	}
	e := newTestEnv(t)
	path := filepath.Join(t.TempDir(), "h.qcow2")
	isBlockErr := func(i int, what string, err error) {
		t.Helper()
		var be *block.Error
		if err != nil && !errors.As(err, &be) {
			t.Errorf("image %d: %s: %T %v is not a *block.Error", i, what, err, err)
		}
	}
	buf := make([]byte, 100000)
	for i, b := range imgs {
		for _, ro := range []bool{true, false} {
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			n, err := e.openAESKey(path, []byte(aesPW), ro)
			isBlockErr(i, "open", err)
			if err != nil {
				continue
			}
			size, _ := n.Length()
			for off := int64(0); off < min(size, 1<<20); off += int64(len(buf)) {
				_, err := n.ReadAt(buf[:min(int64(len(buf)), size-off)], off)
				isBlockErr(i, "read", err)
			}
			if !ro {
				_, err := n.WriteAt(buf[:5000], 60000)
				isBlockErr(i, "write", err)
				_, err = n.WriteAt(buf, 1<<20)
				isBlockErr(i, "write", err)
				isBlockErr(i, "discard", n.Discard(0, 1<<20))
				isBlockErr(i, "flush", n.Flush())
			}
			n.Unref()
		}
	}
}
