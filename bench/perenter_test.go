package bench

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// TestCompareIOsPerEnter: both ring engines count their io_uring_enter
// calls, so --compare can give I/Os per call; the io_uring engine with
// iodepth_batch=8 submits several I/Os per enter, and psync has none.
func TestCompareIOsPerEnter(t *testing.T) {
	dir := benchDir(t)
	j := mustParse(t, "--name=e", "--filename="+filepath.Join(dir, "f"), "--size=4m", "--rw=randread",
		"--iodepth=16", "--iodepth_batch=8", "--iodepth_batch_complete=8", "--runtime=2s").Jobs[0]
	s, err := runSelf(j, "io_uring")
	if err != nil {
		t.Fatal(err)
	}
	if s.perSubmit < 2 || s.perReap < 1 {
		t.Errorf("io_uring engine: %.2f submitted / %.2f reaped per enter; want ≥2 and ≥1 with batches of 8", s.perSubmit, s.perReap)
	}
	s, err = runSelf(j, "ringblk")
	if err != nil {
		t.Fatal(err)
	}
	if s.perSubmit <= 0 || s.perSubmit != s.perReap {
		t.Errorf("ringblk engine: %.2f/%.2f per enter; want a positive count, the same for both", s.perSubmit, s.perReap)
	}
	if s, _ := runSelf(j, "psync"); s.perSubmit != 0 || s.perReap != 0 {
		t.Errorf("psync: %.2f/%.2f per enter, want none", s.perSubmit, s.perReap)
	}
	var out bytes.Buffer
	writeCompare(&out, &Config{Repeats: 1}, j, "raw", []*compareRow{
		{name: "io_uring", samples: []sample{{iops: 1, perSubmit: 7.5, perReap: 3}}},
		{name: "fio-io_uring", samples: []sample{{iops: 1}}},
	})
	if !strings.Contains(out.String(), "IOs/enter s/r") || !strings.Contains(out.String(), "7.5/3.0") {
		t.Errorf("compare table without the I/Os per enter column:\n%s", out.String())
	}
}
