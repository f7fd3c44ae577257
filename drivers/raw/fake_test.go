package raw_test

import (
	"errors"
	"math/rand/v2"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/uring"
	"github.com/ringblk/ringblk/uring/uringtest"
)

// These tests run the driver on the deterministic fake ring (uringtest)
// over real files: the fake executes each operation with preadv2/pwritev2/
// fallocate/fsync at completion, and lets the test inject short transfers,
// errnos and reordering, and count opcodes.

// fakeFE builds a fake-ring env, a raw node on a fresh image and a front
// end; it returns the main Context's queue.
func fakeFE(t *testing.T, opts uringtest.Options, size int64, ropts raw.Options) (*env, *block.Node, *block.Queue, string, []byte) {
	t.Helper()
	opts.Seed = uringtest.Seed(t)
	e := newEnv(t, &opts, 0)
	path, model := image(t, size, 21)
	n := e.node(path, ropts)
	fe := e.g.NewFrontEnd(block.FrontEndOptions{Name: "fe"})
	if err := fe.Insert(n); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fe.Close() })
	return e, n, fe.Queue(e.main), path, model
}

// fileOps returns the SQEs the ring logged for the node's file, by opcode.
func (e *env) fileOps(n *block.Node) (ops map[uint8]int, log []uring.SQE) {
	fd := int32(n.Driver().(*raw.Driver).Fd())
	ops = make(map[uint8]int)
	e.on(func() {
		for _, sqe := range e.ring.Log() {
			if sqe.Fd == fd {
				ops[sqe.Opcode]++
				log = append(log, sqe)
			}
		}
	})
	return ops, log
}

// batch runs submit on the main Context inside one plugged batch and waits
// until want completions arrived.
func (e *env) batch(q *block.Queue, want int, submit func(d block.Done)) *counter {
	c := &counter{}
	e.on(func() {
		q.Plug()
		submit(c)
		q.Unplug()
		e.main.WaitWhile(func() bool { return c.n < want })
	})
	return c
}

// TestFakeShortTransfersResubmitted: every read and write moves at most
// 1000 bytes per operation; requests still complete whole, with the right
// data, by resubmitting the rest mid-file.
func TestFakeShortTransfersResubmitted(t *testing.T) {
	e, n, q, path, model := fakeFE(t, uringtest.Options{}, 64<<10, raw.Options{})
	var rules []*uringtest.Rule
	e.on(func() {
		rules = append(rules, e.ring.Inject(uringtest.Fault{Ops: uringtest.ReadOps, Short: 1000}))
		rules = append(rules, e.ring.Inject(uringtest.Fault{Ops: uringtest.WriteOps, Short: 1000}))
	})
	data := pattern(16384, 22)
	c := e.batch(q, 1, func(d block.Done) { q.Write(data, 4096, 0, d, 0) })
	if len(c.errs) != 0 {
		t.Fatalf("short writes: %v", c.errs)
	}
	copy(model[4096:], data)
	mustEqual(t, "file after short writes", fileBytes(t, path), model)
	buf := make([]byte, 20000)
	c = e.batch(q, 1, func(d block.Done) { q.Read(buf, 3000, d, 0) })
	if len(c.errs) != 0 {
		t.Fatalf("short reads: %v", c.errs)
	}
	mustEqual(t, "short reads", buf, model[3000:23000])
	e.on(func() {
		if rules[0].Fired() < 20 || rules[1].Fired() < 16 {
			t.Errorf("faults fired %d (reads) and %d (writes) times: the remainders were not resubmitted", rules[0].Fired(), rules[1].Fired())
		}
	})
	_ = n
}

