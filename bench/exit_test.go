package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// jsonError runs bench's Main with --output-format=json and returns the
// exit status and the first job's "error".
func jsonError(t *testing.T, args ...string) (code, jobErr int, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Main(append(args, "--output-format=json"), &out, &errb)
	return code, firstJobError(t, out.Bytes()), errb.String()
}

func firstJobError(t *testing.T, data []byte) int {
	t.Helper()
	if k := bytes.IndexByte(data, '{'); k > 0 {
		data = data[k:] // fio prints its "fio: pid=…" line first
	}
	var doc struct {
		Jobs []struct {
			Error int `json:"error"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(data, &doc); err != nil || len(doc.Jobs) == 0 {
		t.Fatalf("JSON report: %v (%d jobs): %.300s", err, len(doc.Jobs), data)
	}
	return doc.Jobs[0].Error
}

// fioRun runs fio and returns its exit status and the first job's error.
func fioRun(t *testing.T, args ...string) (code, jobErr int) {
	t.Helper()
	cmd := exec.Command("fio", append(args, "--output-format=json")...)
	cmd.Dir = t.TempDir() // fio leaves a verify state file on failure
	var out bytes.Buffer
	cmd.Stdout = &out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return code, firstJobError(t, out.Bytes())
}

func corrupt(t *testing.T, file string, off int64) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [8]byte
	f.ReadAt(b[:], off)
	for i := range b {
		b[i] ^= 0xff
	}
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

// TestVerifyFailureExitStatus: a verify failure fails the job with and
// without verify_fatal: exit 1, err=84 in the report and "error": 84 in
// JSON, as fio 3.33 does on the same steps (issue 14, item 6).
func TestVerifyFailureExitStatus(t *testing.T) {
	dir := benchDir(t)
	for _, engine := range []string{"ringblk", "psync"} {
		file := filepath.Join(dir, "v-"+engine)
		common := []string{"--ioengine=" + engine, "--filename=" + file, "--size=256k", "--bs=4k", "--iodepth=1", "--verify=crc32c"}
		if code, _, stderr := jsonError(t, append([]string{"--name=w", "--rw=write", "--do_verify=0"}, common...)...); code != 0 {
			t.Fatalf("%s: writing: exit %d: %s", engine, code, stderr)
		}
		corrupt(t, file, 40960+100)
		for _, fatal := range []string{"0", "1"} {
			args := append([]string{"--name=r", "--rw=read", "--verify_fatal=" + fatal}, common...)
			code, jobErr, stderr := jsonError(t, args...)
			if code != 1 || jobErr != int(syscall.EILSEQ) || !strings.Contains(stderr, "err=84") {
				t.Errorf("%s verify_fatal=%s: exit %d, JSON error %d, stderr %q; want exit 1, error 84 (fio's)", engine, fatal, code, jobErr, stderr)
			}
			var out, errb bytes.Buffer
			if code := Main(args, &out, &errb); code != 1 || !strings.Contains(out.String(), "err=84 (error=Invalid or incomplete multibyte or wide character)") {
				t.Errorf("%s verify_fatal=%s, normal report: exit %d; want 1 and err=84 in:\n%s", engine, fatal, code, out.String())
			}
		}
	}

	if _, err := exec.LookPath("fio"); err != nil {
		t.Skip("fio not installed: the cross-check with fio is skipped")
	}
	file := filepath.Join(dir, "fio")
	common := []string{"--filename=" + file, "--size=256k", "--bs=4k", "--verify=crc32c"}
	if code, jobErr := fioRun(t, append([]string{"--name=w", "--rw=write", "--do_verify=0"}, common...)...); code != 0 || jobErr != 0 {
		t.Fatalf("fio writing: exit %d, error %d", code, jobErr)
	}
	corrupt(t, file, 40960+100)
	for _, fatal := range []string{"0", "1"} {
		if code, jobErr := fioRun(t, append([]string{"--name=r", "--rw=read", "--verify_fatal=" + fatal}, common...)...); code != 1 || jobErr != 84 {
			t.Errorf("fio verify_fatal=%s: exit %d, error %d; this test expects fio's 1 and 84", fatal, code, jobErr)
		}
	}
}

// TestIOErrorExitStatus: a job whose writes fail (ENOSPC on a 1 MiB
// tmpfs) exits 1 with err=28 and "error": 28, as fio does.
func TestIOErrorExitStatus(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a 1 MiB tmpfs to fill (needs root): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, 0) })
	for _, engine := range []string{"ringblk", "psync", "io_uring"} {
		file := filepath.Join(dir, "f")
		code, jobErr, stderr := jsonError(t, "--name=w", "--ioengine="+engine, "--filename="+file, "--size=4m", "--bs=4k", "--rw=write", "--iodepth=4")
		if code != 1 || jobErr != int(syscall.ENOSPC) || !strings.Contains(stderr, "err=28") || !strings.Contains(stderr, "No space left on device") {
			t.Errorf("%s on a full disk: exit %d, JSON error %d, stderr %q; want exit 1, error 28", engine, code, jobErr, stderr)
		}
		os.Remove(file)
	}
	if _, err := exec.LookPath("fio"); err != nil {
		t.Skip("fio not installed: the cross-check with fio is skipped")
	}
	file := filepath.Join(dir, "fio")
	if code, jobErr := fioRun(t, "--name=w", "--filename="+file, "--size=4m", "--bs=4k", "--rw=write"); code != 1 || jobErr != 28 {
		t.Errorf("fio on a full disk: exit %d, error %d; this test expects fio's 1 and 28", code, jobErr)
	}
}

// TestCloseErrorFailsJob: a qcow2 image whose metadata write-back fails
// when the run closes it (the file system filled up with data first)
// fails every job that used it: exit 100 (fio counts failed jobs), err=28 and "error": 28, as fio
// fails a job whose file close fails. The jobs share one open of the
// image, which closes after the group.
func TestCloseErrorFailsJob(t *testing.T) {
	dir := t.TempDir()
	// Room for the data clusters the jobs write, not for the 100 L2
	// tables the qcow2 driver writes back on close.
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=600k"); err != nil {
		t.Skipf("cannot mount a small tmpfs to fill (needs root): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, 0) })
	img := filepath.Join(dir, "q.qcow2")
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", img, "256M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	job := filepath.Join(t.TempDir(), "many.fio")
	var b strings.Builder
	b.WriteString("[global]\nioengine=ringblk\nfilename=" + img + "\nrw=write\nbs=4k\nsize=4k\n")
	for i := 0; i < 100; i++ {
		// One 4 KiB write per 2 MiB: each in its own L2 table.
		b.WriteString("[j" + strconv.Itoa(i) + "]\noffset=" + strconv.Itoa(2*i) + "m\n")
	}
	if err := os.WriteFile(job, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := Main([]string{"--output-format=json", job}, &out, &errb)
	// fio's exit status counts the failed jobs: all 100 of them.
	if code != 100 || firstJobError(t, out.Bytes()) != int(syscall.ENOSPC) {
		t.Fatalf("exit %d, JSON error %d; want 100 and 28 (stderr %q)", code, firstJobError(t, out.Bytes()), errb.String())
	}
	if s := errb.String(); !strings.Contains(s, "error closing file "+img+": No space left on device") || strings.Contains(s, "block:") {
		t.Errorf("stderr %q; want the close failure named in fio's words, without the block layer's context", s)
	}
}
