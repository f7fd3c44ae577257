package qcow2

import (
	"bytes"
	"encoding/json"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
)

// recFile is an in-memory file driver that records every write and flush
// in issue order, for the power-loss simulator of qcow2.md §2.10: a crash
// state is everything written before some flush plus any subset of the
// writes issued after it (up to the next flush), each whole or torn at
// 512-byte sector granularity.
type recFile struct {
	block.DriverBase
	mu   sync.Mutex
	data []byte
	log  []recOp
	// zeroes counts write-zeroes requests (partial allocating writes
	// zero the host cluster first).
	zeroes int
}

type recOp struct {
	flush bool
	off   int64
	b     []byte
}

func (f *recFile) Length(*block.Node) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return int64(len(f.data)), nil
}

func (f *recFile) Read(r *block.Request) {
	f.mu.Lock()
	off := r.Off
	for _, b := range r.Iov {
		clear(b)
		if off < int64(len(f.data)) {
			copy(b, f.data[off:])
		}
		off += int64(len(b))
	}
	f.mu.Unlock()
	r.CompleteLater(nil)
}

func (f *recFile) Write(r *block.Request) {
	f.mu.Lock()
	b := make([]byte, 0, r.Len)
	for _, p := range r.Iov {
		b = append(b, p...)
	}
	if end := r.Off + r.Len; end > int64(len(f.data)) {
		f.data = append(f.data, make([]byte, end-int64(len(f.data)))...)
	}
	copy(f.data[r.Off:], b)
	f.log = append(f.log, recOp{off: r.Off, b: b})
	f.mu.Unlock()
	r.CompleteLater(nil)
}

// WriteZeroes is recorded as a write of zeros (a file's ZERO_RANGE is no
// more atomic than a write: the simulator may tear it like one).
func (f *recFile) WriteZeroes(r *block.Request) {
	f.mu.Lock()
	b := make([]byte, r.Len)
	if end := r.Off + r.Len; end > int64(len(f.data)) {
		f.data = append(f.data, make([]byte, end-int64(len(f.data)))...)
	}
	copy(f.data[r.Off:], b)
	f.log = append(f.log, recOp{off: r.Off, b: b})
	f.zeroes++
	f.mu.Unlock()
	r.CompleteLater(nil)
}

func (f *recFile) Flush(r *block.Request) {
	f.mu.Lock()
	f.log = append(f.log, recOp{flush: true})
	f.mu.Unlock()
	r.CompleteLater(nil)
}

func (f *recFile) Truncate(r *block.Request) {
	f.mu.Lock()
	f.data = f.data[:0]
	f.data = append(f.data, make([]byte, r.Off)...)
	f.mu.Unlock()
	r.CompleteLater(nil)
}

