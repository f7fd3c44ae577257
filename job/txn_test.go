package job_test

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/job"
)

// txnPair is two incremental backups, each of its own source with a
// bitmap "inc" marking three 64 KiB chunks; the second target fails
// writes at 9*64 KiB when fail is set.
type txnPair struct {
	e      *blocktest.Env
	m      *job.Manager
	srcs   [2]*block.Node
	tgts   [2]*block.Node
	bms    [2]interface{ Count() int64 }
	jobs   [2]*job.Job
	mu     sync.Mutex
	events []job.Event
}

func newTxnPair(t *testing.T, fail bool, group *job.Txn, opts [2]job.Options) *txnPair {
	t.Helper()
	const size = 1 << 20
	p := &txnPair{e: blocktest.NewEnv(t, 0)}
	e := p.e
	p.m = job.NewManager(e.G, func(ev job.Event) {
		p.mu.Lock()
		p.events = append(p.events, ev)
		p.mu.Unlock()
	})
	for i := range p.srcs {
		p.srcs[i] = e.Open(randomMem(size, uint64(i+1)), block.Options{Name: fmt.Sprintf("src%d", i)})
		var dbg *blocktest.Debug
		p.tgts[i], dbg, _ = debugTarget(e, fmt.Sprintf("tgt%d", i), size)
		p.bms[i] = markedSource(t, p.srcs[i])
		if fail && i == 1 {
			dbg.AddRule(blocktest.Rule{Op: block.OpWrite, OffMin: 9 << 16, Err: syscall.EIO})
		}
		o := opts[i]
		o.ID = fmt.Sprintf("j%d", i)
		j, _, err := job.NewBackup(p.m, job.BackupOptions{Options: o, Source: p.srcs[i], Target: p.tgts[i],
			Sync: job.BackupIncremental, Bitmap: "inc", MaxRequest: 64 << 10, Parallel: 1})
		if err != nil {
			t.Fatal(err)
		}
		if group != nil {
			group.Add(j)
		}
		p.jobs[i] = j
	}
	return p
}

func (p *txnPair) start(t *testing.T) {
	t.Helper()
	for _, j := range p.jobs {
		if err := j.Start(); err != nil {
			t.Fatal(err)
		}
	}
}

// ends returns each job's final event type (completed or cancelled) and
// error text.
func (p *txnPair) ends() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]string{}
	for _, ev := range p.events {
		if ev.Type == job.EventCompleted || ev.Type == job.EventCancelled {
			out[ev.ID] = fmt.Sprintf("%v %q", ev.Type, ev.Error)
		}
	}
	return out
}

func (p *txnPair) close() {
	for i := range p.srcs {
		p.srcs[i].Unref()
		p.tgts[i].Unref()
	}
}

// TestGroupedBackupsFailTogether: in a group (QMP's completion-mode
// grouped) the failure of one backup cancels the other, and both
// incremental bitmaps keep every bit, so the next incremental backup of
// either disk copies the same data again. Alone (the control), the
// backup that succeeded clears its bitmap while the other keeps its own:
// the two disks' backups no longer match.
func TestGroupedBackupsFailTogether(t *testing.T) {
	for _, grouped := range []bool{false, true} {
		t.Run(fmt.Sprintf("grouped=%v", grouped), func(t *testing.T) {
			var g *job.Txn
			if grouped {
				g = job.NewTxn()
			}
			// The healthy job is slow (a speed limit), so the failure
			// comes first and must cancel it while it runs.
			p := newTxnPair(t, true, g, [2]job.Options{{Speed: 256 << 10}, {}})
			defer p.close()
			p.start(t)
			err0, err1 := waitDone(t, p.jobs[0]), waitDone(t, p.jobs[1])
			if !errors.Is(err1, syscall.EIO) {
				t.Fatalf("j1: %v, want EIO", err1)
			}
			if !grouped {
				if err0 != nil || p.bms[0].Count() != 0 || p.bms[1].Count() != 3<<16 {
					t.Fatalf("alone: j0 %v, bitmaps %d and %d; want j0 done with its bitmap cleared, j1's kept",
						err0, p.bms[0].Count(), p.bms[1].Count())
				}
				return
			}
			if !errors.Is(err0, job.ErrCancelled) {
				t.Fatalf("j0: %v, want cancelled by its group", err0)
			}
			if p.bms[0].Count() != 3<<16 || p.bms[1].Count() != 3<<16 {
				t.Fatalf("bitmaps %d and %d after the group failed, want %d each", p.bms[0].Count(), p.bms[1].Count(), 3<<16)
			}
			ends := p.ends()
			if ends["j0"] != fmt.Sprintf("%v %q", job.EventCancelled, "") || ends["j1"] == "" || ends["j1"][:len(job.EventCompleted.String())] != job.EventCompleted.String() {
				t.Fatalf("final events %v: want j1 completed with its error, j0 cancelled", ends)
			}
		})
	}
}

