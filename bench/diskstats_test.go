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

// TestPerShare: each clone's bw line gives its share of the group's
// aggregate bandwidth (fio's per=), here 3:1 between two clones.
func TestPerShare(t *testing.T) {
	mk := func(bytes uint64, mean float64) *entry {
		e := newEntry("c", 0, newJob("c", Loc{}))
		e.dirs[DirRead].ios, e.dirs[DirRead].bytes, e.runtimeMs = 1, bytes, 1000
		e.dirs[DirRead].bw.add(mean)
		return e
	}
	// 3 MiB and 1 MiB in 1 s: the group moves 4096 KiB/s.
	es := []*entry{mk(3<<20, 3072), mk(1<<20, 1024)}
	setShares(es)
	if es[0].share[DirRead] != 75 || es[1].share[DirRead] != 25 {
		t.Errorf("shares %v, %v; want 75 and 25", es[0].share[DirRead], es[1].share[DirRead])
	}
	var out bytes.Buffer
	writeEntry(&out, es[1])
	if !strings.Contains(out.String(), "per=25.00%") {
		t.Errorf("bw line without per=25.00%%:\n%s", out.String())
	}
}
