package cache

import (
	"math/bits"
	"sync/atomic"
)

// ImageID names one open image in a cache shared by many images. IDs come
// from NewImageID and are never reused within a process, so an entry left
// behind by a closed image can never be mistaken for a table of a later one.
type ImageID uint32

// Kind is a caller-defined label that separates kinds of table (for qcow2:
// L2 tables and refcount blocks). The cache gives it no meaning.
type Kind uint8

// Key identifies one table: the image it belongs to, its kind and its byte
// offset in the image file.
type Key struct {
	Image ImageID
	Kind  Kind
	Off   int64
}

var lastImageID atomic.Uint32

// NewImageID returns an ID that no earlier call in this process returned.
// It panics after 2^32-1 IDs rather than wrap onto a live image.
func NewImageID() ImageID {
	id := lastImageID.Add(1)
	if id == 0 {
		panic("cache: image IDs exhausted")
	}
	return ImageID(id)
}

// rawKey folds k into 64 bits without mixing: the offset in the low bits and
// the bit-reversed image and kind in the high bits. It is injective while the
// offset stays below 2^(64-n), where n is the bit length of Image<<8|Kind
// (for example below 1 TiB with 65,535 images). Past that, two keys can share
// a raw key; every tier-2 value carries its full Key and is checked on a hit,
// so a collision costs a miss, never a wrong table.
func (k Key) rawKey() uint64 {
	return uint64(k.Off) ^ bits.Reverse64(uint64(k.Image)<<8|uint64(k.Kind))
}

// mix64 is the splitmix64 finalizer: a bijection on uint64 in which every
// input bit affects every output bit.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

const (
	golden   = 0x9e3779b97f4a7c15 // splitmix64's increment
	seedHash = golden
	seedConf = 0x3c6ef372fe94f82a // 2*golden mod 2^64: the next splitmix64 state
)

// mixKeyToHash is ristretto's KeyToHash for raw keys: two splitmix64 streams
// of the same raw key. The first picks the shard, the count-min counters and
// the Bloom bits; the second is the conflict hash. Ristretto's default for
// integer keys is the identity with conflict 0, which puts table offsets
// (multiples of the table size) into one shard and few counters (qcow2.md
// §4.2: worse hit ratio than a plain LRU).
func mixKeyToHash(raw uint64) (uint64, uint64) {
	return mix64(raw + seedHash), mix64(raw + seedConf)
}
