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
	"time"
)

// benchDir is where test files go: the brief asks for files on ext4, and
// t.TempDir is under /tmp (a tmpfs on some hosts, where O_DIRECT fails).
func benchDir(t *testing.T) string {
	t.Helper()
	base := "/var/tmp"
	if _, err := os.Stat(base); err != nil {
		base = ""
	}
	d, err := os.MkdirTemp(base, "ringblk-bench-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func mustParse(t *testing.T, args ...string) *Spec {
	t.Helper()
	cfg, err := ParseArgs(args)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Spec
}

func mustRun(t *testing.T, spec *Spec) *Result {
	t.Helper()
	res, err := Run(spec, RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, jr := range res.Jobs {
		if jr.Err != nil {
			t.Fatalf("job %s: %v", jr.Job.Name, jr.Err)
		}
	}
	return res
}

// TestEngines runs a short mixed job on every engine and checks the
// figures add up.
func TestEngines(t *testing.T) {
	dir := benchDir(t)
	file := filepath.Join(dir, "f")
	for _, eng := range []string{"ringblk", "io_uring", "psync", "ringblk-null", "libaio", "sync", "pvsync", "pvsync2"} {
		t.Run(eng, func(t *testing.T) {
			args := []string{"--name=" + eng, "--filename=" + file, "--size=4m", "--rw=randrw", "--bs=4k",
				"--iodepth=8", "--iodepth_batch_submit=4", "--runtime=200ms", "--time_based"}
			if eng == "ringblk-null" {
				args = []string{"--name=" + eng, "--ioengine=ringblk", "--format=null", "--size=4m", "--rw=randrw",
					"--bs=4k", "--iodepth=8", "--runtime=200ms", "--time_based", "--numjobs=2", "--group_reporting"}
			} else {
				args = append(args, "--ioengine="+eng)
			}
			res := mustRun(t, mustParse(t, args...))
			es := entries(res)
			if len(es) != 1 {
				t.Fatalf("%d entries", len(es))
			}
			e := es[0]
			for d := 0; d < 2; d++ {
				ds := &e.dirs[d]
				if ds.ios == 0 || ds.bytes != ds.ios*4096 || ds.clat.n != ds.ios || ds.lat.n != ds.ios {
					t.Errorf("dir %d: ios=%d bytes=%d clat.n=%d", d, ds.ios, ds.bytes, ds.clat.n)
				}
				if ds.lat.mean < ds.clat.mean {
					t.Errorf("dir %d: lat mean %.0f < clat mean %.0f", d, ds.lat.mean, ds.clat.mean)
				}
				if syncEngine(eng) && ds.slat.n != 0 || !syncEngine(eng) && ds.slat.n != ds.ios {
					t.Errorf("dir %d: slat.n=%d ios=%d", d, ds.slat.n, ds.ios)
				}
			}
			// At least the runtime asked for; the upper bound only catches
			// a run that does not stop (a loaded machine stalls it for
			// seconds).
			if e.runtimeMs < 190 || e.runtimeMs > 10000 {
				t.Errorf("runtime %d ms for --runtime=200ms", e.runtimeMs)
			}
			var buf bytes.Buffer
			WriteNormal(&buf, res)
			for _, want := range []string{"read: IOPS=", "write: IOPS=", "clat percentiles", "cpu          : usr=", "IO depths", "Run status group 0"} {
				if !strings.Contains(buf.String(), want) {
					t.Errorf("report lacks %q:\n%s", want, buf.String())
				}
			}
		})
	}
}

// jsonKeys lists every key path of a JSON document; array elements share
// the path of their array. Keys whose names are data (percentiles, option
// names) are collapsed.
func jsonKeys(t *testing.T, data []byte) map[string]bool {
	t.Helper()
	if k := bytes.IndexByte(data, '{'); k > 0 {
		data = data[k:] // fio may print notes first
	}
	var doc any
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("JSON: %v", err)
	}
	keys := map[string]bool{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, c := range x {
				if strings.HasSuffix(prefix, "options") {
					k = "*"
				}
				keys[prefix+"/"+k] = true
				walk(prefix+"/"+k, c)
			}
		case []any:
			for _, c := range x {
				walk(prefix+"[]", c)
			}
		}
	}
	walk("", doc)
	return keys
}

