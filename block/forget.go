package block

import (
	"fmt"

	"github.com/ringblk/ringblk/aio"
)

// ForgetContext drops everything the graph keeps for ctx: its request pool
// and the queue of every front end on it. A tool that creates Contexts per
// run (a benchmark with one IOThread per job clone) calls it when a Context
// is done, or the graph keeps each one's pool and queues for as long as it
// lives.
//
// REQUIRES: nothing submitted on ctx is still in flight or throttled — the
// Context was stopped after its requests completed, or its users are idle.
// ForgetContext refuses with an error naming the front end when a queue on
// ctx still holds throttled requests, and when requests from ctx's pool are
// still out.
func (g *Graph) ForgetContext(ctx *aio.Context) error {
	var err error
	g.Control(func() { err = g.forgetContext(ctx) })
	return err
}

func (g *Graph) forgetContext(ctx *aio.Context) error {
	g.pools.Lock()
	p := g.pools.m[ctx]
	g.pools.Unlock()
	// The pool's free list and a queue's throttled requests belong to ctx's
	// owner: look at them there while ctx runs, directly once it stopped.
	// The list of front ends belongs to main, which keeps running events
	// (opening and closing front ends) while it waits for ctx: collect
	// ctx's queues here first, so the look on ctx reads only what it owns.
	var qs []*Queue
	for _, fe := range g.frontEnds {
		fe.mu.Lock()
		for _, q := range fe.mu.queues {
			if q.ctx == ctx {
				qs = append(qs, q)
			}
		}
		fe.mu.Unlock()
	}
	var err error
	check := func() { err = idleOn(ctx, p, qs) }
	select {
	case <-ctx.Stopped():
		check()
	default:
		ctx.Run(check)
	}
	if err != nil {
		return err
	}
	for _, fe := range g.frontEnds {
		fe.mu.Lock()
		kept := fe.mu.queues[:0]
		for _, q := range fe.mu.queues {
			if q.ctx != ctx {
				kept = append(kept, q)
				continue
			}
			if tg := q.thrGroup; tg != nil {
				if next := tg.leave(q); next != nil {
					next.thrBH.Schedule()
				}
				q.thrGroup = nil
			}
		}
		for i := len(kept); i < len(fe.mu.queues); i++ {
			fe.mu.queues[i] = nil
		}
		fe.mu.queues = kept
		fe.mu.Unlock()
	}
	g.pools.Lock()
	delete(g.pools.m, ctx)
	g.pools.Unlock()
	return nil
}

// idleOn reports why ctx is not idle in the graph, or nil: requests of
// its pool still out, or throttled requests on one of its queues qs. Runs
// on ctx's owner (or after ctx stopped).
func idleOn(ctx *aio.Context, p *Pool, qs []*Queue) error {
	if p != nil {
		if out := p.allocated - p.freeCount(); out > 0 {
			return fmt.Errorf("block: forget context %s: %d request(s) from its pool are still in flight", ctx.Name(), out)
		}
	}
	for _, q := range qs {
		if q.thrHead != nil {
			return fmt.Errorf("block: forget context %s: front end %q still has throttled requests on it", ctx.Name(), q.fe.name)
		}
	}
	return nil
}

// freeCount counts the requests on the pool's free list.
func (p *Pool) freeCount() int {
	n := 0
	for r := p.free; r != nil; r = r.next {
		n++
	}
	return n
}
