// Package luks reads and writes LUKS1 volumes as QEMU 7.2 does: the
// 592-byte header with its eight key slots, the anti-forensic splitter,
// PBKDF2 key derivation and the sector ciphers (aes in xts or cbc mode
// with plain, plain64 or essiv IVs). It is pure: callers hand it bytes
// and a way to read the key material, and get back a sector Cipher for
// the payload. No block layer, no I/O of its own.
//
// The on-disk rules it relies on are in docs/spec/luks.md; the caps on
// hostile headers and what is supported in docs/design/luks.md.
package luks

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// On-disk constants of LUKS1.
const (
	SectorSize = 512
	HeaderLen  = 592 // the phdr with its eight key slots
	NumSlots   = 8
	// Stripes is the anti-forensic stripe count every key slot uses;
	// QEMU refuses anything else, and so do we.
	Stripes = 4000
	// SlotAlign is where key material starts and how slots are aligned
	// (bytes), as QEMU lays them out.
	SlotAlign = 4096

	slotActive   = 0x00AC71F3
	slotInactive = 0x0000DEAD
	saltLen      = 32
	digestLen    = 20
	uuidLen      = 40
	nameLen      = 32

	// MinIterations is the least PBKDF2 iteration count QEMU writes for a
	// key slot and for the master key digest.
	MinIterations = 1000
	// MaxIterations caps the PBKDF2 iteration count of a key slot or of
	// the master key digest we are willing to run: a hostile header
	// cannot make an open spin longer than about NumSlots+1 runs of this
	// many iterations (seconds, not hours). QEMU at iter-time 2000 on a
	// fast core writes a few million.
	MaxIterations = 1 << 24
	// MaxKeyBytes is the longest master key (aes-256 in xts mode).
	MaxKeyBytes = 64
)

var magic = [6]byte{'L', 'U', 'K', 'S', 0xBA, 0xBE}

// Slot is one key slot of the header.
type Slot struct {
	Active     bool
	Iterations uint32
	Salt       [saltLen]byte
	KeyOffset  uint32 // first sector of the key material, from the header start
	Stripes    uint32
}

// Header is a parsed LUKS1 phdr.
type Header struct {
	CipherName    string // "aes"
	CipherMode    string // "xts-plain64", "cbc-essiv:sha256", …
	HashSpec      string // "sha256"
	PayloadOffset uint32 // sectors
	KeyBytes      uint32
	MKDigest      [digestLen]byte
	MKSalt        [saltLen]byte
	MKIterations  uint32
	UUID          string
	Slots         [NumSlots]Slot
}

// ErrNotLUKS is a header without the LUKS magic or version 1.
var ErrNotLUKS = errors.New("Volume is not in LUKS format")

// IsLUKS tells whether b starts with the LUKS1 magic and version.
func IsLUKS(b []byte) bool {
	return len(b) >= 8 && bytes.Equal(b[:6], magic[:]) && binary.BigEndian.Uint16(b[6:]) == 1
}

func cstr(b []byte) (string, error) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", errors.New("string field is not NUL-terminated")
	}
	return string(b[:i]), nil
}

// Parse decodes and checks a header (the first HeaderLen bytes of b). It
// rejects what QEMU rejects (stripes other than 4000, key material inside
// the header, past the payload or overlapping another slot) and what we
// cap (iteration counts above MaxIterations, key sizes above
// MaxKeyBytes); it never reads outside b.
func Parse(b []byte) (*Header, error) {
	if len(b) < HeaderLen {
		return nil, fmt.Errorf("LUKS header is truncated (%d of %d bytes)", len(b), HeaderLen)
	}
	if !bytes.Equal(b[:6], magic[:]) {
		return nil, ErrNotLUKS
	}
	be := binary.BigEndian
	if v := be.Uint16(b[6:]); v != 1 {
		return nil, fmt.Errorf("Unsupported LUKS version %d", v)
	}
	h := &Header{}
	var err error
	if h.CipherName, err = cstr(b[8:40]); err != nil {
		return nil, fmt.Errorf("LUKS cipher name: %v", err)
	}
	if h.CipherMode, err = cstr(b[40:72]); err != nil {
		return nil, fmt.Errorf("LUKS cipher mode: %v", err)
	}
	if h.HashSpec, err = cstr(b[72:104]); err != nil {
		return nil, fmt.Errorf("LUKS hash spec: %v", err)
	}
	h.PayloadOffset = be.Uint32(b[104:])
	h.KeyBytes = be.Uint32(b[108:])
	copy(h.MKDigest[:], b[112:132])
	copy(h.MKSalt[:], b[132:164])
	h.MKIterations = be.Uint32(b[164:])
	if h.UUID, err = cstr(b[168:208]); err != nil {
		return nil, fmt.Errorf("LUKS uuid: %v", err)
	}
	for i := range h.Slots {
		s := b[208+48*i:]
		sl := &h.Slots[i]
		switch st := be.Uint32(s); st {
		case slotActive:
			sl.Active = true
		case slotInactive:
		default:
			return nil, fmt.Errorf("LUKS key slot %d has an invalid state 0x%x", i, st)
		}
		sl.Iterations = be.Uint32(s[4:])
		copy(sl.Salt[:], s[8:40])
		sl.KeyOffset = be.Uint32(s[40:])
		sl.Stripes = be.Uint32(s[44:])
	}
	if err := h.check(); err != nil {
		return nil, err
	}
	return h, nil
}

