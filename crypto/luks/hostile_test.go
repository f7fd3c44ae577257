package luks

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"time"
)

// TestHostileHeaders: each damage is refused by Parse with an error that
// names it, before any key derivation or key material read.
func TestHostileHeaders(t *testing.T) {
	img, _ := build(t, CreateOptions{Password: []byte("x")}, 0)
	good := img[:HeaderLen]
	be := binary.BigEndian
	slot := func(i int) int { return 208 + 48*i }
	cases := []struct {
		name string
		mut  func(b []byte)
		want string
	}{
		{"magic", func(b []byte) { b[0] = 'X' }, "not in LUKS format"},
		{"version", func(b []byte) { be.PutUint16(b[6:], 2) }, "Unsupported LUKS version 2"},
		{"cipher name", func(b []byte) { copy(b[8:], "serpent\x00") }, "Cipher name 'serpent'"},
		{"cipher mode", func(b []byte) { copy(b[40:], "ctr-plain64\x00") }, "Cipher mode ctr"},
		{"hash", func(b []byte) { copy(b[72:], "md4\x00") }, "Hash algorithm md4"},
		{"unterminated name", func(b []byte) { copy(b[8:40], bytes.Repeat([]byte{'a'}, 32)) }, "NUL-terminated"},
		{"key bytes", func(b []byte) { be.PutUint32(b[108:], 1<<30) }, "key size"},
		{"key bytes odd xts", func(b []byte) { be.PutUint32(b[108:], 33) }, "key size"},
		{"mk iterations", func(b []byte) { be.PutUint32(b[164:], 0xffffffff) }, "master key iteration count"},
		{"slot iterations", func(b []byte) { be.PutUint32(b[slot(0)+4:], MaxIterations+1) }, "Keyslot 0 iteration count"},
		{"slot state", func(b []byte) { be.PutUint32(b[slot(3):], 7) }, "key slot 3 has an invalid state"},
		{"stripes", func(b []byte) { be.PutUint32(b[slot(2)+44:], 0xffffffff) }, "Keyslot 2 is corrupted (stripes"},
		{"slot in header", func(b []byte) { be.PutUint32(b[slot(1)+40:], 1) }, "Keyslot 1 is overlapping with the LUKS header"},
		{"slot past payload", func(b []byte) { be.PutUint32(b[slot(7)+40:], 0xfffffff0) }, "Keyslot 7 is overlapping with the encrypted payload"},
		{"slots overlap", func(b []byte) { be.PutUint32(b[slot(5)+40:], be.Uint32(b[slot(4)+40:])+1) }, "Keyslots 4 and 5 are overlapping"},
	}
	for _, c := range cases {
		b := append([]byte(nil), good...)
		c.mut(b)
		start := time.Now()
		_, err := Parse(b)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s: Parse took %v", c.name, d)
		}
	}
	if _, err := Parse(good[:100]); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("short header: %v", err)
	}
	if _, err := Parse(good); err != nil {
		t.Fatalf("the untouched header: %v", err)
	}
}

// TestUnlockShortMaterial: key material past the end of the image is a
// read error, not a panic.
func TestUnlockShortMaterial(t *testing.T) {
	img, _ := build(t, CreateOptions{Password: []byte("x")}, 0)
	h, err := Parse(img)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Unlock(h, []byte("x"), memReader(img[:8192])); err == nil || !strings.Contains(err.Error(), "key slot material") {
		t.Fatalf("got %v", err)
	}
}

func FuzzParse(f *testing.F) {
	img, _ := build(f, CreateOptions{Password: []byte("x")}, 0)
	f.Add(img[:HeaderLen])
	img2, _ := build(f, CreateOptions{Password: []byte("x"), CipherMode: "cbc", IVGen: "essiv", CipherAlg: "aes-128"}, 0)
	f.Add(img2[:HeaderLen])
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := Parse(b)
		if err != nil {
			return
		}
		// An accepted header is within every cap and re-encodes to the
		// fields it was read from.
		if h.MKIterations > MaxIterations || h.KeyBytes > MaxKeyBytes {
			t.Fatalf("accepted beyond the caps: %+v", h)
		}
		for _, s := range h.Slots {
			if s.Stripes != Stripes || (s.Active && s.Iterations > MaxIterations) {
				t.Fatalf("accepted a slot beyond the caps: %+v", s)
			}
		}
		h2, err := Parse(h.Marshal())
		if err != nil {
			t.Fatalf("re-encoded header refused: %v", err)
		}
		if *h2 != *h {
			t.Fatalf("re-encoding changed the header")
		}
	})
}
