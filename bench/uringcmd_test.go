package bench

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/aio"
)

// TestUringCmdFailsAsFio: fio's uring-cmd-ng example as shipped
// (ioengine=io_uring_cmd on /dev/ng0n1, absent here) fails each of its
// three jobs at their start with fio's message: exit status 3, no job
// sections in the report, each job in JSON with error 0 and fio's key
// set; a job beside them still runs.
func TestUringCmdFailsAsFio(t *testing.T) {
	if _, err := os.Stat("/dev/ng0n1"); err == nil {
		t.Skip("/dev/ng0n1 exists: this machine has an NVMe generic device")
	}
	dir := benchDir(t)
	job := filepath.Join(dir, "uring-cmd.fio")
	text := "[global]\nfilename=/dev/ng0n1\nioengine=io_uring_cmd\ncmd_type=nvme\nsize=1m\niodepth=32\nbs=4K\nthread=1\nstonewall=1\n" +
		"[rand-write]\nrw=randwrite\nsqthread_poll=1\n[rand-read]\nrw=randread\n[write-opts]\nrw=write\nsqthread_poll=1\nsqthread_poll_cpu=0\nnonvectored=1\nregisterfiles=1\n" +
		"[plain]\nioengine=psync\nfilename=" + filepath.Join(dir, "plain") + "\n"
	if err := os.WriteFile(job, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := Main([]string{job}, &out, &errb)
	if code != 3 || strings.Count(errb.String(), errUringCmdFile.Error()) != 3 {
		t.Errorf("exit %d, stderr %q; want 3 and fio's message three times", code, errb.String())
	}
	if s := out.String(); strings.Contains(s, "rand-write: (groupid") || !strings.Contains(s, "plain: (groupid=3") {
		t.Errorf("report: the failed jobs have sections or the plain job has none:\n%s", s)
	}
	var js, jerr bytes.Buffer
	if code := Main([]string{"--output-format=json", job}, &js, &jerr); code != 3 {
		t.Errorf("JSON run: exit %d", code)
	}
	ours := jsonKeys(t, js.Bytes())
	if _, err := exec.LookPath("fio"); err != nil {
		return
	}
	cmd := exec.Command("fio", "--output-format=json", job)
	cmd.Dir = dir
	ref, err := cmd.Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Errorf("fio: %v; this test expects fio's exit status 3", err)
	}
	if a, b := diffKeys(ours, jsonKeys(t, ref)); len(a)+len(b) > 0 {
		t.Errorf("JSON keys only ours %v, only fio %v", a, b)
	}
}

// TestExitStatusCountsFailedClones: fio's exit status is the number of
// clones that failed; two jobs (and three clones) filling a 1 MiB tmpfs
// exit 2 and 3 in both.
func TestExitStatusCountsFailedClones(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a 1 MiB tmpfs to fill (needs root): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, 0) })
	cases := [][]string{
		{"--name=a", "--filename=" + filepath.Join(dir, "a"), "--size=4m", "--rw=write", "--name=b", "--filename=" + filepath.Join(dir, "b"), "--size=4m", "--rw=write"},
		{"--name=a", "--filename=" + filepath.Join(dir, "a"), "--size=4m", "--rw=write", "--numjobs=3"},
	}
	for i, args := range cases {
		want := 2 + i
		var out, errb bytes.Buffer
		if code := Main(args, &out, &errb); code != want {
			t.Errorf("%v: exit %d, want %d", args, code, want)
		}
		os.Remove(filepath.Join(dir, "a"))
		os.Remove(filepath.Join(dir, "b"))
		if _, err := exec.LookPath("fio"); err != nil {
			continue
		}
		if code, _ := fioRun(t, args...); code != want {
			t.Errorf("fio %v: exit %d; this test expects %d", args, code, want)
		}
		os.Remove(filepath.Join(dir, "a"))
		os.Remove(filepath.Join(dir, "b"))
	}
}

// TestRingblkRegisterFiles: registerfiles and fixedbufs run on the
// ringblk engine (the raw image files in the clone's Context's file
// table, the buffers in its registered arena), several files and SQ
// polling included; on a qcow2 image registerfiles is refused by name.
func TestRingblkRegisterFiles(t *testing.T) {
	dir := benchDir(t)
	res := mustRun(t, mustParse(t, "--name=r", "--directory="+dir, "--nrfiles=3", "--size=3m", "--rw=randrw", "--ioengine=ringblk",
		"--iodepth=8", "--registerfiles=1", "--fixedbufs=1", "--sqthread_poll=1", "--verify=crc32c", "--rw=randwrite"))
	if e := entries(res)[0]; e.dirs[DirWrite].ios != 768 || e.verify.mismatches != 0 || e.verify.checked != 768 {
		t.Errorf("wrote %d blocks, verified %d (%d mismatches); want 768 and 768", e.dirs[DirWrite].ios, e.verify.checked, e.verify.mismatches)
	}
	// aio.Context.RegisterFile: a File is registered on at most four
	// Contexts, and five clones of one image are five Contexts.
	_, err := Run(mustParse(t, "--name=m", "--filename="+filepath.Join(dir, "m"), "--size=1m", "--ioengine=ringblk",
		"--numjobs=5", "--registerfiles=1"), RunOptions{})
	if !errors.Is(err, aio.ErrFileTableFull) || !strings.Contains(err.Error(), "registerfiles") {
		t.Errorf("registerfiles with 5 clones on one image: %v, want aio.ErrFileTableFull named", err)
	}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		return
	}
	img := filepath.Join(dir, "q.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", img, "1M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	_, err = Run(mustParse(t, "--name=q", "--filename="+img, "--ioengine=ringblk", "--registerfiles=1"), RunOptions{})
	if err == nil || !strings.Contains(err.Error(), "registerfiles") || !strings.Contains(err.Error(), "not a raw image") {
		t.Errorf("registerfiles on qcow2: %v", err)
	}
}
