// Package bench is ringblk's fio-style benchmark: it reads fio job files and
// fio-style flags, drives I/O through ringblk's block layer (ioengine=ringblk),
// through a bare io_uring ring (ioengine=io_uring, with fio's fixedbufs and
// registerfiles: ringblk's one bare-ring benchmark) or through pread/pwrite
// (ioengine=psync), and reports what fio reports, in fio's human format or
// fio 3.33's JSON. ringblk's "bench" command (internal/benchcmd) is a thin
// wrapper around Main.
//
// # Model
//
//	job file / flags ──Parse──▶ []*Job ──Run──▶ []*JobResult ──▶ human / JSON
//	                                 │ per job clone (numjobs)
//	                                 ▼
//	                     worker: generator (dir, off, len) + stats + verify
//	                                 │
//	           ┌─────────────────────┼───────────────────────┐
//	      ringblk engine        io_uring engine          psync engine
//	   aio.Context per clone    uring.Ring per clone     one locked thread
//	   block.Queue on a         (no block layer)         per clone
//	   FrontEnd → Node(raw|null)
//
// Each clone of a job (numjobs) runs on its own OS thread: the ringblk engine
// gives every clone an aio.Context pinned to core (clone index mod cores) and
// runs the whole I/O loop as callbacks on that Context, so the block layer
// is exercised exactly as an IOThread would use it.
//
// # Hot path
//
// A worker preallocates iodepth I/O units, each with its buffer (from the
// Context's arena for the ringblk engine, so reads and writes go out as
// READ_FIXED/WRITE_FIXED; mmap'd memory for the other engines). A completion
// reads the clock once, records clat and lat into per-direction HDR
// histograms (allocation-free) and frees the unit; one bottom half per
// completion batch refills every free unit: it reads the clock once (the
// issue time), queues iodepth_batch_submit units at a time to the front
// end and reads the clock again after each batch (the submit time). The
// ringblk engine then hands everything the refill queued to the kernel in
// one io_uring_enter (an outer Context Plug: ringblk's batched submission;
// with iodepth_batch_submit=1 fio would enter once per unit), so slat ends
// when a batch is in the ring's submission queue, a few hundred
// nanoseconds before the enter that sends it.
// fio's definitions hold: slat = submit − issue, clat = completion − submit,
// lat = completion − issue. Nothing on that path allocates
// (TestRingblkEngineZeroAllocs).
//
// # Scope
//
// Options are checked against a table: an option fio knows that bench does
// not implement is an error that names it, never silently ignored. Errors in
// job files name the file and line.
package bench
