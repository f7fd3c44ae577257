package block

import (
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

// wait returns how long until cost fits (0: it fits now).
func (b *bucket) wait(cost float64) time.Duration {
	if b.rate == 0 || b.level == 0 || b.level+cost <= b.burst {
		return 0
	}
	excess := b.level + cost - b.burst
	if cost > b.burst {
		excess = b.level // wait for empty
	}
	d := time.Duration(excess / b.rate * float64(time.Second))
	if d <= 0 {
		d = time.Microsecond
	}
	return d
}

// ThrottleGroup is a set of token buckets shared by several front ends (on
// any Contexts). A front end consults it before sending a read or write to
// its root node; while the front end is quiesced it does not.
type ThrottleGroup struct {
	name string
	now  func() time.Time

	mu struct {
		sync.Mutex
		b    [bktCount]bucket
		last time.Time
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

// SetLimits replaces the limits; accumulated levels are kept.
func (tg *ThrottleGroup) SetLimits(l ThrottleLimits) {
	rates := [bktCount]float64{l.IOPSTotal, l.IOPSRead, l.IOPSWrite, l.BPSTotal, l.BPSRead, l.BPSWrite}
	bursts := [bktCount]float64{l.IOPSTotalBurst, l.IOPSReadBurst, l.IOPSWriteBurst, l.BPSTotalBurst, l.BPSReadBurst, l.BPSWriteBurst}
	tg.mu.Lock()
	defer tg.mu.Unlock()
	for i := range tg.mu.b {
		b := &tg.mu.b[i]
		b.rate = rates[i]
		b.burst = bursts[i]
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
// wait before asking again.
func (tg *ThrottleGroup) Admit(write bool, n int64) time.Duration {
	tg.mu.Lock()
	defer tg.mu.Unlock()
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
	var wait time.Duration
	for _, i := range ops {
		wait = max(wait, tg.mu.b[i].wait(1))
	}
	for _, i := range rw {
		wait = max(wait, tg.mu.b[i].wait(float64(n)))
	}
	if wait > 0 {
		return wait
	}
	for _, i := range ops {
		if tg.mu.b[i].rate > 0 {
			tg.mu.b[i].level++
		}
	}
	for _, i := range rw {
		if tg.mu.b[i].rate > 0 {
			tg.mu.b[i].level += float64(n)
		}
	}
	return 0
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

// runThrottled releases throttled requests in order while the group admits
// them — all of them at once if the front end is quiesced — and re-arms
// the timer for the first one that still has to wait.
func (q *Queue) runThrottled() {
	fe := q.fe
	for q.thrHead != nil {
		r := q.thrHead
		if tg := fe.throttle.Load(); tg != nil && fe.quiesce.Load() == 0 {
			if wait := tg.Admit(r.Op == OpWrite, r.Len); wait > 0 {
				q.armThrottle(wait)
				return
			}
		}
		q.thrHead = r.next
		if q.thrHead == nil {
			q.thrTail = nil
		}
		r.next = nil
		q.toNode(r)
	}
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
