package luks

import (
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"runtime"

	"golang.org/x/sys/unix"
)

// ErrBadPassword is QEMU's wording when no active key slot opens with
// the password.
var ErrBadPassword = errors.New("Invalid password, cannot unlock any keyslot")

// Volume is an unlocked LUKS volume: its header, the master key and the
// payload cipher.
type Volume struct {
	Header *Header
	Spec   Spec
	Key    []byte // the master key
	Slot   int    // the key slot that opened it
}

func derive(hf func() hash.Hash, password, salt []byte, iter uint32, n int) ([]byte, error) {
	return pbkdf2.Key(hf, string(password), salt, int(iter), n)
}

// diffuse is the anti-forensic splitter's hash step: every digest-sized
// piece i of b becomes the hash of the big-endian i and the piece,
// truncated to the piece's length.
func diffuse(hf func() hash.Hash, b []byte) {
	h := hf()
	ds := h.Size()
	var idx [4]byte
	sum := make([]byte, 0, ds)
	for i := 0; i*ds < len(b); i++ {
		piece := b[i*ds : min(len(b), (i+1)*ds)]
		h.Reset()
		binary.BigEndian.PutUint32(idx[:], uint32(i))
		h.Write(idx[:])
		h.Write(piece)
		sum = h.Sum(sum[:0])
		copy(piece, sum)
	}
}

// afMerge recovers a key of n bytes from its stripes (n*stripes bytes).
func afMerge(hf func() hash.Hash, split []byte, n, stripes int) []byte {
	d := make([]byte, n)
	for i := 0; i < stripes-1; i++ {
		subtle.XORBytes(d, d, split[i*n:(i+1)*n])
		diffuse(hf, d)
	}
	subtle.XORBytes(d, d, split[(stripes-1)*n:stripes*n])
	return d
}

// afSplit spreads key over stripes pieces, all but the last random.
func afSplit(hf func() hash.Hash, key []byte, stripes int, rnd io.Reader) ([]byte, error) {
	n := len(key)
	out := make([]byte, n*stripes)
	if _, err := io.ReadFull(rnd, out[:n*(stripes-1)]); err != nil {
		return nil, err
	}
	d := make([]byte, n)
	for i := 0; i < stripes-1; i++ {
		subtle.XORBytes(d, d, out[i*n:(i+1)*n])
		diffuse(hf, d)
	}
	subtle.XORBytes(out[(stripes-1)*n:], d, key)
	return out, nil
}

// ReadFunc reads len(p) bytes at off, counted from the start of the
// LUKS header.
type ReadFunc func(p []byte, off int64) error

// Unlock tries password on every active key slot of h, in order, and
// returns the volume the first one opens. read fetches key material.
func Unlock(h *Header, password []byte, read ReadFunc) (*Volume, error) {
	spec, err := ParseSpec(h.CipherName, h.CipherMode, h.HashSpec, int(h.KeyBytes))
	if err != nil {
		return nil, err
	}
	hf := hashes[spec.Hash]
	mat := make([]byte, h.MaterialLen())
	for i := range h.Slots {
		s := &h.Slots[i]
		if !s.Active {
			continue
		}
		key, err := tryKey(h, spec, hf, s, password, mat, read)
		if err != nil {
			return nil, err
		}
		if key != nil {
			return &Volume{Header: h, Spec: spec, Key: key, Slot: i}, nil
		}
	}
	return nil, ErrBadPassword
}

// tryKey returns the master key slot s yields with password, or nil when
// the password does not fit it.
func tryKey(h *Header, spec Spec, hf func() hash.Hash, s *Slot, password, mat []byte, read ReadFunc) ([]byte, error) {
	if s.Iterations > MaxIterations { // Parse refuses these; a caller may have built h
		return nil, fmt.Errorf("key slot iteration count %d is above %d", s.Iterations, MaxIterations)
	}
	sk, err := derive(hf, password, s.Salt[:], s.Iterations, int(h.KeyBytes))
	if err != nil {
		return nil, err
	}
	if err := read(mat, int64(s.KeyOffset)*SectorSize); err != nil {
		return nil, fmt.Errorf("Unable to read key slot material: %w", err)
	}
	c, err := NewCipher(spec, sk)
	if err != nil {
		return nil, err
	}
	c.Decrypt(mat, 0)
	mk := afMerge(hf, mat, int(h.KeyBytes), int(s.Stripes))
	if ok, err := h.checkDigest(hf, mk); err != nil || !ok {
		return nil, err
	}
	return mk, nil
}

