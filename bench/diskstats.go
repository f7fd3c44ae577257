package bench

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// diskSnap is one /sys/block/<dev>/stat reading.
type diskSnap struct {
	name   string
	fields [11]uint64
	at     time.Time
}

// diskOf finds the whole-disk name holding path ("" when there is none,
// e.g. tmpfs or a null image).
func diskOf(path string) string {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return ""
	}
	dev := st.Dev
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		dev = st.Rdev
	}
	link := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(dev), unix.Minor(dev))
	real, err := filepath.EvalSymlinks(link)
	if err != nil {
		return ""
	}
	if _, err := os.Stat(filepath.Join(real, "partition")); err == nil {
		real = filepath.Dir(real)
	}
	if _, err := os.Stat(filepath.Join(real, "stat")); err != nil {
		return ""
	}
	return filepath.Base(real)
}

func readDiskSnap(name string) (diskSnap, bool) {
	data, err := os.ReadFile(filepath.Join("/sys/block", name, "stat"))
	if err != nil {
		return diskSnap{}, false
	}
	s := diskSnap{name: name, at: time.Now()}
	for i, f := range strings.Fields(string(data)) {
		if i >= len(s.fields) {
			break
		}
		s.fields[i], _ = strconv.ParseUint(f, 10, 64)
	}
	return s, true
}

// diskDelta is one disk's activity during the run (fio's disk_util).
type diskDelta struct {
	name               string
	ios, merges, ticks [2]uint64 // read, write
	inQueue            uint64
	util               float64 // percent of the run the disk was busy
}

// diskDeltas are the /sys/block/<dev>/stat differences of the disks the
// run used.
func (r *Result) diskDeltas() []diskDelta {
	var out []diskDelta
	for _, b := range r.diskBefore {
		a, ok := readDiskSnapAt(r.diskAfter, b.name)
		if !ok {
			continue
		}
		d := func(i int) uint64 { return a.fields[i] - b.fields[i] }
		ms := float64(a.at.Sub(b.at).Milliseconds())
		util := 0.0
		if ms > 0 {
			util = min(100, float64(d(9))*100/ms)
		}
		out = append(out, diskDelta{name: b.name, ios: [2]uint64{d(0), d(4)}, merges: [2]uint64{d(1), d(5)},
			ticks: [2]uint64{d(3), d(7)}, inQueue: d(10), util: util})
	}
	return out
}

// diskUtil is fio's "disk_util" array for the disks the run used.
func (r *Result) diskUtil() []obj {
	var out []obj
	for _, x := range r.diskDeltas() {
		out = append(out, obj{
			{"name", x.name},
			{"read_ios", x.ios[0]}, {"write_ios", x.ios[1]},
			{"read_merges", x.merges[0]}, {"write_merges", x.merges[1]},
			{"read_ticks", x.ticks[0]}, {"write_ticks", x.ticks[1]},
			{"in_queue", x.inQueue}, {"util", x.util},
		})
	}
	return out
}

// writeDiskStats is fio's "Disk stats (read/write):" section of the
// normal report (nothing without a disk, as in fio).
func (r *Result) writeDiskStats(out io.Writer) {
	ds := r.diskDeltas()
	if len(ds) == 0 {
		return
	}
	fmt.Fprintf(out, "\nDisk stats (read/write):\n")
	for _, x := range ds {
		fmt.Fprintf(out, "  %s: ios=%d/%d, merge=%d/%d, ticks=%d/%d, in_queue=%d, util=%.2f%%\n",
			x.name, x.ios[0], x.ios[1], x.merges[0], x.merges[1], x.ticks[0], x.ticks[1], x.inQueue, x.util)
	}
}

func readDiskSnapAt(snaps []diskSnap, name string) (diskSnap, bool) {
	for _, s := range snaps {
		if s.name == name {
			return s, true
		}
	}
	return diskSnap{}, false
}

// snapDisks reads the stats of every disk the jobs' files live on.
func snapDisks(jobs []*Job) []diskSnap {
	seen := map[string]bool{}
	var out []diskSnap
	for _, j := range jobs {
		if j.Filename == "" || (j.IOEngine == "ringblk" && j.Format == "null") {
			continue
		}
		name := diskOf(j.Filename)
		if name == "" || seen[name] {
			continue
		}
		seen[name] = true
		if s, ok := readDiskSnap(name); ok {
			out = append(out, s)
		}
	}
	return out
}
