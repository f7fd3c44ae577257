package imgcmd

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// TestKill9DuringCommit: `ringblk commit` (the commit job) killed with
// SIGKILL in the middle of its copy leaves both images consistent for
// qemu-img check (leaked clusters allowed, as after a QEMU crash), and the
// top, which is emptied only after the job succeeded, still reads exactly
// what it read before.
func TestKill9DuringCommit(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	if dir := os.Getenv("RINGBLK_COMMIT_KILL_DIR"); dir != "" {
		// The child: a slow commit with -p; the parent kills it.
		Commit([]string{"-p", "-r", "4M", filepath.Join(dir, "top.qcow2")}, os.Stdout, os.Stderr)
		time.Sleep(time.Minute)
		return
	}
	if testing.Short() {
		t.Skip("spawns a process and kills it (-short)")
	}
	dir := t.TempDir()
	base, top := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "32M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
	a := []string{"-f", "qcow2"}
	for i := 0; i < 16; i++ {
		a = append(a, "-c", fmt.Sprintf("write -P %d %dM 1M", i+1, 2*i))
	}
	if out, _, code := clitest.QemuIO(t, append(a, top)...); code != 0 {
		t.Fatalf("qemu-io: %s", out)
	}
	orig := filepath.Join(dir, "orig.raw")
	clitest.MustQemu(t, "qemu-img", "convert", "-q", "-O", "raw", top, orig)

	cmd := exec.Command(os.Args[0], "-test.run", "^TestKill9DuringCommit$")
	cmd.Env = append(os.Environ(), "RINGBLK_COMMIT_KILL_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Progress lines end in \r: kill once the copy is a quarter done.
	rd := bufio.NewReader(out)
	var pct float64
	for pct < 25 {
		line, err := rd.ReadString('\r')
		if err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("child ended before the kill (progress %.0f%%): %v", pct, err)
		}
		if s, ok := strings.CutPrefix(strings.TrimSpace(line), "("); ok {
			if v, ok := strings.CutSuffix(s, "/100%)"); ok {
				pct, _ = strconv.ParseFloat(v, 64)
			}
		}
	}
	if pct >= 100 {
		t.Fatalf("commit finished before the kill")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, rd)
	cmd.Wait()
	for _, img := range []string{base, top} {
		if out, code := clitest.Qemu(t, "qemu-img", "check", img); code != 0 && code != 3 { // 3: leaks only
			t.Errorf("qemu-img check %s after kill -9 at %.0f%%: exit %d\n%s", filepath.Base(img), pct, code, out)
		}
	}
	if out, code := clitest.Qemu(t, "qemu-img", "compare", "-F", "raw", top, orig); code != 0 {
		t.Errorf("top after a killed commit does not read as before: %s", out)
	}
}
