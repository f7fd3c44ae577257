package luks

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"hash"
	"strings"

	"golang.org/x/crypto/xts"
)

// Mode is a block cipher mode of the payload.
type Mode uint8

const (
	ModeXTS Mode = iota
	ModeCBC
)

// IVGen is how a sector's IV is made from its number.
type IVGen uint8

const (
	IVPlain   IVGen = iota // the low 32 bits, little endian
	IVPlain64              // the 64-bit sector number, little endian
	IVEssiv                // the sector number encrypted with hash(key) as key
)

// Spec is a parsed cipher specification: what the header's cipher name,
// cipher mode and hash spec say.
type Spec struct {
	Alg      string // "aes-128", "aes-192", "aes-256" (QEMU's cipher-alg)
	Mode     Mode
	IVGen    IVGen
	IVHash   string // the essiv hash; "" otherwise
	Hash     string // PBKDF2 and anti-forensic hash
	KeyBytes int    // master key length (both halves for xts)
}

func (m Mode) String() string {
	if m == ModeCBC {
		return "cbc"
	}
	return "xts"
}

func (g IVGen) String() string {
	switch g {
	case IVPlain:
		return "plain"
	case IVEssiv:
		return "essiv"
	}
	return "plain64"
}

// hashes are the hash specs we accept, as QEMU names them.
var hashes = map[string]func() hash.Hash{
	"sha1":   sha1.New,
	"sha224": sha256.New224,
	"sha256": sha256.New,
	"sha384": sha512.New384,
	"sha512": sha512.New,
}

// HashFunc returns the constructor of a named hash.
func HashFunc(name string) (func() hash.Hash, bool) {
	f, ok := hashes[name]
	return f, ok
}

// ParseSpec checks the header's cipher fields: cipher name "aes", mode
// "xts-plain", "xts-plain64", "cbc-plain", "cbc-plain64" or
// "cbc-essiv:HASH", a hash QEMU knows, and a key size that fits.
func ParseSpec(name, mode, hashSpec string, keyBytes int) (Spec, error) {
	var s Spec
	if name != "aes" {
		return s, fmt.Errorf("Cipher name '%s' is not supported", name)
	}
	if _, ok := hashes[hashSpec]; !ok {
		return s, fmt.Errorf("Hash algorithm %s not supported", hashSpec)
	}
	s.Hash = hashSpec
	m, iv, _ := strings.Cut(mode, "-")
	switch m {
	case "xts":
		s.Mode = ModeXTS
	case "cbc":
		s.Mode = ModeCBC
	default:
		return s, fmt.Errorf("Cipher mode %s not supported", m)
	}
	ivname, ivhash, hasHash := strings.Cut(iv, ":")
	switch ivname {
	case "plain":
		s.IVGen = IVPlain
	case "plain64":
		s.IVGen = IVPlain64
	case "essiv":
		s.IVGen = IVEssiv
		if !hasHash {
			return s, fmt.Errorf("Missing IV generator hash specification")
		}
		if _, ok := hashes[ivhash]; !ok {
			return s, fmt.Errorf("Hash algorithm %s not supported", ivhash)
		}
		if s.Mode == ModeXTS {
			return s, fmt.Errorf("Cipher mode xts with IV generator essiv is not supported")
		}
		s.IVHash = ivhash
	default:
		return s, fmt.Errorf("IV generator %s not supported", ivname)
	}
	if hasHash && ivname != "essiv" {
		return s, fmt.Errorf("IV generator %s takes no hash", ivname)
	}
	half := keyBytes
	if s.Mode == ModeXTS {
		if keyBytes%2 != 0 {
			return s, fmt.Errorf("Algorithm aes with key size %d bytes not supported", keyBytes)
		}
		half = keyBytes / 2
	}
	switch half {
	case 16, 24, 32:
		s.Alg = fmt.Sprintf("aes-%d", half*8)
	default:
		return s, fmt.Errorf("Algorithm aes with key size %d bytes not supported", half)
	}
	s.KeyBytes = keyBytes
	if s.IVGen == IVEssiv {
		switch hashes[s.IVHash]().Size() {
		case 16, 24, 32:
		default:
			return s, fmt.Errorf("No AES cipher with key size %d available", hashes[s.IVHash]().Size())
		}
	}
	return s, nil
}

