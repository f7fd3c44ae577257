package block_test

import (
	"errors"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// syncSetup is the common setup of I1–I16: F → N (test driver, 64 KiB)
// moved to an IOThread; the operations run on the main Context as
// synchronous calls (they run on N's IOThread and wake main with Kick).
func syncSetup(t *testing.T, opts block.Options) (*blocktest.Env, *block.FrontEnd, *block.Node) {
	e := blocktest.NewEnv(t, 1)
	if opts.Name == "" {
		opts.Name = "n"
	}
	n := e.Open(blocktest.NewDriver(64<<10), opts)
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{AllowContextChange: true})
	n.Unref()
	if err := fe.SetContext(e.IO[0]); err != nil || n.Context() != e.IO[0] {
		t.Fatalf("move to IOThread: %v", err)
	}
	t.Cleanup(func() {
		if err := fe.SetContext(e.Main); err != nil {
			t.Errorf("move back: %v", err)
		}
		fe.Close()
	})
	return e, fe, n
}

func wantErrno(t *testing.T, what string, err error, want syscall.Errno) {
	t.Helper()
	if want == 0 {
		if err != nil {
			t.Fatalf("%s: %v, want success", what, err)
		}
		return
	}
	if !errors.Is(err, want) {
		t.Fatalf("%s: %v, want %v", what, err, want)
	}
}

func onMainErr(e *blocktest.Env, fn func() error) (err error) {
	e.OnMain(func() { err = fn() })
	return err
}

func TestI01SyncPread(t *testing.T) {
	e, fe, n := syncSetup(t, block.Options{})
	buf := make([]byte, 512)
	wantErrno(t, "node read", onMainErr(e, func() error { _, err := n.ReadAt(buf, 0); return err }), 0)
	wantErrno(t, "node read -2", onMainErr(e, func() error { _, err := n.ReadAt(buf, -2); return err }), syscall.EIO)
	wantErrno(t, "fe read", onMainErr(e, func() error { _, err := fe.ReadAt(buf, 0); return err }), 0)
	wantErrno(t, "fe read -2", onMainErr(e, func() error { _, err := fe.ReadAt(buf, -2); return err }), syscall.EIO)
}

func TestI02SyncPwrite(t *testing.T) {
	e, fe, n := syncSetup(t, block.Options{})
	buf := make([]byte, 512)
	wantErrno(t, "node write", onMainErr(e, func() error { _, err := n.WriteAt(buf, 0); return err }), 0)
	wantErrno(t, "node write -2", onMainErr(e, func() error { _, err := n.WriteAt(buf, -2); return err }), syscall.EIO)
	wantErrno(t, "fe write", onMainErr(e, func() error { _, err := fe.WriteAt(buf, 0); return err }), 0)
	wantErrno(t, "fe write -2", onMainErr(e, func() error { _, err := fe.WriteAt(buf, -2); return err }), syscall.EIO)
}

func TestI03SyncPreadv(t *testing.T) {
	e, fe, _ := syncSetup(t, block.Options{})
	iov := [][]byte{make([]byte, 256), make([]byte, 256)}
	wantErrno(t, "readv", onMainErr(e, func() error { return fe.Readv(iov, 0) }), 0)
	wantErrno(t, "readv -2", onMainErr(e, func() error { return fe.Readv(iov, -2) }), syscall.EIO)
}

func TestI04SyncPwritev(t *testing.T) {
	e, fe, _ := syncSetup(t, block.Options{})
	iov := [][]byte{make([]byte, 256), make([]byte, 256)}
	wantErrno(t, "writev", onMainErr(e, func() error { return fe.Writev(iov, 0, 0) }), 0)
	wantErrno(t, "writev -2", onMainErr(e, func() error { return fe.Writev(iov, -2, 0) }), syscall.EIO)
}

// I5/I6: a part of a vector (QEMU's qiov offset) is a sub-slice here.
func TestI05SyncPreadvPart(t *testing.T) {
	e, fe, _ := syncSetup(t, block.Options{})
	iov := [][]byte{make([]byte, 256), make([]byte, 256), make([]byte, 256)}
	wantErrno(t, "readv part", onMainErr(e, func() error { return fe.Readv(iov[1:], 0) }), 0)
	wantErrno(t, "readv part -2", onMainErr(e, func() error { return fe.Readv(iov[1:], -2) }), syscall.EIO)
}

func TestI06SyncPwritevPart(t *testing.T) {
	e, fe, _ := syncSetup(t, block.Options{})
	iov := [][]byte{make([]byte, 256), make([]byte, 256), make([]byte, 256)}
	wantErrno(t, "writev part", onMainErr(e, func() error { return fe.Writev(iov[1:], 0, 0) }), 0)
	wantErrno(t, "writev part -2", onMainErr(e, func() error { return fe.Writev(iov[1:], -2, 0) }), syscall.EIO)
}

