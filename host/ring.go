package host

import "sync/atomic"

// cacheLine pads shared atomics onto cache lines of their own.
const cacheLine = 64

// idxRing is a bounded multi-producer multi-consumer queue of slot indices
// (Dmitry Vyukov's array queue): one sequence number per cell, a padded
// enqueue and dequeue position. push and pop never allocate, lock or block.
// A queue's slot indices are each in at most one ring at a time and every
// ring holds all of them, so push never finds a ring full.
type idxRing struct {
	_    [cacheLine]byte
	enq  atomic.Uint64
	_    [cacheLine - 8]byte
	deq  atomic.Uint64
	_    [cacheLine - 8]byte
	mask uint64
	cell []ringCell
}

type ringCell struct {
	seq atomic.Uint64
	val uint32
}

func newIdxRing(capacity int) *idxRing {
	n := 1
	for n < capacity {
		n <<= 1
	}
	r := &idxRing{mask: uint64(n - 1), cell: make([]ringCell, n)}
	for i := range r.cell {
		r.cell[i].seq.Store(uint64(i))
	}
	return r
}

// push appends v; false when the ring is full.
func (r *idxRing) push(v uint32) bool {
	pos := r.enq.Load()
	for {
		c := &r.cell[pos&r.mask]
		seq := c.seq.Load()
		switch d := int64(seq) - int64(pos); {
		case d == 0:
			if r.enq.CompareAndSwap(pos, pos+1) {
				c.val = v
				c.seq.Store(pos + 1)
				return true
			}
			pos = r.enq.Load()
		case d < 0:
			return false
		default:
			pos = r.enq.Load()
		}
	}
}

// pop takes the oldest value; false when the ring is empty.
func (r *idxRing) pop() (uint32, bool) {
	pos := r.deq.Load()
	for {
		c := &r.cell[pos&r.mask]
		seq := c.seq.Load()
		switch d := int64(seq) - int64(pos+1); {
		case d == 0:
			if r.deq.CompareAndSwap(pos, pos+1) {
				v := c.val
				c.seq.Store(pos + r.mask + 1)
				return v, true
			}
			pos = r.deq.Load()
		case d < 0:
			return 0, false
		default:
			pos = r.deq.Load()
		}
	}
}

// ready reports whether pop would find a value now.
func (r *idxRing) ready() bool {
	pos := r.deq.Load()
	return int64(r.cell[pos&r.mask].seq.Load())-int64(pos+1) >= 0
}
