package bench

import (
	"bytes"
	"crypto/md5"
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"fmt"
	"hash"
	"hash/crc32"
	"hash/crc64"
)

// Verified blocks carry fio's verify header (fio 3.33, verify.h), so data
// written by fio verifies here and the reverse. Every verify interval
// (by default the smallest write block; the whole block when all blocks
// have one size) starts with, little-endian:
//
//	0  magic 0xacca (u16)   2  fio's verify type (u16)   4  chunk length (u32)
//	8  rand_seed (u64)      16 chunk offset in the file (u64)
//	24 time s (u32)         28 time ns (u32)             32 thread (u16)
//	34 write number (u16)   36 crc32c of bytes 0..35 (u32)
//	40 the method's checksum of the rest of the chunk:
//	   crc32c 4 bytes, crc64 8, md5 16, sha256 64 (fio 3.33's own
//	   64-byte value, see fioSHA256)
//
// rand_seed is what fio draws from its verify random state for each block
// (two taus88 outputs multiplied); ringblk draws the same sequence from the
// same seed (randseed, the clone's thread number). Like fio 3.33 on a job
// that only writes or only reads, a check does not compare it (fio copies
// the header's seed before its header check). fio's crc32c and crc64 are the raw
// register (crc32c: start ~0, no final inversion; crc64: polynomial
// 0x95AC9329AC4BC9B5 reflected, start 0). verify=pattern fills whole
// blocks with verify_pattern and compares them.
const (
	fioVerifyMagic     = 0xacca
	fioVerifyHdrSize   = 40
	fioVerifyHdrCRCOff = 36
	maxMismatches      = 10 // reported in detail; all are counted
)

// fio's verify type numbers.
const (
	fioVerifyMD5     = 2
	fioVerifyCRC64   = 3
	fioVerifyCRC32C  = 5
	fioVerifySHA256  = 9
	fioVerifyHdrOnly = 1 // verify=meta in fio 3.33
)

var (
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
	fioCRC64   = crc64.MakeTable(0x95AC9329AC4BC9B5)
)

// verifyHeaderSize is the size of the header of a verified chunk.
func verifyHeaderSize(k VerifyKind) int {
	switch k {
	case VerifyCRC32C:
		return fioVerifyHdrSize + 4
	case VerifyCRC64:
		return fioVerifyHdrSize + 8
	case VerifyMD5:
		return fioVerifyHdrSize + 16
	case VerifySHA256:
		return fioVerifyHdrSize + 64
	case VerifyMeta:
		return fioVerifyHdrSize
	}
	return 0
}

func fioVerifyType(k VerifyKind) uint16 {
	switch k {
	case VerifyCRC32C:
		return fioVerifyCRC32C
	case VerifyCRC64:
		return fioVerifyCRC64
	case VerifyMD5:
		return fioVerifyMD5
	case VerifySHA256:
		return fioVerifySHA256
	case VerifyMeta:
		return fioVerifyHdrOnly
	}
	return 0
}

func fioCRC32C(p []byte) uint32 { return ^crc32.Checksum(p, castagnoli) }

func fioCRC64Sum(p []byte) uint64 { return ^crc64.Update(^uint64(0), fioCRC64, p) }

// taus88 is fio's 32-bit Tausworthe generator (lib/rand.c).
type taus88 struct{ s1, s2, s3 uint32 }

func newTaus88(seed uint32) taus88 {
	fix := func(x, m uint32) uint32 {
		if x < m {
			return x + m
		}
		return x
	}
	var t taus88
	t.s1 = fix(53*69069^seed, 1) // fio's LCG((2^31)+(2^17)+(2^7)): ^ is xor there
	t.s2 = fix(t.s1*69069^seed, 7)
	t.s3 = fix(t.s2*69069^seed, 15)
	for range 6 {
		t.next()
	}
	return t
}

func (t *taus88) next() uint32 {
	t.s1 = ((t.s1 & 4294967294) << 12) ^ (((t.s1 << 13) ^ t.s1) >> 19)
	t.s2 = ((t.s2 & 4294967288) << 4) ^ (((t.s2 << 2) ^ t.s2) >> 25)
	t.s3 = ((t.s3 & 4294967280) << 17) ^ (((t.s3 << 3) ^ t.s3) >> 11)
	return t.s1 ^ t.s2 ^ t.s3
}

