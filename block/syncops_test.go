package block_test

import (
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// optDriver is the test driver plus every optional operation: each records
// the Context it ran on and succeeds (Check reports fixed findings).
type optDriver struct {
	blocktest.Driver
	ran         []bool // per optional call: did it run on the node's Context
	activates   int
	inactivates int
	vmstate     []byte
	checkMode   block.CheckMode
}

func (d *optDriver) note(r *block.Request) {
	d.ran = append(d.ran, r.Node().Context().InContext())
}

func (d *optDriver) WriteCompressed(r *block.Request) { d.note(r); r.CompleteLater(nil) }
func (d *optDriver) LoadVMState(r *block.Request) {
	d.note(r)
	for _, b := range r.Iov {
		copy(b, d.vmstate[r.Off:])
	}
	r.CompleteLater(nil)
}
func (d *optDriver) SaveVMState(r *block.Request) {
	d.note(r)
	d.vmstate = append(d.vmstate[:0], r.Iov[0]...)
	r.CompleteLater(nil)
}
func (d *optDriver) Check(r *block.Request) {
	d.note(r)
	d.checkMode = r.CheckMode()
	*r.CheckResult() = block.CheckResult{Leaks: 2, LeaksFixed: 2, TotalClusters: 16, AllocatedClusters: 3}
	r.CompleteLater(nil)
}
func (d *optDriver) Activate(r *block.Request)   { d.note(r); d.activates++; r.CompleteLater(nil) }
func (d *optDriver) Inactivate(r *block.Request) { d.note(r); d.inactivates++; r.CompleteLater(nil) }

// syncSetupDrv is syncSetup with a given driver.
func syncSetupDrv(t *testing.T, drv block.Driver, opts block.Options) (*blocktest.Env, *block.FrontEnd, *block.Node) {
	e := blocktest.NewEnv(t, 1)
	if opts.Name == "" {
		opts.Name = "n"
	}
	n := e.Open(drv, opts)
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

// onMainWoken runs fn on the main Context and fails if the synchronous
// call inside it was not woken promptly. A rescue timer ends main's wait
// after 2s, so a missing Kick shows as a slow call rather than a hang.
func onMainWoken(t *testing.T, e *blocktest.Env, what string, fn func() error) (err error) {
	t.Helper()
	var took time.Duration
	e.OnMain(func() {
		rescue := e.Main.AfterFunc(2*time.Second, func() {})
		start := time.Now()
		err = fn()
		took = time.Since(start)
		rescue.Stop()
	})
	if took > time.Second {
		t.Fatalf("%s took %v: the waiting main Context was not woken", what, took)
	}
	return err
}

func wantUnsupported(t *testing.T, what string, err error) {
	t.Helper()
	if !block.IsKind(err, block.Unsupported) {
		t.Fatalf("%s: %v, want an Unsupported *block.Error", what, err)
	}
	wantErrno(t, what, err, syscall.ENOTSUP)
}

// wantRanOn checks that the driver was called calls times, each time on
// the node's Context, and that this Context is ctx.
func wantRanOn(t *testing.T, what string, d *optDriver, n *block.Node, ctx *aio.Context, calls int) {
	t.Helper()
	if n.Context() != ctx {
		t.Fatalf("%s: node on %s, want %s", what, n.Context().Name(), ctx.Name())
	}
	if len(d.ran) != calls {
		t.Fatalf("%s: driver called %d times, want %d", what, len(d.ran), calls)
	}
	for i, ok := range d.ran {
		if !ok {
			t.Fatalf("%s: call %d did not run on the node's Context %s", what, i, ctx.Name())
		}
	}
}

func TestI07SyncPwriteCompressed(t *testing.T) {
	e, fe, n := syncSetup(t, block.Options{})
	buf := make([]byte, 512)
	// Late error: the driver has no compressed writes.
	wantUnsupported(t, "fe compressed", onMainWoken(t, e, "fe compressed", func() error { _, err := fe.WriteCompressed(buf, 0); return err }))
	wantUnsupported(t, "node compressed", onMainWoken(t, e, "node compressed", func() error { _, err := n.WriteCompressed(buf, 0); return err }))
	// Early error: negative offset, before the driver is asked.
	wantErrno(t, "fe compressed -2", onMainWoken(t, e, "fe compressed -2", func() error { _, err := fe.WriteCompressed(buf, -2); return err }), syscall.EIO)
	wantErrno(t, "node compressed -2", onMainWoken(t, e, "node compressed -2", func() error { _, err := n.WriteCompressed(buf, -2); return err }), syscall.EIO)

	// A driver that compresses gets it on the node's IOThread.
	d := &optDriver{}
	d.Size = 64 << 10
	e2, fe2, n2 := syncSetupDrv(t, d, block.Options{Align: 512})
	wantErrno(t, "supported", onMainWoken(t, e2, "supported", func() error { _, err := fe2.WriteCompressed(buf, 512); return err }), 0)
	wantErrno(t, "unaligned", onMainWoken(t, e2, "unaligned", func() error { _, err := n2.WriteCompressed(buf[:100], 512); return err }), syscall.EINVAL)
	wantRanOn(t, "compressed", d, n2, e2.IO[0], 1)
}

func TestI09SyncLoadVMState(t *testing.T) {
	e, _, n := syncSetup(t, block.Options{})
	buf := make([]byte, 512)
	wantUnsupported(t, "load", onMainWoken(t, e, "load", func() error { _, err := n.LoadVMState(buf, 0); return err }))
	wantErrno(t, "load -2", onMainWoken(t, e, "load -2", func() error { _, err := n.LoadVMState(buf, -2); return err }), syscall.EIO)

	d := &optDriver{vmstate: []byte("saved state")}
	d.Size = 64 << 10
	e2, _, n2 := syncSetupDrv(t, d, block.Options{})
	got := make([]byte, 5)
	var k int
	err := onMainWoken(t, e2, "supported load", func() (err error) { k, err = n2.LoadVMState(got, 6); return err })
	if err != nil || k != 5 || string(got) != "state" {
		t.Fatalf("load: %d %q %v", k, got, err)
	}
	wantRanOn(t, "load", d, n2, e2.IO[0], 1)
}

func TestI10SyncSaveVMState(t *testing.T) {
	e, _, n := syncSetup(t, block.Options{})
	buf := []byte("vm")
	wantUnsupported(t, "save", onMainWoken(t, e, "save", func() error { _, err := n.SaveVMState(buf, 0); return err }))
	wantErrno(t, "save -2", onMainWoken(t, e, "save -2", func() error { _, err := n.SaveVMState(buf, -2); return err }), syscall.EIO)

	d := &optDriver{}
	d.Size = 64 << 10
	e2, _, n2 := syncSetupDrv(t, d, block.Options{})
	wantErrno(t, "supported save", onMainWoken(t, e2, "supported save", func() error { _, err := n2.SaveVMState(buf, 0); return err }), 0)
	if string(d.vmstate) != "vm" {
		t.Fatalf("saved %q", d.vmstate)
	}
	wantRanOn(t, "save", d, n2, e2.IO[0], 1)
}

func TestI15SyncCheck(t *testing.T) {
	e, _, n := syncSetup(t, block.Options{})
	wantUnsupported(t, "check", onMainWoken(t, e, "check", func() error { _, err := n.Check(0); return err }))

	d := &optDriver{}
	d.Size = 64 << 10
	e2, _, n2 := syncSetupDrv(t, d, block.Options{})
	var res block.CheckResult
	err := onMainWoken(t, e2, "supported check", func() (err error) { res, err = n2.Check(block.CheckFixLeaks); return err })
	if err != nil || res.Leaks != 2 || res.LeaksFixed != 2 || res.TotalClusters != 16 || res.AllocatedClusters != 3 {
		t.Fatalf("check: %+v %v", res, err)
	}
	if d.checkMode != block.CheckFixLeaks {
		t.Fatalf("driver saw mode %v, want fix leaks", d.checkMode)
	}
	wantRanOn(t, "check", d, n2, e2.IO[0], 1)
}

// TestI16SyncActivate: activating an active node returns at once with
// success (the driver is not asked) and the waiting main Context is woken;
// an inactive node refuses writes with EPERM until it is activated, and
// the driver hooks run on the node's IOThread.
func TestI16SyncActivate(t *testing.T) {
	e, _, n := syncSetup(t, block.Options{})
	wantErrno(t, "activate active", onMainWoken(t, e, "activate active", n.Activate), 0)

	d := &optDriver{}
	d.Size = 64 << 10
	e2, fe2, n2 := syncSetupDrv(t, d, block.Options{})
	buf := make([]byte, 512)
	wantErrno(t, "activate active", onMainWoken(t, e2, "activate active", n2.Activate), 0)
	if d.activates != 0 || n2.Inactive() {
		t.Fatalf("early return asked the driver (%d) or left the node inactive", d.activates)
	}
	wantErrno(t, "inactivate", onMainWoken(t, e2, "inactivate", n2.Inactivate), 0)
	wantErrno(t, "inactivate again", onMainWoken(t, e2, "inactivate again", n2.Inactivate), 0)
	if !n2.Inactive() || d.inactivates != 1 {
		t.Fatalf("inactive %v after %d driver calls, want true after 1", n2.Inactive(), d.inactivates)
	}
	wantErrno(t, "write inactive", onMainWoken(t, e2, "write inactive", func() error { _, err := fe2.WriteAt(buf, 0); return err }), syscall.EPERM)
	wantErrno(t, "zeroes inactive", onMainWoken(t, e2, "zeroes inactive", func() error { return n2.WriteZeroes(0, 512, 0) }), syscall.EPERM)
	wantErrno(t, "read inactive", onMainWoken(t, e2, "read inactive", func() error { _, err := fe2.ReadAt(buf, 0); return err }), 0)
	wantErrno(t, "activate", onMainWoken(t, e2, "activate", n2.Activate), 0)
	if n2.Inactive() || d.activates != 1 {
		t.Fatalf("inactive %v after %d driver calls, want false after 1", n2.Inactive(), d.activates)
	}
	wantErrno(t, "write active", onMainWoken(t, e2, "write active", func() error { _, err := fe2.WriteAt(buf, 0); return err }), 0)
	wantRanOn(t, "activation", d, n2, e2.IO[0], 2)
}

// TestInactivateTree: inactivation goes parent to child and stops at a
// child another active parent still uses; a node with an active parent
// node cannot be inactivated; activation goes child to parent.
func TestInactivateTree(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	top := e.Open(&blocktest.Forward{}, block.Options{Name: "top"})
	file := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "file"})
	shared := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "shared"})
	other := e.Open(&blocktest.Forward{}, block.Options{Name: "other"})
	e.Attach(top, file, "file", block.RoleFile)
	e.Attach(top, shared, "backing", block.RoleBacking)
	e.Attach(other, shared, "file", block.RoleFile)
	for _, n := range []*block.Node{file, shared} {
		n.Unref()
	}
	if err := file.Inactivate(); err == nil || block.Errno(err) != syscall.EPERM || file.Inactive() {
		t.Fatalf("inactivate under an active parent: %v (inactive %v), want EPERM", err, file.Inactive())
	}
	if err := top.Inactivate(); err != nil {
		t.Fatal(err)
	}
	if !top.Inactive() || !file.Inactive() || shared.Inactive() || other.Inactive() {
		t.Fatalf("inactive: top %v file %v shared %v other %v, want true true false false",
			top.Inactive(), file.Inactive(), shared.Inactive(), other.Inactive())
	}
	if _, err := file.WriteAt(make([]byte, 512), 0); block.Errno(err) != syscall.EPERM {
		t.Fatalf("write to an inactive child: %v", err)
	}
	if err := top.Activate(); err != nil || top.Inactive() || file.Inactive() {
		t.Fatalf("activate: %v, top %v file %v", err, top.Inactive(), file.Inactive())
	}
	top.Unref()
	other.Unref()
}
