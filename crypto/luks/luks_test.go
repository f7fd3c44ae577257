package luks

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

func fileReader(t *testing.T, f *os.File, base int64) ReadFunc {
	return func(p []byte, off int64) error {
		_, err := f.ReadAt(p, base+off)
		return err
	}
}

func memReader(img []byte) ReadFunc {
	return func(p []byte, off int64) error {
		if off < 0 || off+int64(len(p)) > int64(len(img)) {
			return errors.New("read past the image")
		}
		copy(p, img[off:])
		return nil
	}
}

// build makes an in-memory LUKS image (header, slot 0's material, a
// payload of payload bytes) with a fixed iteration count.
func build(t testing.TB, o CreateOptions, payload int) ([]byte, *Volume) {
	t.Helper()
	if o.Iterations == 0 {
		o.Iterations = 1000
	}
	h, mat, v, err := Create(o)
	if err != nil {
		t.Fatal(err)
	}
	img := make([]byte, h.PayloadBytes()+int64(payload))
	copy(img, h.Marshal())
	copy(img[int64(h.Slots[0].KeyOffset)*SectorSize:], mat)
	return img, v
}

func TestCreateUnlockRoundTrip(t *testing.T) {
	for _, o := range []CreateOptions{
		{},
		{CipherAlg: "aes-128"},
		{CipherAlg: "aes-192", CipherMode: "xts", IVGen: "plain"},
		{CipherAlg: "aes-128", CipherMode: "cbc", IVGen: "essiv"},
		{CipherAlg: "aes-256", CipherMode: "cbc", IVGen: "plain", Hash: "sha1"},
		{CipherMode: "xts", IVGen: "plain", Hash: "sha512"},
	} {
		o.Password = []byte("hunter2")
		img, v := build(t, o, 4096)
		h, err := Parse(img)
		if err != nil {
			t.Fatalf("%+v: %v", o, err)
		}
		got, err := Unlock(h, []byte("hunter2"), memReader(img))
		if err != nil {
			t.Fatalf("%+v: %v", o, err)
		}
		if !bytes.Equal(got.Key, v.Key) {
			t.Fatalf("%+v: unlocked a different master key", o)
		}
		if _, err := Unlock(h, []byte("hunter3"), memReader(img)); !errors.Is(err, ErrBadPassword) {
			t.Fatalf("%+v: wrong password: %v", o, err)
		}
		// Sectors round trip, and sector numbers change the ciphertext.
		c, _ := got.NewCipher()
		buf := bytes.Repeat([]byte{0x5a}, 1024)
		c.Encrypt(buf, 7)
		if bytes.Equal(buf[:512], buf[512:]) {
			t.Fatalf("%+v: two sectors of the same plaintext encrypt alike", o)
		}
		c.Decrypt(buf, 7)
		if !bytes.Equal(buf, bytes.Repeat([]byte{0x5a}, 1024)) {
			t.Fatalf("%+v: decrypt(encrypt(x)) != x", o)
		}
	}
}

