package aio

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringblk/ringblk/uring"
	"github.com/ringblk/ringblk/uring/uringtest"
)

// ringKinds are the completion sources every catalogue test runs against:
// the kernel ring and the deterministic fake.
var ringKinds = []string{"kernel", "fake"}

// kernelRingErr is why the kernel ring is unusable here (nil: usable).
var kernelRingErr = func() error {
	r, err := uring.New(8)
	if err != nil {
		return err
	}
	r.Close()
	return nil
}()

// env is one test's Context(s) and rings.
type env struct {
	t    *testing.T
	kind string
	seed uint64
}

func newEnv(t *testing.T, kind string) *env {
	t.Helper()
	if kind == "kernel" && kernelRingErr != nil {
		t.Skipf("kernel io_uring unavailable: %v", kernelRingErr)
	}
	e := &env{t: t, kind: kind}
	if kind == "fake" {
		e.seed = uringtest.Seed(t)
	}
	return e
}

// forEachRing runs fn as a subtest per ring kind.
func forEachRing(t *testing.T, fn func(t *testing.T, e *env)) {
	for _, kind := range ringKinds {
		t.Run(kind, func(t *testing.T) { fn(t, newEnv(t, kind)) })
	}
}

// fakeOptions is the uringtest configuration for a Context of the env. The
// seed is offset per ring so one seed replays a multi-Context test.
func (e *env) fake(o uringtest.Options) *uringtest.Ring {
	e.seed++
	o.Seed = e.seed
	o.NoLog = o.NoLog || false
	return uringtest.New(o)
}

// start creates and starts a Context on the env's ring kind; q overrides
// the queue (a configured fake, a wrapper). Stop runs at cleanup and must
// report no leak and leave no goroutine behind.
func (e *env) start(o Options, q uring.Queue) *Context {
	e.t.Helper()
	if q == nil && e.kind == "fake" {
		q = e.fake(uringtest.Options{})
	}
	o.Queue = q
	c, err := New(o)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		select {
		case <-c.Stopped():
			return // the test stopped it and checked the report itself
		default:
		}
		rep, err := c.Stop()
		if err != nil {
			e.t.Errorf("Stop(%s): %v (report %+v)", c.name, err, rep)
		}
	})
	return c
}

// onOwner runs fn on c's owner goroutine and waits, failing the test if it
// takes longer than limit (a hang shows up as a failure, not a timeout of
// the whole binary).
func onOwner(t *testing.T, c *Context, limit time.Duration, fn func()) {
	t.Helper()
	done := make(chan any, 1)
	c.Schedule(func() {
		defer func() { done <- recover() }()
		fn()
	})
	select {
	case p := <-done:
		if p != nil {
			t.Fatalf("panic on owner of %s: %v", c.name, p)
		}
	case <-time.After(limit):
		t.Fatalf("owner of %s did not finish within %v (hang)", c.name, limit)
	}
}

// counter is a Done that counts completions per tag and keeps the last
// result. It is used from one owner goroutine.
type counter struct {
	n     int
	byTag map[uint64]int
	res   map[uint64]int
	errs  map[uint64]error
}

func newCounter() *counter {
	return &counter{byTag: map[uint64]int{}, res: map[uint64]int{}, errs: map[uint64]error{}}
}

func (c *counter) OpDone(tag uint64, res int, err error) {
	c.n++
	c.byTag[tag]++
	c.res[tag] = res
	c.errs[tag] = err
}

// scriptQueue wraps a Queue (kernel or fake) and observes it from the
// outside, independently of aio's own counters: it counts SubmitAndWait
// calls that had SQEs to submit (io_uring_enter calls that submit), logs a
// copy of every submitted SQE, and can rewrite reaped CQEs (hook) or
// duplicate one (stale-CQE test). Owner goroutine only, like the ring.
type scriptQueue struct {
	uring.Queue
	submits atomic.Int64
	got     []*uring.SQE // handed out by GetSQE since the last submit
	mu      sync.Mutex   // guards log: the test reads it while the owner runs
	log     []uring.SQE
	hook    func(cqe *uring.CQE)
	dupNext bool
}