func TestI08SyncPwriteZeroes(t *testing.T) {
	e, fe, _ := syncSetup(t, block.Options{})
	wantErrno(t, "zeroes", onMainErr(e, func() error { return fe.WriteZeroes(0, 512, 0) }), 0)
	wantErrno(t, "zeroes -2", onMainErr(e, func() error { return fe.WriteZeroes(-2, 512, 0) }), syscall.EIO)
}

func TestI11SyncPdiscard(t *testing.T) {
	e, fe, n := syncSetup(t, block.Options{})
	wantErrno(t, "discard", onMainErr(e, func() error { return n.Discard(0, 512) }), 0)
	wantErrno(t, "discard -2", onMainErr(e, func() error { return n.Discard(-2, 512) }), syscall.EIO)
	wantErrno(t, "fe discard", onMainErr(e, func() error { return fe.Discard(0, 512) }), 0)
	wantErrno(t, "fe discard -2", onMainErr(e, func() error { return fe.Discard(-2, 512) }), syscall.EIO)
	// Unmap not allowed (discard=ignore): early success without the driver.
	e2, fe2, n2 := syncSetup(t, block.Options{IgnoreDiscard: true})
	wantErrno(t, "ignored discard", onMainErr(e2, func() error { return n2.Discard(0, 512) }), 0)
	wantErrno(t, "ignored fe discard", onMainErr(e2, func() error { return fe2.Discard(0, 512) }), 0)
	wantErrno(t, "ignored discard -2", onMainErr(e2, func() error { return n2.Discard(-2, 512) }), syscall.EIO)
}

func TestI12SyncTruncate(t *testing.T) {
	e, fe, n := syncSetup(t, block.Options{})
	wantErrno(t, "truncate", onMainErr(e, func() error { return n.Truncate(65536) }), 0)
	wantErrno(t, "truncate -2", onMainErr(e, func() error { return n.Truncate(-2) }), syscall.EINVAL)
	wantErrno(t, "fe truncate", onMainErr(e, func() error { return fe.Truncate(65536) }), 0)
	wantErrno(t, "fe truncate -2", onMainErr(e, func() error { return fe.Truncate(-2) }), syscall.EINVAL)
	e2, _, ro := syncSetup(t, block.Options{ReadOnly: true})
	wantErrno(t, "truncate read-only", onMainErr(e2, func() error { return ro.Truncate(65536) }), syscall.EACCES)
}

func TestI13SyncBlockStatus(t *testing.T) {
	e, _, n := syncSetup(t, block.Options{})
	var alloc bool
	var pnum int64
	err := onMainErr(e, func() (err error) { alloc, pnum, err = n.IsAllocated(0, 65536); return })
	if err != nil || alloc || pnum != 65536 {
		t.Fatalf("is-allocated: %v %v %d, want false (0) for all 64 KiB", alloc, err, pnum)
	}
	// A driver without a status hook: everything allocated (1).
	nn := e.Open(&blocktest.Null{Size: 65536}, block.Options{Name: "null"})
	defer nn.Unref()
	err = onMainErr(e, func() (err error) { alloc, pnum, err = nn.IsAllocated(0, 4096); return })
	if err != nil || !alloc || pnum != 4096 {
		t.Fatalf("default status: %v %v %d, want allocated (1)", alloc, err, pnum)
	}
	err = onMainErr(e, func() (err error) { alloc, pnum, err = n.IsAllocated(0, 0); return })
	if err != nil || alloc || pnum != 0 {
		t.Fatalf("length 0: %v %v %d", alloc, err, pnum)
	}
	err = onMainErr(e, func() (err error) { alloc, pnum, err = n.IsAllocated(1<<20, 4096); return })
	if err != nil || alloc || pnum != 0 {
		t.Fatalf("beyond EOF: %v %v %d", alloc, err, pnum)
	}
}

func TestI14SyncFlush(t *testing.T) {
	e, fe, n := syncSetup(t, block.Options{})
	wantErrno(t, "flush", onMainErr(e, n.Flush), 0)
	wantErrno(t, "fe flush", onMainErr(e, fe.Flush), 0)
	e2, fe2, ro := syncSetup(t, block.Options{ReadOnly: true})
	wantErrno(t, "flush read-only", onMainErr(e2, ro.Flush), 0)
	wantErrno(t, "fe flush read-only", onMainErr(e2, fe2.Flush), 0)
}

// TestI18AttachSecondNode: a front end created in an IOThread pulls the
// node it gets; a filter opened on top of that node joins it there; moving
// the front end back moves all three.
func TestI18AttachSecondNode(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	fe := e.FrontEnd("", nil, block.FrontEndOptions{Context: e.IO[0]})
	n := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "n"})
	if err := fe.Insert(n); err != nil {
		t.Fatal(err)
	}
	if n.Context() != e.IO[0] {
		t.Fatal("node did not move to the front end's IOThread")
	}
	filter := e.Open(&blocktest.Forward{}, block.Options{Name: "filter"})
	e.Attach(filter, n, "file", block.RoleFile)
	if filter.Context() != e.IO[0] {
		t.Fatal("filter did not join its child's IOThread")
	}
	if err := fe.SetContext(e.Main); err != nil {
		t.Fatal(err)
	}
	if fe.Context() != e.Main || n.Context() != e.Main || filter.Context() != e.Main {
		t.Fatal("not everything moved back")
	}
	filter.Unref()
	n.Unref()
	fe.Close()
}

