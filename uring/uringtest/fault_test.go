package uringtest_test

import (
	"bytes"
	"slices"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/uring"
	"github.com/ringblk/ringblk/uring/uringtest"
)

// chaosRun submits n NOPs and reads in random batch sizes with reordering,
// random delays, random partial submission and a tiny CQ, reaping as it
// goes, and returns the completion order.
func chaosRun(t *testing.T, seed uint64, n int) []uint64 {
	t.Helper()
	r := uringtest.New(uringtest.Options{
		Seed: seed, SQEntries: 8, CQEntries: 8,
		Reorder: true, MaxDelay: 3, MaxSubmit: 5,
	})
	fd := r.AddMemFile(pattern(1<<16, 1))
	buf := heapBytes(512)
	var order []uint64
	next := 0
	cqes := make([]uring.CQE, 5)
	for len(order) < n {
		for next < n {
			s := r.GetSQE()
			if s == nil {
				break
			}
			if next%3 == 0 {
				s.PrepRead(fd, buf, uint64(next)*512%(1<<16), uint64(next))
			} else {
				s.PrepNop(uint64(next))
			}
			next++
		}
		if _, err := r.SubmitAndWait(1, -1); err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		for {
			k := r.Reap(cqes)
			if k == 0 {
				break
			}
			for _, c := range cqes[:k] {
				if c.Res < 0 {
					t.Fatalf("seed %d: user_data %d failed: %d", seed, c.UserData, c.Res)
				}
				order = append(order, c.UserData)
			}
		}
	}
	if r.InFlight() != 0 || r.Ready() != 0 {
		t.Fatalf("seed %d: %d in flight, %d ready after all CQEs", seed, r.InFlight(), r.Ready())
	}
	return order
}

func TestReorderIsPermutation(t *testing.T) {
	base := uringtest.Seed(t)
	const n = 60
	reordered := 0
	for i := range uint64(200) {
		order := chaosRun(t, base+i, n)
		if len(order) != n {
			t.Fatalf("seed %d: %d CQEs, want %d", base+i, len(order), n)
		}
		seen := make([]bool, n)
		for _, ud := range order {
			if ud >= n || seen[ud] {
				t.Fatalf("seed %d: user_data %d lost, duplicated or invented in %v", base+i, ud, order)
			}
			seen[ud] = true
		}
		if !slices.IsSorted(order) {
			reordered++
		}
	}
	if reordered < 150 {
		t.Errorf("only %d of 200 seeds reordered completions", reordered)
	}
}

func TestSameSeedSameOrder(t *testing.T) {
	seed := uringtest.Seed(t)
	a, b := chaosRun(t, seed, 100), chaosRun(t, seed, 100)
	if !slices.Equal(a, b) {
		t.Fatalf("same seed, different orders:\n%v\n%v", a, b)
	}
	differs := false
	for i := uint64(1); i <= 5 && !differs; i++ {
		differs = !slices.Equal(a, chaosRun(t, seed+i, 100))
	}
	if !differs {
		t.Error("five other seeds all gave the same order")
	}
}

