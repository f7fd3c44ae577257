package raw_test

import (
	"testing"

	"github.com/ringblk/ringblk/internal/invariants"
)

// TestHotPathZeroAllocs: reads and writes through front end → node → raw →
// ring → completion allocate nothing in steady state, buffered and
// O_DIRECT, with arena (fixed) buffers.
func TestHotPathZeroAllocs(t *testing.T) {
	if raceEnabled || invariants.Enabled {
		t.Skip("allocation budgets hold for production builds (no -race, no invariants tag)")
	}
	for _, c := range []struct {
		rw     string
		direct bool
	}{{"randread", false}, {"randwrite", false}, {"randread", true}, {"randwrite", true}} {
		path, _ := image(t, 8<<20, 1)
		s := newBench(t, benchSpec{file: path, rw: c.rw, bs: 4096, qd: 32, jobs: 1, direct: c.direct})
		s.runFor(0, 2000)
		const count = 5000
		allocs := testing.AllocsPerRun(3, func() { s.runFor(0, count) })
		// runFor's own harness (goroutine, WaitGroup, the Run hand-off and
		// WaitWhile closures) is a few dozen objects per call.
		t.Logf("%s direct=%v: %.1f allocations per %d requests", c.rw, c.direct, allocs, count)
		if allocs > 64 {
			t.Errorf("%s direct=%v: %.0f allocations for %d requests: the request path allocates", c.rw, c.direct, allocs, count)
		}
	}
}
