package bench

import (
	"bytes"
	"crypto/md5"
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// A verified block (crc32c, md5) starts with a header, and the checksum
// covers the pseudo-random payload after it:
//
//	0  magic "RBVF"   4  block length   8  block offset (bytes)
//	16 method         20 crc32c of the payload (crc32c)
//	24 md5 of the payload (md5), 16 bytes; 40..47 reserved
//	48 payload
//
// A check confirms the magic, the length, the offset (a block written to
// the wrong place is found) and the checksum. verify=pattern fills whole
// blocks with verify_pattern and compares them.
const (
	verifyMagic      = 0x46564252 // "RBVF" little-endian
	verifyHeaderSize = 48
	maxMismatches    = 10 // reported in detail; all are counted
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Mismatch is one block that failed verification.
type Mismatch struct {
	Off    int64
	Len    int
	Reason string
}

func (m Mismatch) String() string {
	return fmt.Sprintf("offset %d, length %d: %s", m.Off, m.Len, m.Reason)
}

// verifier checks and stamps blocks for one clone.
type verifier struct {
	kind    VerifyKind
	pattern []byte // verify=pattern: the pattern repeated over the largest block
	rnd     uint64
	// written[i] is the length of the last verified write starting at
	// block i (region-relative, in units of align); 0: none.
	written    []uint32
	align      int64
	regionOff  int64
	checked    uint64
	mismatches uint64
	first      []Mismatch
}

func newVerifier(j *Job, maxBS int, regionOff, regionLen, align int64, track bool) *verifier {
	v := &verifier{kind: j.Verify, rnd: j.RandSeed | 1, align: align, regionOff: regionOff}
	if j.Verify == VerifyPattern {
		v.pattern = make([]byte, maxBS)
		for i := 0; i < maxBS; i += len(j.VerifyPattern) {
			copy(v.pattern[i:], j.VerifyPattern)
		}
	}
	if track {
		v.written = make([]uint32, regionLen/align+1)
	}
	return v
}

// stamp prepares buf (a write of len(buf) bytes at off) for verification
// and records it.
func (v *verifier) stamp(buf []byte, off int64) {
	if v.kind == VerifyPattern {
		copy(buf, v.pattern)
	} else {
		binary.LittleEndian.PutUint32(buf[0:], verifyMagic)
		binary.LittleEndian.PutUint32(buf[4:], uint32(len(buf)))
		binary.LittleEndian.PutUint64(buf[8:], uint64(off))
		binary.LittleEndian.PutUint32(buf[16:], uint32(v.kind))
		p := buf[verifyHeaderSize:]
		x := v.rnd
		i := 0
		for ; i+8 <= len(p); i += 8 {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			binary.LittleEndian.PutUint64(p[i:], x)
		}
		for ; i < len(p); i++ {
			p[i] = byte(x >> (8 * (i & 7)))
		}
		v.rnd = x
		clear(buf[20:verifyHeaderSize])
		if v.kind == VerifyCRC32C {
			binary.LittleEndian.PutUint32(buf[20:], crc32.Checksum(p, castagnoli))
		} else {
			sum := md5.Sum(p)
			copy(buf[24:40], sum[:])
		}
	}
	if v.written != nil {
		v.written[(off-v.regionOff)/v.align] = uint32(len(buf))
	}
}

// check verifies a block read at off. It returns false on a mismatch
// (recorded).
func (v *verifier) check(buf []byte, off int64) bool {
	v.checked++
	if v.kind == VerifyPattern {
		if bytes.Equal(buf, v.pattern[:len(buf)]) {
			return true
		}
		i := 0
		for i < len(buf) && buf[i] == v.pattern[i] {
			i++
		}
		v.fail(off, len(buf), func() string {
			return fmt.Sprintf("pattern mismatch at byte %d (offset %d): want 0x%02x, got 0x%02x", i, off+int64(i), v.pattern[i], buf[i])
		})
		return false
	}
	if m := binary.LittleEndian.Uint32(buf[0:]); m != verifyMagic {
		v.fail(off, len(buf), func() string { return fmt.Sprintf("bad magic header 0x%08x, want 0x%08x", m, verifyMagic) })
		return false
	}
	if l := binary.LittleEndian.Uint32(buf[4:]); l != uint32(len(buf)) {
		v.fail(off, len(buf), func() string { return fmt.Sprintf("header length %d, want %d", l, len(buf)) })
		return false
	}
	if o := int64(binary.LittleEndian.Uint64(buf[8:])); o != off {
		v.fail(off, len(buf), func() string { return fmt.Sprintf("header offset %d, want %d (misplaced block)", o, off) })
		return false
	}
	p := buf[verifyHeaderSize:]
	switch VerifyKind(binary.LittleEndian.Uint32(buf[16:])) {
	case VerifyCRC32C:
		want := binary.LittleEndian.Uint32(buf[20:])
		if got := crc32.Checksum(p, castagnoli); got != want {
			v.fail(off, len(buf), func() string { return fmt.Sprintf("bad crc32c: want 0x%08x, got 0x%08x", want, got) })
			return false
		}
	case VerifyMD5:
		sum := md5.Sum(p)
		if !bytes.Equal(sum[:], buf[24:40]) {
			v.fail(off, len(buf), func() string { return fmt.Sprintf("bad md5: want %x, got %x", buf[24:40], sum) })
			return false
		}
	default:
		v.fail(off, len(buf), func() string {
			return fmt.Sprintf("unknown verify method %d in the header", binary.LittleEndian.Uint32(buf[16:]))
		})
		return false
	}
	return true
}

// fail records a mismatch; the message is built only for the first few.
func (v *verifier) fail(off int64, n int, reason func() string) {
	v.mismatches++
	if len(v.first) < maxMismatches {
		v.first = append(v.first, Mismatch{Off: off, Len: n, Reason: reason()})
	}
}

// nextWritten returns the next written block at or after block index i.
func (v *verifier) nextWritten(i int) (next int, off int64, n int, ok bool) {
	for ; i < len(v.written); i++ {
		if l := v.written[i]; l != 0 {
			return i + 1, v.regionOff + int64(i)*v.align, int(l), true
		}
	}
	return i, 0, 0, false
}
