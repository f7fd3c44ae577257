package uringtest

import (
	"fmt"
	"math"
	"syscall"

	"github.com/ringblk/ringblk/uring"
)

// OpSet is a set of opcodes: bit i stands for opcode i. The zero OpSet
// matches every opcode.
type OpSet uint64

// Ops returns the set of the given opcodes.
func Ops(opcodes ...uint8) OpSet {
	var s OpSet
	for _, op := range opcodes {
		if op >= 64 {
			panic(fmt.Sprintf("uringtest: opcode %d does not fit an OpSet", op))
		}
		s |= 1 << op
	}
	return s
}

// Opcode groups for rules that should hit every flavour of a transfer.
var (
	ReadOps  = Ops(uring.IORING_OP_READ, uring.IORING_OP_READV, uring.IORING_OP_READ_FIXED)
	WriteOps = Ops(uring.IORING_OP_WRITE, uring.IORING_OP_WRITEV, uring.IORING_OP_WRITE_FIXED)
)

// Has reports whether op is in the set (always true for the zero set).
func (s OpSet) Has(op uint8) bool {
	return s == 0 || (op < 64 && s&(1<<op) != 0)
}

// Special values for Fault.Short.
const (
	// ShortZero makes a read or write transfer nothing and complete with 0:
	// for a read that is what end of file looks like.
	ShortZero = -1
	// ShortRandom transfers a seeded random count in [1, len-1] bytes (no
	// effect on transfers shorter than 2 bytes).
	ShortRandom = -2
)

// Fault is one fault-injection rule. The matching fields select operations
// at submission time; a rule that fires stamps its effects on the operation,
// which take hold when the operation completes. Rules are checked in the
// order they were injected; every matching rule counts the match, and the
// first rule that fires decides the effects.
type Fault struct {
	// Ops selects opcodes; zero selects all. Example:
	// uringtest.Ops(uring.IORING_OP_READ) or uringtest.ReadOps.
	Ops OpSet
	// Fd selects operations on this fd (after registered-file lookup, so
	// a fake MemFile fd or a real fd). Zero selects any fd.
	Fd int32
	// Off and Len select operations whose byte range overlaps
	// [Off, Off+Len); Len 0 means [Off, ∞), so the zero values select any
	// offset. Operations without a byte range (NOP, POLL_ADD, TIMEOUT, …)
	// match only rules that leave both zero.
	Off, Len uint64
	// Nth fires the rule on the Nth matching operation (1-based) and the
	// Count-1 matches after it. Nth 0 fires on every match, at most Count
	// times when Count > 0.
	Nth   int
	Count int
	// Prob fires each eligible match with this probability, drawn from the
	// ring's seeded generator. Zero means always.
	Prob float64

	// Errno completes the operation with -Errno without performing it (no
	// data moves) and without waiting for its fd or timer.
	Errno syscall.Errno
	// Short caps a read's or write's transfer at Short bytes (a short read
	// reads only that prefix; a short write writes only that prefix). See
	// ShortZero and ShortRandom. Zero means no cap.
	Short int
	// Delay adds ticks before the operation may complete.
	Delay int
	// Hold keeps the operation from completing until Ring.Release.
	Hold bool
}

// Rule is an injected Fault with its counters.
type Rule struct {
	fault   Fault
	matched int
	fired   int
}

// Fault returns the rule's definition.
func (r *Rule) Fault() Fault { return r.fault }

// Matched returns how many submitted operations matched the rule.
func (r *Rule) Matched() int { return r.matched }

// Fired returns how many times the rule fired.
func (r *Rule) Fired() int { return r.fired }

func (f *Fault) validate() {
	switch {
	case f.Nth < 0, f.Count < 0, f.Delay < 0:
		panic("uringtest: Fault.Nth, Count and Delay must not be negative")
	case f.Prob < 0 || f.Prob > 1 || math.IsNaN(f.Prob):
		panic("uringtest: Fault.Prob must lie in [0, 1]")
	case f.Short < ShortRandom:
		panic("uringtest: Fault.Short must be >= 0, ShortZero or ShortRandom")
	case f.Errno == 0 && f.Short == 0 && f.Delay == 0 && !f.Hold:
		panic("uringtest: Fault has no effect (set Errno, Short, Delay or Hold)")
	}
}