func TestShortReadAndWrite(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	data := pattern(16384, 4)
	fd := r.AddMemFile(data)
	readRule := r.Inject(uringtest.Fault{Ops: uringtest.ReadOps, Short: 1024, Nth: 1})
	r.Inject(uringtest.Fault{Ops: uringtest.ReadOps, Short: 2048, Nth: 2})

	// U4: a 16 KiB read comes back 1 KiB, then 2 KiB, then whole; the
	// caller resubmits the remainder with accumulated offsets.
	buf := heapBytes(16384)
	const ud = 1
	done := 0
	for attempt := 0; done < len(buf); attempt++ {
		if attempt == 3 {
			t.Fatal("read did not finish in three submissions")
		}
		prep(t, r, func(s *uring.SQE) { s.PrepRead(fd, buf[done:], uint64(done), ud) })
		submit(t, r, 1, -1)
		c := reapAll(r)
		if len(c) != 1 || c[0].Res <= 0 {
			t.Fatalf("attempt %d: %+v", attempt, c)
		}
		done += int(c[0].Res)
		if attempt == 0 && c[0].Res != 1024 || attempt == 1 && c[0].Res != 2048 {
			t.Fatalf("attempt %d transferred %d bytes", attempt, c[0].Res)
		}
	}
	wantBytes(t, "reassembled read", buf, data)
	log := r.Log()
	if len(log) != 3 || log[2].Off != 3072 || log[2].Len != 16384-3072 {
		t.Errorf("third submission off %d len %d, want 3072 and %d", log[2].Off, log[2].Len, 16384-3072)
	}
	if readRule.Fired() != 1 || readRule.Matched() != 3 {
		t.Errorf("first rule fired %d matched %d, want 1 and 3", readRule.Fired(), readRule.Matched())
	}

	// A short read leaves the rest of the buffer alone.
	r.ClearFaults()
	r.Inject(uringtest.Fault{Ops: uringtest.ReadOps, Short: 10})
	r.Inject(uringtest.Fault{Ops: uringtest.WriteOps, Off: 8192, Len: 4096, Short: 100})
	sentinel := bytes.Repeat([]byte{0xee}, 100)
	rb := heapBytes(100)
	copy(rb, sentinel)
	prep(t, r, func(s *uring.SQE) { s.PrepRead(fd, rb, 0, 2) })
	submit(t, r, 1, -1)
	wantRes(t, results(t, reapAll(r)), 2, 10)
	wantBytes(t, "short read prefix", rb[:10], data[:10])
	wantBytes(t, "short read rest", rb[10:], sentinel[10:])

	// A short write writes only its prefix; outside the rule's range
	// writes are whole.
	w := pattern(4096, 99)
	prep(t, r, func(s *uring.SQE) { s.PrepWrite(fd, w, 8192, 3) })
	prep(t, r, func(s *uring.SQE) { s.PrepWrite(fd, w, 0, 4) })
	submit(t, r, 2, -1)
	got := results(t, reapAll(r))
	wantRes(t, got, 3, 100)
	wantRes(t, got, 4, 4096)
	f := r.MemFile(fd).Bytes()
	wantBytes(t, "short write prefix", f[8192:8292], w[:100])
	wantBytes(t, "short write rest", f[8292:12288], data[8292:12288])
	wantBytes(t, "whole write", f[:4096], w)

	// ShortZero looks like end of file.
	r.ClearFaults()
	r.Inject(uringtest.Fault{Ops: uringtest.ReadOps, Short: uringtest.ShortZero})
	prep(t, r, func(s *uring.SQE) { s.PrepRead(fd, rb, 0, 5) })
	submit(t, r, 1, -1)
	wantRes(t, results(t, reapAll(r)), 5, 0)
}

func TestShortRandom(t *testing.T) {
	r := uringtest.New(uringtest.Options{Seed: uringtest.Seed(t)})
	fd := r.AddMemFile(make([]byte, 4096))
	r.Inject(uringtest.Fault{Ops: uringtest.ReadOps, Short: uringtest.ShortRandom})
	buf := heapBytes(4096)
	seen := map[int32]bool{}
	for i := range 50 {
		prep(t, r, func(s *uring.SQE) { s.PrepRead(fd, buf, 0, uint64(i)) })
		submit(t, r, 1, -1)
		c := reapAll(r)
		if c[0].Res < 1 || c[0].Res > 4095 {
			t.Fatalf("random short read returned %d, want [1, 4095]", c[0].Res)
		}
		seen[c[0].Res] = true
	}
	if len(seen) < 10 {
		t.Errorf("50 random short reads gave only %d distinct lengths", len(seen))
	}
}

func TestErrnoInjection(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	data := pattern(16384, 2)
	fd := r.AddMemFile(data)
	rule := r.Inject(uringtest.Fault{Ops: uringtest.Ops(uring.IORING_OP_READ), Off: 4096, Nth: 2, Errno: syscall.EIO})
	r.Inject(uringtest.Fault{Ops: uringtest.WriteOps, Errno: syscall.ENOSPC})
	r.Inject(uringtest.Fault{Ops: uringtest.Ops(uring.IORING_OP_FSYNC), Count: 1, Errno: syscall.EIO})
	b := heapBytes(4096)
	for i, off := range []uint64{0, 4096, 8192, 4096} {
		prep(t, r, func(s *uring.SQE) { s.PrepRead(fd, b, off, uint64(i)) })
	}
	w := pattern(4096, 200)
	prep(t, r, func(s *uring.SQE) { s.PrepWrite(fd, w, 0, 10) })
	prep(t, r, func(s *uring.SQE) { s.PrepFsync(fd, false, 11) })
	prep(t, r, func(s *uring.SQE) { s.PrepFsync(fd, false, 12) })
	submit(t, r, 7, -1)
	got := results(t, reapAll(r))
	wantRes(t, got, 0, 4096) // below the range: not a match
	wantRes(t, got, 1, 4096) // first match
	wantRes(t, got, 2, errno(syscall.EIO))
	wantRes(t, got, 3, 4096)
	wantRes(t, got, 10, errno(syscall.ENOSPC))
	wantRes(t, got, 11, errno(syscall.EIO))
	wantRes(t, got, 12, 0)
	if rule.Matched() != 3 || rule.Fired() != 1 {
		t.Errorf("read rule matched %d fired %d, want 3 and 1", rule.Matched(), rule.Fired())
	}
	wantBytes(t, "file after a failed write", r.MemFile(fd).Bytes(), data)
	if r.MemFile(fd).Syncs() != 1 {
		t.Errorf("Syncs %d, want 1 (the failed FSYNC does not count)", r.MemFile(fd).Syncs())
	}
	if st := r.Stats(); st.Faults != 3 {
		t.Errorf("Stats.Faults %d, want 3", st.Faults)
	}
}

