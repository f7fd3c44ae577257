package bitmap

import "encoding/binary"

// Serialized form (the qcow2 bitmaps extension's data clusters): bit i of
// the bitmap is bit i%8 (least significant first) of byte i/8. A part of
// the bitmap is addressed by its first bit, which must be a multiple of
// 64; bits past the end of the bitmap read as 0 and are ignored on load.

// SerializePart writes the bits from firstBit on into dst (len(dst)*8
// bits) and reports whether any of them is set. firstBit must be a
// multiple of 64.
func (b *Bitmap) SerializePart(dst []byte, firstBit int64) (any bool) {
	g := b.g.Load()
	w := firstBit >> 6
	for i := 0; i < len(dst); i += 8 {
		var v uint64
		if w >= 0 && w < int64(len(g.words)) {
			v = g.words[w].Load()
		}
		var tmp [8]byte
		binary.LittleEndian.PutUint64(tmp[:], v)
		copy(dst[i:], tmp[:])
		any = any || v != 0
		w++
	}
	return any
}

// DeserializePart ORs the bits of src (len(src)*8 bits) into the bitmap
// from firstBit on (a multiple of 64); bits past the end are dropped.
func (b *Bitmap) DeserializePart(src []byte, firstBit int64) {
	g := b.g.Load()
	w := firstBit >> 6
	for i := 0; i < len(src) && w < int64(len(g.words)); i += 8 {
		var tmp [8]byte
		copy(tmp[:], src[i:])
		v := binary.LittleEndian.Uint64(tmp[:])
		if w == int64(len(g.words))-1 {
			v &= lastWordMask(g.nbits)
		}
		if w >= 0 && v != 0 {
			g.words[w].Or(v)
		}
		w++
	}
}

// SetBits sets n bits from bit first on (clipped to the bitmap).
func (b *Bitmap) SetBits(first, n int64) {
	nbits := b.Bits()
	if first < 0 || n <= 0 || first >= nbits {
		return
	}
	b.SetRange(first<<b.shift, min(n, nbits-first)<<b.shift)
}

// Bits is the number of bits (granules) of the bitmap.
func (b *Bitmap) Bits() int64 { return b.g.Load().nbits }
