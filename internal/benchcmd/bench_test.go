package benchcmd

import (
	"strings"
	"testing"
)

// TestBenchPrefixWriter: bench's "ringblk bench: " error lines become
// "ringblk: bench: " however the writes split them; other lines, status
// lines ending in \r and text mentioning the prefix mid-line pass as they
// are.
func TestBenchPrefixWriter(t *testing.T) {
	in := "ringblk bench: bad job\nJobs: 1 (f=1): [R(1)]\rJobs: 1\n" +
		"job x: ringblk bench: stays\nringblk\nringblk benchmark\nringblk bench: last\n"
	want := "ringblk: bench: bad job\nJobs: 1 (f=1): [R(1)]\rJobs: 1\n" +
		"job x: ringblk bench: stays\nringblk\nringblk benchmark\nringblk: bench: last\n"
	for _, step := range []int{1, 2, 3, 7, 15, len(in)} {
		var b strings.Builder
		p := &prefixWriter{w: &b, from: "ringblk bench: ", to: "ringblk: bench: "}
		for i := 0; i < len(in); i += step {
			n, err := p.Write([]byte(in[i:min(i+step, len(in))]))
			if err != nil || n != min(step, len(in)-i) {
				t.Fatalf("step %d: Write = %d, %v", step, n, err)
			}
		}
		if b.String() != want {
			t.Errorf("writes of %d bytes:\n%q\nwant\n%q", step, b.String(), want)
		}
	}
}
