package bench

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestDiskStatsSection: the normal report ends with fio's "Disk stats
// (read/write):" section, from the /sys/block stat deltas of the run.
func TestDiskStatsSection(t *testing.T) {
	t0 := time.Now()
	r := &Result{
		diskBefore: []diskSnap{{name: "vdz", at: t0}},
		diskAfter:  []diskSnap{{name: "vdz", at: t0.Add(time.Second)}},
	}
	a := &r.diskAfter[0].fields
	a[0], a[1], a[3], a[4], a[5], a[7], a[9], a[10] = 10, 1, 20, 30, 2, 40, 500, 60
	var out bytes.Buffer
	WriteNormal(&out, r)
	want := "\nDisk stats (read/write):\n  vdz: ios=10/30, merge=1/2, ticks=20/40, in_queue=60, util=50.00%\n"
	if !strings.HasSuffix(out.String(), want) {
		t.Errorf("report ends %q, want %q", out.String(), want)
	}
	out.Reset()
	WriteNormal(&out, &Result{})
	if strings.Contains(out.String(), "Disk stats") {
		t.Error("a Disk stats section without a disk")
	}
}
