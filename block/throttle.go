package block

import (
	"fmt"
	"sync"
	"time"
)

// ThrottleLimits are the I/O limits of a throttle group. A zero rate is no
// limit. Each Burst is the most a bucket may hold, in the bucket's units
// (ops or bytes); zero means a tenth of a second's worth of the rate (at
// least one unit). Rates are per second.
type ThrottleLimits struct {
	IOPSTotal, IOPSRead, IOPSWrite float64
	BPSTotal, BPSRead, BPSWrite    float64

	IOPSTotalBurst, IOPSReadBurst, IOPSWriteBurst float64
	BPSTotalBurst, BPSReadBurst, BPSWriteBurst    float64

	// IOPSSize is QEMU's iops_size: a request of more bytes counts as
	// bytes/IOPSSize operations in the IOPS buckets (a fraction, as
	// QEMU's throttle_account counts it); 0: every request is one.
	IOPSSize float64
}

const (
	bktIOPSTotal = iota
	bktIOPSRead
	bktIOPSWrite
	bktBPSTotal
	bktBPSRead
	bktBPSWrite
	bktCount
)

// bucket is a leaky bucket: level drains at rate units per second; a
// request fits while level+cost ≤ burst, and an empty bucket takes any one
// request (so a request bigger than the burst is delayed, never refused).
type bucket struct {
	rate  float64
	burst float64
	level float64
}

func (b *bucket) leak(elapsed time.Duration) {
	b.level -= b.rate * elapsed.Seconds()
	if b.level < 0 {
		b.level = 0
	}
}

// maxThrottleWait bounds one wait for a bucket: a longer one (a huge
// request at a tiny rate: a TiB at 1 byte/s is 35,000 years) is re-checked
// after it, and still waits. Computed in float64 and clamped before the
// conversion, whose overflow gave a negative Duration (a wait of 1µs, for
// ever).
const maxThrottleWait = time.Hour

// wait returns how long until cost fits (0: it fits now).
func (b *bucket) wait(cost float64) time.Duration {
	if b.rate == 0 || b.level == 0 || b.level+cost <= b.burst {
		return 0
	}
	excess := b.level + cost - b.burst
	if cost > b.burst {
		excess = b.level // wait for empty
	}
	sec := excess / b.rate
	if !(sec < maxThrottleWait.Seconds()) { // NaN too
		return maxThrottleWait
	}
	d := time.Duration(sec * float64(time.Second))
	if d <= 0 {
		d = time.Microsecond
	}
	return d
}

// ThrottleGroup is a set of token buckets shared by several front ends (on
// any Contexts). A front end consults it before sending a read or write to
// its root node; while the front end is quiesced it does not.
//
// Members take turns (QEMU's throttle-groups): once any member's request
// has to wait, every member that wants to send joins the group's ring of
// waiting queues, and only the queue holding the turn may take tokens.
// When its head request has been admitted the turn passes to the next
// waiting queue in the ring, so a member with a long backlog gets one
// request per round and cannot starve the others, even one whose requests
// are larger than the burst. The holder waits for its tokens on a timer of
// its own Context; the turn passes to a queue on another Context through
// that queue's bottom half. Members are Queues: a front end that submits
// from several Contexts takes one turn per Context.
type ThrottleGroup struct {
	name string
	now  func() time.Time

	mu struct {
		sync.Mutex
		b      [bktCount]bucket
		last   time.Time
		opSize float64 // ThrottleLimits.IOPSSize; 0: a request is one op
		// ring holds the queues with throttled requests, in the order they
		// started waiting; turn is the one that may take tokens (nil iff
		// the ring is empty). INVARIANT: turn has a timer armed or its
		// bottom half scheduled, so the ring always makes progress.
		ring []*Queue
		turn *Queue
	}
}

// NewThrottleGroup creates a group; now is the clock (nil: time.Now), so
// tests can inject one.
func NewThrottleGroup(name string, l ThrottleLimits, now func() time.Time) *ThrottleGroup {
	if now == nil {
		now = time.Now
	}
	tg := &ThrottleGroup{name: name, now: now}
	tg.mu.last = now()
	tg.SetLimits(l)
	return tg
}

// Name returns the group's name.
func (tg *ThrottleGroup) Name() string { return tg.name }

// MaxThrottleValue is the largest rate or burst QEMU takes
// (THROTTLE_VALUE_MAX).
const MaxThrottleValue = 1e15

