package block

import (
	"syscall"
)

// Optional operations. A driver offers each of them by implementing the
// matching interface below; block checks with a type assertion when the
// request is dispatched, on the request's Context, and completes the
// request with an Unsupported *Error wrapping syscall.ENOTSUP when the
// driver does not (QEMU's -ENOTSUP). They travel as ordinary requests, so
// they hold the node's in-flight count, drain waits for them, and their
// synchronous wrappers run them on the node's Context and wake a waiting
// main Context exactly as the read and write wrappers do (drain.md §2.4,
// I7–I16) — on the early-return paths too, which complete from the pool's
// bottom half like every other early return.
//
//	op                 validation (before the driver)             driver hook
//	OpWriteCompressed  EIO bad range, EACCES read-only,           CompressedWriter
//	                   EPERM inactive, EINVAL unaligned
//	OpLoadVMState      EIO bad position                           VMStateDriver
//	OpSaveVMState      EIO bad position, EACCES, EPERM            VMStateDriver
//	OpCheck            EINVAL without a result                    Checker
//	OpActivate         early success if active                    Activator (optional:
//	OpInactivate       early success if inactive                   without it the flag flips)
//
// None of them is split at MaxTransfer or padded to the alignment.

// CompressedWriter is implemented by drivers that store compressed data
// (qcow2). WriteCompressed writes r.Iov at r.Off, both multiples of the
// node's alignment; the driver decides what a compressible unit is and may
// refuse other sizes with EINVAL.
type CompressedWriter interface {
	WriteCompressed(r *Request)
}

// VMStateDriver is implemented by drivers that can store a VM's state next
// to the disk contents (qcow2 puts it after the guest-visible end). The
// position r.Off is in the VM-state area, not the disk; r.Iov holds the data.
type VMStateDriver interface {
	LoadVMState(r *Request)
	SaveVMState(r *Request)
}

// Checker is implemented by drivers that can verify (and, as r.CheckMode()
// allows, repair) their metadata (QEMU's bdrv_co_check). The driver fills
// *r.CheckResult() and completes r; an error means the check itself could
// not run, not that it found problems.
type Checker interface {
	Check(r *Request)
}

// Activator is implemented by drivers that cache image state and must
// drop or reload it when a node is handed to another process (migration).
// Inactivate runs after the node was marked inactive: flush and drop what
// is cached, write nothing to the image afterwards. Activate runs after the
// node was marked active again: re-read metadata that another process may
// have changed (QEMU's bdrv_co_invalidate_cache). An error restores the
// previous state.
type Activator interface {
	Activate(r *Request)
	Inactivate(r *Request)
}

// BackingFileChanger is implemented by drivers that record the name of
// their backing file in the image (qcow2). NodeClass calls it when
// DropIntermediate points a node's backing edge at a new base; it runs on
// the main Context, inside a drained section covering the node.
type BackingFileChanger interface {
	ChangeBackingFile(n *Node, backingFile string, base *Node) error
}

// FileNamer is implemented by drivers that know the name of the image file
// they serve (a file driver its path; a format driver its file child's).
// DropIntermediate records it as the new backing file when the caller
// names none, as QEMU records the base's filename.
type FileNamer interface {
	Filename() string
}

// Filename is the name of the image file n serves, as its driver knows it
// (FileNamer), or "" when the driver does not say.
func (n *Node) Filename() string {
	if f, ok := n.drv.(FileNamer); ok {
		return f.Filename()
	}
	return ""
}

// FastZeroer is implemented by drivers that honour NoFallback on
// write-zeroes: such a request either zeroes the range without writing
// buffers of zeroes (a hole punch, a zero-range fallocate, a device's
// guaranteed unmap) or fails with ENOTSUP, leaving the range as it was.
// block answers a NoFallback write-zeroes to any other driver with
// ENOTSUP without calling it, so a driver that falls back silently (or
// whose zeroing cost is unknown, as with formats that allocate) is never
// asked to promise speed. FastZeroes reports whether the driver takes
// such requests at all (false: block refuses them as for a driver without
// the method).
type FastZeroer interface {
	FastZeroes() bool
}

func fastZeroes(d Driver) bool {
	f, ok := d.(FastZeroer)
	return ok && f.FastZeroes()
}

// CheckMode says what Check may repair. Zero only reports.
type CheckMode uint8

const (
	CheckFixLeaks  CheckMode = 1 << iota // free clusters that nothing references
	CheckFixErrors                       // repair inconsistent metadata too
)