func (q *scriptQueue) GetSQE() *uring.SQE {
	s := q.Queue.GetSQE()
	if s != nil {
		q.got = append(q.got, s)
	}
	return s
}

func (q *scriptQueue) SubmitAndWait(min int, timeout time.Duration) (int, error) {
	if len(q.got) > 0 || q.Queue.Pending() > 0 {
		q.submits.Add(1)
	}
	q.mu.Lock()
	for _, s := range q.got {
		q.log = append(q.log, *s)
	}
	q.mu.Unlock()
	q.got = q.got[:0]
	return q.Queue.SubmitAndWait(min, timeout)
}

func (q *scriptQueue) Reap(dst []uring.CQE) int {
	n := q.Queue.Reap(dst)
	if q.hook != nil {
		for i := range dst[:n] {
			q.hook(&dst[i])
		}
	}
	if n > 0 && n < len(dst) && q.dupNext {
		q.dupNext = false
		dst[n] = dst[n-1]
		n++
	}
	return n
}

// ops returns the logged SQEs with the given opcode on file f (any file
// when f is nil; the Context's own eventfd reads are READs too).
func (q *scriptQueue) ops(opcode uint8, f *File) []uring.SQE {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []uring.SQE
	for _, s := range q.log {
		if s.Opcode == opcode && (f == nil || s.Fd == int32(f.Fd())) {
			out = append(out, s)
		}
	}
	return out
}

// queue returns a scriptQueue over a fresh ring of the env's kind; fq is
// the fake underneath (nil on the kernel).
func (e *env) queue(entries int, fo uringtest.Options, ko ...uring.Option) (*scriptQueue, *uringtest.Ring) {
	e.t.Helper()
	if e.kind == "fake" {
		if fo.SQEntries == 0 {
			fo.SQEntries = entries
		}
		fq := e.fake(fo)
		return &scriptQueue{Queue: fq}, fq
	}
	r, err := uring.New(entries, ko...)
	if err != nil {
		e.t.Fatal(err)
	}
	return &scriptQueue{Queue: r}, nil
}

// pattern fills b with a position-dependent pattern starting at file
// offset off.
func pattern(b []byte, off int64) []byte {
	for i := range b {
		p := off + int64(i)
		b[i] = byte(p*7 + p>>8)
	}
	return b
}

// testFile creates a file of size bytes holding pattern(…, 0), on the
// kernel a real temporary file, on the fake a MemFile of ring q.
func (e *env) testFile(size int, q *uringtest.Ring) *File {
	e.t.Helper()
	data := pattern(make([]byte, size), 0)
	if e.kind == "fake" {
		fd := q.AddMemFile(data)
		return NewFileFd(int(fd), nil)
	}
	p := filepath.Join(e.t.TempDir(), "data")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		e.t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	af := NewFile(f)
	e.t.Cleanup(func() { af.Close() })
	return af
}

// fileBytes returns the current contents of a test file.
func (e *env) fileBytes(f *File, q *uringtest.Ring, off, n int64) []byte {
	b := make([]byte, n)
	if e.kind == "fake" {
		q.MemFile(int32(f.Fd())).ReadAt(b, off)
		return b
	}
	f.OS().ReadAt(b, off)
	return b
}

// leakCheck records the goroutine count; the returned func fails the test
// if more goroutines than that are alive once everything stopped (it
// retries for a second: exiting goroutines take a moment).
func leakCheck(t *testing.T) func() {
	before := runtime.NumGoroutine()
	return func() {
		t.Helper()
		deadline := time.Now().Add(time.Second)
		for {
			n := runtime.NumGoroutine()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<16)
				buf = buf[:runtime.Stack(buf, true)]
				t.Fatalf("goroutine leak: %d before, %d after; goroutines:\n%s", before, n, buf)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// mustPanic runs fn and returns its panic message ("" if it did not panic).
func panicMsg(fn func()) (msg string) {
	defer func() {
		if p := recover(); p != nil {
			switch v := p.(type) {
			case string:
				msg = v
			case error:
				msg = v.Error()
			default:
				msg = "panic"
			}
		}
	}()
	fn()
	return ""
}

var _ = bytes.Equal
var _ = errors.Is
