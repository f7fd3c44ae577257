// Package null is a block driver that stores nothing (QEMU's null-co): reads
// return zeroes or leave the buffer alone, writes vanish, every request
// completes from a bottom half of its Context — or after a fixed latency.
// It measures the overhead of the block layer itself.
package null

import (
	"sync/atomic"
	"time"

	"github.com/ringblk/ringblk/block"
)

// Options configure a null node.
type Options struct {
	// ReadZeroes clears the read buffers (null-co's read-zeroes); without it
	// reads do not touch the buffer, which is what overhead benchmarks want.
	ReadZeroes bool
	// Latency delays every completion by a timer on the request's Context
	// (null-co's latency-ns). Zero completes from a bottom half; a request
	// with latency allocates its timer.
	Latency time.Duration
}

// Driver is the null driver for one node.
type Driver struct {
	block.DriverBase
	// size is read by Length on any Context (and by a host's goroutines
	// through the host API's bound checks) while a Truncate on another
	// Context sets it.
	size atomic.Int64
	opts Options
}

// New returns a null driver for a node of size bytes.
func New(size int64, opts Options) *Driver {
	d := &Driver{opts: opts}
	d.size.Store(size)
	return d
}

// Length reports the configured size.
func (d *Driver) Length(*block.Node) (int64, error) { return d.size.Load(), nil }

func (d *Driver) complete(r *block.Request) {
	if d.opts.Latency > 0 {
		r.Context().AfterFunc(d.opts.Latency, func() { r.Complete(nil) })
		return
	}
	r.CompleteLater(nil)
}

// Read completes at once; with ReadZeroes it clears the buffers first.
func (d *Driver) Read(r *block.Request) {
	if d.opts.ReadZeroes {
		for _, b := range r.Iov {
			clear(b)
		}
	}
	d.complete(r)
}

func (d *Driver) Write(r *block.Request)       { d.complete(r) }
func (d *Driver) Flush(r *block.Request)       { d.complete(r) }
func (d *Driver) Discard(r *block.Request)     { d.complete(r) }
func (d *Driver) WriteZeroes(r *block.Request) { d.complete(r) }

// FastZeroes: write-zeroes never writes anything, so NoFallback requests
// succeed (block.FastZeroer).
func (d *Driver) FastZeroes() bool { return true }

// BlockStatus reports what QEMU's null-co does: nothing is stored, so no
// range holds data or is allocated; with ReadZeroes the ranges read as
// zeroes.
func (d *Driver) BlockStatus(r *block.Request) {
	r.Status = 0
	if d.opts.ReadZeroes {
		r.Status = block.StatusZero
	}
	r.Pnum = r.Len
	d.complete(r)
}

// Truncate sets the size.
func (d *Driver) Truncate(r *block.Request) {
	d.size.Store(r.Off)
	d.complete(r)
}