// CheckResult is what a consistency check found, in qemu-img check's
// categories. Counts are of clusters unless named otherwise.
type CheckResult struct {
	Corruptions      int // metadata errors (wrong refcounts, bad pointers)
	Leaks            int // allocated but unreferenced clusters
	CheckErrors      int // errors that kept the check from finishing a part
	CorruptionsFixed int
	LeaksFixed       int
	// ImageEndOffset is the byte offset after the last used host cluster.
	ImageEndOffset int64
	// Fragmentation information of the guest-visible clusters.
	AllocatedClusters  int64
	TotalClusters      int64
	FragmentedClusters int64
	CompressedClusters int64
}

type checkState struct {
	mode CheckMode
	res  CheckResult
}

// CheckMode returns what an OpCheck request may repair.
func (r *Request) CheckMode() CheckMode {
	if r.check == nil {
		return 0
	}
	return r.check.mode
}

// CheckResult returns where an OpCheck request's driver puts its findings
// (nil for any other request).
func (r *Request) CheckResult() *CheckResult {
	if r.check == nil {
		return nil
	}
	return &r.check.res
}

// carriesData reports whether op moves r.Iov (and r.Len is its length).
func carriesData(op Op) bool {
	switch op {
	case OpRead, OpWrite, OpWriteCompressed, OpLoadVMState, OpSaveVMState:
		return true
	}
	return false
}

// validateControl validates the requests without a byte range.
func (n *Node) validateControl(r *Request) error {
	switch r.Op {
	case OpCheck:
		if r.check == nil {
			return newError(OutOfBounds, r.Op, n, 0, syscall.EINVAL)
		}
	case OpActivate:
		if !n.inactive.Load() {
			return errEarlySuccess
		}
	case OpInactivate:
		if n.inactive.Load() {
			return errEarlySuccess
		}
	}
	return nil
}

// validateCompressed runs after the common range checks (EIO).
func (n *Node) validateCompressed(r *Request) error {
	if n.readOnly.Load() {
		return newError(Io, r.Op, n, r.Off, syscall.EACCES)
	}
	if n.inactive.Load() {
		return newError(Io, r.Op, n, r.Off, syscall.EPERM)
	}
	if a := int64(n.opts.Align); a > 1 && (r.Off|r.Len)&(a-1) != 0 {
		return newError(OutOfBounds, r.Op, n, r.Off, syscall.EINVAL)
	}
	return nil
}

// dispatchOptional hands an optional operation to the driver, or fails it
// as unsupported.
func (n *Node) dispatchOptional(r *Request) {
	switch r.Op {
	case OpWriteCompressed:
		if d, ok := n.drv.(CompressedWriter); ok {
			d.WriteCompressed(r)
			return
		}
	case OpLoadVMState:
		if d, ok := n.drv.(VMStateDriver); ok {
			d.LoadVMState(r)
			return
		}
	case OpSaveVMState:
		if d, ok := n.drv.(VMStateDriver); ok {
			d.SaveVMState(r)
			return
		}
	case OpCheck:
		if d, ok := n.drv.(Checker); ok {
			r.check.res = CheckResult{}
			d.Check(r)
			return
		}
	case OpActivate:
		// Active before the driver runs: it may need to write (QEMU clears
		// BDRV_O_INACTIVE before invalidating the cache).
		n.inactive.Store(false)
		if d, ok := n.drv.(Activator); ok {
			d.Activate(r)
			return
		}
		r.Complete(nil)
		return
	case OpInactivate:
		// Inactive before the driver flushes: nothing new may write.
		n.inactive.Store(true)
		if d, ok := n.drv.(Activator); ok {
			d.Inactivate(r)
			return
		}
		r.Complete(nil)
		return
	}
	r.Complete(r.unsupported())
}

// Inactive reports whether the node is inactive (handed over for
// migration): it refuses writes with EPERM until Activate.
func (n *Node) Inactive() bool { return n.inactive.Load() }

// WriteCompressed writes p at off as compressed data (QEMU's
// bdrv_pwrite_compressed). A driver without CompressedWriter fails it with
// ENOTSUP; a negative offset fails with EIO before that.
func (n *Node) WriteCompressed(p []byte, off int64) (int, error) {
	s := n.syncReq(func(r *Request) { r.Op, r.Off = OpWriteCompressed, off; r.SetBuf(p) })
	if s.err != nil {
		return 0, s.err
	}
	return len(p), nil
}

