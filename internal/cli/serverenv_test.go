package cli

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
)

// TestServerEnvRunsBatch: the main Context of NewServerEnv (ringblk nbd's)
// runs under SCHED_BATCH, NewBlkEnv's (every other command's) under the
// normal policy.
func TestServerEnvRunsBatch(t *testing.T) {
	if attr, err := unix.SchedGetAttr(0, 0); err != nil || attr.Policy != unix.SCHED_NORMAL {
		t.Skip("the test runs under a non-normal policy (chrt): Batch leaves such threads alone")
	}
	got, err := envPolicy(NewBlkEnv)
	if err != nil {
		t.Skipf("no io_uring: %v", err)
	}
	if got != unix.SCHED_NORMAL {
		t.Errorf("NewBlkEnv: main Context thread policy %d, want %d (normal)", got, unix.SCHED_NORMAL)
	}
	got, err = envPolicy(NewServerEnv)
	if err != nil {
		t.Fatal(err)
	}
	if got != unix.SCHED_BATCH {
		t.Errorf("NewServerEnv: main Context thread policy %d, want %d (SCHED_BATCH)", got, unix.SCHED_BATCH)
	}
}

func envPolicy(mk func() (*aio.Context, *block.Graph, error)) (uint32, error) {
	c, _, err := mk()
	if err != nil {
		return 0, err
	}
	defer c.Stop()
	var p uint32
	var gerr error
	c.Run(func() {
		var attr *unix.SchedAttr
		if attr, gerr = unix.SchedGetAttr(0, 0); gerr == nil {
			p = attr.Policy
		}
	})
	return p, gerr
}