// Check refuses limits QEMU refuses for their range (throttle_is_valid):
// a negative, NaN or infinite value, or one above MaxThrottleValue, in
// QEMU's words. SetLimits takes them without hanging (see there); callers
// that take limits from users check first.
func (l ThrottleLimits) Check() error {
	for _, v := range [...]float64{l.IOPSTotal, l.IOPSRead, l.IOPSWrite, l.BPSTotal, l.BPSRead, l.BPSWrite,
		l.IOPSTotalBurst, l.IOPSReadBurst, l.IOPSWriteBurst, l.BPSTotalBurst, l.BPSReadBurst, l.BPSWriteBurst, l.IOPSSize} {
		if !(v >= 0 && v <= MaxThrottleValue) {
			return fmt.Errorf("bps/iops/max values must be within [0, %d]", int64(MaxThrottleValue))
		}
	}
	return nil
}

// SetLimits replaces the limits; accumulated levels are kept. A rate that
// is not positive (negative, NaN) is no limit, as zero is, and a burst
// that is not a number or negative is the default: the buckets never
// compute a wait from them (a NaN rate made every wait NaN, run as 1µs
// for ever). Check refuses such values first.
func (tg *ThrottleGroup) SetLimits(l ThrottleLimits) {
	rates := [bktCount]float64{l.IOPSTotal, l.IOPSRead, l.IOPSWrite, l.BPSTotal, l.BPSRead, l.BPSWrite}
	bursts := [bktCount]float64{l.IOPSTotalBurst, l.IOPSReadBurst, l.IOPSWriteBurst, l.BPSTotalBurst, l.BPSReadBurst, l.BPSWriteBurst}
	tg.mu.Lock()
	defer tg.mu.Unlock()
	tg.mu.opSize = 0
	if l.IOPSSize > 0 {
		tg.mu.opSize = l.IOPSSize
	}
	for i := range tg.mu.b {
		b := &tg.mu.b[i]
		b.rate = rates[i]
		if !(b.rate > 0) {
			b.rate = 0
		}
		b.burst = bursts[i]
		if !(b.burst > 0) {
			b.burst = 0
		}
		if b.burst == 0 {
			b.burst = b.rate / 10
			if b.burst < 1 {
				b.burst = 1
			}
		}
	}
}

// Admit charges a read or write of n bytes if every bucket that applies has
// room and returns 0; otherwise it charges nothing and returns how long to
// wait before asking again. It ignores turns (front ends go through them).
func (tg *ThrottleGroup) Admit(write bool, n int64) time.Duration {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return tg.admitLocked(write, n)
}

func (tg *ThrottleGroup) admitLocked(write bool, n int64) time.Duration {
	now := tg.now()
	if el := now.Sub(tg.mu.last); el > 0 {
		for i := range tg.mu.b {
			tg.mu.b[i].leak(el)
		}
		tg.mu.last = now
	}
	ops, rw := [2]int{bktIOPSTotal, bktIOPSRead}, [2]int{bktBPSTotal, bktBPSRead}
	if write {
		ops[1], rw[1] = bktIOPSWrite, bktBPSWrite
	}
	opCost := 1.0
	if sz := tg.mu.opSize; sz > 0 && float64(n) > sz {
		opCost = float64(n) / sz
	}
	var wait time.Duration
	for _, i := range ops {
		wait = max(wait, tg.mu.b[i].wait(opCost))
	}
	for _, i := range rw {
		wait = max(wait, tg.mu.b[i].wait(float64(n)))
	}
	if wait > 0 {
		return wait
	}
	for _, i := range ops {
		if tg.mu.b[i].rate > 0 {
			tg.mu.b[i].level += opCost
		}
	}
	for _, i := range rw {
		if tg.mu.b[i].rate > 0 {
			tg.mu.b[i].level += float64(n)
		}
	}
	return 0
}

// enter is a new request of q's that has nothing queued before it on q. If
// others are waiting, q joins the ring behind them (queued, no wait: the
// turn will come to it). Otherwise the request is admitted at once, or q
// joins an empty ring holding the turn and must wait d on its timer.
func (tg *ThrottleGroup) enter(q *Queue, write bool, n int64) (queued bool, d time.Duration) {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	if tg.mu.turn != nil {
		tg.mu.ring = append(tg.mu.ring, q)
		return true, 0
	}
	if d = tg.admitLocked(write, n); d == 0 {
		return false, 0
	}
	tg.mu.ring = append(tg.mu.ring, q)
	tg.mu.turn = q
	return true, d
}

// take admits q's head request if q holds the turn and the buckets have
// room. ok=false with d=0: not q's turn (a stale timer or bottom half).
func (tg *ThrottleGroup) take(q *Queue, write bool, n int64) (ok bool, d time.Duration) {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	if tg.mu.turn != q {
		return false, 0
	}
	if d = tg.admitLocked(write, n); d > 0 {
		return false, d
	}
	return true, 0
}

