package aio

import (
	"github.com/ringblk/ringblk/internal/invariants"
	"github.com/ringblk/ringblk/uring"
)

// noSlot ends the intrusive slot lists.
const noSlot = ^uint32(0)

// slotChunk is how many slots are added at a time (fewer when the cap is
// smaller); chunks never move, so a *slot stays valid while the table grows.
const slotChunk = 256

// genMask keeps generations below bit 31, so user_data never has bit 63
// (uring.ReservedUserData) set.
const genMask = 1<<31 - 1

// userData packs a slot index and its generation. It is never a Go pointer:
// the garbage collector cannot see pointers held by the kernel.
func userData(idx, gen uint32) uint64 { return uint64(gen)<<32 | uint64(idx) }

// slotState is the life of one op slot:
//
//	free ──alloc──▶ (filled) ──enqueue──▶ submitted ──CQE──▶ ready ──Done──▶ free
//	                    │                     ▲   │
//	                    └──SQ full──▶ overflow┘   └─short/EAGAIN─▶ submitted (or overflow)
//
// INVARIANT: a submitted slot has exactly one CQE to come (or is cancelled
// and gets exactly one CQE); its generation changes only on release, so a
// CQE naming an old generation is stale and ignored.
type slotState uint8

const (
	slotFree slotState = iota
	slotOverflow
	slotSubmitted
	slotReady
)

// slot is one op in flight. The owner (or the token holder) is the only
// writer. buf, bufs and file keep what the kernel touches referenced until
// the CQE; iov is the slot's own iovec array, reused across ops (it grows
// amortised, so steady state allocates nothing).
type slot struct {
	gen       uint32
	state     slotState
	op        opKind
	cancelled bool   // shutdown sent ASYNC_CANCEL for it
	fixed     bool   // fd is a registered-file slot (IOSQE_FIXED_FILE)
	retries   uint16 // EAGAIN/EINTR resubmissions
	next      uint32 // overflow or ready queue link
	fd        int32
	flags     uint32 // datasync, fallocate mode, poll events
	errno     int32  // final error, 0 on success
	res       int    // final result given to Done
	tag       uint64
	target    uint64 // user_data an opCancel targets
	off       int64
	length    int64 // bytes to transfer (fallocate: range length)
	nbytes    int64 // bytes transferred so far
	done      Done
	file      *File
	h         *FDHandler
	buf       []byte
	bufs      [][]byte
	iov       []uring.Iovec
}

// remainderIov rebuilds s.iov as bufs minus the first nbytes bytes.
func (s *slot) remainderIov() []uring.Iovec {
	s.iov = s.iov[:0]
	skip := s.nbytes
	for _, b := range s.bufs {
		if skip >= int64(len(b)) {
			skip -= int64(len(b))
			continue
		}
		b = b[skip:]
		skip = 0
		if len(b) > maxChunk {
			b = b[:maxChunk]
		}
		s.iov = append(s.iov, uring.Iovec{Base: &b[0], Len: uint64(len(b))})
	}
	return s.iov
}

// zeroTail zero-fills the part of a read not yet transferred (EOF) and marks
// it transferred.
func (s *slot) zeroTail() {
	if s.bufs == nil {
		clear(s.buf[s.nbytes:])
	} else {
		skip := s.nbytes
		for _, b := range s.bufs {
			if skip >= int64(len(b)) {
				skip -= int64(len(b))
				continue
			}
			clear(b[skip:])
			skip = 0
		}
	}
	s.nbytes = s.length
}

// opTable is the Context's table of op slots, a free list of indices and
// two intrusive FIFOs (overflow and ready) linked through slot.next. It
// grows a chunk at a time up to max (Options.MaxSlots), the bound callers
// keep to by admitting work while Free reports room (block's front end
// parks requests otherwise). An op started with the table at its cap still
// gets a slot — an op is never refused — and is counted in overCap.
type opTable struct {
	chunks   [][]slot
	free     []uint32 // stack of free indices
	n        uint32   // slots in the table
	max      uint32   // the cap, a multiple of the chunk size
	shift    uint32   // log2 of the chunk size
	user     int      // user ops allocated and not yet completed
	inKernel int      // slots in state submitted (SQ or kernel)
	grown    int64    // chunks added after init
	overCap  int64    // allocations that found the table full at its cap

	ovHead, ovTail uint32
	ovLen          int
	rdHead, rdTail uint32
}

