// Package bitmap is the in-memory dirty bitmap (QEMU's BdrvDirtyBitmap
// over an HBitmap, flattened): one bit per granularity-sized chunk of a
// node, set by every write path of the node (block marks it when a write,
// write-zeroes or discard completes) and read by jobs and by checkpoints.
//
// Bits are atomic words, so any Context may mark while another iterates:
// marking a range that is already dirty only loads the word (no store, no
// cache-line transfer), and marking never allocates. Structural changes —
// creating, adding to a node, removing, renaming — belong to the main
// Context of the node's graph (block does them there). Resize, which
// follows the node's length, may run on any Context while others mark:
// the geometry is published atomically and no mark is lost (Resize).
package bitmap

import (
	"errors"
	"fmt"
	"math/bits"
	"sync/atomic"
)

// MinGranularity and MaxGranularity bound the granularity (QEMU's
// limits: 512 bytes to 2 GiB, a power of two).
const (
	MinGranularity = 512
	MaxGranularity = 1 << 31
	// DefaultGranularity is QEMU's default for images without a cluster
	// size to follow.
	DefaultGranularity = 64 << 10
)

// Bitmap is a dirty bitmap over size bytes. The struct is 128 bytes, so
// the allocator places it on a 128-byte boundary: what Mark reads sits
// alone in the first cache line, and the fields control paths write
// (name, busy) are in the second, where they cannot disturb the marking
// Contexts' copies of the first.
//
// The words and the size they cover are one immutable geometry behind an
// atomic pointer, so Resize can publish a new one while other Contexts
// mark (see Resize for why no mark is lost).
type Bitmap struct {
	// Read by every Mark; g is replaced only by Resize, enabled written
	// by SetEnabled.
	g       atomic.Pointer[geometry]
	shift   uint
	enabled atomic.Bool
	_       [64 - 8 - 8 - 4]byte

	name atomic.Pointer[string]
	gran int64
	// busy: in use by an operation (a backup's frozen bitmap, an export):
	// the user may not remove, clear, enable, disable or merge into it.
	busy atomic.Bool
	// Persistent: to be stored in the image (qcow2 bitmaps extension)
	// when the format supports it. Informational here.
	Persistent bool
	_          [64 - 8 - 8 - 4 - 1 - 3]byte
}

// geometry is the bits of a bitmap over size bytes: nbits chunks, whose
// bits live in words. Never changed once published (the words' bits
// are, atomically).
type geometry struct {
	words []atomic.Uint64
	nbits int64
	size  int64
}

func newGeometry(size int64, shift uint) *geometry {
	g := &geometry{size: size, nbits: (size + int64(1)<<shift - 1) >> shift}
	g.words = make([]atomic.Uint64, (g.nbits+63)/64)
	return g
}

// New returns an enabled, clean bitmap over size bytes.
func New(name string, size, granularity int64) (*Bitmap, error) {
	if granularity < MinGranularity || granularity > MaxGranularity || granularity&(granularity-1) != 0 {
		return nil, fmt.Errorf("bitmap %q: granularity %d is not a power of two between %d and %d",
			name, granularity, MinGranularity, int64(MaxGranularity))
	}
	if size < 0 {
		return nil, fmt.Errorf("bitmap %q: negative size %d", name, size)
	}
	b := &Bitmap{gran: granularity, shift: uint(bits.TrailingZeros64(uint64(granularity)))}
	b.g.Store(newGeometry(size, b.shift))
	b.name.Store(&name)
	b.enabled.Store(true)
	return b, nil
}

// Name, Granularity and Size describe the bitmap.
func (b *Bitmap) Name() string       { return *b.name.Load() }
func (b *Bitmap) Granularity() int64 { return b.gran }
func (b *Bitmap) Size() int64        { return b.g.Load().size }

// Rename changes the name (the owner checks uniqueness).
func (b *Bitmap) Rename(name string) { b.name.Store(&name) }

// Enabled reports whether writes are tracked.
func (b *Bitmap) Enabled() bool { return b.enabled.Load() }

// SetEnabled starts or stops tracking writes.
func (b *Bitmap) SetEnabled(on bool) { b.enabled.Store(on) }