func diffKeys(a, b map[string]bool) (onlyA, onlyB []string) {
	for k := range a {
		if !b[k] {
			onlyA = append(onlyA, k)
		}
	}
	for k := range b {
		if !a[k] {
			onlyB = append(onlyB, k)
		}
	}
	sort.Strings(onlyA)
	sort.Strings(onlyB)
	return
}

// TestJSONMatchesFio compares the key set of our JSON with fio 3.33's for
// the same job: the checked-in reference always, and a live fio run when
// fio is installed. Units are checked on the values that carry them.
func TestJSONMatchesFio(t *testing.T) {
	dir := benchDir(t)
	file := filepath.Join(dir, "ref.dat")
	t.Setenv("FILE", file)
	jobFile, _ := filepath.Abs("testdata/fio-3.33-randrw.fio")
	spec, err := ParseJobFile(jobFile, Option{Key: "runtime", Value: "300ms"})
	if err != nil {
		t.Fatal(err)
	}
	res := mustRun(t, spec)
	var ours bytes.Buffer
	if err := WriteJSON(&ours, res); err != nil {
		t.Fatal(err)
	}
	ourKeys := jsonKeys(t, ours.Bytes())

	refs := map[string][]byte{}
	if data, err := os.ReadFile("testdata/fio-3.33-randrw.json"); err == nil {
		refs["checked-in fio 3.33"] = data
	} else {
		t.Fatal(err)
	}
	if fio, err := exec.LookPath("fio"); err == nil {
		out, err := exec.Command(fio, "--output-format=json", "--runtime=300ms", jobFile).Output()
		if err != nil {
			t.Fatalf("fio: %v", err)
		}
		refs["live fio"] = out
	} else {
		t.Log("fio not installed: checked-in reference only")
	}
	for name, ref := range refs {
		onlyOurs, onlyFio := diffKeys(ourKeys, jsonKeys(t, ref))
		if len(onlyOurs) > 0 || len(onlyFio) > 0 {
			t.Errorf("%s: keys only in ours: %v\nkeys only in fio: %v", name, onlyOurs, onlyFio)
		} else {
			t.Logf("%s: identical key sets (%d keys)", name, len(ourKeys))
		}
	}

	// Units: bw in KiB/s, runtime in ms, latencies in ns, option values
	// strings.
	var doc struct {
		Jobs []struct {
			Opts map[string]any             `json:"job options"`
			Read map[string]json.RawMessage `json:"read"`
		} `json:"jobs"`
		Globals map[string]any `json:"global options"`
	}
	if err := json.Unmarshal(ours.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	var r struct {
		IOBytes  uint64  `json:"io_bytes"`
		BWBytes  uint64  `json:"bw_bytes"`
		BW       uint64  `json:"bw"`
		Runtime  int64   `json:"runtime"`
		IOPS     float64 `json:"iops"`
		TotalIOs uint64  `json:"total_ios"`
		Clat     struct {
			Mean float64          `json:"mean"`
			Pct  map[string]int64 `json:"percentile"`
		} `json:"clat_ns"`
	}
	raw, _ := json.Marshal(doc.Jobs[0].Read)
	json.Unmarshal(raw, &r)
	if r.BW != r.BWBytes/1024 || r.Runtime < 250 || r.Runtime > 2000 {
		t.Errorf("units: bw=%d bw_bytes=%d runtime=%d", r.BW, r.BWBytes, r.Runtime)
	}
	if want := float64(r.TotalIOs) * 1000 / float64(r.Runtime); r.IOPS < want*0.999 || r.IOPS > want*1.001 {
		t.Errorf("iops %f, want total_ios/runtime(s) %f", r.IOPS, want)
	}
	if r.Clat.Mean < 50 || r.Clat.Mean > 1e9 || r.Clat.Pct["50.000000"] <= 0 || r.Clat.Pct["99.990000"] < r.Clat.Pct["50.000000"] {
		t.Errorf("clat in ns: mean %f, percentiles %v", r.Clat.Mean, r.Clat.Pct)
	}
	if doc.Globals["size"] != "16m" || doc.Jobs[0].Opts["rwmixread"] != "70" {
		t.Errorf("options as strings: globals %v job %v", doc.Globals, doc.Jobs[0].Opts)
	}
}

// TestFioExamples parses fio's own example jobs (Debian's fio-examples)
// for the options bench implements, and runs them briefly on a small file
// with ioengine=ringblk.
func TestFioExamples(t *testing.T) {
	exdir := "/usr/share/doc/fio/examples"
	names := []string{"fio-rand-read.fio", "fio-rand-write.fio", "fio-rand-RW.fio", "fio-seq-read.fio",
		"fio-seq-write.fio", "fio-seq-RW.fio", "ssd-test.fio", "basic-verify.fio", "zipf.fio",
		"latency-profile.fio", "steadystate.fio", "ime.fio", "dedupe-global.fio"}
	if _, err := os.Stat(exdir); err != nil {
		t.Skip("fio's examples are not installed (apt-get install fio-examples)")
	}
	dir := benchDir(t)
	for _, n := range names {
		t.Run(n, func(t *testing.T) {
			src := filepath.Join(exdir, n)
			if _, err := os.Stat(src); err != nil {
				t.Skip("not present")
			}
			// They name big sizes, long runtimes, libaio/null engines and
			// /dev/XXX: override what cannot run here, keep the rest. Each
			// job does its 2 MiB and ends (time_based off; the runtime is
			// only a bound), so a loaded machine cannot make a job end
			// before its first I/O.
			over := []Option{
				{Key: "filename", Value: filepath.Join(dir, strings.TrimSuffix(n, ".fio"))},
				{Key: "directory", Value: ""},
				{Key: "size", Value: "2m"},
				{Key: "time_based", Value: "0"},
				{Key: "runtime", Value: "30s"},
				{Key: "ioengine", Value: "ringblk"},
				{Key: "numjobs", Value: "1"},
				{Key: "direct", Value: "0"},
			}
			spec, err := ParseJobFile(src, over...)
			if err != nil {
				t.Fatal(err)
			}
			res := mustRun(t, spec)
			for _, e := range entries(res) {
				if e.dirs[0].ios+e.dirs[1].ios == 0 {
					t.Errorf("%s: no I/O", e.name)
				}
				if e.verify.mismatches != 0 {
					t.Errorf("%s: %d verify mismatches: %v", e.name, e.verify.mismatches, e.verify.first)
				}
			}
		})
	}
}

// TestStatusLine checks the format of fio's status line.
func TestStatusLine(t *testing.T) {
	j := newJob("j", Loc{})
	j.RW, j.Runtime, j.TimeBased = RWRandRead, 20*time.Second, true
	w := newWorker(j, 0, 0, 1<<20)
	w.prog.state.Store('r')
	w.prog.ios[0].Store(131_000)
	w.prog.bytes[0].Store(512 << 20)
	began := time.Unix(1000, 0)
	line, _, _ := statusLine([]*JobResult{{Job: j, Clones: []*worker{w}}}, began, began.Add(9*time.Second), [2]uint64{}, [2]uint64{}, time.Second)
	want := "Jobs: 1 (f=1): [r(1)][45.0%][r=512MiB/s][r=131k IOPS][eta 00m:11s]"
	if line != want {
		t.Errorf("status line\n got %q\nwant %q", line, want)
	}
	if s := runLength([]byte("RRRW_")); s != "R(3),W(1),_(1)" {
		t.Errorf("runLength %q", s)
	}
}

func TestMainJSONOutputFile(t *testing.T) {
	dir := benchDir(t)
	out := filepath.Join(dir, "r.json")
	var so, se bytes.Buffer
	code := Main([]string{"--output-format=json", "--output=" + out, "--name=n", "--ioengine=ringblk", "--format=null",
		"--size=1m", "--rw=read", "--runtime=100ms", "--time_based"}, &so, &se)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, se.String())
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if so.Len() != 0 || !json.Valid(data) {
		t.Errorf("stdout %q, file valid JSON: %v", so.String(), json.Valid(data))
	}
}
