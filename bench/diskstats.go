package bench

import (
	"fmt"
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

// diskUtil is fio's "disk_util" array for the disks the run used.
func (r *Result) diskUtil() []obj {
	var out []obj
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
		out = append(out, obj{
			{"name", b.name},
			{"read_ios", d(0)}, {"write_ios", d(4)},
			{"read_merges", d(1)}, {"write_merges", d(5)},
			{"read_ticks", d(3)}, {"write_ticks", d(7)},
			{"in_queue", d(10)}, {"util", util},
		})
	}
	return out
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
