package bench

import (
	"path/filepath"
	"testing"

	"github.com/ringblk/ringblk/uring"
)

// TestSQThreadPoll: sqthread_poll gives the clone's ring an SQ polling
// thread on both ring engines, and jobs still run; psync refuses it.
func TestSQThreadPoll(t *testing.T) {
	spec := mustParse(t, "--name=p", "--ioengine=io_uring", "--sqthread_poll", "--sqthread_poll_cpu=0")
	r, err := uring.New(8, sqPollOptions(spec.Jobs[0])...)
	if err != nil {
		t.Skipf("this kernel refuses an SQPOLL ring: %v", err)
	}
	flags := r.Params().Flags
	r.Close()
	if flags&uring.IORING_SETUP_SQPOLL == 0 || flags&uring.IORING_SETUP_SQ_AFF == 0 {
		t.Errorf("ring flags %#x: want SQPOLL and SQ_AFF", flags)
	}
	if len(sqPollOptions(mustParse(t, "--name=n", "--ioengine=io_uring").Jobs[0])) != 0 {
		t.Error("SQPOLL without sqthread_poll")
	}
	dir := benchDir(t)
	for _, eng := range []string{"io_uring", "ringblk"} {
		res := mustRun(t, mustParse(t, "--name=s", "--ioengine="+eng, "--filename="+filepath.Join(dir, eng), "--size=1m",
			"--rw=randrw", "--iodepth=8", "--sqthread_poll", "--nonvectored=1"))
		if w := res.Jobs[0].Clones[0]; w.stats[DirRead].ios+w.stats[DirWrite].ios != 256 {
			t.Errorf("%s: %d+%d I/Os, want 256", eng, w.stats[DirRead].ios, w.stats[DirWrite].ios)
		}
	}
	if _, err := ParseArgs([]string{"--name=x", "--ioengine=psync", "--sqthread_poll"}); err == nil {
		t.Error("psync accepted sqthread_poll")
	}
	if _, err := ParseArgs([]string{"--name=x", "--ioengine=io_uring", "--nonvectored=0"}); err == nil {
		t.Error("nonvectored=0 accepted")
	}
}
