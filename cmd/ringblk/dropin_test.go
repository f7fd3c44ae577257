package main

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// buildLinks builds the ringblk binary into a temporary directory and runs
// install-links there; it returns the directory.
func buildLinks(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary; not in -short")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "ringblk")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "install-links", dir).CombinedOutput(); err != nil {
		t.Fatalf("install-links: %v\n%s", err, out)
	}
	return dir
}

func runTool(t *testing.T, prog string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(prog, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr, cmd.Stdin = &o, &e, strings.NewReader("")
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: %v", prog, err)
	}
	return o.String(), e.String(), code
}

// TestDropinMatchesQemu: run through links named qemu-img and qemu-io,
// the binary prints the same stderr and exit status as the real tools on
// command-line mistakes and a missing image.
func TestDropinMatchesQemu(t *testing.T) {
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	dir := buildLinks(t)
	missing := filepath.Join(t.TempDir(), "missing.qcow2")
	cases := []struct {
		tool string
		args []string
	}{
		{"qemu-img", nil},
		{"qemu-img", []string{"nosuchcommand"}},
		{"qemu-img", []string{"--bogus"}},
		{"qemu-img", []string{"info", "--bogus", missing}},
		{"qemu-img", []string{"check", "-f", "qcow2", missing}},
		{"qemu-img", []string{"create", "-f", "qcow2", filepath.Join(missing, "x"), "1M"}},
		{"qemu-io", []string{"-c", "read 0 512", missing}},
		{"qemu-io", []string{"-f", "qcow2", "-c", "read 0 512", missing}},
	}
	for _, c := range cases {
		_, wantErr, wantCode := runTool(t, c.tool, c.args...)
		_, gotErr, gotCode := runTool(t, filepath.Join(dir, c.tool), c.args...)
		if gotErr != wantErr || gotCode != wantCode {
			t.Errorf("%s %q:\nours (exit %d): %q\nqemu (exit %d): %q", c.tool, c.args, gotCode, gotErr, wantCode, wantErr)
		}
	}
	// --version: the first line has QEMU's shape, for scripts that parse it.
	for _, tool := range []string{"qemu-img", "qemu-io", "qemu-nbd", "qemu-storage-daemon"} {
		out, _, code := runTool(t, filepath.Join(dir, tool), "--version")
		if code != 0 || !strings.HasPrefix(out, tool+" version 7.2.") {
			t.Errorf("%s --version: exit %d, %q", tool, code, out)
		}
	}
	// The "Try" hint follows getopt's mistakes only, not a bad value.
	_, e1, _ := runTool(t, "qemu-img", "create", "-f", "qcow2", "-o", "cluster_size=4M", filepath.Join(dir, "x.qcow2"), "1M")
	_, e2, _ := runTool(t, filepath.Join(dir, "qemu-img"), "create", "-f", "qcow2", "-o", "cluster_size=4M", filepath.Join(dir, "y.qcow2"), "1M")
	if strings.Contains(e1, "Try 'qemu-img") != strings.Contains(e2, "Try 'qemu-img") {
		t.Errorf("bad cluster size: the hint line differs:\nours %q\nqemu %q", e2, e1)
	}
	// --help lists the formats on qemu-img's "Supported formats:" line,
	// which the iotests' _require_drivers reads.
	if out, _, code := runTool(t, filepath.Join(dir, "qemu-img"), "--help"); code != 0 ||
		!strings.Contains(out, "\nSupported formats: ") || !strings.Contains(out, " qcow2 raw\n") {
		t.Errorf("qemu-img --help: exit %d, no Supported formats line:\n%s", code, out)
	}
	// Not through a link: ringblk's own prefix.
	_, e, _ := runTool(t, filepath.Join(dir, "ringblk"), "info", "--bogus", missing)
	if !strings.HasPrefix(e, "ringblk: ") {
		t.Errorf("ringblk info --bogus: %q, want the ringblk: prefix", e)
	}
}

