package bench

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseJobFile(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("BENCH_SIZE", "64m")
	writeFile(t, dir, "common.fio", "bs=8k\niodepth=((2*4))\n")
	p := writeFile(t, dir, "jobs.fio", `; comment
# another
[global]
include common.fio
size=${BENCH_SIZE}
filename=/var/tmp/x	; trailing comment
time_based
runtime=2

[a]
rw=randread
numjobs=$ncpus

[global]
ioengine=io_uring

[b]
rw=randrw
rwmixwrite=30
bssplit=4k/50:64k/50
random_distribution=zipf:1.2
stonewall
`)
	spec, err := ParseJobFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.Jobs) != 2 {
		t.Fatalf("%d jobs", len(spec.Jobs))
	}
	a, b := spec.Jobs[0], spec.Jobs[1]
	if a.Name != "a" || a.Size != 64<<20 || a.BS != [2]int{8192, 8192} || a.IODepth != 8 || !a.TimeBased ||
		a.Runtime != 2*time.Second || a.RW != RWRandRead || a.NumJobs != runtime.NumCPU() || a.Filename != "/var/tmp/x" {
		t.Errorf("job a: %+v", a)
	}
	if a.IOEngine != "psync" || b.IOEngine != "io_uring" {
		t.Errorf("a later [global] applied to an earlier job: a=%s b=%s", a.IOEngine, b.IOEngine)
	}
	if b.RWMixRead != 70 || len(b.BSSplit[0]) != 2 || b.Dist != DistZipf || b.DistParam != 1.2 || !b.Stonewall {
		t.Errorf("job b: %+v", b)
	}
	if got := len(groups(spec.Jobs)); got != 2 {
		t.Errorf("stonewall: %d groups", got)
	}
	if len(spec.Globals) != 7 {
		t.Errorf("globals: %v", spec.Globals)
	}
}

func TestParseArgs(t *testing.T) {
	cfg, err := ParseArgs([]string{"--rw=randread", "--size=1m", "--ioengine=ringblk", "--format=null",
		"--name=one", "--bs=64k", "--name=two", "--time_based", "--runtime=200ms", "--output-format=json", "--output", "x.json"})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Spec.Jobs) != 2 || cfg.Format != "json" || cfg.Output != "x.json" {
		t.Fatalf("%+v", cfg)
	}
	one, two := cfg.Spec.Jobs[0], cfg.Spec.Jobs[1]
	if one.BS[0] != 65536 || two.BS[0] != 4096 || !two.TimeBased || two.Runtime != 200*time.Millisecond || one.RW != RWRandRead || two.Size != 1<<20 {
		t.Errorf("one=%+v two=%+v", one, two)
	}
	if len(cfg.Spec.Globals) != 4 {
		t.Errorf("options before --name are the global section: %v", cfg.Spec.Globals)
	}
}

func TestParseTimes(t *testing.T) {
	for s, want := range map[string]time.Duration{"10": 10 * time.Second, "200ms": 200 * time.Millisecond, "1m": time.Minute, "5s": 5 * time.Second, "100us": 100 * time.Microsecond, "1h": time.Hour} {
		if got, err := parseTime(s); err != nil || got != want {
			t.Errorf("parseTime(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
}

// TestBadJobFiles: every error names the file and line and says what is
// wrong.
func TestBadJobFiles(t *testing.T) {
	cases := []struct {
		name, text, want string
		line             int
	}{
		{"unknown", "[j]\nfilename=/tmp/x\nfrobnicate=3\n", `unknown option "frobnicate"`, 3},
		{"fio-only", "[j]\nfilename=/tmp/x\nverify_async=2\n", `option "verify_async" is a fio option that ringblk bench does not implement`, 3},
		{"fio-engine", "[j]\nfilename=/tmp/x\nioengine=posixaio\n", "ioengine posixaio is a fio engine that ringblk bench does not implement", 3},
		{"size-suffix", "[j]\nfilename=/tmp/x\nsize=10x\n", `bad size suffix in "10x"`, 3},
		{"bs-suffix", "[global]\nbs=4q\n[j]\nfilename=/tmp/x\n", `bad size suffix in "4q"`, 2},
		{"bsrange-bssplit", "[j]\nfilename=/tmp/x\nbsrange=4k-16k\nbssplit=4k/50:8k/50\n", "bssplit conflicts with bsrange (set at", 4},
		{"time-based", "[j]\nfilename=/tmp/x\ntime_based\n", "time_based needs a runtime", 3},
		{"format-engine", "[j]\nfilename=/tmp/x\nformat=raw\n", "format= applies to ioengine=ringblk only", 3},
		{"fixedbufs-engine", "[j]\nfilename=/tmp/x\nioengine=psync\nfixedbufs\n", "fixedbufs applies to the ring engines (io_uring, ringblk), not ioengine=psync", 4},
		{"registerfiles-engine", "[j]\nfilename=/tmp/x\nregisterfiles\n", "registerfiles applies to the ring engines", 3},
		{"verify-pattern", "[j]\nfilename=/tmp/x\nverify=pattern\n", "verify=pattern needs verify_pattern", 3},
		{"verify-sha", "[j]\nfilename=/tmp/x\nverify=sha512\n", "verify=sha512 is a fio method", 3},
		{"rw", "[j]\nfilename=/tmp/x\nrw=sideways\n", "rw=sideways: want read", 3},
		{"iodepth", "[j]\nfilename=/tmp/x\niodepth=0\n", "0 out of range", 3},
		{"outside", "size=1m\n[j]\n", "outside a section", 1},
		{"header", "[j\n", "bad section header", 1},
		{"value", "[j]\nfilename=/tmp/x\nsize\n", `option "size" needs a value`, 3},
		{"norandommap-verify", "[j]\nfilename=/tmp/x\nrw=randwrite\nverify=crc32c\nnorandommap\n", "norandommap conflicts with verify", 5},
		{"include", "[j]\ninclude nothere.fio\n", "nothere.fio", 2},
	}
	dir := t.TempDir()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := writeFile(t, dir, c.name+".fio", c.text)
			_, err := ParseJobFile(p)
			if err == nil {
				t.Fatal("parsed")
			}
			prefix := p + ":" + strconv.Itoa(c.line) + ": "
			if !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q\nwant prefix %q containing %q", err, prefix, c.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("multi-line error %q", err)
			}
		})
	}
}

func TestBadFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--name=x", "--filename=/tmp/x", "--bogus=1"}, `command line: unknown option "bogus"`},
		{[]string{"--name=x", "--filename=/tmp/x", "--size=1z"}, `command line: size=1z: bad size suffix`},
		{[]string{"--output-format=csv", "--name=x", "--filename=/tmp/x"}, "want normal, json, json+ or terse"},
		{[]string{"--rw=read"}, "no jobs defined"},
		{[]string{"--eta-newline=1", "--name=x", "--filename=/tmp/x"}, "--eta-newline is a fio command flag that ringblk bench does not implement"},
		{[]string{"--status-interval=0", "--name=x", "--filename=/tmp/x"}, "status interval too small"},
		{[]string{"--status-interval=999us", "--name=x", "--filename=/tmp/x"}, "status interval too small"},
		{[]string{"--status-interval=abc", "--name=x", "--filename=/tmp/x"}, `--status-interval=abc: bad time "abc"`},
		{[]string{"--name=x", "--filename=/tmp/x", "--unified_rw_reporting=1"}, `option "unified_rw_reporting" is a fio option that ringblk bench does not implement`},
	} {
		_, err := ParseArgs(c.args)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want %q", c.args, err, c.want)
		}
	}
}

// TestMinimalIsTerse: fio's --minimal selects the terse format.
func TestMinimalIsTerse(t *testing.T) {
	cfg, err := ParseArgs([]string{"--minimal", "--name=x", "--filename=/tmp/x"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Format != "terse" {
		t.Fatalf("format %q, want terse", cfg.Format)
	}
}

func TestMainErrorsAreOneLine(t *testing.T) {
	var out, errb strings.Builder
	code := Main([]string{"--name=x", "--ioengine=ringblk", "--filename=/nonexistent/dir/f"}, &out, &errb)
	if code != 1 {
		t.Fatalf("exit %d", code)
	}
	if lines := strings.Count(errb.String(), "\n"); lines != 1 || !strings.HasPrefix(errb.String(), "ringblk bench: ") {
		t.Errorf("stderr %q", errb.String())
	}
	out.Reset()
	if code := Main([]string{"--help"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "random_distribution") || !strings.Contains(out.String(), "--compare") {
		t.Errorf("--help: exit %d, %q", code, out.String())
	}
}

func TestNum2str(t *testing.T) {
	for _, c := range []struct {
		n    float64
		max  int
		pow2 bool
		want string
	}{
		{27655, 4, false, "27.6k"}, {24769378, 6, false, "24769k"}, {1422600, 6, false, "1422.6k"},
		{113246208, 4, true, "108Mi"}, {48442163, 4, true, "46.1Mi"}, {861, 6, false, "861"}, {0, 4, false, "0"},
	} {
		if got := num2str(c.n, c.max, c.pow2); got != c.want {
			t.Errorf("num2str(%v, %d, %v) = %q, want %q", c.n, c.max, c.pow2, got, c.want)
		}
	}
}

// TestSection: fio's --section runs only the named jobs (repeatable), in
// the file's order; a name that matches no job and [global] are errors.
func TestSection(t *testing.T) {
	dir := t.TempDir()
	job := filepath.Join(dir, "s.fio")
	if err := os.WriteFile(job, []byte("[global]\nfilename=/tmp/x\nsize=64k\n[a]\nrw=read\n[b]\nrw=randread\nstonewall\n[c]\nrw=write\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string // job names, or the error
	}{
		{[]string{"--section=b", job}, "b"},
		{[]string{"--section=c", "--section", "a", job}, "a c"},
		{[]string{job}, "a b c"},
		{[]string{"--section=zz", job}, "no job is named by --section (zz)"},
		{[]string{"--section=global", job}, "[global] is not a job"},
	} {
		cfg, err := ParseArgs(c.args)
		var got string
		if err != nil {
			got = err.Error()
		} else {
			var names []string
			for _, j := range cfg.Spec.Jobs {
				names = append(names, j.Name)
			}
			got = strings.Join(names, " ")
		}
		if err != nil && !strings.Contains(got, c.want) || err == nil && got != c.want {
			t.Errorf("%v: got %q, want %q", c.args[:len(c.args)-1], got, c.want)
		}
	}
}
