package job

import (
	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
)

// Iteration is one call of Driver.Iterate: the coroutine it runs in and
// helpers that submit requests through the job's edges and park the
// coroutine until they complete. Requests run on the job's Context.
type Iteration struct {
	Job   *Job
	Co    *aio.Co
	sleep int64
	w     waiter
}

// waiter counts a batch of requests; its RequestDone runs on the
// coroutine's Context and wakes the coroutine when the batch is done.
type waiter struct {
	co      *aio.Co
	pending int
	err     error
	errOff  int64
	errOp   block.Op
	status  block.Status
	pnum    int64
}

func (w *waiter) RequestDone(r *block.Request, err error) {
	if err != nil && w.err == nil {
		w.err, w.errOff, w.errOp = err, r.Off, r.Op
	}
	if r.Op == block.OpBlockStatus {
		w.status, w.pnum = r.Status, r.Pnum
	}
	w.pending--
	if w.pending == 0 {
		w.co.Wake()
	}
}

// submitter is a *block.Child (a job edge) or a *block.Node.
type submitter interface {
	Submit(r *block.Request, done block.Done)
}

func (it *Iteration) pool() *block.Pool { return it.Job.g.Pool(it.Co.Context()) }

// Submit starts one request of the current batch on c (its Done is the
// batch): fill sets Op, Off, buffers and flags.
func (it *Iteration) Submit(c submitter, fill func(r *block.Request)) {
	it.w.co = it.Co
	r := it.pool().Get()
	fill(r)
	it.w.pending++
	c.Submit(r, &it.w)
}

// SubmitRead and SubmitWrite start a read or write of buf at off on c as
// part of the current batch.
func (it *Iteration) SubmitRead(c submitter, buf []byte, off int64) {
	it.w.co = it.Co
	r := it.pool().Get()
	r.Op = block.OpRead
	r.Off = off
	r.SetBuf(buf)
	it.w.pending++
	c.Submit(r, &it.w)
}

func (it *Iteration) SubmitWrite(c submitter, buf []byte, off int64, flags block.Flags) {
	it.w.co = it.Co
	r := it.pool().Get()
	r.Op = block.OpWrite
	r.Off = off
	r.Flags = flags
	r.SetBuf(buf)
	it.w.pending++
	c.Submit(r, &it.w)
}

// Wait parks the coroutine until every request of the batch completed and
// returns the first error with its offset and op.
func (it *Iteration) Wait() (err error, off int64, op block.Op) {
	for it.w.pending > 0 {
		it.Co.Yield()
	}
	err, off, op = it.w.err, it.w.errOff, it.w.errOp
	it.w.err = nil
	return err, off, op
}

// Read reads buf at off through c and waits.
func (it *Iteration) Read(c submitter, buf []byte, off int64) error {
	it.SubmitRead(c, buf, off)
	err, _, _ := it.Wait()
	return err
}

// Write writes buf at off through c and waits.
func (it *Iteration) Write(c submitter, buf []byte, off int64, flags block.Flags) error {
	it.SubmitWrite(c, buf, off, flags)
	err, _, _ := it.Wait()
	return err
}

// WriteZeroes zeroes [off, off+n) through c and waits.
func (it *Iteration) WriteZeroes(c submitter, off, n int64, flags block.Flags) error {
	it.Submit(c, func(r *block.Request) { r.Op, r.Off, r.Len, r.Flags = block.OpWriteZeroes, off, n, flags })
	err, _, _ := it.Wait()
	return err
}

// Flush flushes c's node and waits.
func (it *Iteration) Flush(c submitter) error {
	it.Submit(c, func(r *block.Request) { r.Op = block.OpFlush })
	err, _, _ := it.Wait()
	return err
}

// BlockStatus asks c's node about [off, off+n) and waits.
func (it *Iteration) BlockStatus(c submitter, off, n int64) (block.Status, int64, error) {
	it.Submit(c, func(r *block.Request) { r.Op, r.Off, r.Len = block.OpBlockStatus, off, n })
	err, _, _ := it.Wait()
	return it.w.status, it.w.pnum, err
}