// TestFakeENOSPCMidBatch: in a batch of 32 writes the 10th fails with
// ENOSPC. That request gets a typed error naming write, its offset and the
// path; the other 31 complete and land; the failed range is untouched.
func TestFakeENOSPCMidBatch(t *testing.T) {
	e, _, q, path, model := fakeFE(t, uringtest.Options{Reorder: true}, 256<<10, raw.Options{})
	const bad = 9
	e.on(func() {
		e.ring.Inject(uringtest.Fault{Ops: uringtest.WriteOps, Off: bad * 8192, Len: 4096, Errno: syscall.ENOSPC})
	})
	bufs := make([][]byte, 32)
	c := e.batch(q, 32, func(d block.Done) {
		for i := range bufs {
			bufs[i] = pattern(4096, uint64(200+i))
			q.Write(bufs[i], int64(i)*8192, 0, d, uint64(i))
		}
	})
	if c.n != 32 || len(c.errs) != 1 || c.errs[bad] == nil {
		t.Fatalf("%d completions, errors %v; want 32 and one error on request %d", c.n, c.errs, bad)
	}
	wantOpError(t, c.errs[bad], block.OpWrite, bad*8192, syscall.ENOSPC, path)
	for i := range bufs {
		if i != bad {
			copy(model[i*8192:], bufs[i])
		}
	}
	mustEqual(t, "file after the batch", fileBytes(t, path), model)
}

// TestFakeErrnosAreTyped: EIO, EROFS, EBADF and ENOSPC from the kernel
// surface as *block.Error values naming the operation, offset and path.
func TestFakeErrnosAreTyped(t *testing.T) {
	cases := []struct {
		name  string
		ops   uringtest.OpSet
		errno syscall.Errno
		op    block.Op
	}{
		{"read-EIO", uringtest.ReadOps, syscall.EIO, block.OpRead},
		{"write-EROFS", uringtest.WriteOps, syscall.EROFS, block.OpWrite},
		{"flush-EBADF", uringtest.Ops(uring.IORING_OP_FSYNC), syscall.EBADF, block.OpFlush},
		{"zeroes-ENOSPC", uringtest.Ops(uring.IORING_OP_FALLOCATE), syscall.ENOSPC, block.OpWriteZeroes},
		{"write-EIO-odirect", uringtest.WriteOps, syscall.EIO, block.OpWrite},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ro := raw.Options{}
			if tc.name == "write-EIO-odirect" {
				ro.Cache = raw.CacheNone
			}
			e, _, q, path, _ := fakeFE(t, uringtest.Options{}, 64<<10, ro)
			e.on(func() { e.ring.Inject(uringtest.Fault{Ops: tc.ops, Errno: tc.errno}) })
			buf := make([]byte, 4096)
			off := int64(8192)
			c := e.batch(q, 1, func(d block.Done) {
				switch tc.op {
				case block.OpRead:
					q.Read(buf, off, d, 0)
				case block.OpWrite:
					q.Write(buf, off, 0, d, 0)
				case block.OpFlush:
					off = 0
					q.Flush(d, 0)
				case block.OpWriteZeroes:
					q.WriteZeroes(off, 4096, 0, d, 0)
				}
			})
			if c.errs[0] == nil {
				t.Fatalf("%s succeeded despite %v", tc.op, tc.errno)
			}
			wantOpError(t, c.errs[0], tc.op, off, tc.errno, path)
			if !block.IsKind(c.errs[0], block.Io) {
				t.Fatalf("kind of %v, want io", c.errs[0])
			}
		})
	}
}

// TestFakeReorderedMix: random reads and writes of whole 4 KiB blocks, 64
// per batch, completed in a seeded random order with random delays; writes
// to distinct blocks within a batch. Every read returns what the model
// says and the file ends equal to the model.
func TestFakeReorderedMix(t *testing.T) {
	for _, mode := range []raw.Cache{raw.CacheWriteback, raw.CacheNone} {
		t.Run(mode.String(), func(t *testing.T) {
			e, _, q, path, model := fakeFE(t, uringtest.Options{Reorder: true, MaxDelay: 4}, 1<<20, raw.Options{Cache: mode})
			rng := rand.New(rand.NewPCG(7, 7))
			for round := 0; round < 20; round++ {
				blocks := rng.Perm(256)[:64]
				bufs := make([][]byte, 64)
				isWrite := make([]bool, 64)
				c := e.batch(q, 64, func(d block.Done) {
					for i, b := range blocks {
						off := int64(b) * 4096
						if rng.IntN(2) == 0 {
							isWrite[i] = true
							bufs[i] = pattern(4096, rng.Uint64())
							q.Write(bufs[i], off, 0, d, uint64(i))
						} else {
							bufs[i] = make([]byte, 4096)
							q.Read(bufs[i], off, d, uint64(i))
						}
					}
				})
				if len(c.errs) != 0 {
					t.Fatalf("round %d: %v", round, c.errs)
				}
				for i, b := range blocks {
					off := b * 4096
					if isWrite[i] {
						copy(model[off:], bufs[i])
					} else {
						mustEqual(t, "reordered read", bufs[i], model[off:off+4096])
					}
				}
			}
			mustEqual(t, "file", fileBytes(t, path), model)
		})
	}
}

