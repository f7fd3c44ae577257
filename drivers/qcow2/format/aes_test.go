package format_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// TestQcow2HeaderAES: crypt_method 1 (legacy AES) parses and says
// encrypted; with a full disk encryption extension (LUKS's) it is
// corrupt, naming the extension.
func TestQcow2HeaderAES(t *testing.T) {
	b := firstCluster(t, "v3")
	binary.BigEndian.PutUint32(b[32:], format.CryptAES)
	h, err := format.ParseHeader(b)
	if err != nil {
		t.Fatalf("AES header: %v", err)
	}
	if h.CryptMethod != format.CryptAES || !h.Encrypted() {
		t.Fatalf("crypt_method %d, encrypted %v", h.CryptMethod, h.Encrypted())
	}
	// Replace the first extension by an encryption extension, then end.
	hl := int(binary.BigEndian.Uint32(b[100:]))
	binary.BigEndian.PutUint32(b[hl:], format.ExtFullDiskEncryption)
	binary.BigEndian.PutUint32(b[hl+4:], 16)
	binary.BigEndian.PutUint64(b[hl+8:], 0x10000)
	binary.BigEndian.PutUint64(b[hl+16:], 0x10000)
	clear(b[hl+24 : hl+32])
	_, err = format.ParseHeader(b)
	var fe *format.FormatError
	if !errors.Is(err, format.ErrCorrupt) || !errors.As(err, &fe) || fe.Field != "full_disk_encryption_ext" {
		t.Fatalf("AES with an encryption extension: %v", err)
	}
}
