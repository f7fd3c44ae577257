package bench

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestTerseMatchesFio: --output-format=terse gives one version 3 line per
// job with fio's field count and layout (the same job run by fio when it
// is installed; else the count fio 3.33 prints for a job with a
// description on one disk: 131).
func TestTerseMatchesFio(t *testing.T) {
	dir := benchDir(t)
	args := []string{"--output-format=terse", "--name=x", "--filename=" + filepath.Join(dir, "f"), "--size=1m", "--rw=randrw", "--description=hello"}
	var out, errb bytes.Buffer
	if code := Main(args, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	ours := strings.Split(strings.TrimSpace(out.String()), ";")
	want := 131
	if _, err := exec.LookPath("fio"); err == nil {
		o, err := exec.Command("fio", args...).Output()
		if err != nil {
			t.Fatalf("fio: %v", err)
		}
		want = len(strings.Split(strings.TrimSpace(string(o)), ";"))
	} else if _, err := os.Stat("/sys/block"); err != nil || len(mustDisks(t, dir)) == 0 {
		want -= 9 // no disk fields
	}
	if len(ours) != want {
		t.Fatalf("%d fields, fio %d:\n%s", len(ours), want, out.String())
	}
	if ours[0] != "3" || ours[2] != "x" || ours[len(ours)-1] != "hello" || !strings.HasPrefix(ours[17], "1.000000%=") {
		t.Errorf("layout: version %q, name %q, last %q, first read clat percentile %q", ours[0], ours[2], ours[len(ours)-1], ours[17])
	}
}

func mustDisks(t *testing.T, dir string) []diskSnap {
	j := newJob("d", Loc{})
	j.Filename = filepath.Join(dir, "f")
	return snapDisks([]*Job{j})
}