// TestEAGAINThenSuccess is U3: an -EAGAIN completion is resubmitted and the
// second attempt succeeds.
func TestEAGAINThenSuccess(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	fd := r.AddMemFile(pattern(4096, 8))
	r.Inject(uringtest.Fault{Ops: uringtest.ReadOps, Nth: 1, Errno: syscall.EAGAIN})
	b := heapBytes(4096)
	var res []int32
	for len(res) == 0 || res[len(res)-1] == errno(syscall.EAGAIN) {
		if len(res) > 2 {
			t.Fatalf("results %v", res)
		}
		prep(t, r, func(s *uring.SQE) { s.PrepRead(fd, b, 0, 1) })
		submit(t, r, 1, -1)
		res = append(res, reapAll(r)[0].Res)
	}
	if !slices.Equal(res, []int32{errno(syscall.EAGAIN), 4096}) || r.Stats().Ops[uring.IORING_OP_READ] != 2 {
		t.Errorf("results %v, %d reads submitted", res, r.Stats().Ops[uring.IORING_OP_READ])
	}
	wantBytes(t, "read after EAGAIN", b, pattern(4096, 8))
}

func TestFaultProbabilityIsSeeded(t *testing.T) {
	run := func(seed uint64) []int32 {
		r := uringtest.New(uringtest.Options{Seed: seed, Faults: []uringtest.Fault{{Prob: 0.3, Errno: syscall.EIO}}})
		var res []int32
		for i := range 100 {
			prep(t, r, func(s *uring.SQE) { s.PrepNop(uint64(i)) })
		}
		submit(t, r, 100, -1)
		for _, c := range reapAll(r) {
			res = append(res, c.Res)
		}
		return res
	}
	seed := uringtest.Seed(t)
	a := run(seed)
	if !slices.Equal(a, run(seed)) {
		t.Error("same seed gave different fault decisions")
	}
	failed := 0
	for _, res := range a {
		if res == errno(syscall.EIO) {
			failed++
		}
	}
	if failed < 10 || failed > 55 {
		t.Errorf("Prob 0.3 failed %d of 100 NOPs", failed)
	}
}

func TestLinkCancellation(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	fd := r.AddMemFile(make([]byte, 8192))
	r.Inject(uringtest.Fault{Ops: uringtest.ReadOps, Off: 4096, Errno: syscall.EIO})
	w, b1, b2 := pattern(4096, 1), heapBytes(4096), heapBytes(4096)

	// write → failing read → write → nop: the last two are cancelled and
	// the second write never happens.
	prep(t, r, func(s *uring.SQE) { s.PrepWrite(fd, w, 0, 1); s.SetLink() })
	prep(t, r, func(s *uring.SQE) { s.PrepRead(fd, b1, 4096, 2); s.SetLink() })
	prep(t, r, func(s *uring.SQE) { s.PrepWrite(fd, w, 4096, 3); s.SetLink() })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(4) })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(5) }) // not in the chain
	submit(t, r, 5, -1)
	cq := reapAll(r)
	got := results(t, cq)
	wantRes(t, got, 1, 4096)
	wantRes(t, got, 2, errno(syscall.EIO))
	wantRes(t, got, 3, errno(syscall.ECANCELED))
	wantRes(t, got, 4, errno(syscall.ECANCELED))
	wantRes(t, got, 5, 0)
	if f := r.MemFile(fd).Bytes(); !bytes.Equal(f[4096:], make([]byte, 4096)) {
		t.Error("a cancelled linked write reached the file")
	}

	// A short read breaks a chain too.
	r.ClearFaults()
	r.Inject(uringtest.Fault{Ops: uringtest.ReadOps, Short: 100})
	prep(t, r, func(s *uring.SQE) { s.PrepRead(fd, b1, 0, 6); s.SetLink() })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(7) })
	submit(t, r, 2, -1)
	got = results(t, reapAll(r))
	wantRes(t, got, 6, 100)
	wantRes(t, got, 7, errno(syscall.ECANCELED))

	// A hard link goes on after a failure; successful links run in order.
	prep(t, r, func(s *uring.SQE) { s.PrepRead(fd, b2, 0, 8); s.Flags |= uring.IOSQE_IO_HARDLINK })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(9); s.SetLink() })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(10) })
	submit(t, r, 3, -1)
	cq = reapAll(r)
	if got := userDatas(cq); !slices.Equal(got, []uint64{8, 9, 10}) {
		t.Errorf("hard-linked chain completed as %v", got)
	}
	got = results(t, cq)
	wantRes(t, got, 8, 100)
	wantRes(t, got, 9, 0)
	wantRes(t, got, 10, 0)
}

