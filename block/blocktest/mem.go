package blocktest

import (
	"sync"

	"github.com/ringblk/ringblk/block"
)

// Mem is an in-memory driver: reads and writes go to Data under a mutex and
// complete from a bottom half. It records the largest request it saw and
// rejects misaligned ones when Align is set, so alignment and splitting in
// block can be checked against it.
type Mem struct {
	block.DriverBase
	Align int64
	// ViaRing completes requests through a no-op on the request Context's
	// ring instead of a bottom half, so a fake ring's reordering and delays
	// apply to them.
	ViaRing bool

	mu      sync.Mutex
	Data    []byte
	MaxSeen int64
	Bad     int // misaligned requests that reached the driver
	Ops     int
}

// NewMem returns a Mem of size bytes.
func NewMem(size int64) *Mem { return &Mem{Data: make([]byte, size)} }

func (d *Mem) Length(*block.Node) (int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return int64(len(d.Data)), nil
}

func (d *Mem) check(r *block.Request) {
	d.Ops++
	if r.Len > d.MaxSeen {
		d.MaxSeen = r.Len
	}
	if d.Align > 1 && (r.Off%d.Align != 0 || r.Len%d.Align != 0) {
		d.Bad++
	}
}

func (d *Mem) done(r *block.Request) {
	if d.ViaRing {
		r.Context().Nop(r, 0)
		return
	}
	r.CompleteLater(nil)
}

func (d *Mem) Read(r *block.Request) {
	d.mu.Lock()
	d.check(r)
	off := r.Off
	for _, b := range r.Iov {
		copy(b, d.Data[off:])
		off += int64(len(b))
	}
	d.mu.Unlock()
	d.done(r)
}

func (d *Mem) Write(r *block.Request) {
	d.mu.Lock()
	d.check(r)
	off := r.Off
	for _, b := range r.Iov {
		copy(d.Data[off:], b)
		off += int64(len(b))
	}
	d.mu.Unlock()
	d.done(r)
}

// Truncate sets the length to r.Off; a growth reads as zeros.
func (d *Mem) Truncate(r *block.Request) {
	d.mu.Lock()
	data := make([]byte, r.Off)
	copy(data, d.Data)
	d.Data = data
	d.mu.Unlock()
	d.done(r)
}

func (d *Mem) WriteZeroes(r *block.Request) {
	d.mu.Lock()
	d.check(r)
	clear(d.Data[r.Off : r.Off+r.Len])
	d.mu.Unlock()
	d.done(r)
}

func (d *Mem) Flush(r *block.Request) { d.done(r) }

// Snapshot returns a copy of Data, taken under the driver's lock (safe
// while requests run on other Contexts).
func (d *Mem) Snapshot() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]byte(nil), d.Data...)
}
