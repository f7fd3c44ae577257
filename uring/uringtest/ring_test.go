package uringtest_test

import (
	"errors"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/uring"
	"github.com/ringblk/ringblk/uring/uringtest"
)

func TestRingSizes(t *testing.T) {
	r := uringtest.New(uringtest.Options{SQEntries: 3})
	if r.SQEntries() != 4 || r.CQEntries() != 8 {
		t.Errorf("SQEntries 3: sizes %d/%d, want 4/8 (power of two, CQ twice SQ)", r.SQEntries(), r.CQEntries())
	}
	r = uringtest.New(uringtest.Options{})
	if r.SQEntries() != 128 || r.CQEntries() != 256 {
		t.Errorf("default sizes %d/%d, want 128/256", r.SQEntries(), r.CQEntries())
	}
	defer func() {
		if recover() == nil {
			t.Error("CQEntries < SQEntries did not panic (the kernel rejects it)")
		}
	}()
	uringtest.New(uringtest.Options{SQEntries: 8, CQEntries: 4})
}

func TestSQFullAndPending(t *testing.T) {
	r := uringtest.New(uringtest.Options{SQEntries: 4})
	for i := range 4 {
		s := r.GetSQE()
		if s == nil {
			t.Fatalf("GetSQE %d: nil before the SQ is full", i)
		}
		s.PrepNop(uint64(i))
	}
	if s := r.GetSQE(); s != nil {
		t.Fatal("GetSQE returned a slot from a full SQ")
	}
	if got := r.Pending(); got != 4 {
		t.Fatalf("Pending = %d, want 4", got)
	}
	if n := submit(t, r, 0, 0); n != 4 {
		t.Fatalf("submitted %d, want 4", n)
	}
	if r.Pending() != 0 {
		t.Fatalf("Pending = %d after submit, want 0", r.Pending())
	}
	s := r.GetSQE()
	if s == nil {
		t.Fatal("GetSQE nil after submit freed the SQ")
	}
	if *s != (uring.SQE{}) {
		t.Errorf("GetSQE returned a dirty slot: %+v", *s)
	}
	if got := userDatas(reapAll(r)); !slices.Equal(got, []uint64{0, 1, 2, 3}) {
		t.Errorf("completion order %v, want submission order", got)
	}
}

func TestPartialSubmission(t *testing.T) {
	r := uringtest.New(uringtest.Options{SQEntries: 8, MaxSubmit: 3})
	for i := range 8 {
		prep(t, r, func(s *uring.SQE) { s.PrepNop(uint64(i)) })
	}
	for _, want := range []int{3, 3, 2} {
		if n := submit(t, r, 0, 0); n != want {
			t.Fatalf("submitted %d, want %d", n, want)
		}
	}
	if r.Pending() != 0 {
		t.Fatalf("Pending = %d, want 0", r.Pending())
	}
	if st := r.Stats(); st.Enters != 3 || st.Submitted != 8 {
		t.Errorf("Enters %d Submitted %d, want 3 and 8", st.Enters, st.Submitted)
	}
	if got := userDatas(reapAll(r)); !slices.Equal(got, []uint64{0, 1, 2, 3, 4, 5, 6, 7}) {
		t.Errorf("completions %v", got)
	}
}

func TestInjectBusy(t *testing.T) {
	r := uringtest.New(uringtest.Options{SQEntries: 4})
	prep(t, r, func(s *uring.SQE) { s.PrepNop(1) })
	r.InjectBusy(2)
	for range 2 {
		n, err := r.SubmitAndWait(1, -1)
		if !errors.Is(err, uring.ErrBusy) || n != 0 {
			t.Fatalf("SubmitAndWait = %d, %v; want 0, ErrBusy", n, err)
		}
		if r.Pending() != 1 {
			t.Fatalf("ErrBusy consumed the SQE: Pending %d", r.Pending())
		}
	}
	if n := submit(t, r, 1, -1); n != 1 {
		t.Fatalf("submitted %d after busy, want 1", n)
	}
	if st := r.Stats(); st.Busy != 2 || st.Calls != 3 || st.Enters != 1 {
		t.Errorf("stats %+v: want Busy 2, Calls 3, Enters 1", st)
	}
}