func (h *Header) checkDigest(hf func() hash.Hash, mk []byte) (bool, error) {
	d, err := derive(hf, mk, h.MKSalt[:], h.MKIterations, digestLen)
	if err != nil {
		return false, err
	}
	return subtle.ConstantTimeCompare(d, h.MKDigest[:]) == 1, nil
}

// NewCipher returns the payload cipher of v.
func (v *Volume) NewCipher() (*Cipher, error) { return NewCipher(v.Spec, v.Key) }

// CreateOptions are qemu-img's LUKS creation options.
type CreateOptions struct {
	CipherAlg  string // aes-128, aes-192, aes-256 (default)
	CipherMode string // xts (default), cbc
	IVGen      string // plain, plain64 (default), essiv
	IVHash     string // essiv hash (default sha256)
	Hash       string // sha256 (default)
	IterTime   int64  // milliseconds of PBKDF2 per key slot (default 2000)
	Password   []byte
	// Iterations, when non-zero, replaces the iter-time calibration: the
	// key slot gets this count and the digest an eighth of it (tests).
	Iterations uint32
	Rand       io.Reader // default crypto/rand
}

// Spec checks o and returns the cipher specification it asks for.
func (o *CreateOptions) Spec() (Spec, error) {
	alg := o.CipherAlg
	if alg == "" {
		alg = "aes-256"
	}
	mode := o.CipherMode
	if mode == "" {
		mode = "xts"
	}
	iv := o.IVGen
	if iv == "" {
		iv = "plain64"
	}
	h := o.Hash
	if h == "" {
		h = "sha256"
	}
	var half int
	switch alg {
	case "aes-128":
		half = 16
	case "aes-192":
		half = 24
	case "aes-256":
		half = 32
	default:
		return Spec{}, fmt.Errorf("Cipher algorithm '%s' is not supported", alg)
	}
	kb := half
	if mode == "xts" {
		kb *= 2
	}
	if iv == "essiv" {
		ih := o.IVHash
		if ih == "" {
			ih = "sha256"
		}
		iv += ":" + ih
	} else if o.IVHash != "" {
		return Spec{}, fmt.Errorf("ivgen-hash-alg applies to ivgen-alg essiv only")
	}
	return ParseSpec("aes", mode+"-"+iv, h, kb)
}

// Create makes a new LUKS1 volume as QEMU lays it out: key material from
// sector 8, each slot aligned to 4096 bytes, the payload after the eighth
// slot, key slot 0 holding the master key under o.Password. It returns
// the header, slot 0's material (to write at Slots[0].KeyOffset sectors)
// and the unlocked volume.
func Create(o CreateOptions) (*Header, []byte, *Volume, error) {
	spec, err := o.Spec()
	if err != nil {
		return nil, nil, nil, err
	}
	if spec.KeyBytes*Stripes%SectorSize != 0 {
		// QEMU 7.2 asserts on key material that is not whole sectors.
		return nil, nil, nil, fmt.Errorf("%s in %s mode: its key material (%d bytes) is not a whole number of %d-byte sectors, which QEMU 7.2 cannot open", spec.Alg, spec.Mode, spec.KeyBytes*Stripes, SectorSize)
	}
	rnd := o.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	hf := hashes[spec.Hash]
	h := &Header{
		CipherName: "aes",
		CipherMode: spec.ModeString(),
		HashSpec:   spec.Hash,
		KeyBytes:   uint32(spec.KeyBytes),
	}
	mk := make([]byte, spec.KeyBytes)
	if _, err := io.ReadFull(rnd, mk); err != nil {
		return nil, nil, nil, err
	}
	if _, err := io.ReadFull(rnd, h.MKSalt[:]); err != nil {
		return nil, nil, nil, err
	}
	var u [16]byte
	if _, err := io.ReadFull(rnd, u[:]); err != nil {
		return nil, nil, nil, err
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	h.UUID = fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])

	slotIters, mkIters := o.Iterations, o.Iterations/8
	if o.Iterations == 0 {
		it := o.IterTime
		if it == 0 {
			it = 2000
		}
		if it < 0 {
			return nil, nil, nil, fmt.Errorf("iter-time must not be negative")
		}
		if mkIters, err = Iterations(spec.Hash, digestLen, it, 8); err != nil {
			return nil, nil, nil, err
		}
		if slotIters, err = Iterations(spec.Hash, spec.KeyBytes, it, 1); err != nil {
			return nil, nil, nil, err
		}
	}
	h.MKIterations = max(mkIters, MinIterations)
	d, err := derive(hf, mk, h.MKSalt[:], h.MKIterations, digestLen)
	if err != nil {
		return nil, nil, nil, err
	}
	copy(h.MKDigest[:], d)

	align := uint64(SlotAlign / SectorSize)
	stride := (h.MaterialSectors() + align - 1) / align * align
	for i := range h.Slots {
		h.Slots[i] = Slot{KeyOffset: uint32(align + uint64(i)*stride), Stripes: Stripes}
	}
	h.PayloadOffset = uint32(align + NumSlots*stride)

	s := &h.Slots[0]
	s.Active = true
	s.Iterations = max(slotIters, MinIterations)
	if _, err := io.ReadFull(rnd, s.Salt[:]); err != nil {
		return nil, nil, nil, err
	}
	mat, err := SlotMaterial(h, spec, s, o.Password, mk, rnd)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := h.check(); err != nil {
		return nil, nil, nil, err
	}
	return h, mat, &Volume{Header: h, Spec: spec, Key: mk, Slot: 0}, nil
}

