package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/ringblk/ringblk/internal/nbdtest"
)

// TestContextBoundNodeOnCloneContext: a node whose driver's state belongs
// to one Context (the NBD client here, RBD alike) runs on the Context of
// the clone that submits to it while the clone runs, so requests take no
// hop through the driver's inbox and outbox, and is back on the main
// Context once the clone stopped (its Context is gone then). A second
// clone on the same node leaves it where the first put it.
func TestContextBoundNodeOnCloneContext(t *testing.T) {
	if _, err := exec.LookPath("qemu-nbd"); err != nil {
		t.Skip("qemu-nbd not installed (scripts/deps.sh installs it)")
	}
	file := filepath.Join(benchDir(t), "h.raw")
	f, _ := os.Create(file)
	f.Truncate(1 << 20)
	f.Close()
	sock := nbdtest.StartQemuNbd(t, "-t", "-e", "0", "-f", "raw", file)
	spec := mustParse(t, "--name=h", "--ioengine=ringblk", "--filename=nbd+unix:///?socket="+sock,
		"--rw=randread", "--bs=4k", "--iodepth=4", "--size=1m")
	j := spec.Jobs[0]
	env, err := newRingblkEnv(spec.Jobs)
	if err != nil {
		t.Fatal(err)
	}
	defer env.close()
	rj, err := env.openJob(j, "h#0")
	if err != nil {
		t.Fatal(err)
	}
	defer rj.close()
	done := make(chan *worker, 2)
	c1, err := newRingblkClone([]*ringblkJob{rj}, newWorker(j, 0, 0, 1<<20), -1, done)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := newRingblkClone([]*ringblkJob{rj}, newWorker(j, 1, 0, 1<<20), -1, done)
	if err != nil {
		c1.stop()
		t.Fatal(err)
	}
	if got := rj.node.Context(); got != c1.ctx {
		t.Errorf("while the clones run the NBD node is on %s, want the first clone's Context %s", got.Name(), c1.ctx.Name())
	}
	if err := c1.stop(); err != nil {
		t.Fatal(err)
	}
	if err := c2.stop(); err != nil {
		t.Fatal(err)
	}
	if got := rj.node.Context(); got != env.main {
		t.Errorf("after the clones stopped the NBD node is on %s, want the main Context", got.Name())
	}
}
