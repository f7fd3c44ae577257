package block

import (
	"errors"
	"testing"
)

// TestStatusAbove: the chain walk of QEMU's bdrv_block_status_above on a
// three-image chain (4 MiB over 2 MiB over 4 MiB): the first allocating
// image decides, each lower image is asked only about what the image
// above left open, a range past a shorter backing image is zeroes
// allocated there, the bottom decides when nothing allocates, and
// errors come back as status gave them.
func TestStatusAbove(t *testing.T) {
	const M = 1 << 20
	sizes := []int64{4 * M, 2 * M, 4 * M}
	// own[i] gives image i's status at off; every status covers 64 KiB
	// runs except where a test says.
	type call struct {
		i      int
		off, n int64
	}
	errBad := errors.New("bad sector")
	for _, c := range []struct {
		name  string
		own   func(i int, off int64) (Status, int64, error)
		off   int64
		want  ChainStatus
		calls []call
		err   error
	}{
		{"top allocates", func(i int, off int64) (Status, int64, error) {
			return StatusData | StatusAllocated, 64 << 10, nil
		}, 0, ChainStatus{Status: StatusData | StatusAllocated, Pnum: 64 << 10}, []call{{0, 0, 4 * M}}, nil},
		{"middle allocates", func(i int, off int64) (Status, int64, error) {
			if i == 1 {
				return StatusZero | StatusAllocated, 8 << 10, nil
			}
			return 0, 64 << 10, nil
		}, M, ChainStatus{Status: StatusZero | StatusAllocated, Pnum: 8 << 10, Depth: 1},
			[]call{{0, M, 3 * M}, {1, M, 64 << 10}}, nil},
		{"past the middle's end", func(i int, off int64) (Status, int64, error) {
			return 0, 64 << 10, nil
		}, 3 * M, ChainStatus{Status: StatusZero | StatusAllocated, Pnum: 64 << 10, Depth: 1, PastEnd: true},
			[]call{{0, 3 * M, M}}, nil},
		{"bottom decides", func(i int, off int64) (Status, int64, error) {
			if i == 2 {
				return StatusData, 4 << 10, nil
			}
			return 0, 64 << 10, nil
		}, 0, ChainStatus{Status: StatusData, Pnum: 4 << 10, Depth: 2},
			[]call{{0, 0, 4 * M}, {1, 0, 64 << 10}, {2, 0, 64 << 10}}, nil},
		{"error", func(i int, off int64) (Status, int64, error) {
			if i == 1 {
				return 0, 0, errBad
			}
			return 0, 64 << 10, nil
		}, 0, ChainStatus{}, []call{{0, 0, 4 * M}, {1, 0, 64 << 10}}, errBad},
	} {
		var calls []call
		got, err := StatusAbove(len(sizes), func(i int) int64 { return sizes[i] },
			func(i int, off, n int64) (Status, int64, error) {
				calls = append(calls, call{i, off, n})
				return c.own(i, off)
			}, c.off, sizes[0]-c.off)
		if err != c.err || got != c.want {
			t.Errorf("%s: %+v, %v; want %+v, %v", c.name, got, err, c.want, c.err)
		}
		if len(calls) != len(c.calls) {
			t.Errorf("%s: asked %v, want %v", c.name, calls, c.calls)
			continue
		}
		for i := range calls {
			if calls[i] != c.calls[i] {
				t.Errorf("%s: asked %v, want %v", c.name, calls, c.calls)
				break
			}
		}
	}
	if _, err := StatusAbove(0, nil, nil, 0, 1); !errors.Is(err, ErrEmptyChain) {
		t.Errorf("empty chain: %v", err)
	}
}

// TestStepAbove: the one-image rule, as the NBD server applies it.
func TestStepAbove(t *testing.T) {
	for _, c := range []struct {
		st           Status
		bottom       bool
		off, backing int64
		want         AboveStep
	}{
		{StatusAllocated, false, 0, 1 << 20, AboveDecided},
		{StatusAllocated | StatusData, false, 2 << 20, 1 << 20, AboveDecided},
		{StatusData, true, 0, 0, AboveDecided},
		{0, true, 2 << 20, 0, AboveDecided},
		{0, false, 1 << 20, 1 << 20, AbovePastEnd},
		{StatusZero, false, 1<<20 - 1, 1 << 20, AboveNext},
	} {
		if got := StepAbove(c.st, c.bottom, c.off, c.backing); got != c.want {
			t.Errorf("StepAbove(%v, bottom %t, off %d, backing %d) = %d, want %d", c.st, c.bottom, c.off, c.backing, got, c.want)
		}
	}
}
