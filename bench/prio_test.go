package bench

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// prioJSON is the part of a JSON report the priority tests read.
type prioJSON struct {
	Jobs []struct {
		Name string `json:"jobname"`
		Read struct {
			TotalIOs uint64 `json:"total_ios"`
			Prios    []struct {
				Class int `json:"prioclass"`
				Prio  int `json:"prio"`
				Clat  struct {
					N uint64 `json:"N"`
				} `json:"clat_ns"`
			} `json:"prios"`
		} `json:"read"`
	} `json:"jobs"`
}

// TestCmdprio: cmdprio_percentage gives that share of the I/Os
// cmdprio_class/cmdprio, the rest prioclass/prio; the report splits clat
// by priority (JSON "prios", the default first) on both ring engines,
// log_prio logs each I/O's priority value, psync refuses cmdprio as fio
// does, and (fio installed) the JSON key set is fio's for the same job.
func TestCmdprio(t *testing.T) {
	dir := benchDir(t)
	file := filepath.Join(dir, "f")
	for _, eng := range []string{"io_uring", "ringblk"} {
		t.Run(eng, func(t *testing.T) {
			logp := filepath.Join(dir, eng)
			job := "[global]\nfilename=" + file + "\nsize=2m\nbs=4k\nrw=randread\niodepth=8\nioengine=" + eng +
				"\n[p]\nprioclass=2\nprio=4\ncmdprio_percentage=40\ncmdprio_class=1\ncmdprio=3\nwrite_lat_log=" + logp + "\nlog_prio=1\n"
			jf := filepath.Join(dir, eng+".fio")
			if err := os.WriteFile(jf, []byte(job), 0o644); err != nil {
				t.Fatal(err)
			}
			spec, err := ParseJobFile(jf)
			if err != nil {
				t.Fatal(err)
			}
			res := mustRun(t, spec)
			var out bytes.Buffer
			if err := WriteJSON(&out, res); err != nil {
				t.Fatal(err)
			}
			var doc prioJSON
			if err := json.Unmarshal(out.Bytes(), &doc); err != nil {
				t.Fatal(err)
			}
			r := doc.Jobs[0].Read
			if len(r.Prios) != 2 || r.Prios[0].Class != 2 || r.Prios[0].Prio != 4 || r.Prios[1].Class != 1 || r.Prios[1].Prio != 3 {
				t.Fatalf("prios %+v, want 2/4 then 1/3", r.Prios)
			}
			hi := r.Prios[1].Clat.N
			if r.Prios[0].Clat.N+hi != r.TotalIOs || hi < r.TotalIOs*25/100 || hi > r.TotalIOs*55/100 {
				t.Errorf("prio 1/3 has %d of %d I/Os (%d at 2/4), want about 40%%", hi, r.TotalIOs, r.Prios[0].Clat.N)
			}
			var text bytes.Buffer
			WriteNormal(&text, res)
			for _, want := range []string{"clat prio 2/4 (", "clat prio 1/3 (", "% of IOs) percentiles ("} {
				if !strings.Contains(text.String(), want) {
					t.Errorf("report lacks %q:\n%s", want, text.String())
				}
			}
			data, err := os.ReadFile(logp + "_clat.1.log")
			if err != nil {
				t.Fatal(err)
			}
			count := map[string]uint64{}
			for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
				f := strings.Split(l, ", ")
				count[f[len(f)-1]]++
			}
			if count["0x2003"] != hi || count["0x4004"] != r.Prios[0].Clat.N {
				t.Errorf("log_prio column counts %v, want 0x2003=%d 0x4004=%d", count, hi, r.Prios[0].Clat.N)
			}
			if _, err := exec.LookPath("fio"); err != nil || eng != "io_uring" {
				return
			}
			fj := filepath.Join(dir, "fio.fio")
			os.WriteFile(fj, []byte(strings.ReplaceAll(job, logp, filepath.Join(dir, "fiolog"))), 0o644)
			ref, err := exec.Command("fio", "--output-format=json", fj).Output()
			if err != nil {
				t.Fatalf("fio: %v", err)
			}
			onlyOurs, onlyFio := diffKeys(jsonKeys(t, out.Bytes()), jsonKeys(t, ref))
			if len(onlyOurs)+len(onlyFio) > 0 {
				t.Errorf("keys only in ours: %v\nonly in fio: %v", onlyOurs, onlyFio)
			}
		})
	}
	_, err := ParseArgs([]string{"--name=s", "--filename=" + file, "--size=1m", "--ioengine=psync", "--cmdprio_percentage=10"})
	if err == nil || !strings.Contains(err.Error(), "cmdprio_percentage is an option of the io_uring and libaio engines") {
		t.Errorf("psync with cmdprio_percentage: %v", err)
	}
}