// TestCreateRefusesPartialSectorMaterial: aes-192 in CBC mode has 96000
// bytes of key material, which QEMU 7.2 cannot decrypt (it asserts);
// Create refuses it rather than write a volume QEMU cannot open. Reading
// one (cryptsetup writes them) works: the last sector is shorter.
func TestCreateRefusesPartialSectorMaterial(t *testing.T) {
	_, _, _, err := Create(CreateOptions{CipherAlg: "aes-192", CipherMode: "cbc", Password: []byte("x"), Iterations: 1000})
	if err == nil || !strings.Contains(err.Error(), "not a whole number of 512-byte sectors") {
		t.Fatalf("got %v", err)
	}
	spec, err := ParseSpec("aes", "cbc-plain64", "sha256", 24)
	if err != nil {
		t.Fatal(err)
	}
	h := &Header{CipherName: "aes", CipherMode: "cbc-plain64", HashSpec: "sha256", KeyBytes: 24, MKIterations: 1000}
	mk := bytes.Repeat([]byte{7}, 24)
	d, _ := derive(hashes["sha256"], mk, h.MKSalt[:], 1000, digestLen)
	copy(h.MKDigest[:], d)
	s := &h.Slots[0]
	*s = Slot{Active: true, Iterations: 1000, KeyOffset: 8, Stripes: Stripes}
	mat, err := SlotMaterial(h, spec, s, []byte("pw"), mk, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	img := make([]byte, 4096+len(mat))
	copy(img[4096:], mat)
	v, err := Unlock(h, []byte("pw"), memReader(img))
	if err != nil || !bytes.Equal(v.Key, mk) {
		t.Fatalf("unlock: %v", err)
	}
}

func TestLayoutAsQEMU(t *testing.T) {
	img, _ := build(t, CreateOptions{Password: []byte("x")}, 0)
	h, err := Parse(img)
	if err != nil {
		t.Fatal(err)
	}
	// qemu-img 7.2's default aes-256-xts-plain64 image: slot 0 at 4096,
	// slot 1 at 262144, payload at 2068480.
	if h.Slots[0].KeyOffset*SectorSize != 4096 || h.Slots[1].KeyOffset*SectorSize != 262144 || h.PayloadBytes() != 2068480 {
		t.Fatalf("layout %d %d %d", h.Slots[0].KeyOffset*SectorSize, h.Slots[1].KeyOffset*SectorSize, h.PayloadBytes())
	}
	if AreaLen(int(h.KeyBytes)) != h.PayloadBytes() {
		t.Fatalf("AreaLen %d, payload %d", AreaLen(int(h.KeyBytes)), h.PayloadBytes())
	}
	if h.CipherMode != "xts-plain64" || h.HashSpec != "sha256" || h.KeyBytes != 64 {
		t.Fatalf("spec %q %q %d", h.CipherMode, h.HashSpec, h.KeyBytes)
	}
}

func TestZeroAllocCipher(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates (sync.Pool keeps nothing under -race)")
	}
	for _, o := range []CreateOptions{{}, {CipherMode: "cbc", IVGen: "essiv"}} {
		_, v := build(t, o, 0)
		c, _ := v.NewCipher()
		buf := make([]byte, 64<<10)
		if n := testing.AllocsPerRun(20, func() { c.Encrypt(buf, 3); c.Decrypt(buf, 3) }); n != 0 {
			t.Fatalf("%+v: %v allocations per sector run", o, n)
		}
	}
}

// TestQEMUMadeVolume unlocks a raw LUKS image qemu-img 7.2 created and
// decrypts what qemu-io wrote.
func TestQEMUMadeVolume(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("qemu-io not installed")
	}
	for _, mode := range []string{"cipher-alg=aes-256", "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv"} {
		p := filepath.Join(t.TempDir(), "q.luks")
		clitest.QEMUCreateLUKS(t, "luks", p, "key-secret=s0,iter-time=10,"+mode, "1M")
		out, err := exec.Command("qemu-io", "--object", "secret,id=s0,data=abc", "--image-opts",
			"driver=luks,key-secret=s0,file.filename="+p, "-c", "write -P 0x5a 512 4096").CombinedOutput()
		if err != nil {
			t.Fatalf("qemu-io: %v: %s", err, out)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		hb := make([]byte, HeaderLen)
		if _, err := f.ReadAt(hb, 0); err != nil {
			t.Fatal(err)
		}
		h, err := Parse(hb)
		if err != nil {
			t.Fatal(err)
		}
		v, err := Unlock(h, []byte("abc"), fileReader(t, f, 0))
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		buf := make([]byte, 8192)
		if _, err := f.ReadAt(buf, h.PayloadBytes()); err != nil {
			t.Fatal(err)
		}
		c, _ := v.NewCipher()
		c.Decrypt(buf, 0)
		want := make([]byte, 8192)
		copy(want[512:4608], bytes.Repeat([]byte{0x5a}, 4096))
		if !bytes.Equal(buf[512:4608], want[512:4608]) {
			t.Fatalf("%s: qemu-io's pattern decrypts to %x…", mode, buf[512:528])
		}
		if _, err := Unlock(h, []byte("abd"), fileReader(t, f, 0)); !errors.Is(err, ErrBadPassword) {
			t.Fatalf("wrong password: %v", err)
		}
	}
}
