package block_test

import (
	"fmt"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// chainClass is T29's edge class: a node-parent edge whose filename update
// polls the main Context twice without blocking (if the job could run, the
// first poll lets it leave its loop and the second runs its exit, which
// deletes job-node and its edge) and records what it saw.
type chainClass struct {
	block.ChildClass // NodeClass for everything else
	e                *blocktest.Env
	job              *blocktest.Job

	calls           int
	files           []string
	notOnBase       int  // calls for an edge that did not point at base
	jobDoneInUpdate bool // the job completed during an update
}

func (k *chainClass) UpdateFilename(c *block.Child, base *block.Node, backingFile string) error {
	k.calls++
	k.files = append(k.files, backingFile)
	if c.Node() != base {
		k.notOnBase++
	}
	k.e.Main.Poll(false)
	k.e.Main.Poll(false)
	if k.job.Completed() {
		k.jobDoneInUpdate = true
	}
	return nil
}

// TestT29DropIntermediatePoll: node-2 —chain→ node-1 —chain→ node-0 with
// the polling chainClass; job-node has node-1 as backing and only a job
// (ready to complete) holds job-node. Dropping node-1 must drain first, so
// the polls inside the filename update cannot let the job finish and delete
// job-node's edge while the edges of node-1 are being rewritten; afterwards
// the job completes normally.
func TestT29DropIntermediatePoll(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	var chain [3]*block.Node
	var drv [3]*blocktest.Driver
	for i := range chain {
		drv[i] = blocktest.NewDriver(64 << 10)
		chain[i] = e.Open(drv[i], block.Options{Name: fmt.Sprintf("node-%d", i)})
	}
	jd := blocktest.NewDriver(64 << 10)
	jobNode := e.Open(jd, block.Options{Name: "job-node"})
	e.Attach(jobNode, chain[1], "backing", block.RoleBacking)

	job := blocktest.NewJob(e.G, e.Main)
	job.Sleep = 0
	cls := &chainClass{ChildClass: block.NodeClass, e: e, job: job}
	// The chain links come last, so they head the parent lists.
	for i := 1; i < 3; i++ {
		if _, err := e.G.Attach(chain[i], chain[i-1], block.ChildSpec{Name: "chain", Role: block.RoleBacking, Class: cls}); err != nil {
			t.Fatal(err)
		}
	}
	chain[0].Unref() // held by node-1's chain edge
	chain[1].Unref() // held by node-2's chain edge and job-node
	if _, err := job.AddNode(jobNode, "job-node"); err != nil {
		t.Fatal(err)
	}
	jobNode.Unref() // the job holds the only reference
	job.Start()
	e.WaitFor("job running", func() bool { return job.Iterations.Load() > 0 })

	var err error
	var doneInDrop bool
	var parents []*block.Child
	e.OnMain(func() {
		job.RequestComplete()
		err = e.G.DropIntermediate(chain[1], chain[0], "")
		doneInDrop = job.Completed()
		parents = chain[0].Parents()
	})
	if err != nil {
		t.Fatalf("drop intermediate: %v", err)
	}
	if cls.calls != 1 || cls.notOnBase != 0 || cls.files[0] != "node-0" {
		t.Fatalf("chain class updates: %d calls, %d not on base, files %v; want 1 on base naming node-0", cls.calls, cls.notOnBase, cls.files)
	}
	if cls.jobDoneInUpdate || doneInDrop {
		t.Fatal("the job completed inside drop intermediate: the affected nodes were not drained")
	}
	if jd.BackingFileChanges.Load() != 1 || jd.BackingFile != "node-0" {
		t.Fatalf("job-node's backing file: %q after %d changes, want node-0 once", jd.BackingFile, jd.BackingFileChanges.Load())
	}
	if len(parents) != 2 || parents[0].Parent() != chain[2] && parents[1].Parent() != chain[2] ||
		parents[0].Parent() != jobNode && parents[1].Parent() != jobNode {
		t.Fatalf("node-0's parents after the drop: %v, want node-2 and job-node", parents)
	}
	if !drv[1].Closed.Load() || chain[1].Quiesce() != 0 {
		t.Fatal("node-1 was not deleted (or left quiesced) after the drop")
	}
	if err := job.Complete(t); err != nil || !job.Completed() {
		t.Fatalf("job: %v completed %v", err, job.Completed())
	}
	if ps := chain[0].Parents(); len(ps) != 1 || ps[0].Parent() != chain[2] {
		t.Fatalf("node-0's parents after the job: %v, want node-2 only", ps)
	}
	wantQ(t, "after", chain[0], 0, chain[2], 0)
	chain[2].Unref()
	if !drv[0].Closed.Load() || !jd.Closed.Load() {
		t.Fatal("nodes leaked")
	}
}

// TestDropIntermediateErrors: base outside top's chain is refused before
// anything changes; a backing parent whose driver cannot record a backing
// file fails the update with ENOTSUP after the edge moved (QEMU keeps it).
func TestDropIntermediateErrors(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	base := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "base"})
	mid := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "mid"})
	top := e.Open(&blocktest.Null{Size: 64 << 10}, block.Options{Name: "top"})
	other := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "other"})
	e.Attach(mid, base, "backing", block.RoleBacking)
	c := e.Attach(top, mid, "backing", block.RoleBacking)
	base.Unref()
	mid.Unref()

	err := e.G.DropIntermediate(mid, other, "")
	if err == nil || !block.IsKind(err, block.InvalidFormat) || c.Node() != mid {
		t.Fatalf("base outside the chain: %v, edge on %s", err, c.Node().Name())
	}
	err = e.G.DropIntermediate(mid, base, "new")
	if !block.IsKind(err, block.Unsupported) || block.Errno(err) != syscall.ENOTSUP {
		t.Fatalf("parent without BackingFileChanger: %v, want ENOTSUP", err)
	}
	if c.Node() != base || base.Quiesce() != 0 || top.Quiesce() != 0 {
		t.Fatalf("after the failed update: edge on %s, quiesce base %d top %d", c.Node().Name(), base.Quiesce(), top.Quiesce())
	}
	top.Unref()
	other.Unref()
}