// TestCmdprioBssplit: cmdprio_bssplit entries of one block size share its
// I/Os out in order, each with its own class and level; a block size with
// no entry (or 0%) keeps the default, and a priority that saw no I/O is
// not reported.
func TestCmdprioBssplit(t *testing.T) {
	dir := benchDir(t)
	spec := mustParse(t, "--name=b", "--filename="+filepath.Join(dir, "f"), "--size=2m", "--rw=randread", "--ioengine=ringblk",
		"--iodepth=4", "--bssplit=4k/50:8k/50", "--cmdprio_bssplit=4k/100/3/2:8k/0")
	res := mustRun(t, spec)
	e := entries(res)[0]
	got := map[uint16]uint64{}
	for _, p := range e.reportedPrios(DirRead) {
		got[p.prio] = p.clat.n
	}
	// 4k reads all at idle/2, 8k reads at the default (0).
	if len(got) != 2 || got[ioprioValue(3, 2)] == 0 || got[0] == 0 {
		t.Fatalf("priorities seen %v, want 3/2 and 0/0", got)
	}
	four, eight := got[ioprioValue(3, 2)], got[0]
	if four+eight != e.dirs[DirRead].ios {
		t.Errorf("%d + %d priority I/Os, want %d", four, eight, e.dirs[DirRead].ios)
	}
}

// TestPrioFilesScrambleZeroAllocs: the worker's per-I/O path with
// cmdprio (percentage and bssplit), several files and scrambled writes
// allocates nothing.
func TestPrioFilesScrambleZeroAllocs(t *testing.T) {
	for _, extra := range [][]string{
		{"--cmdprio_percentage=30", "--nrfiles=8", "--size=8m", "--write_lat_log=" + filepath.Join(t.TempDir(), "l"), "--log_prio=1"},
		{"--cmdprio_bssplit=4k/50/1/2:4k/50/3/1", "--filename=a:b:c", "--size=3m"},
	} {
		spec := mustParse(t, append([]string{"--name=a", "--directory=" + t.TempDir(), "--rw=randrw", "--iodepth=4", "--ioengine=io_uring",
			"--time_based", "--runtime=1h"}, extra...)...)
		j := spec.Jobs[0]
		w := newWorker(j, 0, 0, j.Size)
		logs, err := openLogs(j, 1)
		if err != nil {
			t.Fatal(err)
		}
		w.logs = logs
		bufs := make([][]byte, 4)
		for i := range bufs {
			bufs[i] = make([]byte, 4096)
		}
		w.setBuffers(bufs)
		w.start()
		batch := make([]*unit, 0, 4)
		allocs := testing.AllocsPerRun(1000, func() {
			now := w.now()
			w.tick(now)
			batch = batch[:0]
			for u := w.take(); u != nil; u = w.take() {
				w.fill(u, now)
				w.files.locate(u.off)
				batch = append(batch, u)
			}
			w.submitted(batch, w.now())
			for _, u := range batch {
				w.completed(u, w.now(), nil)
			}
		})
		if logs != nil {
			logs.close()
		}
		if allocs != 0 {
			t.Errorf("%v: %v allocations per batch", extra, allocs)
		}
	}
}