func TestLinkOrderUnderReorder(t *testing.T) {
	seed := uringtest.Seed(t)
	for i := range uint64(50) {
		r := uringtest.New(uringtest.Options{Seed: seed + i, Reorder: true, MaxDelay: 4})
		for c := range uint64(4) { // four chains of three NOPs
			for k := range uint64(3) {
				prep(t, r, func(s *uring.SQE) {
					s.PrepNop(c*10 + k)
					if k < 2 {
						s.SetLink()
					}
				})
			}
		}
		submit(t, r, 12, -1)
		pos := map[uint64]int{}
		for i, ud := range userDatas(reapAll(r)) {
			pos[ud] = i
		}
		for c := range uint64(4) {
			if !(pos[c*10] < pos[c*10+1] && pos[c*10+1] < pos[c*10+2]) {
				t.Fatalf("seed %d: chain %d completed out of order: %v", seed+i, c, pos)
			}
		}
	}
}

func TestDrain(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	r.Hold(func(s *uring.SQE) bool { return s.UserData == 1 })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(1) })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(2) })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(3); s.SetDrain() })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(4) })
	submit(t, r, 0, 0)
	if got := userDatas(reapAll(r)); !slices.Equal(got, []uint64{2}) {
		t.Fatalf("before the held op completes: %v, want [2] (3 drains, 4 waits for 3)", got)
	}
	r.Release(1)
	if got := userDatas(reapAll(r)); !slices.Equal(got, []uint64{1, 3, 4}) {
		t.Errorf("after release: %v, want [1 3 4]", got)
	}
}

func TestHoldAndRelease(t *testing.T) {
	r := uringtest.New(uringtest.Options{Reorder: true, Seed: uringtest.Seed(t)})
	fd := r.AddMemFile(nil)
	r.Hold(func(s *uring.SQE) bool { return s.Opcode == uring.IORING_OP_WRITE })
	bufs := [][]byte{pattern(10, 1), pattern(10, 2), pattern(10, 3)}
	for i, b := range bufs {
		prep(t, r, func(s *uring.SQE) { s.PrepWrite(fd, b, 0, uint64(i)) }) // overlapping writes
	}
	prep(t, r, func(s *uring.SQE) { s.PrepNop(9) })
	submit(t, r, 0, 0)
	if got := r.Held(); !slices.Equal(got, []uint64{0, 1, 2}) {
		t.Fatalf("Held = %v", got)
	}
	if got := userDatas(reapAll(r)); !slices.Equal(got, []uint64{9}) {
		t.Fatalf("completed while held: %v", got)
	}
	for _, ud := range []uint64{2, 0, 1} {
		if !r.Release(ud) {
			t.Fatalf("Release(%d) found nothing", ud)
		}
	}
	if r.Release(1) {
		t.Error("Release of an op no longer held reported true")
	}
	if got := userDatas(reapAll(r)); !slices.Equal(got, []uint64{2, 0, 1}) {
		t.Errorf("completion order %v, want the release order [2 0 1]", got)
	}
	wantBytes(t, "last completed write wins", r.MemFile(fd).Bytes(), bufs[1])

	r.Hold(nil)
	prep(t, r, func(s *uring.SQE) { s.PrepWrite(fd, bufs[0], 0, 5) })
	submit(t, r, 1, -1)
	if len(reapAll(r)) != 1 {
		t.Error("Hold(nil) did not stop holding")
	}
}

