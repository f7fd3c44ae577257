package aio

import (
	"math/bits"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/internal/invariants"
	"github.com/ringblk/ringblk/uring"
)

// arenaPage is the allocation granule and alignment of the arena: every
// block starts on a 4096-byte boundary, which satisfies O_DIRECT on any
// logical block size up to 4 KiB.
const (
	arenaPageShift = 12
	arenaPage      = 1 << arenaPageShift
)

// An Arena is a Context's buffer memory: one mmap'd region outside the Go
// heap, registered with the ring as fixed buffer 0, so reads and writes into
// it go out as READ_FIXED/WRITE_FIXED (no per-op page pinning). Blocks are
// powers of two of 4 KiB pages, 4096-aligned, handed out by a buddy
// allocator whose free lists live in preallocated index arrays: Alloc and
// Free never allocate. Owner only. The memory is unmapped when the Context
// stops: no buffer from it may be used afterwards.
type Arena struct {
	c        *Context
	mem      []byte
	base     uintptr
	maxOrder int  // the arena is 2^maxOrder pages
	fixed    bool // registered as fixed buffer 0
	regErr   error
	used     int // bytes in allocated blocks

	// Per page: freeOrder is the order of the free block that starts here
	// (-1: none), allocOrder the order of the allocated block that starts
	// here (-1: none). next/prev link free blocks of one order.
	freeOrder  []int8
	allocOrder []int8
	next, prev []int32
	freeHead   []int32 // per order, -1 when empty
}

func newArena(c *Context, size int) (*Arena, error) {
	pages := (size + arenaPage - 1) >> arenaPageShift
	maxOrder := bits.Len(uint(pages - 1))
	pages = 1 << maxOrder
	mem, err := unix.Mmap(-1, 0, pages<<arenaPageShift, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, &OpError{Op: "arena mmap", Off: -1, Err: err}
	}
	a := &Arena{
		c:          c,
		mem:        mem,
		maxOrder:   maxOrder,
		freeOrder:  make([]int8, pages),
		allocOrder: make([]int8, pages),
		next:       make([]int32, pages),
		prev:       make([]int32, pages),
		freeHead:   make([]int32, maxOrder+1),
	}
	// SAFETY: mem is an mmap'd region that stays mapped until unmap; its
	// address is used only for range checks and page arithmetic.
	a.base = uintptr(unsafe.Pointer(&mem[0]))
	for i := range a.freeOrder {
		a.freeOrder[i], a.allocOrder[i] = -1, -1
	}
	for i := range a.freeHead {
		a.freeHead[i] = -1
	}
	a.pushFree(0, maxOrder)
	return a, nil
}

// register offers the arena to the ring as fixed buffer 0. A ring that
// refuses (a fake without support, RLIMIT_MEMLOCK) leaves the arena usable
// for aligned I/O through the ordinary opcodes.
func (a *Arena) register(q uring.Queue) {
	a.regErr = q.RegisterBuffers([][]byte{a.mem})
	a.fixed = a.regErr == nil
}

func (a *Arena) unmap() {
	if a.mem != nil {
		unix.Munmap(a.mem)
		a.mem = nil
	}
}

// Arena returns c's buffer arena, or nil when Options.ArenaSize < 0.
func (c *Context) Arena() *Arena { return c.arena }

// Size returns the arena's size in bytes.
func (a *Arena) Size() int { return len(a.mem) }

// Used returns the bytes in allocated blocks (sizes rounded up to blocks).
func (a *Arena) Used() int { return a.used }

// Fixed reports whether the arena is registered with the ring (ops on its
// buffers use READ_FIXED/WRITE_FIXED); if not, RegisterErr says why.
func (a *Arena) Fixed() bool { return a.fixed }

// RegisterErr returns why registration failed, or nil.
func (a *Arena) RegisterErr() error { return a.regErr }

// Contains reports whether b lies entirely inside the arena.
func (a *Arena) Contains(b []byte) bool { return a.contains(b) }

func (a *Arena) contains(b []byte) bool {
	if len(b) == 0 || a.mem == nil {
		return false
	}
	// SAFETY: the address is only compared, never dereferenced.
	p := uintptr(unsafe.Pointer(&b[0]))
	return p >= a.base && p+uintptr(len(b)) <= a.base+uintptr(len(a.mem))
}

// Alloc returns a zero-length-capped block of size bytes, 4096-aligned, from
// the arena (its contents are whatever the last user left). Owner only. It
// returns ErrArenaFull when no block is free; it never allocates.
func (a *Arena) Alloc(size int) ([]byte, error) {
	a.c.assertOwner("Arena.Alloc")
	if size <= 0 || size > len(a.mem) {
		if size <= 0 {
			invariants.Failf("aio: Arena.Alloc of a non-positive size %d", size)
		}
		return nil, ErrArenaFull
	}
	order := bits.Len(uint((size+arenaPage-1)>>arenaPageShift) - 1)
	j := order
	for j <= a.maxOrder && a.freeHead[j] < 0 {
		j++
	}
	if j > a.maxOrder {
		return nil, ErrArenaFull
	}
	p := a.freeHead[j]
	a.unlinkFree(p, j)
	for j > order { // split, keeping the lower half
		j--
		a.pushFree(p+1<<j, j)
	}
	a.allocOrder[p] = int8(order)
	a.used += arenaPage << order
	off := int(p) << arenaPageShift
	return a.mem[off : off+size : off+size], nil
}

// Free returns a block from Alloc (the slice Alloc returned, or any
// re-slice that starts at the same byte). Owner only.
func (a *Arena) Free(b []byte) {
	a.c.assertOwner("Arena.Free")
	if !a.contains(b[:1]) {
		invariants.Failf("aio: Arena.Free of memory outside the arena")
	}
	// SAFETY: as in contains: address arithmetic only.
	off := uintptr(unsafe.Pointer(&b[0])) - a.base
	if off%arenaPage != 0 {
		invariants.Failf("aio: Arena.Free of a pointer inside a block (offset %d)", off)
	}
	p := int32(off >> arenaPageShift)
	order := int(a.allocOrder[p])
	if order < 0 {
		invariants.Failf("aio: Arena.Free of a block that is not allocated (page %d)", p)
	}
	a.allocOrder[p] = -1
	a.used -= arenaPage << order
	if invariants.Enabled {
		clear(a.mem[int(p)<<arenaPageShift : (int(p)+1<<order)<<arenaPageShift]) // mangle freed memory
	}
	for order < a.maxOrder {
		buddy := p ^ 1<<order
		if int(a.freeOrder[buddy]) != order {
			break
		}
		a.unlinkFree(buddy, order)
		p = min(p, buddy)
		order++
	}
	a.pushFree(p, order)
}

func (a *Arena) pushFree(p int32, order int) {
	a.freeOrder[p] = int8(order)
	a.prev[p] = -1
	a.next[p] = a.freeHead[order]
	if h := a.freeHead[order]; h >= 0 {
		a.prev[h] = p
	}
	a.freeHead[order] = p
}

func (a *Arena) unlinkFree(p int32, order int) {
	a.freeOrder[p] = -1
	if a.prev[p] >= 0 {
		a.next[a.prev[p]] = a.next[p]
	} else {
		a.freeHead[order] = a.next[p]
	}
	if a.next[p] >= 0 {
		a.prev[a.next[p]] = a.prev[p]
	}
}