// TestI19PreserveFrontEndContext: removing the node leaves the front end in
// its IOThread and sends the node home; inserting again moves it back.
func TestI19PreserveFrontEndContext(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	fe := e.FrontEnd("", nil, block.FrontEndOptions{Context: e.IO[0]})
	n := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "n"})
	if err := fe.Insert(n); err != nil || n.Context() != e.IO[0] {
		t.Fatalf("insert: %v", err)
	}
	fe.Remove()
	if fe.Context() != e.IO[0] || n.Context() != e.Main {
		t.Fatalf("after remove: fe on %s, node on %s", fe.Context().Name(), n.Context().Name())
	}
	if err := fe.Insert(n); err != nil || n.Context() != e.IO[0] {
		t.Fatalf("re-insert: %v", err)
	}
	fe.Remove()
	n.Unref()
	fe.Close()
}

// TestI20PropagateBasic: a Context switch moves the whole connected
// component, through parents and children.
func TestI20PropagateBasic(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	a := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "bs_a"})
	b := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "bs_b"})
	verify := e.Open(&blocktest.Forward{}, block.Options{Name: "verify"})
	e.Attach(verify, a, "raw", block.RoleFile)
	e.Attach(verify, b, "test", block.RoleFile)
	fe := e.FrontEnd("", a, block.FrontEndOptions{})
	for _, ctx := range []struct{ c *aio.Context }{{e.IO[0]}, {e.Main}} {
		if err := fe.SetContext(ctx.c); err != nil {
			t.Fatal(err)
		}
		for _, n := range []*block.Node{a, b, verify} {
			if n.Context() != ctx.c {
				t.Fatalf("%s on %s, want %s", n.Name(), n.Context().Name(), ctx.c.Name())
			}
		}
		if fe.Context() != ctx.c {
			t.Fatal("front end did not move")
		}
	}
	verify.Unref()
	a.Unref()
	b.Unref()
	fe.Close()
}

// TestI21PropagateDiamond: a diamond terminates and moves all five.
func TestI21PropagateDiamond(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	a := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "bs_a"})
	b := e.Open(&blocktest.Forward{}, block.Options{Name: "bs_b"})
	c := e.Open(&blocktest.Forward{}, block.Options{Name: "bs_c"})
	verify := e.Open(&blocktest.Forward{}, block.Options{Name: "verify"})
	e.Attach(b, a, "file", block.RoleFile)
	e.Attach(c, a, "file", block.RoleFile)
	e.Attach(verify, b, "raw", block.RoleFile)
	e.Attach(verify, c, "test", block.RoleFile)
	fe := e.FrontEnd("", verify, block.FrontEndOptions{})
	for _, ctx := range []struct{ c *aio.Context }{{e.IO[0]}, {e.Main}} {
		if err := fe.SetContext(ctx.c); err != nil {
			t.Fatal(err)
		}
		for _, n := range []*block.Node{a, b, c, verify} {
			if n.Context() != ctx.c {
				t.Fatalf("%s on %s, want %s", n.Name(), n.Context().Name(), ctx.c.Name())
			}
		}
	}
	for _, n := range []*block.Node{a, b, c, verify} {
		n.Unref()
	}
	fe.Close()
}

// TestMoveVetoIsAtomic (I22 without the job): a front end in use vetoes a
// move started at another node of its component, and nothing changes;
// allowing the change lets it through.
func TestMoveVetoIsAtomic(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	src := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "src"})
	target := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "target"})
	filter := e.Open(&blocktest.Forward{}, block.Options{Name: "filter"})
	e.Attach(filter, src, "file", block.RoleFile)
	e.Attach(filter, target, "target", block.RoleFile)
	fe := e.FrontEnd("", src, block.FrontEndOptions{})
	err := target.SetContext(e.IO[0])
	if err == nil || !block.IsKind(err, block.Unsupported) {
		t.Fatalf("move through an anonymous front end: %v, want a veto", err)
	}
	for _, n := range []*block.Node{src, target, filter} {
		if n.Context() != e.Main || n.Quiesce() != 0 {
			t.Fatalf("%s changed by a vetoed move (on %s, quiesce %d)", n.Name(), n.Context().Name(), n.Quiesce())
		}
	}
	fe.AllowContextChange(true)
	if err := target.SetContext(e.IO[0]); err != nil {
		t.Fatal(err)
	}
	if src.Context() != e.IO[0] || filter.Context() != e.IO[0] || fe.Context() != e.IO[0] {
		t.Fatal("allowed move did not carry everything")
	}
	if err := target.SetContext(e.Main); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*block.Node{src, target, filter} {
		n.Unref()
	}
	fe.Close()
}