// Busy reports whether an operation holds the bitmap.
func (b *Bitmap) Busy() bool { return b.busy.Load() }

// SetBusy marks the bitmap held (true) or released.
func (b *Bitmap) SetBusy(on bool) { b.busy.Store(on) }

// ErrBusy is returned for user changes to a bitmap an operation holds.
var ErrBusy = errors.New("bitmap is in use by an operation")

// Mark records a write of n bytes at off if the bitmap is enabled. It is
// the tracking hook of the write paths: no allocation, no lock. The fast
// path — a request whose chunks share one 64-chunk word, in range, already
// dirty — is a few instructions: shifts with constant-bounded counts (no
// shift-overflow fix-ups), one pointer load, one word load. Setting a
// clean bit is out of line (markWord), and so is a request that spans
// words or leaves the bitmap (markSlow).
func (b *Bitmap) Mark(off, n int64) {
	g := b.g.Load()
	sh := b.shift & 63
	first, last := off>>sh, (off+n-1)>>sh
	if off|(n-1) >= 0 && first^last < 64 && last < g.nbits {
		m := (uint64(2)<<((last-first)&63) - 1) << (first & 63)
		if g.words[first>>6].Load()&m != m {
			b.markWord(g, first>>6, m, off, n)
		}
		return
	}
	b.markSlow(off, n)
}

// markWord sets m in word w of g if the bitmap is enabled, then checks
// that g is still the published geometry: if Resize replaced it since
// the load, the range is marked again in the new one (Resize).
func (b *Bitmap) markWord(g *geometry, w int64, m uint64, off, n int64) {
	if !b.enabled.Load() {
		return
	}
	g.words[w].Or(m)
	if b.g.Load() != g {
		b.markSlow(off, n)
	}
}

// markSlow is Mark for requests that span words or leave the bitmap.
//
//go:noinline
func (b *Bitmap) markSlow(off, n int64) {
	if b.enabled.Load() {
		b.SetRange(off, n)
	}
}

// bitRange returns the chunk indices [first, last] covering [off, off+n)
// clipped to a bitmap over size bytes, and false if empty.
func (b *Bitmap) bitRange(size, off, n int64) (int64, int64, bool) {
	if n <= 0 || off >= size || off+n <= 0 {
		return 0, 0, false
	}
	if off < 0 {
		n += off
		off = 0
	}
	end := off + n
	if end > size || end < off {
		end = size
	}
	return off >> b.shift, (end - 1) >> b.shift, true
}

// SetRange marks [off, off+n) dirty, enabled or not. Like every setter it
// marks the geometry it loaded, then checks that no Resize replaced it
// meanwhile, and marks the new one if one did.
func (b *Bitmap) SetRange(off, n int64) {
	for g := b.g.Load(); ; {
		first, last, ok := b.bitRange(g.size, off, n)
		if !ok {
			return
		}
		for w := first >> 6; w <= last>>6; w++ {
			m := wordMask(w, first, last)
			word := &g.words[w]
			if word.Load()&m != m {
				word.Or(m)
			}
		}
		now := b.g.Load()
		if now == g {
			return
		}
		g = now
	}
}

// ResetRange marks the chunks wholly inside [off, off+n) clean; a chunk
// only partly covered stays as it is (QEMU's reset is chunk-aligned by the
// caller; a partial chunk may still hold data not covered).
func (b *Bitmap) ResetRange(off, n int64) {
	if n <= 0 {
		return
	}
	g := b.g.Load()
	start := (off + b.gran - 1) >> b.shift << b.shift
	end := off + n
	if end >= g.size {
		end = g.nbits << b.shift // the last, partial chunk counts as whole
	}
	end = end >> b.shift << b.shift
	if end <= start {
		return
	}
	first, last := start>>b.shift, (end>>b.shift)-1
	for w := first >> 6; w <= last>>6; w++ {
		m := wordMask(w, first, last)
		word := &g.words[w]
		if word.Load()&m != 0 {
			word.And(^m)
		}
	}
}

