package host_test

import (
	"errors"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/host"
)

// debugDevice is a device over a blkdebug-like filter on a memory node,
// for injecting errors.
func debugDevice(t *testing.T, h *host.Host, o host.OpenOptions) (*host.Device, *blocktest.Debug, *blocktest.Mem) {
	t.Helper()
	g := h.Graph()
	mem := blocktest.NewMem(1 << 20)
	child, err := g.Open(mem, block.Options{Name: "mem"})
	if err != nil {
		t.Fatal(err)
	}
	dbg := &blocktest.Debug{}
	f, err := g.Open(dbg, block.Options{Name: "debug"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := g.Attach(f, child, block.ChildSpec{Name: "file", Role: block.RoleFiltered})
	if err != nil {
		t.Fatal(err)
	}
	dbg.Edge.Store(c)
	child.Unref()
	d, err := h.NewDevice(f, o)
	if err != nil {
		t.Fatal(err)
	}
	return d, dbg, mem
}

// TestStopOnNoSpaceResume: a write failing with ENOSPC under
// ErrorStopOnNoSpace is held with the nospace status; once space is back
// (the fault disarmed), Resume resubmits it and it completes with success
// and its data written.
func TestStopOnNoSpaceResume(t *testing.T) {
	h := newHost(t, host.Options{})
	stopped := make(chan host.Op, 1)
	d, dbg, mem := debugDevice(t, h, host.OpenOptions{WriteError: host.ErrorStopOnNoSpace,
		Callbacks: host.DeviceCallbacks{Stopped: func(op host.Op, err error) { stopped <- op }}})
	rule := dbg.AddRule(blocktest.Rule{Op: block.OpWrite, Err: syscall.ENOSPC, Once: true})
	q, _ := d.Queue(host.QueueOptions{})
	data := pattern(make([]byte, 4096), 5)
	if err := q.Write(data, 8192, 0, 11); err != nil {
		t.Fatal(err)
	}
	if op := <-stopped; op.String() != "write" {
		t.Fatalf("stopped on %v", op)
	}
	if st, err := d.IOStatus(); st.String() != "nospace" || err == nil {
		t.Fatalf("I/O status %v %v, want nospace", st, err)
	}
	if rule.Fired() != 1 {
		t.Fatalf("rule fired %d times", rule.Fired())
	}
	d.Resume()
	if !q.Wait(10 * time.Second) {
		t.Fatal("no completion after Resume")
	}
	c, ok := q.Next()
	if !ok || c.Err != nil || c.UserData != 11 || c.Bytes != 4096 {
		t.Fatalf("completion %+v %v", c, ok)
	}
	mustEqual(t, "resumed write", mem.Data[8192:8192+4096], data)
	if st, _ := d.IOStatus(); st.String() != "ok" {
		t.Fatalf("status after resume %v", st)
	}
}

// TestReadErrorPolicies: a read failing with EIO is reported, ignored or
// held according to ReadError; writes are not affected by it.
func TestReadErrorPolicies(t *testing.T) {
	h := newHost(t, host.Options{})
	for _, tc := range []struct {
		pol  host.ErrorPolicy
		want string // "err", "ok", "held"
	}{{host.ErrorReport, "err"}, {host.ErrorIgnore, "ok"}, {host.ErrorStop, "held"}, {host.ErrorStopOnNoSpace, "err"}} {
		d, dbg, _ := debugDevice(t, h, host.OpenOptions{ReadError: tc.pol})
		dbg.AddRule(blocktest.Rule{Op: block.OpRead, Err: syscall.EIO})
		dbg.AddRule(blocktest.Rule{Op: block.OpWrite, Err: syscall.EIO})
		q, _ := d.Queue(host.QueueOptions{})
		buf := make([]byte, 512)
		// One batch: the write is issued with the read, before a stop
		// policy's pause would park it.
		q.Plug()
		q.Read(buf, 0, 1)
		q.Write(buf, 0, 0, 2)
		q.Unplug()
		got := map[uint64]error{}
		deadline := time.Now().Add(2 * time.Second)
		complete := func() bool {
			_, w := got[2]
			_, r := got[1]
			return w && (r || (tc.want == "held" && d.Stats().Held == 1))
		}
		for !complete() && time.Now().Before(deadline) {
			q.Wait(50 * time.Millisecond)
			for c, ok := q.Next(); ok; c, ok = q.Next() {
				got[c.UserData] = c.Err
			}
		}
		if err, ok := got[2]; !ok || err == nil {
			t.Errorf("policy %d: write completion %v %v, want its error (WriteError is report)", tc.pol, ok, err)
		}
		rerr, done := got[1]
		switch tc.want {
		case "err":
			if !done || rerr == nil {
				t.Errorf("policy %d: read %v %v, want an error", tc.pol, done, rerr)
			}
		case "ok":
			if !done || rerr != nil {
				t.Errorf("policy %d: read %v %v, want success", tc.pol, done, rerr)
			}
		case "held":
			if done || d.Stats().Held != 1 {
				t.Errorf("policy %d: read completed (%v) or not held (%d)", tc.pol, done, d.Stats().Held)
			}
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}
	// Changed at run time: report, then ignore.
	d, dbg, _ := debugDevice(t, h, host.OpenOptions{})
	dbg.AddRule(blocktest.Rule{Op: block.OpRead, Err: syscall.EIO})
	buf := make([]byte, 512)
	if _, err := d.ReadAt(buf, 0); err == nil {
		t.Fatal("failed read reported success under report")
	}
	if err := d.SetErrorPolicy(host.ErrorIgnore, host.ErrorReport); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ReadAt(buf, 0); err != nil {
		t.Fatalf("failed read under ignore: %v", err)
	}
	if err := d.SetErrorPolicy(9, 0); err == nil {
		t.Fatal("policy 9 accepted")
	}
}

// flagRecorder records the flags of the writes it gets.
type flagRecorder struct {
	blocktest.Null
	mu    sync.Mutex
	flags []block.Flags
}

func (f *flagRecorder) Write(r *block.Request) {
	f.mu.Lock()
	f.flags = append(f.flags, r.Flags)
	f.mu.Unlock()
	f.Null.Write(r)
}

func (f *flagRecorder) WriteZeroes(r *block.Request) {
	f.mu.Lock()
	f.flags = append(f.flags, r.Flags)
	f.mu.Unlock()
	f.Null.WriteZeroes(r)
}

func (f *flagRecorder) take() []block.Flags {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.flags
	f.flags = nil
	return out
}

// TestWriteCacheToggle: with the write cache off every write and
// write-zeroes reaches the driver with FUA; back on, only those that ask.
func TestWriteCacheToggle(t *testing.T) {
	h := newHost(t, host.Options{})
	rec := &flagRecorder{Null: blocktest.Null{Size: 1 << 20}}
	n, err := h.Graph().Open(rec, block.Options{Name: "rec"})
	if err != nil {
		t.Fatal(err)
	}
	d, err := h.NewDevice(n, host.OpenOptions{WriteThrough: true})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 512)
	if d.WriteCache() {
		t.Fatal("WriteThrough: write cache on")
	}
	d.WriteAt(buf, 0)
	d.WriteZeroes(0, 512, 0)
	for _, f := range rec.take() {
		if f&block.FUA == 0 {
			t.Fatalf("write-through write without FUA (%v)", f)
		}
	}
	d.SetWriteCache(true)
	d.WriteAt(buf, 0)
	q, _ := d.Queue(host.QueueOptions{})
	q.Write(buf, 0, host.FUA, 0)
	q.Wait(5 * time.Second)
	got := rec.take()
	if len(got) != 2 || got[0]&block.FUA != 0 || got[1]&block.FUA == 0 {
		t.Fatalf("write cache on: flags %v, want [no FUA, FUA]", got)
	}
}

// TestSetContext: a device moves to another I/O Context and keeps
// working; a bad index is refused.
func TestSetContext(t *testing.T) {
	h := newHost(t, host.Options{Contexts: 2})
	d, err := h.OpenDevice(image(t, h, "qcow2", 1<<20), host.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data := pattern(make([]byte, 4096), 4)
	d.WriteAt(data, 0)
	if err := d.SetContext(1); err != nil {
		t.Fatal(err)
	}
	if d.FrontEnd().Context() != h.Context(1) || d.FrontEnd().Root().Context() != h.Context(1) {
		t.Fatal("device not on Context 1")
	}
	got := make([]byte, 4096)
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "after the move", got, data)
	if err := d.SetContext(5); err == nil {
		t.Fatal("Context 5 of 2 accepted")
	}
	if err := d.SetContext(-1); err != nil {
		t.Fatal(err)
	}
}

// flushCounter counts the flushes its driver gets.
type flushCounter struct {
	blocktest.Null
	n atomic.Int64
}

func (f *flushCounter) Flush(r *block.Request) { f.n.Add(1); f.Null.Flush(r) }

// TestCacheUnsafe: cache=unsafe completes flushes without the image.
func TestCacheUnsafe(t *testing.T) {
	h := newHost(t, host.Options{})
	p := image(t, h, "raw", 1<<20)
	d, err := h.OpenDevice(p, host.OpenOptions{Cache: "unsafe"})
	if err != nil {
		t.Fatal(err)
	}
	// The same option through NewDevice on a counting node.
	fc := &flushCounter{Null: blocktest.Null{Size: 1 << 20}}
	n, _ := h.Graph().Open(fc, block.Options{Name: "fc"})
	d2, err := h.NewDevice(n, host.OpenOptions{Cache: "unsafe"})
	if err != nil {
		t.Fatal(err)
	}
	for _, dev := range []*host.Device{d, d2} {
		if err := dev.Flush(); err != nil {
			t.Fatal(err)
		}
		if dev.Stats().Flush.Ops != 1 {
			t.Fatal("unsafe flush not counted")
		}
	}
	if fc.n.Load() != 0 {
		t.Fatalf("%d flushes reached the image under cache=unsafe", fc.n.Load())
	}
	if _, err := h.OpenDevice(p, host.OpenOptions{Cache: "directsync"}); err == nil {
		t.Fatal("cache=directsync accepted")
	}
}

// TestThrottleGroup: two devices in one named group share its IOPS.
func TestThrottleGroup(t *testing.T) {
	h := newHost(t, host.Options{})
	var qs []*host.Queue
	for i := 0; i < 2; i++ {
		d, err := h.OpenDevice("null-co://", host.OpenOptions{Format: "null", Size: 1 << 20, Name: "n"})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.SetThrottle("shared", host.ThrottleLimits{IOPSTotal: 200, IOPSTotalBurst: 1}); err != nil {
			t.Fatal(err)
		}
		q, _ := d.Queue(host.QueueOptions{Depth: 32})
		qs = append(qs, q)
	}
	buf := make([]byte, 512)
	start := time.Now()
	for i := 0; i < 20; i++ {
		for _, q := range qs {
			q.Read(buf, 0, 0)
		}
	}
	for _, q := range qs {
		for n := 0; n < 20; {
			q.Wait(time.Second)
			for _, ok := q.Next(); ok; _, ok = q.Next() {
				n++
			}
		}
	}
	// 40 requests at 200 IOPS shared: about 200ms; each alone would
	// take 100ms.
	if el := time.Since(start); el < 170*time.Millisecond {
		t.Fatalf("40 reads in a 200-IOPS group took %v", el)
	}
}

// TestCloseFromCallback: closing from a completion callback is refused
// instead of deadlocking.
func TestCloseFromCallback(t *testing.T) {
	h := newHost(t, host.Options{})
	d := nullDevice(t, h)
	errs := make(chan error, 3)
	var q *host.Queue
	q, _ = d.Queue(host.QueueOptions{OnComplete: func(host.Completion) {
		errs <- q.Close()
		errs <- d.Close()
		errs <- h.Close()
	}})
	q.Read(make([]byte, 512), 0, 0)
	for i := 0; i < 3; i++ {
		if err := <-errs; !errors.Is(err, host.ErrInContext) {
			t.Fatalf("close %d from a callback: %v", i, err)
		}
	}
}

// TestCloseReportsWriteBack: a driver whose close fails (a metadata
// write-back) makes Device.Close, and Host.Close for a device left open,
// return that error.
func TestCloseReportsWriteBack(t *testing.T) {
	h, err := host.New(host.Options{})
	if err != nil {
		t.Skipf("host: %v", err)
	}
	wb := errors.New("write-back of 3 dirty tables failed: EIO")
	for i := 0; i < 2; i++ {
		drv := blocktest.NewDriver(1 << 20)
		drv.CloseErr = wb
		n, err := h.Graph().Open(drv, block.Options{Name: "wb"})
		if err != nil {
			t.Fatal(err)
		}
		d, err := h.NewDevice(n, host.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := d.Close(); !errors.Is(err, wb) {
				t.Fatalf("device close: %v, want the write-back error", err)
			}
		}
	}
	if err := h.Close(); !errors.Is(err, wb) {
		t.Fatalf("host close with a device left open: %v, want the write-back error", err)
	}
}

// TestStopPausesDevice: a write failing under ErrorStop pauses the
// device: requests submitted after the stop (on the same queue and on
// another) do not reach the driver and are counted as parked; Resume
// retries the held write first and then issues the parked requests in
// their order, so the last write to a block wins and a read parked after
// it sees its data; every request completes without error.
func TestStopPausesDevice(t *testing.T) {
	h := newHost(t, host.Options{Contexts: 2})
	stopped := make(chan error, 4)
	d, dbg, mem := debugDevice(t, h, host.OpenOptions{WriteError: host.ErrorStop,
		Callbacks: host.DeviceCallbacks{Stopped: func(op host.Op, err error) { stopped <- err }}})
	rule := dbg.AddRule(blocktest.Rule{Op: block.OpWrite, Err: syscall.EIO, Once: true})
	q, _ := d.Queue(host.QueueOptions{Context: 0})
	q2, _ := d.Queue(host.QueueOptions{Context: 1})
	a, b, c := pattern(make([]byte, 4096), 21), pattern(make([]byte, 4096), 22), pattern(make([]byte, 4096), 23)
	if err := q.Write(a, 8192, 0, 1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Stopped not called")
	}
	if !d.Paused() || rule.Fired() != 1 {
		t.Fatalf("paused %v, rule fired %d", d.Paused(), rule.Fired())
	}
	seen := dbg.Seen()
	got := make([]byte, 4096)
	other := pattern(make([]byte, 4096), 24)
	for i, r := range []func() error{
		func() error { return q.Write(b, 8192, 0, 2) },
		func() error { return q.Write(c, 8192, 0, 3) },
		func() error { return q.Read(got, 8192, 4) },
		func() error { return q2.Write(other, 16384, 0, 5) },
	} {
		if err := r(); err != nil {
			t.Fatalf("submission %d: %v", i, err)
		}
	}
	syncDone := make(chan error, 1)
	go func() { _, err := d.WriteAt(other, 32768); syncDone <- err }()
	time.Sleep(50 * time.Millisecond)
	if n := dbg.Seen(); n != seen {
		t.Fatalf("%d requests reached the driver while the device was stopped", n-seen)
	}
	if st := d.Stats(); st.Held != 1 || st.Parked != 5 || st.InFlight != 0 {
		t.Fatalf("stats while paused: held %d parked %d in flight %d, want 1, 5, 0", st.Held, st.Parked, st.InFlight)
	}
	select {
	case err := <-syncDone:
		t.Fatalf("a synchronous write completed while paused: %v", err)
	default:
	}
	d.Resume()
	var order []uint64
	for len(order) < 4 {
		if !q.Wait(10 * time.Second) {
			t.Fatalf("completions after Resume: %v", order)
		}
		for cp, ok := q.Next(); ok; cp, ok = q.Next() {
			if cp.Err != nil {
				t.Fatalf("request %d: %v", cp.UserData, cp.Err)
			}
			order = append(order, cp.UserData)
		}
	}
	if !q2.Wait(10*time.Second) || func() bool { cp, ok := q2.Next(); return !ok || cp.Err != nil }() {
		t.Fatal("the other queue's parked write did not complete")
	}
	if err := <-syncDone; err != nil {
		t.Fatal(err)
	}
	for i, want := range []uint64{1, 2, 3, 4} {
		if order[i] != want {
			t.Fatalf("completion order %v, want 1 2 3 4 (held write retried first, parked ones in order)", order)
		}
	}
	mustEqual(t, "parked read after the parked writes", got, c)
	mustEqual(t, "last write to the block", mem.Data[8192:8192+4096], c)
	mustEqual(t, "other queue's write", mem.Data[16384:16384+4096], other)
	mustEqual(t, "synchronous write", mem.Data[32768:32768+4096], other)
	if d.Paused() {
		t.Fatal("still paused after Resume")
	}
	if st, _ := d.IOStatus(); st != 0 {
		t.Fatalf("status %v after Resume", st)
	}
}

// TestCloseWhilePaused: closing a paused device does not hang: the held
// request completes with its error and the parked ones with ErrClosed.
func TestCloseWhilePaused(t *testing.T) {
	h := newHost(t, host.Options{})
	stopped := make(chan struct{}, 1)
	d, dbg, _ := debugDevice(t, h, host.OpenOptions{WriteError: host.ErrorStop,
		Callbacks: host.DeviceCallbacks{Stopped: func(host.Op, error) { stopped <- struct{}{} }}})
	dbg.AddRule(blocktest.Rule{Op: block.OpWrite, Err: syscall.EIO, Once: true})
	var mu sync.Mutex
	errs := map[uint64]error{}
	q, _ := d.Queue(host.QueueOptions{OnComplete: func(c host.Completion) {
		mu.Lock()
		errs[c.UserData] = c.Err
		mu.Unlock()
	}})
	buf := make([]byte, 4096)
	q.Write(buf, 0, 0, 1)
	<-stopped
	q.Write(buf, 4096, 0, 2)
	q.Read(buf, 0, 3)
	done := make(chan error, 1)
	go func() { done <- d.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close of a paused device hangs")
	}
	mu.Lock()
	defer mu.Unlock()
	if !errors.Is(errs[1], syscall.EIO) || !errors.Is(errs[2], host.ErrClosed) || !errors.Is(errs[3], host.ErrClosed) {
		t.Fatalf("completions %v: want EIO for the held write, ErrClosed for the parked ones", errs)
	}
}
