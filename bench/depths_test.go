package bench

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

type depthsJSON struct {
	Jobs []struct {
		Level    map[string]float64 `json:"iodepth_level"`
		Submit   map[string]float64 `json:"iodepth_submit"`
		Complete map[string]float64 `json:"iodepth_complete"`
	} `json:"jobs"`
}

// TestIODepthsMatchFio: the IO depths, submit and complete histograms of
// a size-bound random read at depth 16 are fio's, bucket by bucket, on
// both ring engines: fio's loop reaps one completion (its default
// iodepth_batch_complete_max) and issues one, so all but the first 15
// I/Os go out at depth 16, and the final drain is one reap.
func TestIODepthsMatchFio(t *testing.T) {
	fio, err := exec.LookPath("fio")
	if err != nil {
		t.Skip("fio is not installed (scripts/deps.sh)")
	}
	dir := benchDir(t)
	for _, eng := range []string{"io_uring", "ringblk"} {
		t.Run(eng, func(t *testing.T) {
			job := "[d]\nfilename=" + filepath.Join(dir, "f") + "\nsize=8m\nbs=4k\nrw=randread\niodepth=16\nioengine="
			jf := filepath.Join(dir, eng+".fio")
			os.WriteFile(jf, []byte(job+eng+"\n"), 0o644)
			spec, err := ParseJobFile(jf)
			if err != nil {
				t.Fatal(err)
			}
			var ours bytes.Buffer
			if err := WriteJSON(&ours, mustRun(t, spec)); err != nil {
				t.Fatal(err)
			}
			ff := filepath.Join(dir, "fio.fio")
			os.WriteFile(ff, []byte(job+"io_uring\n"), 0o644)
			ref, err := exec.Command(fio, "--output-format=json", ff).Output()
			if err != nil {
				t.Fatalf("fio: %v", err)
			}
			var a, b depthsJSON
			if err := json.Unmarshal(ours.Bytes(), &a); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(ref, &b); err != nil {
				t.Fatal(err)
			}
			for name, pair := range map[string][2]map[string]float64{
				"IO depths": {a.Jobs[0].Level, b.Jobs[0].Level},
				"submit":    {a.Jobs[0].Submit, b.Jobs[0].Submit},
				"complete":  {a.Jobs[0].Complete, b.Jobs[0].Complete},
			} {
				for k, want := range pair[1] {
					if got := pair[0][k]; math.Abs(got-want) > 0.05 {
						t.Errorf("%s %s=%.6f%%, fio %.6f%% (ours %v, fio %v)", name, k, got, want, pair[0], pair[1])
					}
				}
			}
		})
	}
}

// TestSizeOffsetPercent: size= and offset= as percentages of an existing
// file do fio's I/O (the middle half; the last quarter cut at the end);
// a missing file is refused with fio's reason.
func TestSizeOffsetPercent(t *testing.T) {
	dir := benchDir(t)
	file := filepath.Join(dir, "p")
	if err := os.WriteFile(file, make([]byte, 16<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want uint64
	}{
		{[]string{"--size=50%", "--offset=25%"}, 8 << 20},
		{[]string{"--size=50%", "--offset=75%"}, 4 << 20},
		{[]string{"--offset=25%"}, 12 << 20},
	} {
		res := mustRun(t, mustParse(t, append([]string{"--name=p", "--filename=" + file, "--bs=64k"}, c.args...)...))
		if got := entries(res)[0].dirs[DirRead].bytes; got != c.want {
			t.Errorf("%v: read %d bytes, want %d (fio's)", c.args, got, c.want)
		}
	}
	if _, err := Run(mustParse(t, "--name=p", "--filename="+filepath.Join(dir, "none"), "--size=50%"), RunOptions{}); err == nil {
		t.Error("size=50% of a missing file ran")
	}
}

// TestSyncCountsAsFio: the sync figures fio reports: fsync=32 with
// end_fsync over 128 writes is 3 syncs (none after the last write; the
// end sync is neither counted nor timed), fdatasync=1 over a size that is
// no multiple of bs is 44 writes (the tail that no block fits is left)
// and 44 timed syncs with "total_ios" 0 (fio counts fdatasyncs apart).
func TestSyncCountsAsFio(t *testing.T) {
	dir := benchDir(t)
	type syncJSON struct {
		Jobs []struct {
			Write struct {
				TotalIOs uint64 `json:"total_ios"`
			} `json:"write"`
			Sync struct {
				TotalIOs uint64 `json:"total_ios"`
				Lat      struct {
					N uint64 `json:"N"`
				} `json:"lat_ns"`
			} `json:"sync"`
		} `json:"jobs"`
	}
	for _, c := range []struct {
		args                 []string
		writes, total, timed uint64
	}{
		{[]string{"--bs=8k", "--size=1m", "--fsync=32", "--end_fsync=1"}, 128, 3, 3},
		{[]string{"--bs=2300", "--size=100k", "--fdatasync=1"}, 44, 0, 44},
	} {
		args := append([]string{"--name=s", "--ioengine=io_uring", "--rw=write", "--filename=" + filepath.Join(dir, "s"+c.args[0])}, c.args...)
		var out, errb bytes.Buffer
		if code := Main(append(args, "--output-format=json"), &out, &errb); code != 0 {
			t.Fatalf("%v: exit %d: %s", c.args, code, errb.String())
		}
		var d syncJSON
		if err := json.Unmarshal(out.Bytes(), &d); err != nil {
			t.Fatal(err)
		}
		j := d.Jobs[0]
		if j.Write.TotalIOs != c.writes || j.Sync.TotalIOs != c.total || j.Sync.Lat.N != c.timed {
			t.Errorf("%v: writes %d, sync total_ios %d, N %d; want %d, %d, %d (fio 3.33's)", c.args, j.Write.TotalIOs, j.Sync.TotalIOs, j.Sync.Lat.N, c.writes, c.total, c.timed)
		}
	}
}
