package aio

import "time"

// epoch anchors the loop's monotonic clock; time.Since uses the monotonic
// reading, so wall-clock jumps never move timers.
var epoch = time.Now()

// nanotime is the loop clock: monotonic nanoseconds since epoch.
func nanotime() int64 { return int64(time.Since(epoch)) }

// A Timer runs a callback on its Context's owner once its deadline passes.
// Timers are owner-only: create, stop and reset them from the owner (or the
// token-holding coroutine). Expired timers run in step 6 of an iteration;
// a timer armed by a timer callback runs in a later iteration even when its
// deadline has already passed.
type Timer struct {
	c     *Context
	fn    func()
	when  int64 // nanotime deadline
	index int   // position in the heap, -1 when not armed
	// firing: expired and collected by runTimers, not yet run. Stop and
	// Reset clear it, so a timer stopped by an earlier callback of the same
	// batch does not run.
	firing bool
}

// AfterFunc arms a timer that runs fn after d. It allocates the Timer;
// re-arm it with Reset instead of creating one per event.
func (c *Context) AfterFunc(d time.Duration, fn func()) *Timer {
	c.assertOwner("AfterFunc")
	t := &Timer{c: c, fn: fn, index: -1}
	t.when = nanotime() + int64(d)
	c.timers.push(t)
	return t
}

// Stop disarms t and reports whether it was armed. Owner only.
func (t *Timer) Stop() bool {
	t.c.assertOwner("Timer.Stop")
	if t.firing {
		t.firing = false
		return true
	}
	if t.index < 0 {
		return false
	}
	t.c.timers.remove(t.index)
	return true
}

// Reset re-arms t to run after d and reports whether it was armed. Owner
// only.
func (t *Timer) Reset(d time.Duration) bool {
	t.c.assertOwner("Timer.Reset")
	was := t.index >= 0 || t.firing
	t.firing = false
	if t.index >= 0 {
		t.c.timers.remove(t.index)
	}
	t.when = nanotime() + int64(d)
	t.c.timers.push(t)
	return was
}

// runTimers runs every timer due now. It collects them first, so that
// a timer a callback arms runs in a later iteration even when its deadline
// has passed. It is re-entrant: the collected timers wait in a queue that
// belongs to the Context (expired, from expiredPos), so a callback that
// waits (a nested Poll or WaitWhile, for example for a sibling request
// whose completion is the next timer of the same batch) runs the timers
// queued behind it; the outer call then finds them gone.
func (c *Context) runTimers() bool {
	now := nanotime()
	for len(c.timers) > 0 && c.timers[0].when <= now {
		t := c.timers[0]
		c.timers.remove(0)
		t.firing = true
		c.expired = append(c.expired, t)
	}
	limit := len(c.expired)
	progress := false
	c.timerDepth++
	for c.expiredPos < limit {
		t := c.expired[c.expiredPos]
		c.expired[c.expiredPos] = nil
		c.expiredPos++
		// A callback earlier in this batch may have stopped or re-armed t.
		if !t.firing {
			continue
		}
		t.firing = false
		progress = true
		t.fn()
	}
	c.timerDepth--
	if c.timerDepth == 0 && c.expiredPos == len(c.expired) {
		c.expired, c.expiredPos = c.expired[:0], 0
	}
	return progress
}

// timerHeap is a binary min-heap on Timer.when, kept by hand (container/heap
// would box every element in an interface).
type timerHeap []*Timer

func (h *timerHeap) push(t *Timer) {
	t.index = len(*h)
	*h = append(*h, t)
	h.up(t.index)
}

func (h *timerHeap) remove(i int) {
	s := *h
	last := len(s) - 1
	t := s[i]
	if i != last {
		s[i] = s[last]
		s[i].index = i
	}
	s[last] = nil
	*h = s[:last]
	if i != last {
		h.down(i)
		h.up(i)
	}
	t.index = -1
}

func (h timerHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if h[p].when <= h[i].when {
			return
		}
		h.swap(i, p)
		i = p
	}
}

func (h timerHeap) down(i int) {
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && h[r].when < h[l].when {
			m = r
		}
		if h[i].when <= h[m].when {
			return
		}
		h.swap(i, m)
		i = m
	}
}

func (h timerHeap) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