// TestFakeFixedBuffersAndVectors: an arena buffer goes out as
// READ_FIXED/WRITE_FIXED, a heap buffer as READ/WRITE, a vector as
// READV/WRITEV — one operation each.
func TestFakeFixedBuffersAndVectors(t *testing.T) {
	e, n, q, _, model := fakeFE(t, uringtest.Options{}, 64<<10, raw.Options{})
	e.on(e.ring.ResetLog)
	var abuf []byte
	e.on(func() { abuf, _ = e.main.Arena().Alloc(4096) })
	heap := make([]byte, 4096)
	v := [][]byte{make([]byte, 2048), make([]byte, 2048)}
	c := e.batch(q, 6, func(d block.Done) {
		q.Read(abuf, 0, d, 0)
		q.Write(abuf, 4096, 0, d, 1)
		q.Read(heap, 8192, d, 2)
		q.Write(heap, 12288, 0, d, 3)
		q.Readv(v, 16384, d, 4)
		q.Writev(v, 20480, 0, d, 5)
	})
	if len(c.errs) != 0 {
		t.Fatal(c.errs)
	}
	e.on(func() { e.main.Arena().Free(abuf) })
	ops, _ := e.fileOps(n)
	for _, op := range []uint8{uring.IORING_OP_READ_FIXED, uring.IORING_OP_WRITE_FIXED, uring.IORING_OP_READ, uring.IORING_OP_WRITE, uring.IORING_OP_READV, uring.IORING_OP_WRITEV} {
		if got := ops[op]; got != 1 {
			t.Errorf("opcode %d submitted %d times, want 1", op, got)
		}
	}
	mustEqual(t, "readv", append(v[0], v[1]...), model[16384:16384+4096])
}

// TestFakeFUAAndFlush: FUA on a writeback image is the write followed by
// an fdatasync; on writethrough (O_DSYNC) no fsync is needed. Flush is one
// fdatasync.
func TestFakeFUAAndFlush(t *testing.T) {
	for _, tc := range []struct {
		mode   raw.Cache
		fsyncs int
	}{{raw.CacheWriteback, 1}, {raw.CacheNone, 1}, {raw.CacheWritethrough, 0}} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			e, n, q, _, _ := fakeFE(t, uringtest.Options{}, 64<<10, raw.Options{Cache: tc.mode})
			e.on(e.ring.ResetLog)
			var buf []byte
			e.on(func() { buf, _ = e.main.Arena().Alloc(4096) })
			c := e.batch(q, 1, func(d block.Done) { q.Write(buf, 0, block.FUA, d, 0) })
			if len(c.errs) != 0 {
				t.Fatal(c.errs)
			}
			e.on(func() { e.main.Arena().Free(buf) })
			ops, log := e.fileOps(n)
			if got := ops[uring.IORING_OP_FSYNC]; got != tc.fsyncs {
				t.Fatalf("FUA write issued %d fsyncs, want %d", got, tc.fsyncs)
			}
			if tc.fsyncs == 1 && (log[len(log)-1].Opcode != uring.IORING_OP_FSYNC || log[len(log)-1].OpFlags&uring.IORING_FSYNC_DATASYNC == 0) {
				t.Fatalf("FUA: last SQE %+v, want an fdatasync after the write", log[len(log)-1])
			}
			c = e.batch(q, 1, func(d block.Done) { q.Flush(d, 0) })
			if len(c.errs) != 0 {
				t.Fatal(c.errs)
			}
			ops, _ = e.fileOps(n)
			if got := ops[uring.IORING_OP_FSYNC]; got != tc.fsyncs+1 {
				t.Fatalf("flush: %d fsyncs in all, want %d", got, tc.fsyncs+1)
			}
		})
	}
}

