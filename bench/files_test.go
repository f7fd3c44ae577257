package bench

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestNrfilesLayoutAndIO: nrfiles=4 with filesize gives each clone fio's
// four files ($jobname.$jobnum.$filenum), and a sequential write covers
// every block of every file (roundrobin maps the region onto all of
// them); with verify the data reads back from the files it was written
// to, on each engine.
func TestNrfilesLayoutAndIO(t *testing.T) {
	for _, eng := range []string{"psync", "io_uring", "ringblk"} {
		t.Run(eng, func(t *testing.T) {
			dir := benchDir(t)
			res := mustRun(t, mustParse(t, "--name=m", "--directory="+dir, "--nrfiles=4", "--filesize=64k", "--bs=4k",
				"--rw=write", "--ioengine="+eng, "--iodepth=4", "--verify=crc32c", "--numjobs=2"))
			e := entries(res)
			var names []string
			ents, _ := os.ReadDir(dir)
			for _, d := range ents {
				names = append(names, d.Name())
			}
			sort.Strings(names)
			want := []string{"m.0.0", "m.0.1", "m.0.2", "m.0.3", "m.1.0", "m.1.1", "m.1.2", "m.1.3"}
			if len(names) != len(want) {
				t.Fatalf("files %v, want %v", names, want)
			}
			for i := range want {
				if names[i] != want[i] {
					t.Fatalf("files %v, want %v", names, want)
				}
			}
			for _, n := range names {
				data, err := os.ReadFile(filepath.Join(dir, n))
				if err != nil || len(data) != 64<<10 {
					t.Fatalf("%s: %d bytes, %v", n, len(data), err)
				}
				for off := 0; off < len(data); off += 4096 {
					if bytes.Count(data[off:off+4096], []byte{0}) == 4096 {
						t.Errorf("%s: block at %d never written", n, off)
					}
				}
			}
			for _, x := range e {
				if x.dirs[DirWrite].bytes != 256<<10 || x.dirs[DirRead].bytes != 256<<10 || x.verify.mismatches != 0 || x.err != nil {
					t.Errorf("%s: wrote %d, verified %d (want 256 KiB each), mismatches %d, err %v", x.name,
						x.dirs[DirWrite].bytes, x.dirs[DirRead].bytes, x.verify.mismatches, x.err)
				}
			}
		})
	}
}

// TestFileMapRoundRobin: roundrobin gives consecutive blocks to files in
// turn (in turns of N blocks with :N), sequential fills each file first;
// every mapping is a bijection of the region onto the files.
func TestFileMapRoundRobin(t *testing.T) {
	for _, c := range []struct {
		m     fileMap
		first []int // files of blocks 0..len-1
	}{
		{fileMap{n: 3, size: 16384, bs: 4096, stripe: 1}, []int{0, 1, 2, 0, 1, 2}},
		{fileMap{n: 2, size: 16384, bs: 4096, stripe: 2}, []int{0, 0, 1, 1, 0, 0}},
		{fileMap{n: 2, size: 16384, bs: 4096, stripe: 1, seq: true}, []int{0, 0, 0, 0, 1, 1}},
	} {
		seen := map[[2]int64]bool{}
		for k := int64(0); k < c.m.n*c.m.size/c.m.bs; k++ {
			f, off := c.m.locate(k * c.m.bs)
			if k < int64(len(c.first)) && f != c.first[k] {
				t.Errorf("%+v: block %d in file %d, want %d", c.m, k, f, c.first[k])
			}
			if off < 0 || off+c.m.bs > c.m.size || off%c.m.bs != 0 || seen[[2]int64{int64(f), off}] {
				t.Fatalf("%+v: block %d maps to file %d offset %d (out of range or twice)", c.m, k, f, off)
			}
			seen[[2]int64{int64(f), off}] = true
		}
	}
}