// TestQcow2DriverCrashStates: random writes, zero writes, discards and
// flushes through the driver onto a recording file; then many simulated
// power-loss states, a third of them with whole writes only and two thirds
// with torn writes (a write persists only some of its 512-byte sectors;
// QEMU, and so the driver, rely only on sector-atomic writes). Every
// state must pass qemu-img check with at most leaks (exit 0 or 3), and
// read back, through the format layer, the data of the last guest flush
// it contains wherever nothing was written after that flush.
//
// Knobs for soak runs: RINGBLK_QCOW2_CRASH_STATES=N random states per
// case (default 60; 30 with -short, 18 under -race), RINGBLK_SEED=S
// varies the workloads and the states.
func TestQcow2DriverCrashStates(t *testing.T) {
	needQemu(t)
	seed, random := uint64(0), 60
	if testing.Short() {
		random = 30
	}
	if raceEnabled {
		random = 18 // the race detector makes each state slow; the plain run covers more
	}
	if v := os.Getenv("RINGBLK_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("RINGBLK_SEED=%q: %v", v, err)
		}
		t.Logf("seed %d", seed)
	}
	if v := os.Getenv("RINGBLK_QCOW2_CRASH_STATES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("RINGBLK_QCOW2_CRASH_STATES=%q: want a positive count", v)
		}
		random = n
	}
	cases := []struct {
		name string
		o    format.CreateOptions
		size int64
		fill int64 // written sequentially first (refcount table growth)
		grow int64 // Truncate to this size half-way (L1 growth), 0: none
		// backing: a raw backing file with data under the whole disk, so
		// partial allocating writes copy from it (COW from the backing
		// file must be durable before the L2 entry that exposes it, R4).
		backing bool
	}{
		{"c512-rc64", format.CreateOptions{ClusterSize: 512, RefcountBits: 64}, 3 << 20, 5 << 19, 6 << 20, false},
		{"c4k", format.CreateOptions{ClusterSize: 4096}, 4 << 20, 0, 0, false},
		{"c64k-v2", format.CreateOptions{Version: 2}, 4 << 20, 0, 0, false},
		{"c64k-compressed", format.CreateOptions{}, 4 << 20, 0, 0, false},
		{"c4k-backing", format.CreateOptions{ClusterSize: 4096}, 4 << 20, 0, 0, true},
	}
	for ci, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			f := &recFile{}
			fn, err := e.g.Open(f, block.Options{})
			if err != nil {
				t.Fatal(err)
			}
			var base []byte // the backing file's bytes (nil: no backing file)
			dopts := DriverOptions{}
			if tc.backing {
				base = make([]byte, tc.size)
				brng := rand.New(rand.NewPCG(uint64(ci), 77))
				for i := range base {
					base[i] = byte(brng.Uint32())
				}
				bpath := filepath.Join(t.TempDir(), "base.raw")
				if err := os.WriteFile(bpath, base, 0o644); err != nil {
					t.Fatal(err)
				}
				tc.o.BackingFile, tc.o.BackingFormat = bpath, "raw"
				dopts.Backing = func(BackingRequest) (*block.Node, error) {
					return raw.NewNode(e.g, bpath, raw.Options{ReadOnly: true, Locking: raw.LockingOff}, block.Options{ReadOnly: true})
				}
			}
			if err := Create(fn, tc.size, tc.o); err != nil {
				t.Fatal(err)
			}
			start := append([]byte(nil), f.data...)
			f.log = nil
			n, err := NewNode(e.g, fn, dopts, block.Options{})
			if err != nil {
				t.Fatal(err)
			}
			cs := tc.o.ClusterSize
			if cs == 0 {
				cs = 65536
			}
			// Guest flushes: the log length when each completed, and the
			// guest op count then. lastTouch[i] is the last guest op that
			// wrote byte i: a byte not written after a flush must still
			// hold its final reference value in any state that contains
			// the flush.
			type gflush struct {
				logLen int
				op     int32
			}
			full := max(tc.size, tc.grow) // the largest the disk gets
			cur := tc.size
			ref := make([]byte, full)
			copy(ref, base)
			lastTouch := make([]int32, full)
			var flushes []gflush
			var opIdx int32
			rng := rand.New(rand.NewPCG(uint64(ci)^seed, 5))
			touch := func(off, ln int64) {
				opIdx++
				for i := off; i < off+ln; i++ {
					lastTouch[i] = opIdx
				}
			}
			guestFlush := func() {
				if err := n.Flush(); err != nil {
					t.Fatal(err)
				}
				f.mu.Lock()
				flushes = append(flushes, gflush{logLen: len(f.log), op: opIdx})
				f.mu.Unlock()
			}
			for off := int64(0); off < tc.fill; off += 128 << 10 {
				buf := bytes.Repeat([]byte{byte(off >> 17)}, 128<<10)
				if _, err := n.WriteAt(buf, off); err != nil {
					t.Fatal(err)
				}
				copy(ref[off:], buf)
				touch(off, int64(len(buf)))
				if off%(512<<10) == 0 {
					guestFlush()
				}
			}
			for i := 0; i < 120; i++ {
				if i == 60 && tc.grow > 0 {
					if err := n.Truncate(tc.grow); err != nil {
						t.Fatal(err)
					}
					cur = tc.grow
				}
				off := rng.Int64N(cur/512) * 512
				ln := min(cur-off, 512*(1+rng.Int64N(3*cs/512+1)))
				op := rng.IntN(12)
				if op == 4 && tc.name == "c64k-compressed" {
					off &^= cs - 1
					ln = min(cs, cur-off)
					buf := bytes.Repeat([]byte{byte(i + 1), 0x42}, int(ln/2))
					if _, err := n.WriteCompressed(buf, off); err != nil {
						t.Fatal(err)
					}
					copy(ref[off:], buf)
					touch(off, ln)
					continue
				}
				switch op {
				case 0:
					if err := n.Discard(off, ln); err != nil {
						t.Fatal(err)
					}
					for c := (off + cs - 1) / cs * cs; c+cs <= off+ln || (c < off+ln && off+ln == cur); c += cs {
						clear(ref[c:min(c+cs, cur)])
					}
					touch(off, ln)
				case 1:
					if err := n.WriteZeroes(off, ln, block.MayUnmap); err != nil {
						t.Fatal(err)
					}
					clear(ref[off : off+ln])
					touch(off, ln)
				case 2, 3:
					guestFlush()
				default:
					buf := bytes.Repeat([]byte{byte(i + 1)}, int(ln))
					if _, err := n.WriteAt(buf, off); err != nil {
						t.Fatal(err)
					}
					copy(ref[off:], buf)
					touch(off, ln)
				}
			}
			n.Unref()
			log := f.log
			if f.zeroes == 0 && tc.o.ClusterSize != 512 && !tc.backing { // 512-byte clusters: no partial write; a backing file: COW copies from it
				t.Error("no partial allocating write zeroed its host cluster: the ZERO_RANGE path went untested")
			}
			blockMax := make([]int32, full/4096)
			for i, v := range lastTouch {
				blockMax[i/4096] = max(blockMax[i/4096], v)
			}

			// Epoch boundaries: indexes of the flushes in the log.
			var bounds []int
			for i, op := range log {
				if op.flush {
					bounds = append(bounds, i)
				}
			}
			dir := t.TempDir()
			path := filepath.Join(dir, "crash.qcow2")
			// Epochs to crash in: random ones, plus every epoch around a
			// refcount table switch (header write at 48).
			var ks []int
			for s := 0; s < random; s++ {
				ks = append(ks, rng.IntN(len(bounds)+1)-1)
			}
			for i, op := range log {
				if op.flush || (op.off != 48 && op.off != 36) || len(op.b) != 12 {
					continue
				}
				k := -1
				for j, b := range bounds {
					if b < i {
						k = j
					}
				}
				reps := 3
				if raceEnabled {
					reps = 1
				}
				for d := -3; d <= 1; d++ {
					for rep := 0; rep < reps; rep++ {
						if k+d >= -1 && k+d < len(bounds) {
							ks = append(ks, k+d)
						}
					}
				}
			}
			states, tornStates := 0, 0
			for s, k := range ks {
				// Durable prefix: everything before flush k (k = -1: none).
				prefix := 0
				if k >= 0 {
					prefix = bounds[k] + 1
				}
				next := len(log)
				if k+1 < len(bounds) {
					next = bounds[k+1]
				}
				img := append([]byte(nil), start...)
				// applyPart persists op's bytes in [lo, hi) of the file.
				applyPart := func(op recOp, lo, hi int64) {
					if hi > int64(len(img)) {
						img = append(img, make([]byte, hi-int64(len(img)))...)
					}
					copy(img[lo:hi], op.b[lo-op.off:hi-op.off])
				}
				apply := func(op recOp) {
					if !op.flush {
						applyPart(op, op.off, op.off+int64(len(op.b)))
					}
				}
				// applyTorn persists each 512-byte file sector of op on its
				// own, with probability 1/2 (a write inside one sector is
				// atomic: qcow2.md §2.4, R6). It reports whether op was
				// torn: some of its sectors persisted and some did not.
				applyTorn := func(op recOp) bool {
					if op.flush {
						return false
					}
					some, all := false, true
					end := op.off + int64(len(op.b))
					for lo := op.off; lo < end; lo = (lo/512 + 1) * 512 {
						hi := min(end, (lo/512+1)*512)
						if rng.IntN(2) == 0 {
							applyPart(op, lo, hi)
							some = true
						} else {
							all = false
						}
					}
					return some && !all
				}
				for _, op := range log[:prefix] {
					apply(op)
				}
				// The writes of the open epoch (after flush k), by the
				// state's shape: any subset of whole writes; each write
				// torn at sector granularity; or the epoch's writes in
				// order up to one in flight at the crash, which is torn.
				torn := false
				switch shape := s % 3; {
				case shape == 0 || next == prefix:
					for _, op := range log[prefix:next] {
						if rng.IntN(2) == 0 {
							apply(op)
						}
					}
				case shape == 1:
					for _, op := range log[prefix:next] {
						if applyTorn(op) {
							torn = true
						}
					}
				default:
					j := prefix + rng.IntN(next-prefix)
					for _, op := range log[prefix:j] {
						apply(op)
					}
					torn = applyTorn(log[j])
				}
				if torn {
					tornStates++
				}
				if err := os.WriteFile(path, img, 0o644); err != nil {
					t.Fatal(err)
				}
				out, err := exec.Command("qemu-img", "check", "--output=json", path).Output()
				code := 0
				if ee, ok := err.(*exec.ExitError); ok {
					code = ee.ExitCode()
				} else if err != nil {
					t.Fatal(err)
				}
				var q qemuCheckJSON
				json.Unmarshal(out, &q)
				if (code != 0 && code != 3) || q.Corruptions != 0 || q.CheckErrors != 0 {
					t.Fatalf("state %d (prefix %d of %d ops): qemu-img check exit %d %+v", s, prefix, len(log), code, q)
				}
				// Content of the last guest flush inside the prefix.
				g := -1
				for j, gf := range flushes {
					if gf.logLen <= prefix {
						g = j
					}
				}
				if g >= 0 {
					gop := flushes[g].op
					im, err := format.ReadImage(bytes.NewReader(img), int64(len(img)), format.Options{})
					if err != nil {
						t.Fatalf("state %d: %v", s, err)
					}
					// The disk size of this state (before or after a grow).
					got := make([]byte, im.Geometry.Size)
					var br io.ReaderAt
					if base != nil {
						br = zeroPadReader(base)
					}
					if _, err := im.ReadAt(got, 0, br); err != nil {
						t.Fatalf("state %d: read: %v", s, err)
					}
					for b := int64(0); b+4096 <= int64(len(got)); b += 4096 {
						if blockMax[b/4096] <= gop {
							if !bytes.Equal(got[b:b+4096], ref[b:b+4096]) {
								t.Fatalf("state %d: flushed block at %d differs", s, b)
							}
							continue
						}
						for i := b; i < b+4096; i++ {
							if lastTouch[i] <= gop && got[i] != ref[i] {
								t.Fatalf("state %d: flushed byte %d is %02x, want %02x", s, i, got[i], ref[i])
							}
						}
					}
				}
				states++
			}
			grown, l1Moved := 0, 0
			for _, op := range log {
				if !op.flush && op.off == 48 && len(op.b) == 12 {
					grown++
				}
				if !op.flush && op.off == 36 && len(op.b) == 12 {
					l1Moved++
				}
			}
			if tc.fill > 0 && grown == 0 {
				t.Errorf("refcount table never grew")
			}
			if tc.grow > 0 && l1Moved == 0 {
				t.Errorf("L1 table never moved")
			}
			if tornStates == 0 {
				t.Errorf("no crash state had a torn write")
			}
			t.Logf("%d ops in the log, %d flushes, %d refcount table and %d L1 switches, %d crash states checked (%d with a torn write)",
				len(log), len(bounds), grown, l1Moved, states, tornStates)
		})
	}
}

// zeroPadReader reads a backing file's bytes, zeros past their end.
type zeroPadReader []byte

func (z zeroPadReader) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	if off < int64(len(z)) {
		copy(p, z[off:])
	}
	return len(p), nil
}