// TestFakeWriteZeroesFallback: a filesystem that answers EOPNOTSUPP to
// FALLOC_FL_ZERO_RANGE gets zeroes written instead, and the driver
// remembers: the next write-zeroes issues no fallocate at all.
func TestFakeWriteZeroesFallback(t *testing.T) {
	e, _, q, path, model := fakeFE(t, uringtest.Options{}, 4<<20, raw.Options{})
	var rule *uringtest.Rule
	e.on(func() {
		rule = e.ring.Inject(uringtest.Fault{Ops: uringtest.Ops(uring.IORING_OP_FALLOCATE), Errno: syscall.EOPNOTSUPP})
	})
	for i, r := range []struct{ off, n int64 }{{4096, 3 << 20}, {100, 50}} {
		c := e.batch(q, 1, func(d block.Done) { q.WriteZeroes(r.off, r.n, 0, d, 0) })
		if len(c.errs) != 0 {
			t.Fatalf("write-zeroes %d: %v", i, c.errs)
		}
		clear(model[r.off : r.off+r.n])
	}
	mustEqual(t, "file", fileBytes(t, path), model)
	e.on(func() {
		if rule.Matched() != 1 {
			t.Errorf("fallocate tried %d times, want once (EOPNOTSUPP is cached)", rule.Matched())
		}
	})
}

// TestFakeDiscardUnsupportedIsNoop: discard=unmap on a filesystem that
// cannot punch holes succeeds without effect and stops trying.
func TestFakeDiscardUnsupportedIsNoop(t *testing.T) {
	e, _, q, path, model := fakeFE(t, uringtest.Options{}, 64<<10, raw.Options{Discard: raw.DiscardUnmap})
	var rule *uringtest.Rule
	e.on(func() {
		rule = e.ring.Inject(uringtest.Fault{Ops: uringtest.Ops(uring.IORING_OP_FALLOCATE), Errno: syscall.EOPNOTSUPP})
	})
	for i := 0; i < 3; i++ {
		c := e.batch(q, 1, func(d block.Done) { q.Discard(0, 8192, d, 0) })
		if len(c.errs) != 0 {
			t.Fatal(c.errs)
		}
	}
	mustEqual(t, "file", fileBytes(t, path), model)
	e.on(func() {
		if rule.Matched() != 1 {
			t.Errorf("punch tried %d times, want once", rule.Matched())
		}
	})
}

// TestFakeBounceODirect: on O_DIRECT, buffers at odd addresses (and
// vectors with odd segment lengths) are bounced through the arena; the
// kernel, reached through the fake's preadv2/pwritev2, would refuse them
// with EINVAL otherwise.
func TestFakeBounceODirect(t *testing.T) {
	e, n, q, path, model := fakeFE(t, uringtest.Options{}, 64<<10, raw.Options{Cache: raw.CacheNone})
	al := int64(n.Options().Align)
	w := pattern(int(2*al)+1, 30)[1:] // misaligned address
	v := [][]byte{pattern(100, 31), pattern(int(al)-100, 32)}
	c := e.batch(q, 2, func(d block.Done) {
		q.Write(w, 0, 0, d, 0)
		q.Writev(v, 4*al, 0, d, 1)
	})
	if len(c.errs) != 0 {
		t.Fatal(c.errs)
	}
	copy(model, w)
	copy(model[4*al:], append(v[0], v[1]...))
	mustEqual(t, "file", fileBytes(t, path), model)
	r := make([]byte, 2*al+5)[5:]
	c = e.batch(q, 1, func(d block.Done) { q.Read(r, 0, d, 0) })
	if len(c.errs) != 0 {
		t.Fatal(c.errs)
	}
	mustEqual(t, "bounced read", r, model[:2*al])
	e.on(func() {
		if used := e.main.Arena().Used(); used != 0 {
			t.Errorf("arena holds %d bytes after the bounces: leaked", used)
		}
	})
	if errors.Is(nil, syscall.EINVAL) {
		t.Fatal("unreachable")
	}
}

