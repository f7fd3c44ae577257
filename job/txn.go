package job

import "sync"

// Txn groups jobs that complete or fail together: QMP's transaction with
// completion-mode "grouped" (QEMU's JobTxn). A job of a group whose run
// ends well waits (status waiting) until every job of the group has; then
// all go to pending and are finalized together (each one's Prepare, and
// only if every Prepare succeeded, every Commit). When a job of the group
// fails or is cancelled, every other job is cancelled and aborted: an
// incremental backup's bitmap then keeps its bits, in every job of the
// group. A finalize verb on any job of a group finalizes the group (QEMU:
// job_do_finalize applies to the transaction). All of it runs on the main
// Context, where exit and finalize run.
type Txn struct {
	mu       sync.Mutex
	jobs     []*Job
	aborting bool
}

// NewTxn returns an empty group.
func NewTxn() *Txn { return &Txn{} }

// Add puts j, not started yet, into the group.
func (t *Txn) Add(j *Job) {
	t.mu.Lock()
	t.jobs = append(t.jobs, j)
	t.mu.Unlock()
	j.mu.Lock()
	j.txn = t
	j.mu.Unlock()
}

func (t *Txn) members() []*Job {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]*Job(nil), t.jobs...)
}

// startAbort marks the group failed; it reports whether this call did.
func (t *Txn) startAbort() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.aborting {
		return false
	}
	t.aborting = true
	return true
}

func (t *Txn) isAborting() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.aborting
}

// abortOthers cancels every job of the group but failed (main Context):
// one still running is cancelled and aborts when its run ends (its exit
// sees the group failed); one that waits for the group, or is pending,
// is aborted now.
func (t *Txn) abortOthers(failed *Job) {
	if !t.startAbort() {
		return
	}
	for _, k := range t.members() {
		if k == failed {
			continue
		}
		k.mu.Lock()
		switch k.status {
		case Waiting, Pending:
			if k.finalizing {
				k.mu.Unlock()
				continue
			}
			k.cancelled = true
			k.setStatus(Aborting)
			k.mu.Unlock()
			k.flushEvents()
			k.conclude(ErrCancelled, false)
		case Concluded, Null, Aborting:
			k.mu.Unlock()
		default:
			k.mu.Unlock()
			_ = k.Cancel(false) // QEMU's soft cancel; a backup has none
		}
	}
}

// completed is called by a job whose run ended well, now waiting (main
// Context, no job's mu held): once every job of the group has, all move
// to pending and, unless one of them waits for a finalize verb, are
// finalized together.
func (t *Txn) completed() {
	js := t.members()
	for _, k := range js {
		k.mu.Lock()
		st := k.status
		k.mu.Unlock()
		if st != Waiting {
			return
		}
	}
	manual := false
	for _, k := range js {
		k.mu.Lock()
		k.setStatus(Pending)
		if k.opts.ManualFinalize {
			manual = true
			k.pending = append(k.pending, k.blockEvent(EventPending))
		}
		k.mu.Unlock()
		k.flushEvents()
	}
	if !manual {
		t.finalize()
	}
}

// finalize prepares every job of the group and then commits them all, or
// aborts them all if one Prepare failed (main Context).
func (t *Txn) finalize() {
	js := t.members()
	for _, k := range js {
		k.mu.Lock()
		if k.status != Pending || k.finalizing {
			k.mu.Unlock()
			return
		}
	}
	for _, k := range js {
		k.finalizing = true
		k.mu.Unlock()
	}
	errs := make([]error, len(js))
	failed := false
	for i, k := range js {
		if p, ok := k.drv.(Preparer); ok {
			errs[i] = p.Prepare(k)
			failed = failed || errs[i] != nil
		}
	}
	if failed {
		t.startAbort()
	}
	for i, k := range js {
		if !failed {
			k.conclude(nil, true)
			continue
		}
		err := errs[i]
		k.mu.Lock()
		if err == nil {
			k.cancelled = true
			err = ErrCancelled
		}
		k.setStatus(Aborting)
		k.mu.Unlock()
		k.flushEvents()
		k.conclude(err, false)
	}
}
