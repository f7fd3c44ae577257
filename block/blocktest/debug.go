package blocktest

import (
	"sync"
	"time"

	"github.com/ringblk/ringblk/block"
)

// Rule is one fault of a Debug filter, in the manner of QEMU's blkdebug: it
// matches requests by operation and offset range and acts on the Nth match
// (or on every match when Nth is 0).
type Rule struct {
	Op     block.Op // 0: any operation
	OffMin int64    // the request must overlap [OffMin, OffMax); OffMax 0: no upper bound
	OffMax int64
	Nth    int  // act on the Nth matching request (1-based); 0: every one
	Once   bool // disarm after acting once

	Err   error         // fail the request with Err (after Delay, if any)
	Delay time.Duration // delay the request (then fail or forward)
	Hold  bool          // park the request until Debug.Release

	matches int
	fired   int
}

// Fired reports how many requests the rule acted on.
func (r *Rule) Fired() int { return r.fired }

// Debug is a filter node driver that forwards to its child (like Forward)
// and injects faults by rule. Rules are matched under a mutex: the filter
// is test support, not a hot path.
type Debug struct {
	Forward

	mu    sync.Mutex
	rules []*Rule
	held  []*block.Request
	seen  int
}

// Seen returns how many requests reached the filter.
func (d *Debug) Seen() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.seen
}

// AddRule arms a rule and returns it (for Fired).
func (d *Debug) AddRule(r Rule) *Rule {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := &r
	d.rules = append(d.rules, p)
	return p
}

// ClearRules disarms every rule.
func (d *Debug) ClearRules() {
	d.mu.Lock()
	d.rules = nil
	d.mu.Unlock()
}

// Held returns how many requests are parked at a Hold rule.
func (d *Debug) Held() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.held)
}

// Release forwards every held request, each on its own Context.
func (d *Debug) Release() {
	d.mu.Lock()
	held := d.held
	d.held = nil
	d.mu.Unlock()
	for _, r := range held {
		r := r
		r.Context().Schedule(func() { d.Forward.forward(r) })
	}
}

func (d *Debug) match(r *block.Request) *Rule {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.seen++
	for i, ru := range d.rules {
		if ru.Op != 0 && ru.Op != r.Op {
			continue
		}
		end := r.Off + r.Len
		if r.Len == 0 {
			end = r.Off + 1
		}
		if end <= ru.OffMin || (ru.OffMax > 0 && r.Off >= ru.OffMax) {
			continue
		}
		ru.matches++
		if ru.Nth != 0 && ru.matches != ru.Nth {
			continue
		}
		ru.fired++
		if ru.Once {
			d.rules = append(d.rules[:i:i], d.rules[i+1:]...)
		}
		if ru.Hold {
			d.held = append(d.held, r)
		}
		return ru
	}
	return nil
}

func (d *Debug) handle(r *block.Request) {
	ru := d.match(r)
	switch {
	case ru == nil:
		d.Forward.forward(r)
	case ru.Hold:
		// parked in d.held until Release
	case ru.Delay > 0:
		err := ru.Err
		r.Context().AfterFunc(ru.Delay, func() {
			if err != nil {
				r.Complete(err)
				return
			}
			d.Forward.forward(r)
		})
	default:
		r.CompleteLater(ru.Err)
	}
}

func (d *Debug) Read(r *block.Request)        { d.handle(r) }
func (d *Debug) Write(r *block.Request)       { d.handle(r) }
func (d *Debug) Flush(r *block.Request)       { d.handle(r) }
func (d *Debug) Discard(r *block.Request)     { d.handle(r) }
func (d *Debug) WriteZeroes(r *block.Request) { d.handle(r) }
func (d *Debug) BlockStatus(r *block.Request) { d.handle(r) }