// TestGroupedBackupsWaitForEachOther: a backup of a group that finished
// waits (status waiting, its bitmap still frozen) until the other has;
// then both complete and both bitmaps are cleared.
func TestGroupedBackupsWaitForEachOther(t *testing.T) {
	g := job.NewTxn()
	p := newTxnPair(t, false, g, [2]job.Options{{}, {Speed: 512 << 10}})
	defer p.close()
	p.start(t)
	deadline := time.Now().Add(20 * time.Second)
	for p.jobs[0].Status() != job.Waiting {
		if time.Now().After(deadline) || p.jobs[1].Status() == job.Concluded {
			t.Fatalf("j0 %v while j1 %v: want j0 waiting for its group", p.jobs[0].Status(), p.jobs[1].Status())
		}
		time.Sleep(time.Millisecond)
	}
	if st := p.jobs[1].Status(); st != job.Running {
		t.Fatalf("j1 %v while j0 waits", st)
	}
	if p.bms[0].Count() != 3<<16 {
		t.Fatalf("j0's bitmap changed before its group finished: %d", p.bms[0].Count())
	}
	if err := waitDone(t, p.jobs[1]); err != nil {
		t.Fatal(err)
	}
	if err := waitDone(t, p.jobs[0]); err != nil {
		t.Fatal(err)
	}
	if p.bms[0].Count() != 0 || p.bms[1].Count() != 0 {
		t.Fatalf("bitmaps %d and %d after the group succeeded", p.bms[0].Count(), p.bms[1].Count())
	}
}

// TestGroupedManualFinalize: with auto-finalize off on one job, the whole
// group stays pending; finalizing either job finalizes both.
func TestGroupedManualFinalize(t *testing.T) {
	g := job.NewTxn()
	p := newTxnPair(t, false, g, [2]job.Options{{}, {ManualFinalize: true}})
	defer p.close()
	p.start(t)
	deadline := time.Now().Add(20 * time.Second)
	for p.jobs[0].Status() != job.Pending || p.jobs[1].Status() != job.Pending {
		if time.Now().After(deadline) {
			t.Fatalf("j0 %v, j1 %v: want both pending", p.jobs[0].Status(), p.jobs[1].Status())
		}
		time.Sleep(time.Millisecond)
	}
	if err := p.jobs[0].Finalize(); err != nil {
		t.Fatal(err)
	}
	for _, j := range p.jobs {
		if err := waitDone(t, j); err != nil {
			t.Fatal(err)
		}
	}
	if p.bms[0].Count() != 0 || p.bms[1].Count() != 0 {
		t.Fatalf("bitmaps %d and %d after the group's finalize", p.bms[0].Count(), p.bms[1].Count())
	}
}

// TestGroupedCancelWaitingJob: cancelling a job that waits for its group
// aborts the group: the running one is cancelled, both bitmaps are kept.
// Before groups existed a cancel in status waiting was accepted and did
// nothing.
func TestGroupedCancelWaitingJob(t *testing.T) {
	g := job.NewTxn()
	p := newTxnPair(t, false, g, [2]job.Options{{}, {Speed: 256 << 10}})
	defer p.close()
	p.start(t)
	deadline := time.Now().Add(20 * time.Second)
	for p.jobs[0].Status() != job.Waiting {
		if time.Now().After(deadline) {
			t.Fatalf("j0 %v: want waiting", p.jobs[0].Status())
		}
		time.Sleep(time.Millisecond)
	}
	if err := p.jobs[0].Cancel(false); err != nil {
		t.Fatal(err)
	}
	for i, j := range p.jobs {
		if err := waitDone(t, j); !errors.Is(err, job.ErrCancelled) {
			t.Fatalf("j%d: %v, want cancelled", i, err)
		}
	}
	if p.bms[0].Count() != 3<<16 || p.bms[1].Count() != 3<<16 {
		t.Fatalf("bitmaps %d and %d after the group was cancelled", p.bms[0].Count(), p.bms[1].Count())
	}
}
