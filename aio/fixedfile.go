package aio

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/ringblk/ringblk/internal/invariants"
)

// Registered files (IOSQE_FIXED_FILE). A File registered on a Context sits
// in a slot of that Context's registered-file table, and the Context's ops
// on it name the slot instead of the descriptor: the kernel skips the fd
// table lookup and the file reference count per I/O (own-ring.md
// §Registered resources; the saving is measured in docs/performance.md).
//
// The table is per ring, so per Context; a File used by several Contexts
// (a multiqueue node) is registered on each. The File remembers its slots
// in a few atomic words (fileRegs), so the per-op lookup is a short scan of
// pointers: no map, no lock, no allocation.

// fileTableSize is the number of slots a Context's table gets on its first
// RegisterFile: a Context serves a handful of image files.
const fileTableSize = 64

// fileRegs is how many Contexts one File can be registered on at once;
// more Contexts use the plain descriptor.
const fileRegs = 4

// ErrFileTableFull reports that a RegisterFile found no free slot: the
// Context's table, or the File's list of Contexts, is full. The File still
// works, with its plain descriptor.
var ErrFileTableFull = errors.New("aio: no registered-file slot free")

// fileReg is one registration of a File: the Context and the slot. It is
// immutable; registration and unregistration swap whole pointers.
type fileReg struct {
	c    *Context
	slot int32
}

// fixedFiles is a Context's registered-file table (owner only).
type fixedFiles struct {
	files []*File // by slot; nil: free
	free  []int32 // free slots, a stack
	err   error   // the table could not be created (kernel refused)
}

// RegisterFile puts f in c's registered-file table: from now on c's ops on
// f use IOSQE_FIXED_FILE. Registering twice is a no-op. A kernel without
// sparse file tables, or a full table, returns an error and f keeps
// working with its descriptor. Owner only (a SINGLE_ISSUER ring takes
// registrations only from its thread); one system call, not per I/O.
// UnregisterFile before f.Close: a registered file stays open in the
// kernel (with its locks) until it leaves the table. Stop unregisters what
// is left.
func (c *Context) RegisterFile(f *File) error {
	c.assertOwner("RegisterFile")
	if f.slotOn(c) >= 0 {
		return nil
	}
	t := &c.fixed
	if t.files == nil && t.err == nil {
		if err := c.q.RegisterFiles(fileTableSize); err != nil {
			t.err = fmt.Errorf("aio: registered-file table of Context %s: %w", c.name, err)
		} else {
			t.files = make([]*File, fileTableSize)
			t.free = make([]int32, 0, fileTableSize)
			for i := fileTableSize - 1; i >= 0; i-- {
				t.free = append(t.free, int32(i))
			}
		}
	}
	if t.err != nil {
		return t.err
	}
	if len(t.free) == 0 {
		return fmt.Errorf("%w: Context %s has %d files registered", ErrFileTableFull, c.name, fileTableSize)
	}
	slot := t.free[len(t.free)-1]
	reg := &fileReg{c: c, slot: slot}
	k := -1
	for i := range f.regs {
		if f.regs[i].CompareAndSwap(nil, reg) {
			k = i
			break
		}
	}
	if k < 0 {
		return fmt.Errorf("%w: the file is registered on %d Contexts already", ErrFileTableFull, fileRegs)
	}
	if err := c.q.UpdateFile(int(slot), int(f.fd)); err != nil {
		f.regs[k].Store(nil)
		return fmt.Errorf("aio: registering fd %d on Context %s: %w", f.fd, c.name, err)
	}
	t.free = t.free[:len(t.free)-1]
	t.files[slot] = f
	f.nregs.Add(1)
	return nil
}

// UnregisterFile takes f out of c's table; later ops use the descriptor.
// Ops already submitted keep the file they named (the kernel holds it for
// them). A File not registered on c is a no-op. Owner only.
func (c *Context) UnregisterFile(f *File) error {
	c.assertOwner("UnregisterFile")
	return c.unregisterFile(f, true)
}

func (c *Context) unregisterFile(f *File, clearSlot bool) error {
	for i := range f.regs {
		reg := f.regs[i].Load()
		if reg == nil || reg.c != c {
			continue
		}
		f.regs[i].Store(nil)
		f.nregs.Add(-1)
		c.fixed.files[reg.slot] = nil
		c.fixed.free = append(c.fixed.free, reg.slot)
		if clearSlot {
			if err := c.q.UpdateFile(int(reg.slot), -1); err != nil {
				return fmt.Errorf("aio: unregistering fd %d from Context %s: %w", f.fd, c.name, err)
			}
		}
		return nil
	}
	return nil
}

// dropFixedFiles forgets every registration of c (its ring is closing,
// which frees the kernel's table).
func (c *Context) dropFixedFiles() {
	for _, f := range c.fixed.files {
		if f != nil {
			c.unregisterFile(f, false)
		}
	}
}

// slotOn returns f's slot in c's table, or -1. Per op: a few atomic loads.
func (f *File) slotOn(c *Context) int32 {
	if f.nregs.Load() == 0 {
		return -1
	}
	for i := range f.regs {
		if reg := f.regs[i].Load(); reg != nil && reg.c == c {
			return reg.slot
		}
	}
	return -1
}

// checkUnregistered is File.Close's check that no Context still holds f.
func (f *File) checkUnregistered() {
	if !invariants.Enabled || f.nregs.Load() == 0 {
		return
	}
	for i := range f.regs {
		if reg := f.regs[i].Load(); reg != nil {
			invariants.Failf("aio: Close of fd %d while it is registered on Context %s (UnregisterFile first: the kernel keeps a registered file open)", f.fd, reg.c.name)
		}
	}
}

// fileRegsOf is the per-File registration state, embedded in File.
type fileRegsOf struct {
	nregs atomic.Int32
	regs  [fileRegs]atomic.Pointer[fileReg]
}
