package block

import (
	"bytes"
	"testing"
	"time"
)

func TestAlignArithmetic(t *testing.T) {
	for _, c := range []struct{ x, align, down, up int64 }{
		{0, 512, 0, 0}, {1, 512, 0, 512}, {511, 512, 0, 512}, {512, 512, 512, 512},
		{513, 512, 512, 1024}, {4095, 4096, 0, 4096}, {7, 1, 7, 7},
	} {
		if d, u := alignDown(c.x, c.align), alignUp(c.x, c.align); d != c.down || u != c.up {
			t.Errorf("align(%d, %d) = %d,%d; want %d,%d", c.x, c.align, d, u, c.down, c.up)
		}
	}
	for _, c := range []struct{ off, end, max, want int64 }{
		{0, 100, 0, 100}, {0, 100, 64, 64}, {64, 100, 64, 36}, {0, 0, 64, 0},
	} {
		if got := pieceLen(c.off, c.end, c.max); got != c.want {
			t.Errorf("pieceLen(%d,%d,%d) = %d, want %d", c.off, c.end, c.max, got, c.want)
		}
	}
}

func TestIovHelpers(t *testing.T) {
	iov := [][]byte{[]byte("abc"), []byte("defg"), []byte("h")}
	var one [1][]byte
	for _, c := range []struct {
		skip, n int64
		want    string
		single  bool
	}{
		{0, 3, "abc", true}, {1, 2, "bc", true}, {3, 4, "defg", true},
		{2, 3, "cde", false}, {0, 8, "abcdefgh", false}, {7, 1, "h", true},
	} {
		got := iovSlice(&one, iov, c.skip, c.n)
		var b []byte
		for _, x := range got {
			b = append(b, x...)
		}
		if string(b) != c.want {
			t.Errorf("iovSlice(%d,%d) = %q, want %q", c.skip, c.n, b, c.want)
		}
		if c.single != (len(got) == 1 && &got[0] == &one[0]) {
			t.Errorf("iovSlice(%d,%d): reused the one-element array = %v, want %v", c.skip, c.n, !c.single, c.single)
		}
	}
	dst := [][]byte{make([]byte, 2), make([]byte, 3)}
	CopyToIov(dst, 1, []byte("xyz"))
	if got := string(dst[0]) + string(dst[1]); got != "\x00xyz\x00" {
		t.Errorf("CopyToIov: %q", got)
	}
	g := make([]byte, 5)
	iovGather(g, iov)
	if !bytes.Equal(g, []byte("abcde")) {
		t.Errorf("iovGather: %q", g)
	}
}

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newFakeClock() *fakeClock           { return &fakeClock{t: time.Unix(1000, 0)} }

func TestThrottleIOPS(t *testing.T) {
	clk := newFakeClock()
	tg := NewThrottleGroup("g", ThrottleLimits{IOPSTotal: 100, IOPSTotalBurst: 10}, clk.now)
	for i := 0; i < 10; i++ {
		if w := tg.Admit(false, 4096); w != 0 {
			t.Fatalf("request %d within the burst waits %v", i, w)
		}
	}
	w := tg.Admit(false, 4096)
	if w <= 0 || w > 11*time.Millisecond {
		t.Fatalf("11th request: wait %v, want about 10ms", w)
	}
	clk.add(w)
	if w := tg.Admit(true, 4096); w != 0 {
		t.Fatalf("after waiting: %v", w)
	}
	// A second of idleness refills to the burst, not beyond.
	clk.add(time.Second)
	for i := 0; i < 10; i++ {
		if w := tg.Admit(false, 1); w != 0 {
			t.Fatalf("refilled burst, request %d waits %v", i, w)
		}
	}
	if w := tg.Admit(false, 1); w == 0 {
		t.Fatal("burst exceeded without waiting")
	}
}

func TestThrottleBPSReadWrite(t *testing.T) {
	clk := newFakeClock()
	tg := NewThrottleGroup("g", ThrottleLimits{BPSWrite: 1 << 20, BPSWriteBurst: 64 << 10}, clk.now)
	// Reads are not limited.
	for i := 0; i < 100; i++ {
		if w := tg.Admit(false, 1<<20); w != 0 {
			t.Fatalf("read waits %v without a read limit", w)
		}
	}
	if w := tg.Admit(true, 64<<10); w != 0 {
		t.Fatalf("first write within burst waits %v", w)
	}
	w := tg.Admit(true, 64<<10)
	if want := time.Second / 16; w < want-time.Millisecond || w > want+time.Millisecond {
		t.Fatalf("second write waits %v, want about %v", w, want)
	}
	// A request larger than the burst waits only for an empty bucket.
	clk.add(time.Second)
	if w := tg.Admit(true, 1<<20); w != 0 {
		t.Fatalf("oversized request on an empty bucket waits %v", w)
	}
	if w := tg.Admit(true, 1<<20); w < 900*time.Millisecond {
		t.Fatalf("oversized request on a full bucket waits %v, want about 1s", w)
	}
}

func TestErrorFormat(t *testing.T) {
	e := &Error{Kind: OutOfBounds, Op: OpRead, Node: "n", Offset: -2, Err: errTest}
	if got := e.Error(); got != "block: read on n at -2: out of bounds: test" {
		t.Fatalf("Error() = %q", got)
	}
	if !IsKind(e, OutOfBounds) || IsKind(e, Io) {
		t.Fatal("IsKind")
	}
	if Errno(e) != 5 { // EIO for a non-errno cause
		t.Fatalf("Errno = %v", Errno(e))
	}
}

type testErr struct{}

func (testErr) Error() string { return "test" }

var errTest = testErr{}

// TestThrottleIOPSSize: with IOPSSize (QEMU's iops_size) a request larger
// than it counts as its size over IOPSSize operations in the IOPS
// buckets, a smaller one as one. Before, every request was one operation
// whatever its size.
func TestThrottleIOPSSize(t *testing.T) {
	clk := newFakeClock()
	tg := NewThrottleGroup("g", ThrottleLimits{IOPSTotal: 100, IOPSTotalBurst: 16, IOPSSize: 4096}, clk.now)
	// 64 KiB is 16 operations: the first fills the burst.
	if w := tg.Admit(false, 64<<10); w != 0 {
		t.Fatalf("first 64 KiB request waits %v", w)
	}
	w := tg.Admit(false, 64<<10)
	if w < 150*time.Millisecond || w > 170*time.Millisecond {
		t.Fatalf("second 64 KiB request: wait %v, want 160ms (16 ops at 100/s)", w)
	}
	// Small requests count one each.
	clk.add(time.Second)
	for i := 0; i < 16; i++ {
		if w := tg.Admit(true, 512); w != 0 {
			t.Fatalf("512-byte request %d within the burst waits %v", i, w)
		}
	}
	// 6 KiB is 1.5 operations.
	clk.add(time.Second)
	for i := 0; i < 10; i++ {
		if w := tg.Admit(false, 6<<10); w != 0 {
			t.Fatalf("6 KiB request %d (15 ops so far) waits %v", i, w)
		}
	}
	if w := tg.Admit(false, 6<<10); w == 0 {
		t.Fatal("a 6 KiB request past 16 ops did not wait")
	}
}
