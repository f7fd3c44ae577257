package host_test

import (
	"sync"
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
		q.Read(buf, 0, 1)
		q.Write(buf, 0, 0, 2)
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