// pass ends q's turn after one admitted request. q stays in the ring if it
// has more (more), else it leaves. It returns the next holder (nil: the
// ring is empty), which the caller must start.
func (tg *ThrottleGroup) pass(q *Queue, more bool) *Queue {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	i := tg.indexLocked(q)
	if !more {
		tg.removeLocked(i)
		i-- // the next one moved into slot i
	}
	if len(tg.mu.ring) == 0 {
		tg.mu.turn = nil
		return nil
	}
	tg.mu.turn = tg.mu.ring[(i+1)%len(tg.mu.ring)]
	return tg.mu.turn
}

// leave takes q out of the ring (its requests were released). If q held
// the turn, the next queue gets it and is returned for the caller to start.
func (tg *ThrottleGroup) leave(q *Queue) *Queue {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	i := tg.indexLocked(q)
	if i < 0 {
		return nil
	}
	tg.removeLocked(i)
	if tg.mu.turn != q {
		return nil
	}
	if len(tg.mu.ring) == 0 {
		tg.mu.turn = nil
		return nil
	}
	tg.mu.turn = tg.mu.ring[i%len(tg.mu.ring)]
	return tg.mu.turn
}

func (tg *ThrottleGroup) indexLocked(q *Queue) int {
	for i, x := range tg.mu.ring {
		if x == q {
			return i
		}
	}
	return -1
}

func (tg *ThrottleGroup) removeLocked(i int) {
	r := tg.mu.ring
	copy(r[i:], r[i+1:])
	r[len(r)-1] = nil
	tg.mu.ring = r[:len(r)-1]
}

// Waiting returns the number of member queues waiting for their turn.
func (tg *ThrottleGroup) Waiting() int {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return len(tg.mu.ring)
}

func (q *Queue) pushThrottled(r *Request) {
	r.next = nil
	if q.thrTail == nil {
		q.thrHead = r
	} else {
		q.thrTail.next = r
	}
	q.thrTail = r
}

func (q *Queue) armThrottle(wait time.Duration) {
	if q.thrTimer == nil {
		q.thrTimer = q.ctx.AfterFunc(wait, q.runThrottled)
		return
	}
	q.thrTimer.Reset(wait)
}

// throttledOp reports whether r goes through the throttle group.
func throttledOp(op Op) bool {
	return op == OpRead || op == OpWrite || op == OpWriteCompressed
}

// throttle holds r back if the group says so and reports whether it did.
// Owner of q only, with the front end not quiesced.
func (q *Queue) throttle(tg *ThrottleGroup, r *Request) bool {
	if q.thrHead != nil {
		q.pushThrottled(r) // behind earlier throttled requests
		return true
	}
	queued, d := tg.enter(q, r.Op != OpRead, r.Len)
	if !queued {
		return false
	}
	q.thrGroup = tg
	q.pushThrottled(r)
	if d > 0 {
		q.armThrottle(d) // q holds the turn
	}
	return true
}

// runThrottled is the queue's throttle timer and bottom half. Holding the
// turn, it sends its head request once the group admits it and passes the
// turn on (continuing itself if it is the only one waiting). If the front
// end is quiesced or left the group, throttling is off: it sends every
// queued request now (seed 003) and leaves the ring.
func (q *Queue) runThrottled() {
	fe := q.fe
	tg := q.thrGroup
	if tg == nil {
		return // nothing queued: a stale timer or bottom half
	}
	if fe.quiesce.Load() != 0 || fe.throttle.Load() != tg {
		q.thrGroup = nil
		if next := tg.leave(q); next != nil {
			next.thrBH.Schedule()
		}
		for q.thrHead != nil {
			q.toNode(q.popThrottled())
		}
		return
	}
	for {
		r := q.thrHead
		ok, d := tg.take(q, r.Op != OpRead, r.Len)
		if !ok {
			if d > 0 {
				q.armThrottle(d)
			}
			return
		}
		q.popThrottled()
		next := tg.pass(q, q.thrHead != nil)
		if q.thrHead == nil {
			q.thrGroup = nil
		}
		if next != nil && next != q {
			next.thrBH.Schedule()
		}
		q.toNode(r)
		if next != q {
			return
		}
	}
}

func (q *Queue) popThrottled() *Request {
	r := q.thrHead
	q.thrHead = r.next
	if q.thrHead == nil {
		q.thrTail = nil
	}
	r.next = nil
	return r
}

// Throttled returns the number of requests waiting for the throttle (owner
// of q only).
func (q *Queue) Throttled() int {
	k := 0
	for r := q.thrHead; r != nil; r = r.next {
		k++
	}
	return k
}
