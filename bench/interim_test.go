package bench

import (
	"bytes"
	"encoding/json"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// jsonDocs splits a stream of fio JSON reports.
func jsonDocs(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var docs []map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("report %d: %v\n%s", len(docs), err, b)
		}
		docs = append(docs, m)
	}
	return docs
}

// readIOs is the first job's read I/O count and run time (ms) in a report.
func readIOs(t *testing.T, doc map[string]any, job int) (ios, runtime float64) {
	t.Helper()
	jobs := doc["jobs"].([]any)
	r := jobs[job].(map[string]any)["read"].(map[string]any)
	return r["total_ios"].(float64), r["runtime"].(float64)
}

// TestStatusInterval: --status-interval prints the full report of the run
// so far while the job runs, as fio does: each report's I/O count and run
// time grow, and the last report is the final one (every engine, ramp
// included).
func TestStatusInterval(t *testing.T) {
	f := filepath.Join(t.TempDir(), "f")
	for _, eng := range []string{"ringblk", "io_uring", "psync"} {
		var out, errb bytes.Buffer
		args := []string{"--status-interval=250ms", "--output-format=json", "--name=x", "--filename=" + f, "--size=1m",
			"--rw=randread", "--ioengine=" + eng, "--iodepth=4", "--ramp_time=200ms", "--runtime=1300ms", "--time_based"}
		if code := Main(args, &out, &errb); code != 0 {
			t.Fatalf("%s: exit %d: %s", eng, code, errb.String())
		}
		docs := jsonDocs(t, out.Bytes())
		// 1.5 s at 250 ms: five or six interim reports, and the final one.
		if len(docs) < 4 || len(docs) > 8 {
			t.Fatalf("%s: %d reports, want the final one after about five interim ones", eng, len(docs))
		}
		var lastIOs, lastRun float64
		for i, d := range docs {
			ios, run := readIOs(t, d, 0)
			if ios < lastIOs || run < lastRun {
				t.Errorf("%s: report %d: %v I/Os in %v ms after %v in %v ms: not the run so far", eng, i, ios, run, lastIOs, lastRun)
			}
			lastIOs, lastRun = ios, run
		}
		if first, _ := readIOs(t, docs[1], 0); first == 0 || first >= lastIOs {
			t.Errorf("%s: the second report has %v I/Os (final %v): want part of the run", eng, first, lastIOs)
		}
		if lastRun < 1200 || lastRun > 1500 {
			t.Errorf("%s: final run time %v ms, want the 1300 ms measured (ramp excluded)", eng, lastRun)
		}
	}
}

// TestStatusIntervalLaterGroups: a report taken while the first group runs
// lists the stonewalled job too, with nothing measured, as fio's does.
func TestStatusIntervalLaterGroups(t *testing.T) {
	f := filepath.Join(t.TempDir(), "f")
	var out, errb bytes.Buffer
	args := []string{"--status-interval=300ms", "--output-format=json", "--filename=" + f, "--size=1m", "--runtime=700ms", "--time_based",
		"--name=a", "--rw=randread", "--name=b", "--rw=randread", "--stonewall"}
	if code := Main(args, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	docs := jsonDocs(t, out.Bytes())
	if len(docs) < 3 {
		t.Fatalf("%d reports", len(docs))
	}
	if n := len(docs[0]["jobs"].([]any)); n != 2 {
		t.Fatalf("first report lists %d jobs, want both", n)
	}
	if a, _ := readIOs(t, docs[0], 0); a == 0 {
		t.Errorf("first report: job a has no I/O")
	}
	if b, _ := readIOs(t, docs[0], 1); b != 0 {
		t.Errorf("first report: job b (not started) has %v I/Os", b)
	}
	if b, _ := readIOs(t, docs[len(docs)-1], 1); b == 0 {
		t.Errorf("final report: job b has no I/O")
	}
}

// TestStatusOnSIGUSR1: SIGUSR1 prints the report of the run so far, as
// fio's handler does, without ending the run.
func TestStatusOnSIGUSR1(t *testing.T) {
	f := filepath.Join(t.TempDir(), "f")
	var out, errb bytes.Buffer
	// Our own registration first: SIGUSR1's default action ends the
	// process, should it arrive before Main's.
	own := make(chan os.Signal, 1)
	signal.Notify(own, syscall.SIGUSR1)
	defer signal.Stop(own)
	go func() {
		time.Sleep(400 * time.Millisecond)
		_ = syscall.Kill(os.Getpid(), syscall.SIGUSR1)
	}()
	args := []string{"--name=x", "--filename=" + f, "--size=1m", "--rw=randread", "--runtime=1s", "--time_based"}
	if code := Main(args, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if n := strings.Count(out.String(), "x: (groupid=0"); n != 2 {
		t.Fatalf("%d reports of job x, want the one SIGUSR1 asked for and the final one:\n%s", n, out.String())
	}
	runs := regexp.MustCompile(`run=(\d+)-\d+msec`).FindAllStringSubmatch(out.String(), -1)
	if len(runs) != 2 {
		t.Fatalf("%d group lines, want 2", len(runs))
	}
	first, _ := strconv.Atoi(runs[0][1])
	last, _ := strconv.Atoi(runs[1][1])
	if first < 200 || first > 900 || last < 1000 || last > 1200 {
		t.Errorf("run times %d ms and %d ms: want the run so far at the signal, then the job's 1 s", first, last)
	}
}