// TestInstallLinksRefusesFile: install-links replaces old links but
// refuses a regular file in the way, and then makes no link at all.
func TestInstallLinksRefusesFile(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "ringblk")
	if err := os.WriteFile(target, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/elsewhere", filepath.Join(dir, "qemu-img")); err != nil {
		t.Fatal(err)
	}
	if err := installLinks(dir, target); err != nil {
		t.Fatalf("over an old link: %v", err)
	}
	for _, tool := range []string{"qemu-img", "qemu-io", "qemu-nbd", "qemu-storage-daemon"} {
		if l, err := os.Readlink(filepath.Join(dir, tool)); err != nil || l != target {
			t.Errorf("%s -> %q, %v; want %s", tool, l, err, target)
		}
	}
	other := t.TempDir()
	if err := os.WriteFile(filepath.Join(other, "qemu-io"), []byte("real"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := installLinks(other, target)
	if err == nil || !strings.Contains(err.Error(), "not a symbolic link") {
		t.Fatalf("over a regular file: %v, want a refusal", err)
	}
	if b, _ := os.ReadFile(filepath.Join(other, "qemu-io")); string(b) != "real" {
		t.Error("the regular file was changed")
	}
	if _, err := os.Lstat(filepath.Join(other, "qemu-img")); err == nil {
		t.Error("a link was made despite the refusal")
	}
}

// TestDropinBackgroundCopies: the daemons that put themselves in the
// background (qemu-nbd --fork, qemu-storage-daemon --daemonize) run their
// background copy as the same drop-in. Before, the copy ran as ringblk,
// took the tool's first option for a ringblk command and failed, so
// qemu-nbd --fork through a link never started a server (qemu-iotests
// 058, nbd-qemu-allocation).
func TestDropinBackgroundCopies(t *testing.T) {
	dir := buildLinks(t)
	img := filepath.Join(dir, "a.raw")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		tool string
		args []string
	}{
		{"qemu-nbd", []string{"--fork", "--persistent", "-f", "raw", "-k", "SOCK", "--pid-file=PID", img}},
		{"qemu-storage-daemon", []string{"--daemonize", "--pidfile", "PID", "--blockdev", "driver=file,node-name=f,filename=" + img,
			"--nbd-server", "addr.type=unix,addr.path=SOCK", "--export", "type=nbd,id=e,node-name=f"}},
	} {
		sock, pid := filepath.Join(dir, tc.tool+".sock"), filepath.Join(dir, tc.tool+".pid")
		args := make([]string, len(tc.args))
		for i, a := range tc.args {
			a = strings.ReplaceAll(a, "SOCK", sock)
			args[i] = strings.ReplaceAll(a, "PID", pid)
		}
		_, stderr, code := runTool(t, filepath.Join(dir, tc.tool), args...)
		if code != 0 {
			t.Errorf("%s %q: exit %d, stderr %q", tc.tool, args, code, stderr)
			continue
		}
		b, err := os.ReadFile(pid)
		if err != nil {
			t.Errorf("%s: no pid file: %v", tc.tool, err)
			continue
		}
		p, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatalf("%s: pid file %q", tc.tool, b)
		}
		if nc, err := net.Dial("unix", sock); err != nil {
			t.Errorf("%s: nothing listens on %s: %v", tc.tool, sock, err)
		} else {
			nc.Close()
		}
		syscall.Kill(p, syscall.SIGTERM)
	}
}

// TestDropinStorageDaemonMessages: through a qemu-storage-daemon link the
// command-line mistakes read as qemu-storage-daemon's own, word for word,
// with its exit status. Before, an unknown option was ringblk's sentence,
// and another export type's member was refused for the member.
func TestDropinStorageDaemonMessages(t *testing.T) {
	if _, err := exec.LookPath("qemu-storage-daemon"); err != nil {
		t.Skip("qemu-storage-daemon not installed")
	}
	dir := buildLinks(t)
	img := filepath.Join(dir, "a.raw")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "x.sock")
	for _, args := range [][]string{
		{"--bogus"},
		{"--blockdev", "driver=file,node-name=f,filename=" + img + ",bogus=1"},
		{"--blockdev", "driver=file,node-name=f,filename=" + img, "--export", "type=bogus,id=e,node-name=f"},
		{"--blockdev", "driver=file,node-name=f,filename=" + img, "--nbd-server", "addr.type=unix,addr.path=" + sock,
			"--export", "type=nbd,id=e,node-name=f,mountpoint=/x"},
		{"--blockdev", "driver=file,node-name=f,filename=" + img, "--export", "type=nbd,id=e,node-name=nosuch"},
		{"--blockdev", `{"driver":"file","node-name":"f","filename":"` + filepath.Join(dir, "none") + `"}`},
	} {
		_, want, wcode := runTool(t, "qemu-storage-daemon", args...)
		_, got, gcode := runTool(t, filepath.Join(dir, "qemu-storage-daemon"), args...)
		if got != want || gcode != wcode {
			t.Errorf("%q:\n qemu-storage-daemon exit %d %q\n ringblk's drop-in   exit %d %q", args, wcode, want, gcode, got)
		}
	}
}