func TestBusyOnOverflow(t *testing.T) {
	r := uringtest.New(uringtest.Options{SQEntries: 2, CQEntries: 2, BusyOnOverflow: true})
	for i := range 4 {
		prep(t, r, func(s *uring.SQE) { s.PrepNop(uint64(i)) })
		if i%2 == 1 {
			submit(t, r, 0, 0)
		}
	}
	prep(t, r, func(s *uring.SQE) { s.PrepNop(4) })
	if _, err := r.SubmitAndWait(0, 0); !errors.Is(err, uring.ErrBusy) {
		t.Fatalf("submit with a CQ backlog: err %v, want ErrBusy", err)
	}
	reapAll(r)
	if n := submit(t, r, 1, -1); n != 1 {
		t.Fatalf("submitted %d after reaping, want 1", n)
	}
}

func TestCQOverflowKeepsEverything(t *testing.T) {
	r := uringtest.New(uringtest.Options{SQEntries: 4, CQEntries: 4})
	var want []uint64
	for batch := range 5 {
		for i := range 4 {
			ud := uint64(batch*4 + i)
			want = append(want, ud)
			prep(t, r, func(s *uring.SQE) { s.PrepNop(ud) })
		}
		submit(t, r, 0, 0)
	}
	if r.Ready() != 4 {
		t.Errorf("Ready = %d with an overflowed CQ, want the CQ size 4", r.Ready())
	}
	if st := r.Stats(); st.Completed != 20 || st.Overflowed != 16 {
		t.Errorf("Completed %d Overflowed %d, want 20 and 16", st.Completed, st.Overflowed)
	}
	// A wait for more than the CQ holds returns once the CQ is full instead
	// of deadlocking.
	if _, err := r.SubmitAndWait(10, -1); err != nil {
		t.Fatalf("wait on a full CQ: %v", err)
	}
	got := userDatas(reapAll(r))
	if !slices.Equal(got, want) {
		t.Errorf("reaped %v, want %v in order", got, want)
	}
	if st := r.Stats(); st.Reaped != 20 {
		t.Errorf("Reaped %d, want 20", st.Reaped)
	}
}

func TestInvalidSQEStopsSubmission(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	prep(t, r, func(s *uring.SQE) { s.PrepNop(1) })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(2); s.Opcode = uring.IORING_OP_URING_CMD })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(3) })
	if n := submit(t, r, 0, 0); n != 2 {
		t.Fatalf("submitted %d, want 2 (stop after the invalid SQE)", n)
	}
	if r.Pending() != 1 {
		t.Fatalf("Pending %d, want 1", r.Pending())
	}
	submit(t, r, 0, 0)
	got := results(t, reapAll(r))
	wantRes(t, got, 1, 0)
	wantRes(t, got, 2, errno(syscall.EINVAL))
	wantRes(t, got, 3, 0)

	// Inside a chain the whole chain fails and submission goes on.
	prep(t, r, func(s *uring.SQE) { s.PrepNop(4); s.SetLink() })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(5); s.Flags |= uring.IOSQE_BUFFER_SELECT; s.SetLink() })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(6) })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(7) })
	if n := submit(t, r, 0, 0); n != 4 {
		t.Fatalf("submitted %d, want 4", n)
	}
	got = results(t, reapAll(r))
	wantRes(t, got, 4, errno(syscall.ECANCELED))
	wantRes(t, got, 5, errno(syscall.EINVAL))
	wantRes(t, got, 6, errno(syscall.ECANCELED))
	wantRes(t, got, 7, 0)
}

func TestReservedUserDataPanics(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	prep(t, r, func(s *uring.SQE) { s.PrepNop(uring.ReservedUserData | 1) })
	defer func() {
		if recover() == nil {
			t.Error("submitting reserved user_data did not panic")
		}
	}()
	r.SubmitAndWait(0, 0)
}