// TestSeveralFilesMatchFio: filename=a:b and nrfiles with size shared out
// do the I/O fio does (io_bytes) and create the same files; fio's JSON
// key set (fio installed).
func TestSeveralFilesMatchFio(t *testing.T) {
	fio, err := exec.LookPath("fio")
	if err != nil {
		t.Skip("fio is not installed (scripts/deps.sh)")
	}
	for _, c := range []struct{ name, job string }{
		{"colon-list", "[global]\nsize=96k\nbs=4k\nrw=randwrite\n[a]\nfilename=x1:x2:x3\n"},
		{"nrfiles-size", "[global]\nsize=1m\nbs=4k\nrw=read\nnrfiles=5\n[b]\nfile_service_type=sequential\n"},
		{"filesize-caps-size", "[global]\nsize=16m\nfilesize=8k\nnrfiles=10\nrw=randread\n[c]\nnumjobs=2\ngroup_reporting\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var ios [2]uint64
			var keys [2]map[string]bool
			var files [2][]string
			for i, tool := range []string{"fio", "ringblk"} {
				dir := benchDir(t)
				jf := filepath.Join(dir, "job.fio")
				os.WriteFile(jf, []byte("[global]\ndirectory="+dir+"\n"+c.job[len("[global]\n"):]), 0o644)
				var out []byte
				if tool == "fio" {
					cmd := exec.Command(fio, "--output-format=json", jf)
					if out, err = cmd.Output(); err != nil {
						t.Fatalf("fio: %v", err)
					}
				} else {
					spec, err := ParseJobFile(jf)
					if err != nil {
						t.Fatal(err)
					}
					var b bytes.Buffer
					if err := WriteJSON(&b, mustRun(t, spec)); err != nil {
						t.Fatal(err)
					}
					out = b.Bytes()
				}
				keys[i] = jsonKeys(t, out)
				var doc struct {
					Jobs []struct {
						Read, Write struct {
							IOBytes uint64 `json:"io_bytes"`
						}
					} `json:"jobs"`
				}
				if err := json.Unmarshal(out[bytes.IndexByte(out, '{'):], &doc); err != nil {
					t.Fatal(err)
				}
				for _, j := range doc.Jobs {
					ios[i] += j.Read.IOBytes + j.Write.IOBytes
				}
				ents, _ := os.ReadDir(dir)
				for _, d := range ents {
					if d.Name() != "job.fio" {
						files[i] = append(files[i], d.Name())
					}
				}
			}
			if ios[0] != ios[1] {
				t.Errorf("io_bytes: fio %d, ringblk %d", ios[0], ios[1])
			}
			if len(files[0]) != len(files[1]) {
				t.Errorf("files: fio %v, ringblk %v", files[0], files[1])
			}
			for k := range files[0] {
				if k < len(files[1]) && files[0][k] != files[1][k] {
					t.Errorf("files: fio %v, ringblk %v", files[0], files[1])
					break
				}
			}
			if a, b := diffKeys(keys[1], keys[0]); len(a)+len(b) > 0 {
				t.Errorf("JSON keys only ours %v, only fio %v", a, b)
			}
		})
	}
}

// TestReadOnlyGuard: fio's --readonly refuses a job that writes (also
// from a job file, as an override) and never lays a file out: a missing
// or short file fails the job and keeps its bytes and size; a read job
// of a file long enough runs.
func TestReadOnlyGuard(t *testing.T) {
	dir := benchDir(t)
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, bytes.Repeat([]byte{7}, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	job := filepath.Join(dir, "w.fio")
	if err := os.WriteFile(job, []byte("[w]\nfilename="+short+"\nsize=64k\nrw=randwrite\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--readonly", "--name=w", "--filename=" + short, "--size=64k", "--rw=write"},
		{"--readonly", job},
	} {
		if _, err := ParseArgs(args); err == nil || !strings.Contains(err.Error(), "writes, but readonly is set") {
			t.Errorf("%v: err %v, want the write refused", args, err)
		}
	}
	for _, eng := range []string{"psync", "ringblk"} {
		for _, f := range []string{short, filepath.Join(dir, "missing")} {
			var out, errb strings.Builder
			code := Main([]string{"--readonly", "--name=r", "--filename=" + f, "--size=128k", "--rw=read", "--ioengine=" + eng}, &out, &errb)
			if code != 1 || !strings.Contains(errb.String(), "refusing to extend") {
				t.Errorf("%s %s: exit %d, stderr %q; want the layout refused", eng, f, code, errb.String())
			}
		}
		if st, err := os.Stat(short); err != nil || st.Size() != 64<<10 {
			t.Fatalf("%s: the short file changed: %v %v", eng, st, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "missing")); !os.IsNotExist(err) {
			t.Fatalf("%s: the missing file was created (%v)", eng, err)
		}
		res := mustRun(t, mustParse(t, "--readonly", "--name=r", "--filename="+short, "--size=64k", "--rw=randread", "--ioengine="+eng))
		for _, x := range entries(res) {
			if x.err != nil || x.dirs[DirRead].bytes != 64<<10 {
				t.Errorf("%s: read %d bytes, err %v", eng, x.dirs[DirRead].bytes, x.err)
			}
		}
	}
}
