package bench

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestVerifyMetaWithFio: verify=meta is fio's header alone (type 1), with
// verify_pattern the pattern after each header, one header per
// verify_interval. Data fio writes verifies here and the reverse; a
// corrupted pattern byte or a misplaced block fails with err=84 in both.
func TestVerifyMetaWithFio(t *testing.T) {
	dir := benchDir(t)
	common := []string{"--size=64k", "--bs=4k", "--rw=write", "--verify=meta", "--verify_pattern=0xaa555aa5", "--verify_interval=512"}
	rbFile := filepath.Join(dir, "rb")
	mustRun(t, mustParse(t, append([]string{"--name=w", "--ioengine=ringblk", "--iodepth=4", "--filename=" + rbFile, "--do_verify=0"}, common...)...))
	rbVerify := func(file string) (int, string) {
		var out, errb bytes.Buffer
		code := Main(append([]string{"--name=w", "--ioengine=psync", "--filename=" + file, "--verify_only=1"}, common...), &out, &errb)
		return code, out.String() + errb.String()
	}
	if code, out := rbVerify(rbFile); code != 0 || !strings.Contains(out, "checked=16, mismatches=0") {
		t.Fatalf("ringblk verify of its own meta data: exit %d\n%s", code, out)
	}
	// One header per 512 bytes: the 8th chunk of block 1 names its offset.
	data := readFile(t, rbFile)
	if h := data[4096+7*512:]; h[0] != 0xca || h[1] != 0xac || h[2] != 1 || h[16] != byte((4096+7*512)&0xff) || h[17] != byte((4096+7*512)>>8) {
		t.Errorf("chunk header at %d: % x", 4096+7*512, h[:24])
	}
	if !bytes.Equal(data[40:48], []byte{0xaa, 0x55, 0x5a, 0xa5, 0xaa, 0x55, 0x5a, 0xa5}) {
		t.Errorf("data after the first header: % x, want the pattern", data[40:48])
	}
	if _, err := exec.LookPath("fio"); err != nil {
		t.Skip("fio not installed: the exchange with fio is skipped")
	}
	if code, jobErr := fioRun(t, append([]string{"--name=w", "--ioengine=psync", "--filename=" + rbFile, "--verify_only=1"}, common...)...); code != 0 || jobErr != 0 {
		t.Errorf("fio verify_only of ringblk's meta data: exit %d, error %d", code, jobErr)
	}
	fioFile := filepath.Join(dir, "fio")
	if code, jobErr := fioRun(t, append([]string{"--name=w", "--ioengine=psync", "--filename=" + fioFile, "--do_verify=0"}, common...)...); code != 0 || jobErr != 0 {
		t.Fatalf("fio writing: exit %d, error %d", code, jobErr)
	}
	if code, out := rbVerify(fioFile); code != 0 || !strings.Contains(out, "checked=16, mismatches=0") {
		t.Errorf("ringblk verify of fio's meta data: exit %d\n%s", code, out)
	}
	for _, file := range []string{fioFile, rbFile} {
		// A pattern byte of block 2's second chunk: both find it. fio 3.33
		// prints the failure but leaves the job's error 0 (its meta check
		// drops the pattern result); ringblk fails the job (err=84), a
		// deliberate difference.
		corrupt(t, file, 8192+512+100)
		if code, out := rbVerify(file); code != 1 || !strings.Contains(out, "err=84") || !strings.Contains(out, "offset 8704, length 512: pattern mismatch") {
			t.Errorf("ringblk on a corrupted pattern in %s: exit %d\n%s", filepath.Base(file), code, out)
		}
		cmd := exec.Command("fio", append([]string{"--name=w", "--ioengine=psync", "--filename=" + file, "--verify_only=1"}, common...)...)
		cmd.Dir = t.TempDir() // fio leaves a verify state file on failure
		out, _ := cmd.CombinedOutput()
		if !strings.Contains(string(out), "pattern: verify failed at file "+file+" offset 8704, length 512") {
			t.Errorf("fio on a corrupted pattern in %s did not report it:\n%s", filepath.Base(file), out)
		}
		// A header byte (the offset field of chunk 3 of block 3): err=84
		// in both.
		corrupt(t, file, 12288+1024+17)
		if code, out := rbVerify(file); code != 1 || !strings.Contains(out, "err=84") {
			t.Errorf("ringblk on a corrupted header in %s: exit %d\n%s", filepath.Base(file), code, out)
		}
		if code, jobErr := fioRun(t, append([]string{"--name=w", "--ioengine=psync", "--filename=" + file, "--verify_only=1"}, common...)...); code != 1 || jobErr != 84 {
			t.Errorf("fio on a corrupted header in %s: exit %d, error %d; want 1 and 84", filepath.Base(file), code, jobErr)
		}
	}
}

// TestFillDevice: fill_device writes until the file system is full;
// ENOSPC then ends the writing without failing the job (exit 0, as fio),
// and the verify phase checks every block that was written.
func TestFillDevice(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a 1 MiB tmpfs to fill (needs root): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, 0) })
	for _, eng := range []string{"psync", "io_uring", "ringblk"} {
		file := filepath.Join(dir, "f")
		var out, errb bytes.Buffer
		code := Main([]string{"--name=w", "--ioengine=" + eng, "--iodepth=4", "--filename=" + file, "--bs=4k", "--rw=write",
			"--fill_device=1", "--verify=crc32c"}, &out, &errb)
		s := out.String() + errb.String()
		if code != 0 || !strings.Contains(s, "err= 0") || !strings.Contains(s, "mismatches=0") {
			t.Errorf("%s: fill_device on a 1 MiB tmpfs: exit %d\n%s", eng, code, s)
		}
		e := readFile(t, file)
		if len(e) < 900<<10 || len(e) > 1<<20 {
			t.Errorf("%s: the file holds %d bytes, want the tmpfs nearly full", eng, len(e))
		}
		removeFile(t, file)
	}
	if _, err := exec.LookPath("fio"); err != nil {
		return
	}
	if code, jobErr := fioRun(t, "--name=w", "--filename="+filepath.Join(dir, "fio"), "--bs=4k", "--rw=write", "--fill_device=1"); code != 0 || jobErr != 0 {
		t.Errorf("fio fill_device: exit %d, error %d; this test expects fio's 0 and 0", code, jobErr)
	}
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func removeFile(t *testing.T, name string) {
	t.Helper()
	if err := os.Remove(name); err != nil {
		t.Fatal(err)
	}
}