func wordMask(w, first, last int64) uint64 {
	lo, hi := int64(0), int64(63)
	if w == first>>6 {
		lo = first & 63
	}
	if w == last>>6 {
		hi = last & 63
	}
	return (^uint64(0) >> (63 - uint(hi-lo))) << uint(lo)
}

// Resize makes the bitmap cover size bytes (QEMU's
// bdrv_dirty_bitmap_truncate, run when the node's length changes). Bits
// of chunks that stay keep their state, including the partial last chunk
// of a shrink; chunks a growth adds are clean (QEMU zeroes them too: the
// truncate does not dirty the new area, a later write does). The caller
// serializes Resize calls (block: one per node at a time); marks may run
// concurrently on any Context, and none is lost:
//
// Resize publishes the new geometry first, then ORs every old word into
// it. Every setter (Mark, SetRange) sets its bits in the geometry it
// loaded and then loads the pointer again; if it changed, it marks the
// new geometry as well. Go's atomics are sequentially consistent, so a
// setter whose second load still saw the old geometry did its OR before
// the publication, which comes before the copy's load of that word: the
// copy carries the bit over. A setter whose second load saw the new
// geometry marks that itself. A setter that found its bits already set
// stores nothing: the setter that set them is covered by the same
// argument. A clear (ResetRange, Clear) racing the copy may be undone,
// leaving a chunk dirty that was clean: extra work for a job, never a
// missed write.
func (b *Bitmap) Resize(size int64) error {
	if size < 0 {
		return fmt.Errorf("bitmap %q: negative size %d", b.Name(), size)
	}
	old := b.g.Load()
	if size == old.size {
		return nil
	}
	g := newGeometry(size, b.shift)
	b.g.Store(g)
	n := min(len(g.words), len(old.words))
	for i := 0; i < n; i++ {
		v := old.words[i].Load()
		if i == len(g.words)-1 {
			v &= lastWordMask(g.nbits)
		}
		if v != 0 {
			g.words[i].Or(v)
		}
	}
	return nil
}

// lastWordMask is the mask of the valid bits of the last word of a
// bitmap of nbits chunks.
func lastWordMask(nbits int64) uint64 {
	if r := nbits & 63; r != 0 {
		return uint64(1)<<uint(r) - 1
	}
	return ^uint64(0)
}

// Clear marks everything clean.
func (b *Bitmap) Clear() {
	g := b.g.Load()
	for i := range g.words {
		g.words[i].Store(0)
	}
}

// Fill marks everything dirty (a full backup's "copy everything").
func (b *Bitmap) Fill() { b.SetRange(0, b.Size()) }

// Get reports whether the chunk holding off is dirty.
func (b *Bitmap) Get(off int64) bool { return b.g.Load().get(off, b.shift) }

func (g *geometry) get(off int64, shift uint) bool {
	if off < 0 || off >= g.size {
		return false
	}
	i := off >> shift
	return g.words[i>>6].Load()&(1<<uint(i&63)) != 0
}

// Count returns the number of dirty bytes as QEMU 7.2 counts them
// (hbitmap_count): dirty chunks times the granularity, a partial last
// chunk counted whole (qemu-storage-daemon reports 131072 for two dirty
// 64 KiB chunks of a 2 MiB + 512 node, one of them the last 512 bytes).
func (b *Bitmap) Count() int64 {
	g := b.g.Load()
	var n int64
	for i := range g.words {
		n += int64(bits.OnesCount64(g.words[i].Load()))
	}
	return n << b.shift
}

// IsEmpty reports whether no chunk is dirty.
func (b *Bitmap) IsEmpty() bool {
	g := b.g.Load()
	for i := range g.words {
		if g.words[i].Load() != 0 {
			return false
		}
	}
	return true
}

// NextDirty returns the start of the first dirty chunk at or after off
// (chunk-aligned, clipped to off), or -1.
func (b *Bitmap) NextDirty(off int64) int64 {
	g := b.g.Load()
	if off < 0 {
		off = 0
	}
	if off >= g.size {
		return -1
	}
	i := off >> b.shift
	for w := i >> 6; w < int64(len(g.words)); w++ {
		v := g.words[w].Load()
		if w == i>>6 {
			v &= ^uint64(0) << uint(i&63)
		}
		if v != 0 {
			bit := w<<6 + int64(bits.TrailingZeros64(v))
			if bit >= g.nbits {
				return -1
			}
			return max(bit<<b.shift, off)
		}
	}
	return -1
}