// TestFakeWriteZeroesFUA: a write-zeroes with FUA is followed by an
// fdatasync (fallocate alone does not make it durable).
func TestFakeWriteZeroesFUA(t *testing.T) {
	e, n, q, _, _ := fakeFE(t, uringtest.Options{}, 64<<10, raw.Options{Cache: raw.CacheWritethrough})
	e.on(e.ring.ResetLog)
	c := e.batch(q, 1, func(d block.Done) { q.WriteZeroes(0, 8192, block.FUA, d, 0) })
	if len(c.errs) != 0 {
		t.Fatal(c.errs)
	}
	ops, log := e.fileOps(n)
	if ops[uring.IORING_OP_FALLOCATE] != 1 || ops[uring.IORING_OP_FSYNC] != 1 || log[len(log)-1].Opcode != uring.IORING_OP_FSYNC {
		t.Fatalf("write-zeroes with FUA issued %v; want a fallocate then an fsync", ops)
	}
}

// TestFakeWriteZeroesNoFallback: with block.NoFallback, a filesystem that
// answers EOPNOTSUPP to ZERO_RANGE gets no zero buffers written: the request
// fails with ENOTSUP and the file is unchanged. The next NoFallback request
// fails without trying fallocate again; a plain write-zeroes still falls
// back to writes. Where fallocate works, NoFallback zeroes with it.
func TestFakeWriteZeroesNoFallback(t *testing.T) {
	e, n, q, path, model := fakeFE(t, uringtest.Options{}, 1<<20, raw.Options{})
	c := e.batch(q, 1, func(d block.Done) { q.WriteZeroes(8192, 64<<10, block.NoFallback, d, 0) })
	if len(c.errs) != 0 {
		t.Fatalf("NoFallback write-zeroes with a working ZERO_RANGE: %v", c.errs)
	}
	clear(model[8192 : 8192+64<<10])
	mustEqual(t, "file", fileBytes(t, path), model)

	var rule *uringtest.Rule
	e.on(func() {
		e.ring.ResetLog()
		rule = e.ring.Inject(uringtest.Fault{Ops: uringtest.Ops(uring.IORING_OP_FALLOCATE), Errno: syscall.EOPNOTSUPP})
	})
	for i := 0; i < 2; i++ {
		c := e.batch(q, 1, func(d block.Done) { q.WriteZeroes(4096*100, 256<<10, block.NoFallback, d, 0) })
		if len(c.errs) != 1 || !errors.Is(c.errs[0], syscall.ENOTSUP) || !errors.Is(c.errs[0], &block.Error{Kind: block.Unsupported}) {
			t.Fatalf("NoFallback write-zeroes %d without ZERO_RANGE: errors %v, want ENOTSUP", i, c.errs)
		}
	}
	ops, _ := e.fileOps(n)
	if ops[uring.IORING_OP_WRITE]+ops[uring.IORING_OP_WRITEV]+ops[uring.IORING_OP_WRITE_FIXED] != 0 {
		t.Fatalf("NoFallback write-zeroes wrote data: ops %v", ops)
	}
	mustEqual(t, "file after refused NoFallback", fileBytes(t, path), model)
	e.on(func() {
		if rule.Matched() != 1 {
			t.Errorf("fallocate tried %d times, want once (EOPNOTSUPP is cached)", rule.Matched())
		}
	})
	c = e.batch(q, 1, func(d block.Done) { q.WriteZeroes(4096*100, 256<<10, 0, d, 0) })
	if len(c.errs) != 0 {
		t.Fatal(c.errs)
	}
	clear(model[4096*100 : 4096*100+256<<10])
	mustEqual(t, "file after plain write-zeroes", fileBytes(t, path), model)
}
