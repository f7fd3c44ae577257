package uringtest

import (
	"time"

	"github.com/ringblk/ringblk/uring"
)

// Tick runs one completion step without submitting: every delay advances
// by one tick, then everything able to complete does. It returns how many
// CQEs were posted. SubmitAndWait runs such a step on every call.
func (r *Ring) Tick() int {
	if r.closed {
		return 0
	}
	return r.step(true, false)
}

// CompleteAll completes everything that can complete without waiting:
// delays are treated as elapsed, while held operations, operations waiting
// on a real fd that is not ready and timers not yet due stay in flight.
// It returns how many CQEs were posted.
func (r *Ring) CompleteAll() int {
	if r.closed {
		return 0
	}
	return r.step(true, true)
}

// Hold makes operations submitted from now on wait, when match returns true
// for their SQE, until Release or ReleaseAll; match nil stops holding new
// ones (held ones stay held). The SQE passed to match is a copy.
//
// Together with Release it lets a test complete operations in exactly the
// order it chooses:
//
//	r.Hold(func(*uring.SQE) bool { return true })
//	… submit a, b, c …
//	r.Release(c); r.Release(a); r.Release(b)
func (r *Ring) Hold(match func(sqe *uring.SQE) bool) { r.hold = match }

// Held returns the user_data of the held operations in submission order.
func (r *Ring) Held() []uint64 {
	var uds []uint64
	for _, o := range r.inflight {
		if o.held {
			uds = append(uds, o.sqe.UserData)
		}
	}
	return uds
}

// Release lets the first held operation with userData go. If it can
// complete at once (issued, and not waiting on a real fd or a timer), it
// completes now, ignoring any remaining delay, and its CQE is posted before
// anything else; then a completion step without a tick settles the
// consequences (link successors, count timeouts, other ops that became able
// to complete). Otherwise it completes whenever it can. Release reports
// whether a held operation was found.
func (r *Ring) Release(userData uint64) bool {
	if r.closed {
		return false
	}
	for _, o := range r.inflight {
		if o.held && o.sqe.UserData == userData {
			r.release(o)
			r.step(false, false)
			return true
		}
	}
	return false
}

// ReleaseAll releases every held operation in submission order, as Release
// does one by one, and returns how many it released.
func (r *Ring) ReleaseAll() int {
	if r.closed {
		return 0
	}
	n := 0
	for {
		var next *op
		for _, o := range r.inflight {
			if o.held {
				next = o
				break
			}
		}
		if next == nil {
			return n
		}
		r.release(next)
		r.step(false, false)
		n++
	}
}

func (r *Ring) release(o *op) {
	o.held = false
	o.delay = 0
	if !o.issued || (o.failRes == 0 && o.needsPoll()) {
		return // the next step polls its fd
	}
	var now time.Time
	if !r.completable(o, true, &now) {
		return // a timer not yet due, or a MemFile poll for events it never reports
	}
	if r.run(o) {
		r.compact()
	}
}
