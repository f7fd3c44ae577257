package job_test

import (
	"errors"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/job"
)

// TestCheckpointKeepsPersistence: when the chain's bitmap is persistent
// (a qcow2 bitmap stored at close), a checkpoint hands persistence to the
// new active bitmap of that name and keeps the frozen name@seq in memory;
// a checkpoint whose During fails gives it back to the restored bitmap.
func TestCheckpointKeepsPersistence(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	n := e.Open(randomMem(1<<20, 7), block.Options{Name: "src"})
	b, err := n.AddBitmap("cbt", 4096)
	if err != nil {
		t.Fatal(err)
	}
	b.Persistent = true
	ch, err := job.NewChain(n, "cbt", 4096)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := ch.Checkpoint(nil)
	if err != nil {
		t.Fatal(err)
	}
	if act := n.Bitmap("cbt"); act == nil || act == b || !act.Persistent || cp.Changes != b || b.Persistent {
		t.Fatalf("after checkpoint: active %v persistent %v, frozen persistent %v", act, act != nil && act.Persistent, b.Persistent)
	}
	act := n.Bitmap("cbt")
	boom := errors.New("during fails")
	if _, err := ch.Checkpoint(func(*job.Checkpoint) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("failing checkpoint: %v", err)
	}
	if n.Bitmap("cbt") != act || !act.Persistent {
		t.Fatalf("after a failed checkpoint the active bitmap is %v (persistent %v)", n.Bitmap("cbt"), act.Persistent)
	}
}