func TestUseAfterClose(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	fd := r.AddMemFile(make([]byte, 4096))
	buf := heapBytes(4096)
	prep(t, r, func(s *uring.SQE) { s.PrepRead(fd, buf, 0, 1) })
	r.Hold(func(*uring.SQE) bool { return true })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(2) })
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if s := r.GetSQE(); s != nil {
		t.Error("GetSQE after Close returned a slot")
	}
	if _, err := r.SubmitAndWait(1, -1); !errors.Is(err, uring.ErrClosed) {
		t.Errorf("SubmitAndWait after Close: %v, want ErrClosed", err)
	}
	if r.Ready() != 0 || r.Pending() != 0 || r.Reap(make([]uring.CQE, 4)) != 0 {
		t.Error("Ready/Pending/Reap report work after Close")
	}
	for name, err := range map[string]error{
		"RegisterFiles":   r.RegisterFiles(2),
		"UpdateFile":      r.UpdateFile(0, int(fd)),
		"RegisterBuffers": r.RegisterBuffers([][]byte{buf}),
		"Close":           r.Close(),
	} {
		if !errors.Is(err, uring.ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
	if r.Tick() != 0 || r.CompleteAll() != 0 || r.Release(2) || r.Crash() != 0 {
		t.Error("Tick/CompleteAll/Release/Crash did something after Close")
	}
}

func TestStatsAndLog(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	fd := r.AddMemFile(make([]byte, 8192))
	buf := heapBytes(1024)
	for i := range 3 {
		prep(t, r, func(s *uring.SQE) { s.PrepRead(fd, buf, uint64(i)*1024, uint64(i)) })
	}
	submit(t, r, 3, -1)
	prep(t, r, func(s *uring.SQE) { s.PrepFsync(fd, false, 10) })
	submit(t, r, 1, -1)
	submit(t, r, 0, 0) // nothing to submit: not an enter
	st := r.Stats()
	if st.Calls != 3 || st.Enters != 2 || st.Submitted != 4 || st.Completed != 4 {
		t.Errorf("stats %+v: want Calls 3, Enters 2, Submitted 4, Completed 4", st)
	}
	if st.Ops[uring.IORING_OP_READ] != 3 || st.Ops[uring.IORING_OP_FSYNC] != 1 {
		t.Errorf("per-op counts READ %d FSYNC %d, want 3 and 1", st.Ops[uring.IORING_OP_READ], st.Ops[uring.IORING_OP_FSYNC])
	}
	log := r.Log()
	if len(log) != 4 || log[2].Off != 2048 || log[2].Opcode != uring.IORING_OP_READ || log[3].Opcode != uring.IORING_OP_FSYNC {
		t.Errorf("log %+v", log)
	}
	log[0].Off = 999 // a copy: must not change the ring's log
	if r.Log()[0].Off != 0 {
		t.Error("Log returned the ring's own slice")
	}
	r.ResetLog()
	if len(r.Log()) != 0 {
		t.Error("ResetLog left entries")
	}

	capped := uringtest.New(uringtest.Options{LogLimit: 2})
	for i := range 3 {
		prep(t, capped, func(s *uring.SQE) { s.PrepNop(uint64(i)) })
	}
	submit(t, capped, 0, 0)
	if got := capped.Log(); len(got) != 2 || got[1].UserData != 1 || capped.Stats().Submitted != 3 {
		t.Errorf("LogLimit 2: log %+v, Submitted %d", got, capped.Stats().Submitted)
	}
	if n := len(reapAll(r)); n != 4 || r.Stats().Reaped != 4 {
		t.Errorf("reaped %d (stat %d), want 4", n, r.Stats().Reaped)
	}
}

func TestNoAllocsOnHotPath(t *testing.T) {
	r := uringtest.New(uringtest.Options{SQEntries: 16, NoLog: true})
	cqes := make([]uring.CQE, 16)
	run := func() {
		for i := range 8 {
			r.GetSQE().PrepNop(uint64(i))
		}
		if _, err := r.SubmitAndWait(8, -1); err != nil {
			panic(err)
		}
		if n := r.Reap(cqes); n != 8 {
			panic("short reap")
		}
	}
	run() // warm up the op pool and scratch slices
	if allocs := testing.AllocsPerRun(100, run); allocs != 0 {
		t.Errorf("GetSQE/SubmitAndWait/Reap of 8 NOPs: %v allocs per run, want 0", allocs)
	}

	// MemFile transfers, vectored ones included, once the file's chunks exist.
	fd := r.AddMemFile(make([]byte, 8192))
	buf := heapBytes(4096)
	iov := iovecs(buf[:1024], buf[1024:])
	rw := func() {
		r.GetSQE().PrepWrite(fd, buf, 0, 1)
		r.GetSQE().PrepReadv(fd, iov, 4096, 2)
		r.GetSQE().PrepRead(fd, buf, 100, 3)
		if _, err := r.SubmitAndWait(3, -1); err != nil {
			panic(err)
		}
		if n := r.Reap(cqes); n != 3 {
			panic("short reap")
		}
	}
	rw()
	if allocs := testing.AllocsPerRun(100, rw); allocs != 0 {
		t.Errorf("MemFile WRITE/READV/READ: %v allocs per run, want 0", allocs)
	}

	// With the log on, ResetLog reuses its memory.
	r = uringtest.New(uringtest.Options{SQEntries: 16})
	run()
	r.ResetLog()
	if allocs := testing.AllocsPerRun(1, func() { run(); r.ResetLog() }); allocs != 0 {
		t.Errorf("with the SQE log and ResetLog: %v allocs per run, want 0", allocs)
	}
}

func TestSeed(t *testing.T) {
	t.Setenv("RINGBLK_SEED", "12345")
	if got := uringtest.Seed(t); got != 12345 {
		t.Errorf("Seed with RINGBLK_SEED=12345 = %d", got)
	}
	t.Setenv("RINGBLK_SEED", "")
	a, b := uringtest.Seed(t), uringtest.Seed(t)
	if a == 0 || a == b {
		t.Errorf("random seeds %d, %d: want non-zero and different", a, b)
	}
}

func TestWaitTimeoutHonoured(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	r.Hold(func(*uring.SQE) bool { return true })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(1) })
	start := time.Now()
	if _, err := r.SubmitAndWait(1, 40*time.Millisecond); err != nil {
		t.Fatalf("bounded wait on a held op: %v, want nil (a timeout is not an error)", err)
	}
	if el := time.Since(start); el < 40*time.Millisecond || el > 2*time.Second {
		t.Errorf("bounded wait returned after %v, want about 40ms", el)
	}
	if r.Ready() != 0 {
		t.Errorf("Ready %d, want 0", r.Ready())
	}
	// Non-waiting forms return at once.
	start = time.Now()
	submit(t, r, 0, time.Hour)
	submit(t, r, 5, 0)
	if el := time.Since(start); el > time.Second {
		t.Errorf("minComplete 0 / timeout 0 waited %v", el)
	}
}

func TestDeadlockDetected(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	r.Hold(func(s *uring.SQE) bool { return s.UserData == 2 })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(1) })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(2) })
	n, err := r.SubmitAndWait(2, -1)
	if !errors.Is(err, uringtest.ErrDeadlock) || n != 2 {
		t.Fatalf("unbounded wait on a held op = %d, %v; want 2, ErrDeadlock", n, err)
	}
	if r.Ready() != 1 {
		t.Errorf("Ready %d, want 1 (the NOP)", r.Ready())
	}
}

func TestInjectInterrupt(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	r.Hold(func(*uring.SQE) bool { return true })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(1) })
	r.InjectInterrupt(1)
	if n, err := r.SubmitAndWait(1, -1); err != nil || n != 1 {
		t.Fatalf("interrupted wait = %d, %v; want 1, nil", n, err)
	}
	if _, err := r.SubmitAndWait(1, -1); !errors.Is(err, uringtest.ErrDeadlock) {
		t.Fatalf("second wait: %v, want ErrDeadlock (the interrupt was one-shot)", err)
	}
}
