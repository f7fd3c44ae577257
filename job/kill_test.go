package job_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/job"
)

// TestKill9DuringBackup: a process killed with SIGKILL in the middle of a
// backup into a qcow2 image leaves that image consistent for qemu-img
// check (no errors; clusters leaked by the crash are allowed, as after a
// QEMU crash), and qemu-img can still read it.
func TestKill9DuringBackup(t *testing.T) { kill9DuringJob(t, "backup") }

// TestKill9DuringMirror: the same for a mirror into a qcow2 target, killed
// while it copies (before ready).
func TestKill9DuringMirror(t *testing.T) { kill9DuringJob(t, "mirror") }

func kill9DuringJob(t *testing.T, kind string) {
	needQemuImg(t)
	if dir := os.Getenv("RINGBLK_JOB_KILL_DIR"); dir != "" {
		killChild(t, dir, os.Getenv("RINGBLK_JOB_KILL_KIND"))
		return
	}
	if testing.Short() {
		t.Skip("spawns a process and kills it (-short)")
	}
	dir := t.TempDir()
	const size = 32 << 20
	randomFile(t, filepath.Join(dir, "src.raw"), size, 9)
	tgt := filepath.Join(dir, "tgt.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", tgt, fmt.Sprint(size)).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v %s", err, out)
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^"+t.Name()+"$", "-test.v")
	cmd.Env = append(os.Environ(), "RINGBLK_JOB_KILL_DIR="+dir, "RINGBLK_JOB_KILL_KIND="+kind)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	started := false
	for sc.Scan() {
		if strings.Contains(sc.Text(), "job running") {
			started = true
			break
		}
	}
	if !started {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child never started its %s", kind)
	}
	time.Sleep(300 * time.Millisecond) // in the middle of the copy
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	go func() {
		for sc.Scan() {
		}
	}()
	cmd.Wait()
	// The killed process's io_uring is torn down by the kernel after the
	// process is reaped, and the files its ring holds (and their locks)
	// are released only then: give that a few seconds before checking.
	var res []byte
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		res, err = exec.Command("qemu-img", "check", tgt).CombinedOutput()
		if err == nil || !strings.Contains(string(res), "lock") || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 { // 3: leaks only
			t.Fatalf("qemu-img check after kill -9: %v\n%s", err, res)
		}
	}
	if o, err := exec.Command("qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", tgt, filepath.Join(dir, "src.raw")).CombinedOutput(); err == nil {
		t.Logf("the %s had finished before the kill (%s)", kind, o)
	}
}

// killChild runs a slow backup or mirror of dir/src.raw into
// dir/tgt.qcow2 until it is killed.
func killChild(t *testing.T, dir, kind string) {
	e := blocktest.NewEnv(t, 1)
	src := openRaw(t, e, filepath.Join(dir, "src.raw"), "src")
	img, err := chain.Open(e.G, filepath.Join(dir, "tgt.qcow2"), chain.Options{Format: "qcow2", Name: "tgt"})
	if err != nil {
		t.Fatal(err)
	}
	m := job.NewManager(e.G, nil)
	var j *job.Job
	if kind == "mirror" {
		j, _, err = job.NewMirror(m, job.MirrorOptions{Options: job.Options{ID: "m", Speed: 16 << 20}, Source: src, Target: img.Node,
			MaxRequest: 256 << 10, Parallel: 2})
	} else {
		j, _, err = job.NewBackup(m, job.BackupOptions{Options: job.Options{ID: "b", Speed: 16 << 20}, Source: src, Target: img.Node,
			MaxRequest: 256 << 10, Parallel: 2})
	}
	if err != nil {
		t.Fatal(err)
	}
	j.Start()
	e.WaitFor("copying", func() bool { c, _ := j.Progress(); return c > 0 })
	fmt.Println("job running")
	waitDone(t, j)
	time.Sleep(time.Minute) // the parent kills us before or after the end
}