// WriteCompressed writes p at off as compressed data through the front end
// (QEMU's blk_pwrite_compressed). It is throttled as a write.
func (fe *FrontEnd) WriteCompressed(p []byte, off int64) (int, error) {
	s := fe.syncReq(func(r *Request) { r.Op, r.Off = OpWriteCompressed, off; r.SetBuf(p) })
	if s.err != nil {
		return 0, s.err
	}
	return len(p), nil
}

// WriteCompressed submits a compressed write of buf at off.
func (q *Queue) WriteCompressed(buf []byte, off int64, done Done, tag uint64) {
	r := q.pool.Get()
	r.Op, r.Off, r.Tag = OpWriteCompressed, off, tag
	r.SetBuf(buf)
	q.Submit(r, done)
}

// LoadVMState reads len(buf) bytes of saved VM state at pos (QEMU's
// bdrv_load_vmstate). A driver without VMStateDriver fails it with ENOTSUP.
func (n *Node) LoadVMState(buf []byte, pos int64) (int, error) {
	s := n.syncReq(func(r *Request) { r.Op, r.Off = OpLoadVMState, pos; r.SetBuf(buf) })
	if s.err != nil {
		return 0, s.err
	}
	return len(buf), nil
}

// SaveVMState writes buf as VM state at pos (QEMU's bdrv_save_vmstate).
func (n *Node) SaveVMState(buf []byte, pos int64) (int, error) {
	s := n.syncReq(func(r *Request) { r.Op, r.Off = OpSaveVMState, pos; r.SetBuf(buf) })
	if s.err != nil {
		return 0, s.err
	}
	return len(buf), nil
}

// Check verifies the node's metadata and repairs what mode allows (QEMU's
// bdrv_check). A driver without Checker fails it with ENOTSUP. It does not
// drain: a repairing check is the caller's to run on an idle node.
func (n *Node) Check(mode CheckMode) (CheckResult, error) {
	cs := &checkState{mode: mode}
	s := n.syncReq(func(r *Request) { r.Op, r.check = OpCheck, cs })
	if s.err != nil {
		return CheckResult{}, s.err
	}
	return cs.res, nil
}

// Activate makes n and everything below it active again (QEMU's
// bdrv_activate): children first, then n; each inactive node clears its
// flag and runs the driver's Activator hook on its own Context. An active
// node returns at once with success (an early return that still completes
// on the node's Context and wakes the waiting caller). Marshalled to the
// main Context, which owns the edge lists.
func (n *Node) Activate() (err error) {
	n.g.Control(func() { err = n.activateTree(make(map[*Node]bool)) })
	return err
}

func (n *Node) activateTree(seen map[*Node]bool) error {
	n.g.assertMain()
	if seen[n] {
		return nil
	}
	seen[n] = true
	for _, c := range n.Children() {
		if ch := c.node.Load(); ch != nil {
			if err := ch.activateTree(seen); err != nil {
				return err
			}
		}
	}
	if s := n.syncReq(func(r *Request) { r.Op = OpActivate }); s.err != nil {
		n.inactive.Store(true) // the driver failed: still inactive
		return s.err
	}
	return nil
}

// Inactivate hands n and what only it uses over to another process (QEMU's
// bdrv_inactivate, for migration): n is drained, marked inactive (writes
// fail with EPERM from then on) and its driver's Activator hook flushes;
// then each child follows, unless another parent node of that child is
// still active. A node parent of n that is still active makes it fail with
// EPERM and nothing changes. An inactive node returns at once with success.
// Marshalled to the main Context.
func (n *Node) Inactivate() (err error) {
	n.g.Control(func() {
		for _, c := range n.parents {
			if p := c.parentNode; p != nil && !p.inactive.Load() {
				err = newError(Io, OpInactivate, n, 0, syscall.EPERM)
				return
			}
		}
		n.Ref() // the drain polls: keep n alive through it
		n.drainedBegin()
		err = n.inactivateTree(true)
		n.drainedEnd()
		n.unref()
	})
	return err
}

func (n *Node) inactivateTree(top bool) error {
	if !top {
		for _, c := range n.parents {
			if p := c.parentNode; p != nil && !p.inactive.Load() {
				return nil // still used by an active parent: stays active
			}
		}
	}
	if s := n.syncReq(func(r *Request) { r.Op = OpInactivate }); s.err != nil {
		n.inactive.Store(false)
		return s.err
	}
	for _, c := range n.Children() {
		if ch := c.node.Load(); ch != nil {
			if err := ch.inactivateTree(false); err != nil {
				return err
			}
		}
	}
	return nil
}