func TestDelayTicks(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	r.Inject(uringtest.Fault{Ops: uringtest.Ops(uring.IORING_OP_NOP), Nth: 1, Delay: 3})
	prep(t, r, func(s *uring.SQE) { s.PrepNop(1) })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(2) })
	submit(t, r, 0, 0) // tick 1: issues both; 2 completes
	if got := userDatas(reapAll(r)); !slices.Equal(got, []uint64{2}) {
		t.Fatalf("after the submitting tick: %v, want [2]", got)
	}
	for tick := 2; tick <= 3; tick++ {
		if n := r.Tick(); n != 0 {
			t.Fatalf("tick %d completed %d ops, want 0", tick, n)
		}
	}
	if n := r.Tick(); n != 1 {
		t.Fatalf("tick 4 completed %d ops, want the delayed NOP", n)
	}

	// A waiting SubmitAndWait ticks by itself; CompleteAll skips delays.
	r.Inject(uringtest.Fault{Delay: 5})
	prep(t, r, func(s *uring.SQE) { s.PrepNop(3) })
	submit(t, r, 2, -1)
	prep(t, r, func(s *uring.SQE) { s.PrepNop(4) })
	submit(t, r, 0, 0)
	if n := r.CompleteAll(); n != 1 {
		t.Errorf("CompleteAll completed %d, want 1", n)
	}
	if got := userDatas(reapAll(r)); !slices.Equal(got, []uint64{1, 3, 4}) {
		t.Errorf("completions %v", got)
	}
}

func TestCrashDropsUncompletedWrites(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	initial := pattern(16384, 0)
	fd := r.AddMemFile(initial)
	img := r.MemFile(fd)
	r.Hold(func(s *uring.SQE) bool { return s.Off >= 8192 || s.Opcode == uring.IORING_OP_FALLOCATE })
	w := pattern(4096, 77)
	for i := range 4 {
		prep(t, r, func(s *uring.SQE) { s.PrepWrite(fd, w, uint64(i)*4096, uint64(i)) })
	}
	prep(t, r, func(s *uring.SQE) { s.PrepFallocate(fd, 0, 0, 1<<20, 10) })
	submit(t, r, 0, 0)
	if n := r.Crash(); n != 3 {
		t.Errorf("Crash dropped %d writes, want 3 (two held WRITEs and the FALLOCATE)", n)
	}
	want := bytes.Clone(initial)
	copy(want[0:], w)
	copy(want[4096:], w)
	wantBytes(t, "image after crash", img.Bytes(), want)
	if img.Size() != int64(len(initial)) {
		t.Errorf("size %d after crash: the dropped FALLOCATE took effect", img.Size())
	}
	if _, err := r.SubmitAndWait(0, 0); err == nil {
		t.Error("ring usable after Crash")
	}

	// Reopen on a new ring: the completed writes are there.
	r2 := uringtest.New(uringtest.Options{})
	fd2 := r2.AttachFile(img)
	b := heapBytes(4096)
	prep(t, r2, func(s *uring.SQE) { s.PrepRead(fd2, b, 4096, 1) })
	submit(t, r2, 1, -1)
	wantRes(t, results(t, reapAll(r2)), 1, 4096)
	wantBytes(t, "reopened read", b, w)
}

func TestCQESkipSuccess(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	r.Inject(uringtest.Fault{Nth: 2, Errno: syscall.EIO})
	for i := range 3 {
		prep(t, r, func(s *uring.SQE) { s.PrepNop(uint64(i)); s.Flags |= uring.IOSQE_CQE_SKIP_SUCCESS })
	}
	submit(t, r, 0, 0)
	got := results(t, reapAll(r))
	if len(got) != 1 {
		t.Fatalf("CQEs %v, want only the failure", got)
	}
	wantRes(t, got, 1, errno(syscall.EIO))
}

func TestReorderOption(t *testing.T) {
	order := func(reorder bool, seed uint64) []uint64 {
		r := uringtest.New(uringtest.Options{Seed: seed, Reorder: reorder})
		for i := range 16 {
			prep(t, r, func(s *uring.SQE) { s.PrepNop(uint64(i)) })
		}
		submit(t, r, 16, -1)
		return userDatas(reapAll(r))
	}
	seed := uringtest.Seed(t)
	if got := order(false, seed); !slices.IsSorted(got) {
		t.Errorf("without Reorder: %v, want submission order", got)
	}
	got := order(true, seed)
	if slices.IsSorted(got) {
		t.Errorf("with Reorder: %v still in submission order", got)
	}
	if !slices.Equal(got, order(true, seed)) {
		t.Error("Reorder with one seed gave two orders")
	}
}