// fioVerifySeed is fio's seed of a job's verify random state: randseed
// spread by setup_random_seeds for thread number thread (1-based, the
// order of the clones in the job file), slot FIO_RAND_VER_OFF (3).
func fioVerifySeed(randSeed uint64, thread int) uint32 {
	s := randSeed
	for range 4 {
		s *= 0x9e370001
	}
	for range 3 {
		s *= 0x9e370001
	}
	return uint32(s*uint64(thread) + 3)
}

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
	kind     VerifyKind
	pattern  []byte // verify=pattern: the pattern repeated over the largest block
	hdrSize  int
	interval int // verify_interval: one header per interval of a block
	rnd      uint64
	state    taus88 // fio's verify_state
	thread   uint16
	numberio uint16
	sha      hash.Hash // verify=sha256, reused
	shaBuf   []byte
	shaTmp   [72]byte // the bit count (8) and a computed value (64)
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
	v := &verifier{kind: j.Verify, rnd: j.RandSeed | 1, align: align, regionOff: regionOff, hdrSize: verifyHeaderSize(j.Verify)}
	v.interval = verifyInterval(j)
	v.setThread(j, 1)
	if len(j.VerifyPattern) > 0 {
		// verify=pattern compares it whole; with a header (meta, the
		// checksums) the data after each header is the pattern.
		v.pattern = make([]byte, maxBS)
		for i := 0; i < maxBS; i += len(j.VerifyPattern) {
			copy(v.pattern[i:], j.VerifyPattern)
		}
	}
	if track {
		v.written = make([]uint32, regionLen/align+1)
	}
	if j.Verify == VerifySHA256 {
		v.sha = sha256.New()
		v.shaBuf = make([]byte, 0, 128)
	}
	return v
}