// NextClean returns the start of the first clean chunk at or after off,
// or the size if there is none.
func (b *Bitmap) NextClean(off int64) int64 {
	g := b.g.Load()
	if off < 0 {
		off = 0
	}
	if off >= g.size {
		return g.size
	}
	i := off >> b.shift
	for w := i >> 6; w < int64(len(g.words)); w++ {
		v := ^g.words[w].Load()
		if w == i>>6 {
			v &= ^uint64(0) << uint(i&63)
		}
		if v != 0 {
			bit := w<<6 + int64(bits.TrailingZeros64(v))
			if bit >= g.nbits {
				return g.size
			}
			return max(bit<<b.shift, off)
		}
	}
	return g.size
}

// NextExtent returns the first dirty extent at or after off, at most
// maxLen bytes long (maxLen <= 0: unbounded), clipped to the size; ok is
// false when nothing is dirty there.
func (b *Bitmap) NextExtent(off, maxLen int64) (start, length int64, ok bool) {
	start = b.NextDirty(off)
	if start < 0 {
		return 0, 0, false
	}
	end := b.NextClean(start)
	if maxLen > 0 && end-start > maxLen {
		end = start + maxLen
	}
	return start, end - start, true
}

// Extents calls fn for each maximal dirty extent in order; fn returning
// false stops the walk.
func (b *Bitmap) Extents(fn func(off, n int64) bool) {
	for off := int64(0); off < b.Size(); {
		s, n, ok := b.NextExtent(off, 0)
		if !ok || !fn(s, n) {
			return
		}
		off = s + n
	}
}

// Merge marks dirty in b everything dirty in src (QEMU's
// block-dirty-bitmap-merge). The sizes must match; granularities may
// differ (a src chunk marks every b chunk it touches).
func (b *Bitmap) Merge(src *Bitmap) error {
	g, sg := b.g.Load(), src.g.Load()
	if sg.size != g.size {
		return fmt.Errorf("bitmap %q: cannot merge %q: sizes %d and %d differ", b.Name(), src.Name(), g.size, sg.size)
	}
	if src.gran == b.gran {
		for i := range g.words {
			if v := sg.words[i].Load(); v != 0 {
				g.words[i].Or(v)
			}
		}
		if b.g.Load() != g { // resized meanwhile: mark the new geometry too
			src.Extents(func(off, n int64) bool { b.SetRange(off, n); return true })
		}
		return nil
	}
	src.Extents(func(off, n int64) bool { b.SetRange(off, n); return true })
	return nil
}

// Subtract marks clean in b every chunk dirty in src (same geometry).
func (b *Bitmap) Subtract(src *Bitmap) error {
	g, sg := b.g.Load(), src.g.Load()
	if sg.size != g.size || src.gran != b.gran {
		return fmt.Errorf("bitmap %q: cannot subtract %q: geometry differs", b.Name(), src.Name())
	}
	for i := range g.words {
		if v := sg.words[i].Load(); v != 0 {
			g.words[i].And(^v)
		}
	}
	return nil
}

// Copy returns a new bitmap with the same geometry and bits, enabled as
// given, named name.
func (b *Bitmap) Copy(name string, enabled bool) *Bitmap {
	g := b.g.Load()
	c, _ := New(name, g.size, b.gran)
	cg := c.g.Load()
	for i := range g.words {
		cg.words[i].Store(g.words[i].Load())
	}
	c.enabled.Store(enabled)
	c.Persistent = b.Persistent
	return c
}

// Equal reports whether b and o have the same geometry and bits.
func (b *Bitmap) Equal(o *Bitmap) bool {
	g, og := b.g.Load(), o.g.Load()
	if g.size != og.size || b.gran != o.gran {
		return false
	}
	for i := range g.words {
		if g.words[i].Load() != og.words[i].Load() {
			return false
		}
	}
	return true
}