// ModeString is the header's cipher mode field for s ("xts-plain64").
func (s Spec) ModeString() string {
	str := s.Mode.String() + "-" + s.IVGen.String()
	if s.IVGen == IVEssiv {
		str += ":" + s.IVHash
	}
	return str
}

// Cipher encrypts and decrypts whole sectors in place. It keeps scratch
// state: one Cipher serves one goroutine at a time (a driver keeps one per
// image; Clone makes another). Encrypt and Decrypt do not allocate.
type Cipher struct {
	spec  Spec
	key   []byte
	xts   *xts.Cipher
	blk   cipher.Block // cbc
	essiv cipher.Block
	iv    [aes.BlockSize]byte
	prev  [aes.BlockSize]byte
	tmp   [aes.BlockSize]byte
}

// NewCipher makes the sector cipher of spec with key (KeyBytes long).
func NewCipher(spec Spec, key []byte) (*Cipher, error) {
	if len(key) != spec.KeyBytes {
		return nil, fmt.Errorf("key is %d bytes, the cipher needs %d", len(key), spec.KeyBytes)
	}
	c := &Cipher{spec: spec, key: append([]byte(nil), key...)}
	var err error
	switch spec.Mode {
	case ModeXTS:
		c.xts, err = xts.NewCipher(aes.NewCipher, key)
	case ModeCBC:
		c.blk, err = aes.NewCipher(key)
	}
	if err != nil {
		return nil, err
	}
	if spec.IVGen == IVEssiv {
		h := hashes[spec.IVHash]()
		h.Write(key)
		if c.essiv, err = aes.NewCipher(h.Sum(nil)); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Clone returns an independent Cipher with the same key.
func (c *Cipher) Clone() *Cipher {
	n, err := NewCipher(c.spec, c.key)
	if err != nil {
		panic("luks: clone of a valid cipher failed: " + err.Error())
	}
	return n
}

// Spec returns the cipher's specification.
func (c *Cipher) Spec() Spec { return c.spec }

func (c *Cipher) makeIV(sector uint64) {
	c.iv = [aes.BlockSize]byte{}
	switch c.spec.IVGen {
	case IVPlain:
		binary.LittleEndian.PutUint32(c.iv[:], uint32(sector))
	case IVPlain64:
		binary.LittleEndian.PutUint64(c.iv[:], sector)
	case IVEssiv:
		binary.LittleEndian.PutUint64(c.iv[:], sector)
		c.essiv.Encrypt(c.iv[:], c.iv[:])
	}
}

func (c *Cipher) tweak(sector uint64) uint64 {
	if c.spec.IVGen == IVPlain {
		return uint64(uint32(sector))
	}
	return sector
}

// Encrypt encrypts buf in place: SectorSize-byte sectors numbered from
// sector, the last one possibly shorter (a multiple of 16 bytes).
func (c *Cipher) Encrypt(buf []byte, sector uint64) { c.crypt(buf, sector, true) }

// Decrypt decrypts buf in place, as Encrypt numbers its sectors.
func (c *Cipher) Decrypt(buf []byte, sector uint64) { c.crypt(buf, sector, false) }

func (c *Cipher) crypt(buf []byte, sector uint64, enc bool) {
	if len(buf)%aes.BlockSize != 0 {
		panic("luks: buffer is not a multiple of the cipher block size")
	}
	for len(buf) > 0 {
		n := min(len(buf), SectorSize)
		s := buf[:n]
		switch {
		case c.xts != nil && enc:
			c.xts.Encrypt(s, s, c.tweak(sector))
		case c.xts != nil:
			c.xts.Decrypt(s, s, c.tweak(sector))
		case enc:
			c.makeIV(sector)
			prev := c.iv[:]
			for i := 0; i < n; i += aes.BlockSize {
				b := s[i : i+aes.BlockSize]
				subtle16(b, prev)
				c.blk.Encrypt(b, b)
				prev = b
			}
		default:
			c.makeIV(sector)
			c.prev = c.iv
			for i := 0; i < n; i += aes.BlockSize {
				b := s[i : i+aes.BlockSize]
				copy(c.tmp[:], b)
				c.blk.Decrypt(b, b)
				subtle16(b, c.prev[:])
				c.prev = c.tmp
			}
		}
		buf = buf[n:]
		sector++
	}
}

func subtle16(dst, src []byte) {
	for i := 0; i < aes.BlockSize; i++ {
		dst[i] ^= src[i]
	}
}
