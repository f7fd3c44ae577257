package aio

import (
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/internal/invariants"
)

// An FDHandler calls fn on the owner whenever fd becomes ready for events
// (unix.POLLIN, …). It is a POLL_ADD kept armed on the Context's ring:
// one-shot, re-armed after each dispatch, so a handler that does not drain
// its fd is simply called again next iteration.
//
// External handlers are event sources from outside the block graph (an NBD
// socket, a guest notifier). While DisableExternal is in force they are not
// dispatched; readiness that arrives meanwhile is kept and delivered after
// the outermost EnableExternal.
type FDHandler struct {
	c        *Context
	fd       int32
	events   uint32
	fn       func(revents uint32)
	external bool
	slot     uint32 // the armed POLL_ADD, noSlot when none
	revents  uint32 // readiness waiting for dispatch
	queued   bool   // in c.fdReady
	removed  bool
}

// SetFDHandler watches fd for events and calls fn(revents) from the loop.
// Owner only.
func (c *Context) SetFDHandler(fd int, events uint32, fn func(revents uint32), external bool) *FDHandler {
	c.assertOwner("SetFDHandler")
	h := &FDHandler{c: c, fd: int32(fd), events: events, fn: fn, external: external, slot: noSlot}
	c.fdh = append(c.fdh, h)
	c.armFD(h)
	return h
}

// Remove stops watching; fn is not called after Remove returns. Owner only.
func (h *FDHandler) Remove() {
	c := h.c
	c.assertOwner("FDHandler.Remove")
	if h.removed {
		return
	}
	h.removed = true
	for i, x := range c.fdh {
		if x == h {
			c.fdh = append(c.fdh[:i], c.fdh[i+1:]...)
			break
		}
	}
	c.cancelSlot(h.slot)
}

func (c *Context) armFD(h *FDHandler) {
	if c.cancelAll {
		return
	}
	idx, s := c.newOp(opFDPoll, nil, nil, 0)
	s.fd = h.fd
	s.flags = h.events
	s.h = h
	h.slot = idx
	c.enqueue(idx)
}

// cancelSlot asks the kernel to cancel the op in slot idx (if it is still
// there); the op's own CQE then arrives with ECANCELED or its real result.
func (c *Context) cancelSlot(idx uint32) {
	if idx == noSlot {
		return
	}
	s := c.ops.slot(idx)
	switch s.state {
	case slotSubmitted:
		s.cancelled = true
		target := userData(idx, s.gen)
		cidx, cs := c.newOp(opCancel, nil, nil, 0)
		cs.target = target
		c.enqueue(cidx)
	case slotOverflow:
		// Never reached the kernel: mark it; it is completed with
		// ECANCELED when the overflow queue is flushed at shutdown.
		s.cancelled = true
	}
}

func (c *Context) fdPollDone(idx uint32, res int32) {
	h := c.ops.slot(idx).h
	c.ops.release(idx)
	h.slot = noSlot
	if h.removed || res == -int32(syscall.ECANCELED) {
		return
	}
	if res < 0 {
		h.revents |= unix.POLLERR
	} else {
		h.revents |= uint32(res)
	}
	if !h.queued {
		h.queued = true
		c.fdReady = append(c.fdReady, h)
	}
}

// fdDispatchable reports whether a fired handler may run now.
func (c *Context) fdDispatchable() bool {
	disabled := c.extDisabled.Load() > 0
	for _, h := range c.fdReady {
		if !h.removed && !(h.external && disabled) {
			return true
		}
	}
	return false
}

// runFDHandlers dispatches fired handlers, keeping external ones while
// external sources are disabled, and re-arms each after its call. It is
// re-entrant, like runTimers: the batch waits in a Context-owned queue
// (fdRun, from fdRunPos), so a handler that waits (a nested Poll or
// WaitWhile) dispatches the handlers queued behind it, and the outer call
// then finds them gone.
func (c *Context) runFDHandlers() bool {
	c.fdRun = append(c.fdRun, c.fdReady...)
	clear(c.fdReady)
	c.fdReady = c.fdReady[:0]
	limit := len(c.fdRun)
	progress := false
	c.fdDepth++
	for c.fdRunPos < limit {
		h := c.fdRun[c.fdRunPos]
		c.fdRun[c.fdRunPos] = nil
		c.fdRunPos++
		switch {
		case h.removed:
			h.queued = false
		case h.external && c.extDisabled.Load() > 0:
			c.fdReady = append(c.fdReady, h) // still queued: held
		default:
			h.queued = false
			rev := h.revents
			h.revents = 0
			progress = true
			h.fn(rev)
			if !h.removed && h.slot == noSlot && !h.queued {
				c.armFD(h)
			}
		}
	}
	c.fdDepth--
	if c.fdDepth == 0 && c.fdRunPos == len(c.fdRun) {
		c.fdRun, c.fdRunPos = c.fdRun[:0], 0
	}
	return progress
}

// DisableExternal stops dispatching external fd handlers until the
// matching EnableExternal; calls nest. Any goroutine (drain disables the
// sources of a Context it does not own). It does not wait for a handler
// that is running right now.
func (c *Context) DisableExternal() { c.extDisabled.Add(1) }

// EnableExternal ends one DisableExternal; the outermost one wakes the
// loop so kept readiness is dispatched.
func (c *Context) EnableExternal() {
	n := c.extDisabled.Add(-1)
	if n < 0 {
		invariants.Failf("aio: EnableExternal without DisableExternal")
	}
	if n == 0 {
		c.kickBH.Schedule()
	}
}

// ExternalDisabled reports whether external handlers are disabled.
func (c *Context) ExternalDisabled() bool { return c.extDisabled.Load() > 0 }