// init sizes the table: n slots now, max at most (both rounded up to the
// chunk size, which is slotChunk or the power of two at or above a smaller
// max).
func (t *opTable) init(n, max int) {
	t.ovHead, t.ovTail, t.rdHead, t.rdTail = noSlot, noSlot, noSlot, noSlot
	t.shift = 0
	for 1<<t.shift < slotChunk && 1<<t.shift < max {
		t.shift++
	}
	chunk := 1 << t.shift
	t.max = uint32((max + chunk - 1) / chunk * chunk)
	for int(t.n) < n {
		t.grow()
	}
	// Hand out the lowest indices first (grow stacked later chunks on top).
	t.free = t.free[:0]
	for i := int(t.n) - 1; i >= 0; i-- {
		t.free = append(t.free, uint32(i))
	}
}

func (t *opTable) grow() {
	base := t.n
	chunk := uint32(1) << t.shift
	t.chunks = append(t.chunks, make([]slot, chunk))
	t.n += chunk
	ch := t.chunks[len(t.chunks)-1]
	for i := range ch {
		ch[i].gen = 1
		ch[i].next = noSlot
	}
	for i := int(chunk) - 1; i >= 0; i-- {
		t.free = append(t.free, base+uint32(i))
	}
}

func (t *opTable) slot(idx uint32) *slot {
	return &t.chunks[idx>>t.shift][idx&(1<<t.shift-1)]
}

// inUse is the number of allocated slots.
func (t *opTable) inUse() int { return int(t.n) - len(t.free) }

// alloc takes a free slot, growing the table by one chunk when none is left
// (past the cap only when a caller ignored Free: counted, never refused).
func (t *opTable) alloc() uint32 {
	if len(t.free) == 0 {
		if t.n >= t.max {
			t.overCap++
		}
		t.grow()
		t.grown++
	}
	idx := t.free[len(t.free)-1]
	t.free = t.free[:len(t.free)-1]
	if t.slot(idx).state != slotFree {
		invariants.Failf("aio: allocated busy slot %d", idx)
	}
	return idx
}

// release returns a slot to the free list, bumping its generation and
// dropping every reference it held.
func (t *opTable) release(idx uint32) {
	s := t.slot(idx)
	gen := (s.gen + 1) & genMask
	if gen == 0 {
		gen = 1
	}
	iov := s.iov[:0]
	*s = slot{gen: gen, iov: iov, next: noSlot}
	t.free = append(t.free, idx)
}

func (t *opTable) pushOverflow(idx uint32) {
	t.slot(idx).next = noSlot
	if t.ovTail == noSlot {
		t.ovHead = idx
	} else {
		t.slot(t.ovTail).next = idx
	}
	t.ovTail = idx
	t.ovLen++
}

func (t *opTable) popOverflow() uint32 {
	idx := t.ovHead
	s := t.slot(idx)
	t.ovHead = s.next
	if t.ovHead == noSlot {
		t.ovTail = noSlot
	}
	t.ovLen--
	return idx
}

func (t *opTable) pushReady(idx uint32) {
	s := t.slot(idx)
	s.state = slotReady
	s.next = noSlot
	if t.rdTail == noSlot {
		t.rdHead = idx
	} else {
		t.slot(t.rdTail).next = idx
	}
	t.rdTail = idx
}

func (t *opTable) popReady() uint32 {
	idx := t.rdHead
	t.rdHead = t.slot(idx).next
	if t.rdHead == noSlot {
		t.rdTail = noSlot
	}
	return idx
}
