package bench

import (
	"testing"
	"time"
)

// TestExitAll: when the exitall job's clone finishes (10 I/Os), the
// time-based job running beside it stops instead of running its 30 s.
func TestExitAll(t *testing.T) {
	spec := mustParse(t, "--name=short", "--ioengine=ringblk", "--format=null", "--size=1m", "--rw=read", "--number_ios=10", "--exitall",
		"--name=long", "--ioengine=ringblk", "--format=null", "--size=1m", "--rw=read", "--time_based", "--runtime=30s")
	t0 := time.Now()
	res := mustRun(t, spec)
	if el := time.Since(t0); el > 10*time.Second {
		t.Fatalf("the group ran %v: exitall did not stop the long job", el)
	}
	if len(res.Jobs) != 2 || res.Jobs[1].Clones[0].phase != phaseDone {
		t.Fatalf("the long job's clone did not finish")
	}
	if _, err := ParseArgs([]string{"--name=x", "--exit_what=some"}); err == nil {
		t.Error("exit_what=some accepted")
	}
}

// TestGroupReportingEchoesLastJob: a group_reporting group is named after
// its first job and echoes its last job's options, as fio 3.33 does.
func TestGroupReportingEchoesLastJob(t *testing.T) {
	res := mustRun(t, mustParse(t, "--name=first", "--ioengine=ringblk", "--format=null", "--size=64k", "--group_reporting", "--bs=8k",
		"--name=last", "--ioengine=ringblk", "--format=null", "--size=64k", "--group_reporting", "--iodepth=2"))
	es := entries(res)
	if len(es) != 1 {
		t.Fatalf("%d entries", len(es))
	}
	o := jsonEntry(es[0], false)
	var opts obj
	for _, f := range o {
		if f.k == "job options" {
			opts = f.v.(obj)
		}
	}
	if es[0].name != "first" || len(opts) == 0 || opts[len(opts)-1].k != "iodepth" {
		t.Errorf("entry %q echoes %v; want first's name and last's options", es[0].name, opts)
	}
}