// matches reports whether the rule selects o. lo and hi are o's byte range
// (ranged false when o has none).
func (f *Fault) matches(o *op, lo, hi uint64, ranged bool) bool {
	if !f.Ops.Has(o.sqe.Opcode) {
		return false
	}
	if f.Fd != 0 && f.Fd != o.fd {
		return false
	}
	if f.Off == 0 && f.Len == 0 {
		return true
	}
	if !ranged {
		return false
	}
	end := uint64(math.MaxUint64)
	if f.Len != 0 && f.Off <= math.MaxUint64-f.Len {
		end = f.Off + f.Len
	}
	return lo < end && hi > f.Off
}

// fire counts a match and reports whether the rule fires on it.
func (r *Rule) fire(ring *Ring) bool {
	r.matched++
	f := &r.fault
	if f.Nth > 0 {
		if r.matched < f.Nth || r.matched >= f.Nth+max(f.Count, 1) {
			return false
		}
	} else if f.Count > 0 && r.fired >= f.Count {
		return false
	}
	if f.Prob > 0 && ring.rng.Float64() >= f.Prob {
		return false
	}
	r.fired++
	return true
}

// byteRange returns the bytes an operation touches, for rule matching. A
// zero-length transfer counts as touching the byte at its offset.
func (o *op) byteRange() (lo, hi uint64, ranged bool) {
	switch o.sqe.Opcode {
	case uring.IORING_OP_READ, uring.IORING_OP_WRITE,
		uring.IORING_OP_READ_FIXED, uring.IORING_OP_WRITE_FIXED,
		uring.IORING_OP_READV, uring.IORING_OP_WRITEV:
		if o.sqe.Off == math.MaxUint64 { // current file position: unknown
			return 0, 0, false
		}
		return o.sqe.Off, satAdd(o.sqe.Off, max(o.total, 1)), true
	case uring.IORING_OP_FALLOCATE:
		return o.sqe.Off, satAdd(o.sqe.Off, max(o.sqe.Addr, 1)), true
	case uring.IORING_OP_FSYNC:
		if o.sqe.Len == 0 { // the whole file from Off
			return o.sqe.Off, math.MaxUint64, true
		}
		return o.sqe.Off, satAdd(o.sqe.Off, uint64(o.sqe.Len)), true
	}
	return 0, 0, false
}

func satAdd(a, b uint64) uint64 {
	if a > math.MaxUint64-b {
		return math.MaxUint64
	}
	return a + b
}

// applyFaults runs the rules over a freshly submitted operation and
// reports whether one fired.
func (r *Ring) applyFaults(o *op) bool {
	if len(r.rules) == 0 {
		return false
	}
	lo, hi, ranged := o.byteRange()
	var hit *Fault
	for _, rule := range r.rules {
		if !rule.fault.matches(o, lo, hi, ranged) {
			continue
		}
		if rule.fire(r) && hit == nil {
			hit = &rule.fault
		}
	}
	if hit == nil {
		return false
	}
	if hit.Errno != 0 {
		o.failRes = -int32(hit.Errno)
	}
	o.delay += hit.Delay
	o.held = o.held || hit.Hold
	if !o.isRW() {
		return true
	}
	switch {
	case hit.Short == ShortZero:
		o.short = 0
		o.shortSet = true
	case hit.Short == ShortRandom:
		if o.total >= 2 {
			o.short = 1 + uint64(r.rng.Uint64N(o.total-1))
			o.shortSet = true
		}
	case hit.Short > 0 && uint64(hit.Short) < o.total:
		o.short = uint64(hit.Short)
		o.shortSet = true
	}
	return true
}
