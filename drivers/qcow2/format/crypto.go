package format

import "encoding/binary"

// crypt_method values of the qcow2 header.
const (
	CryptNone = 0
	// CryptAES is the legacy AES-CBC encryption with the password as key
	// and the guest sector number as IV (QEMU's system emulators refuse
	// it; qemu-img and qemu-io still read and write it, as the qcow2
	// driver does: drivers/qcow2/aes.go). Nothing about it is stored
	// beyond this header field.
	CryptAES = 1
	// CryptLUKS is LUKS1 in the image: a LUKS header and its key slots
	// in clusters the full disk encryption extension points at, data
	// clusters encrypted per 512-byte sector with the sector's host
	// offset as IV.
	CryptLUKS = 2
)

// MaxCryptoHeaderLen caps the length of the encryption header area the
// full disk encryption extension may claim. QEMU's largest LUKS1 header
// (eight slots of a 64-byte key split in 4000 stripes) takes about
// 2 MiB.
const MaxCryptoHeaderLen = 16 << 20

// Encrypted reports whether the image's data clusters are encrypted.
func (h *Header) Encrypted() bool { return h.CryptMethod != CryptNone }

// parseCryptoExt reads the full disk encryption extension.
func parseCryptoExt(h *Header, data []byte) error {
	if len(data) != fdeExtLen {
		return Corrupt("full_disk_encryption_ext.len", uint64(len(data)), "invalid encryption header extension length")
	}
	h.CryptoOffset = binary.BigEndian.Uint64(data[0:])
	h.CryptoLength = binary.BigEndian.Uint64(data[8:])
	h.hasCryptoExt = true
	return nil
}

// validateCrypto checks crypt_method against the extension, as QEMU's
// open does: LUKS needs the extension with a cluster-aligned, non-empty,
// capped area past the header cluster; no other method may have one.
func (h *Header) validateCrypto() error {
	cs := uint64(1) << h.ClusterBits
	switch h.CryptMethod {
	case CryptNone:
		if h.hasCryptoExt {
			return Corrupt("full_disk_encryption_ext", h.CryptoOffset, "encryption header extension present but image is not encrypted")
		}
		return nil
	case CryptAES:
		if h.hasCryptoExt {
			return Corrupt("full_disk_encryption_ext", h.CryptoOffset, "encryption header extension present but the image is AES-encrypted, not LUKS")
		}
		return nil
	case CryptLUKS:
	default:
		return Unsupported("crypt_method", uint64(h.CryptMethod), "Unsupported encryption method")
	}
	switch {
	case !h.hasCryptoExt:
		return Corrupt("full_disk_encryption_ext", 0, "No LUKS encryption header extension in the image")
	case h.CryptoOffset%cs != 0:
		return Corrupt("full_disk_encryption_ext.offset", h.CryptoOffset, "Encryption header offset is not a multiple of the cluster size")
	case h.CryptoOffset < cs || h.CryptoOffset >= MaxHostOffset:
		return Corrupt("full_disk_encryption_ext.offset", h.CryptoOffset, "Encryption header offset is outside the image")
	case h.CryptoLength == 0 || h.CryptoLength > MaxCryptoHeaderLen:
		return Limit("full_disk_encryption_ext.length", h.CryptoLength, "Encryption header length is out of range")
	}
	return nil
}

// cryptoExt is the extension's payload for MarshalBinary.
func (h *Header) cryptoExt() []byte {
	b := make([]byte, fdeExtLen)
	binary.BigEndian.PutUint64(b[0:], h.CryptoOffset)
	binary.BigEndian.PutUint64(b[8:], h.CryptoLength)
	return b
}