// AreaLen is the length of the header and key slots QEMU's layout gives
// a master key of keyBytes: the payload offset of a raw volume, the
// encryption area of a qcow2 image.
func AreaLen(keyBytes int) int64 {
	align := int64(SlotAlign / SectorSize)
	mat := (int64(keyBytes)*Stripes + SectorSize - 1) / SectorSize
	stride := (mat + align - 1) / align * align
	return (align + NumSlots*stride) * SectorSize
}

// SlotMaterial splits mk and encrypts it under password with slot s's
// salt and iterations: the bytes to store at the slot's key offset.
func SlotMaterial(h *Header, spec Spec, s *Slot, password, mk []byte, rnd io.Reader) ([]byte, error) {
	hf := hashes[spec.Hash]
	sk, err := derive(hf, password, s.Salt[:], s.Iterations, int(h.KeyBytes))
	if err != nil {
		return nil, err
	}
	mat, err := afSplit(hf, mk, Stripes, rnd)
	if err != nil {
		return nil, err
	}
	c, err := NewCipher(spec, sk)
	if err != nil {
		return nil, err
	}
	c.Encrypt(mat, 0)
	return mat, nil
}

// Iterations is the PBKDF2 iteration count of hashName that takes
// iterTime milliseconds of this thread's CPU for an output of outLen
// bytes, divided by div (QEMU gives the master key digest an eighth),
// capped at MaxIterations. It measures on a locked OS thread with the
// thread CPU clock (nanoseconds, so a short run measures too).
func Iterations(hashName string, outLen int, iterTime int64, div uint64) (uint32, error) {
	hf, ok := hashes[hashName]
	if !ok {
		return 0, fmt.Errorf("Hash algorithm %s not supported", hashName)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	salt := make([]byte, saltLen)
	key := make([]byte, 32)
	iters := uint64(1 << 12)
	for {
		t0, err := threadCPU()
		if err != nil {
			return 0, err
		}
		if _, err := derive(hf, key, salt, uint32(iters), outLen); err != nil {
			return 0, err
		}
		t1, err := threadCPU()
		if err != nil {
			return 0, err
		}
		ns := t1 - t0
		if ns >= 20e6 || iters >= MaxIterations {
			if ns <= 0 {
				ns = 1
			}
			perSec := iters * 1e9 / uint64(ns)
			n := perSec * uint64(iterTime) / 1000 / div
			return uint32(min(n, MaxIterations)), nil
		}
		iters *= 4
	}
}

func threadCPU() (int64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0, fmt.Errorf("Unable to calculate thread CPU usage: %v", err)
	}
	return ts.Nano(), nil
}

// SlotOpens tells whether password opens key slot i of h (false for an
// inactive slot).
func SlotOpens(h *Header, i int, password []byte, read ReadFunc) (bool, error) {
	if i < 0 || i >= NumSlots || !h.Slots[i].Active {
		return false, nil
	}
	spec, err := ParseSpec(h.CipherName, h.CipherMode, h.HashSpec, int(h.KeyBytes))
	if err != nil {
		return false, err
	}
	key, err := tryKey(h, spec, hashes[spec.Hash], &h.Slots[i], password, make([]byte, h.MaterialLen()), read)
	return key != nil, err
}