// check applies the structural rules to a decoded header.
func (h *Header) check() error {
	if h.KeyBytes == 0 || h.KeyBytes > MaxKeyBytes {
		return fmt.Errorf("LUKS key size %d bytes is not supported (1 to %d)", h.KeyBytes, MaxKeyBytes)
	}
	if h.MKIterations == 0 || h.MKIterations > MaxIterations {
		return fmt.Errorf("LUKS master key iteration count %d is out of range (1 to %d)", h.MKIterations, MaxIterations)
	}
	if _, err := ParseSpec(h.CipherName, h.CipherMode, h.HashSpec, int(h.KeyBytes)); err != nil {
		return err
	}
	hdrSectors := uint64((HeaderLen + SectorSize - 1) / SectorSize)
	matSectors := h.MaterialSectors()
	for i := range h.Slots {
		s := &h.Slots[i]
		if s.Stripes != Stripes {
			return fmt.Errorf("Keyslot %d is corrupted (stripes %d != %d)", i, s.Stripes, Stripes)
		}
		if s.Active && (s.Iterations == 0 || s.Iterations > MaxIterations) {
			return fmt.Errorf("Keyslot %d iteration count %d is out of range (1 to %d)", i, s.Iterations, MaxIterations)
		}
		start, end := uint64(s.KeyOffset), uint64(s.KeyOffset)+matSectors
		if start < hdrSectors {
			return fmt.Errorf("Keyslot %d is overlapping with the LUKS header", i)
		}
		if h.PayloadOffset != 0 && end > uint64(h.PayloadOffset) {
			return fmt.Errorf("Keyslot %d is overlapping with the encrypted payload", i)
		}
	}
	for i := range h.Slots {
		start, end := uint64(h.Slots[i].KeyOffset), uint64(h.Slots[i].KeyOffset)+matSectors
		for j := i + 1; j < NumSlots; j++ {
			o := &h.Slots[j]
			os, oe := uint64(o.KeyOffset), uint64(o.KeyOffset)+matSectors
			if start < oe && os < end {
				return fmt.Errorf("Keyslots %d and %d are overlapping in the header", i, j)
			}
		}
	}
	return nil
}

// MaterialLen is the byte length of one slot's (split, encrypted) key
// material.
func (h *Header) MaterialLen() int { return int(h.KeyBytes) * Stripes }

// MaterialSectors is MaterialLen in sectors, rounded up.
func (h *Header) MaterialSectors() uint64 {
	return (uint64(h.MaterialLen()) + SectorSize - 1) / SectorSize
}

// PayloadBytes is the payload offset in bytes.
func (h *Header) PayloadBytes() int64 { return int64(h.PayloadOffset) * SectorSize }

// Marshal encodes the header into HeaderLen bytes.
func (h *Header) Marshal() []byte {
	b := make([]byte, HeaderLen)
	be := binary.BigEndian
	copy(b, magic[:])
	be.PutUint16(b[6:], 1)
	copy(b[8:39], h.CipherName)
	copy(b[40:71], h.CipherMode)
	copy(b[72:103], h.HashSpec)
	be.PutUint32(b[104:], h.PayloadOffset)
	be.PutUint32(b[108:], h.KeyBytes)
	copy(b[112:132], h.MKDigest[:])
	copy(b[132:164], h.MKSalt[:])
	be.PutUint32(b[164:], h.MKIterations)
	copy(b[168:207], h.UUID)
	for i := range h.Slots {
		s := b[208+48*i:]
		sl := &h.Slots[i]
		if sl.Active {
			be.PutUint32(s, slotActive)
		} else {
			be.PutUint32(s, slotInactive)
		}
		be.PutUint32(s[4:], sl.Iterations)
		copy(s[8:40], sl.Salt[:])
		be.PutUint32(s[40:], sl.KeyOffset)
		be.PutUint32(s[44:], sl.Stripes)
	}
	return b
}
