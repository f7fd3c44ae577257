package aio

import "golang.org/x/sys/unix"

// setBatch puts the calling (owner) thread under SCHED_BATCH, keeping its
// nice value (Options.Batch). Owner thread, before the loop runs. Only a
// thread under the normal policy is changed: one that runs real-time or
// idle (chrt, a parent's choice) keeps what it was given.
func (c *Context) setBatch() error {
	attr, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		return &OpError{Op: "sched_getattr of the owner thread", Off: -1, Err: err}
	}
	old := attr.Policy
	if old != unix.SCHED_NORMAL {
		return nil
	}
	attr.Policy = unix.SCHED_BATCH
	attr.Flags = 0
	if err := unix.SchedSetAttr(0, attr, 0); err != nil {
		return &OpError{Op: "set SCHED_BATCH on the owner thread", Off: -1, Err: err}
	}
	c.oldPolicy, c.batchSet = old, true
	return nil
}

// restoreSched gives the owner thread its policy back before the thread
// returns to Go's pool, where other goroutines would run under it.
func (c *Context) restoreSched() {
	if !c.batchSet {
		return
	}
	c.batchSet = false
	attr, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		return
	}
	attr.Policy = c.oldPolicy
	attr.Flags = 0
	_ = unix.SchedSetAttr(0, attr, 0)
}