// verifyInterval is fio's default verify_interval: the smallest write
// block, or the gcd of the smallest and largest when one does not divide
// the other.
func verifyInterval(j *Job) int {
	if j.VerifyIntervalSet > 0 {
		return j.VerifyIntervalSet
	}
	d := DirWrite
	if !j.RW.Writes() {
		d = DirRead
	}
	lo, hi := j.MinBS(d), j.MaxBS(d)
	if lo <= 0 {
		return hi
	}
	if hi%lo == 0 {
		return lo
	}
	a, b := lo, hi
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// setThread seeds fio's verify state as fio does for the clone with
// thread number thread (1-based).
func (v *verifier) setThread(j *Job, thread int) {
	v.thread = uint16(thread)
	v.state = newTaus88(fioVerifySeed(j.RandSeed, thread))
}

// nextSeed is fio's rand_seed of the next block (fill_verify_pattern).
func (v *verifier) nextSeed() uint64 {
	a := uint64(v.state.next())
	return a * uint64(v.state.next())
}

// stamp prepares buf (a write of len(buf) bytes at off, issued at now)
// for verification and records it.
func (v *verifier) stamp(buf []byte, off int64, now int64) {
	seed := uint64(0)
	if v.kind == VerifyPattern {
		copy(buf, v.pattern)
	} else {
		if v.pattern != nil {
			// fio fills the block with the pattern (no random seed) and
			// writes each header over it.
			copy(buf, v.pattern)
		} else {
			seed = v.nextSeed()
			x := v.rnd
			i := 0
			for ; i+8 <= len(buf); i += 8 {
				x ^= x << 13
				x ^= x >> 7
				x ^= x << 17
				binary.LittleEndian.PutUint64(buf[i:], x)
			}
			for ; i < len(buf); i++ {
				buf[i] = byte(x >> (8 * (i & 7)))
			}
			v.rnd = x
		}
		for p := 0; p < len(buf); p += v.interval {
			c := buf[p:min(p+v.interval, len(buf))]
			h := c[:v.hdrSize]
			binary.LittleEndian.PutUint16(h[0:], fioVerifyMagic)
			binary.LittleEndian.PutUint16(h[2:], fioVerifyType(v.kind))
			binary.LittleEndian.PutUint32(h[4:], uint32(len(c)))
			binary.LittleEndian.PutUint64(h[8:], seed)
			binary.LittleEndian.PutUint64(h[16:], uint64(off)+uint64(p))
			binary.LittleEndian.PutUint32(h[24:], uint32(now/1e9))
			binary.LittleEndian.PutUint32(h[28:], uint32(now%1e9))
			binary.LittleEndian.PutUint16(h[32:], v.thread)
			binary.LittleEndian.PutUint16(h[34:], v.numberio)
			binary.LittleEndian.PutUint32(h[36:], fioCRC32C(h[:fioVerifyHdrCRCOff]))
			clear(h[fioVerifyHdrSize:])
			data := c[v.hdrSize:]
			s := h[fioVerifyHdrSize:]
			switch v.kind {
			case VerifyCRC32C:
				binary.LittleEndian.PutUint32(s, fioCRC32C(data))
			case VerifyCRC64:
				binary.LittleEndian.PutUint64(s, fioCRC64Sum(data))
			case VerifyMD5:
				sum := md5.Sum(data)
				copy(s, sum[:])
			case VerifySHA256:
				v.fioSHA256(s, data)
			}
		}
	}
	v.numberio++
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
	for p := 0; p < len(buf); p += v.interval {
		c := buf[p:min(p+v.interval, len(buf))]
		if !v.checkChunk(c, off+int64(p)) {
			return false
		}
		if v.kind == VerifyMeta && v.pattern != nil && !bytes.Equal(c[v.hdrSize:], v.pattern[p+v.hdrSize:p+len(c)]) {
			// meta with verify_pattern: fio compares the data after the
			// header with the pattern.
			i := v.hdrSize
			for i < len(c) && c[i] == v.pattern[p+i] {
				i++
			}
			v.fail(off+int64(p), len(c), func() string {
				return fmt.Sprintf("pattern mismatch at byte %d (offset %d): want 0x%02x, got 0x%02x", i, off+int64(p+i), v.pattern[p+i], c[i])
			})
			return false
		}
	}
	return true
}

// checkChunk checks one verify interval at off, in fio's order: magic,
// length, offset, header crc, then the checksum.
func (v *verifier) checkChunk(c []byte, off int64) bool {
	if len(c) < v.hdrSize {
		v.fail(off, len(c), func() string {
			return fmt.Sprintf("chunk of %d bytes is shorter than the %d-byte header", len(c), v.hdrSize)
		})
		return false
	}
	if m := binary.LittleEndian.Uint16(c[0:]); m != fioVerifyMagic {
		v.fail(off, len(c), func() string { return fmt.Sprintf("bad magic header %x, wanted %x", m, fioVerifyMagic) })
		return false
	}
	if l := binary.LittleEndian.Uint32(c[4:]); l != uint32(len(c)) {
		v.fail(off, len(c), func() string { return fmt.Sprintf("bad header length %d, wanted %d", l, len(c)) })
		return false
	}
	if o := int64(binary.LittleEndian.Uint64(c[16:])); o != off {
		v.fail(off, len(c), func() string { return fmt.Sprintf("bad header offset %d, wanted %d (misplaced block)", o, off) })
		return false
	}
	if want, got := binary.LittleEndian.Uint32(c[36:]), fioCRC32C(c[:fioVerifyHdrCRCOff]); want != got {
		v.fail(off, len(c), func() string { return fmt.Sprintf("bad header crc %x, calculated %x", want, got) })
		return false
	}
	data, s := c[v.hdrSize:], c[fioVerifyHdrSize:v.hdrSize]
	switch v.kind {
	case VerifyCRC32C:
		if want, got := binary.LittleEndian.Uint32(s), fioCRC32C(data); want != got {
			v.fail(off, len(c), func() string { return fmt.Sprintf("bad crc32c: wanted %x, got %x", want, got) })
			return false
		}
	case VerifyCRC64:
		if want, got := binary.LittleEndian.Uint64(s), fioCRC64Sum(data); want != got {
			v.fail(off, len(c), func() string { return fmt.Sprintf("bad crc64: wanted %x, got %x", want, got) })
			return false
		}
	case VerifyMD5:
		if sum := md5.Sum(data); !bytes.Equal(sum[:], s[:16]) {
			v.fail(off, len(c), func() string { return fmt.Sprintf("bad md5: wanted %x, got %x", s[:16], sum) })
			return false
		}
	case VerifySHA256:
		sum := v.shaTmp[8:]
		v.fioSHA256(sum, data)
		if !bytes.Equal(sum, s) {
			v.fail(off, len(c), func() string { return fmt.Sprintf("bad sha256: wanted %x, got %x", s, sum) })
			return false
		}
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

// verified drops a block read back early (verify_backlog) from the final
// verify pass, unless it was written again with another length.
func (v *verifier) verified(off int64, n int) {
	if v.written == nil {
		return
	}
	if i := (off - v.regionOff) / v.align; v.written[i] == uint32(n) {
		v.written[i] = 0
	}
}

// unwritten forgets the write recorded at off (it failed).
func (v *verifier) unwritten(off int64) {
	if v.written != nil {
		v.written[(off-v.regionOff)/v.align] = 0
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

var shaPad [64]byte = [64]byte{0x80}

// fioSHA256 puts in out (64 bytes) what fio 3.33's sha256 leaves in its
// digest buffer, which is what its header stores and compares: the SHA-256
// compression of data padded with the bit count little-endian (not the
// standard big-endian), the low byte of each of the 8 state words, then
// bytes 8..63 of the last 64-byte block it processed (the tail of the
// data, 0x80 and zeros, the bit count).
func (v *verifier) fioSHA256(out []byte, data []byte) {
	n := len(data)
	r := n % 64
	padLen := 56 - r
	if r >= 56 {
		padLen = 120 - r
	}
	bits := v.shaTmp[:8]
	binary.LittleEndian.PutUint64(bits, uint64(uint32(n))<<3)
	v.sha.Reset()
	v.sha.Write(data)
	v.sha.Write(shaPad[:padLen])
	v.sha.Write(bits)
	v.shaBuf, _ = v.sha.(encoding.BinaryAppender).AppendBinary(v.shaBuf[:0])
	st := v.shaBuf[4:36] // after the "sha\x03" magic: 8 big-endian words
	if r < 56 {
		copy(out, data[n-r:])
		out[r] = 0x80
		clear(out[r+1 : 56])
	} else {
		clear(out[:56])
	}
	copy(out[56:], bits)
	for i := range 8 {
		out[i] = st[4*i+3]
	}
}
