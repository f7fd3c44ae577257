package nbdcmd

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

func TestNbdCmdErrors(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "a.raw")
	os.WriteFile(img, make([]byte, 1<<20), 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"nbd", "-k", filepath.Join(dir, "b"), "--bitmap", "b0", img}, "Bitmap 'b0' is not found"},
		{[]string{"nbd", filepath.Join(dir, "missing")}, "Could not open"},
		{[]string{"nbd", "--frobnicate", img}, "unrecognized option"},
		{[]string{"nbd", "--cache=bogus", img}, "Invalid cache mode"},
		{[]string{"nbd", "--detect-zeroes=unmap", img}, "detect-zeroes to unmap"},
		{[]string{"nbd", "-f", "vmdk", img}, "Unknown file format"},
		{[]string{"nbd", "-k", filepath.Join(dir, "s"), "-p", "1", img}, "cannot be used together"},
		{[]string{"nbd"}, "Expected exactly one image"},
		{[]string{"nbd", "-c", "/dev/nbd0", img}, "/dev/nbd"},
	} {
		_, stderr, code := clitest.RunRingblk(t, nil, c.args...)
		if code != 1 || !strings.Contains(stderr, c.want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%v: exit %d, stderr %q; want exit 1 and one line with %q", c.args, code, stderr, c.want)
		}
	}
	out, stderr, code := clitest.RunRingblk(t, nil, "nbd", "--help")
	if code != 0 || stderr != "" || !strings.Contains(out, "--allocation-depth") {
		t.Errorf("--help: exit %d stderr %q", code, stderr)
	}
	// qemu-nbd agrees on the exit status of the same mistakes.
	if _, err := exec.LookPath("qemu-nbd"); err == nil {
		for _, args := range [][]string{{"--frobnicate", img}, {filepath.Join(dir, "missing")}, {}} {
			err := exec.Command("qemu-nbd", args...).Run()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 1 {
				t.Errorf("qemu-nbd %v: %v (the test assumes exit 1)", args, err)
			}
		}
	}
}

// startNbd runs "ringblk nbd args… " in the background and waits for its
// socket.
func startNbd(t *testing.T, sock string, args ...string) *exec.Cmd {
	t.Helper()
	exe, _ := os.Executable()
	cmd := exec.Command(exe, append([]string{"nbd", "-k", sock}, args...)...)
	cmd.Env = append(os.Environ(), clitest.AsMainEnv+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			return cmd
		}
		if i == 200 {
			t.Fatalf("ringblk nbd did not create its socket: %s", stderr.String())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func needCmd(t *testing.T, names ...string) {
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Skipf("%s not installed (scripts/deps.sh installs it)", n)
		}
	}
}

func TestNbdCmdServeAndExit(t *testing.T) {
	needCmd(t, "qemu-io")
	dir := t.TempDir()
	img := filepath.Join(dir, "a.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", img, "8M").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	sock := filepath.Join(dir, "s")
	cmd := startNbd(t, sock, "-f", "qcow2", "-x", "vm", "-D", "a disk", "-A", "-e", "0", img)
	u := "nbd+unix:///vm?socket=" + sock
	out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0x42 1M 64k", "-c", "flush", u).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-io: %v %s", err, out)
	}
	// Without -t the server exits (status 0) when its last client leaves.
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ringblk nbd still running after its last client left")
	}
	out, err = exec.Command("qemu-io", "-f", "qcow2", "-c", "read -P 0x42 1M 64k", img).CombinedOutput()
	if err != nil || strings.Contains(string(out), "fail") {
		t.Fatalf("data in the image: %v %s", err, out)
	}
}

// TestNbdCmdKill9: data written and flushed before the server is killed
// (SIGKILL, in the middle of other writes) is in the image.
func TestNbdCmdKill9(t *testing.T) {
	needCmd(t, "qemu-io")
	dir := t.TempDir()
	img := filepath.Join(dir, "a.raw")
	os.WriteFile(img, nil, 0o644)
	os.Truncate(img, 32<<20)
	sock := filepath.Join(dir, "s")
	cmd := startNbd(t, sock, "-f", "raw", "-t", "--cache=none", img)
	u := "nbd+unix:///?socket=" + sock
	if out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0x77 0 4M", "-c", "flush", u).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v %s", err, out)
	}
	bg := exec.Command("qemu-io", "-f", "raw")
	for i := 0; i < 64; i++ {
		bg.Args = append(bg.Args, "-c", "write -P 0x99 "+strconv.Itoa(8+i%16)+"M 1M")
	}
	bg.Args = append(bg.Args, u)
	bg.Start()
	time.Sleep(100 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	bg.Wait()
	data, _ := os.ReadFile(img)
	if !bytes.Equal(data[:4<<20], bytes.Repeat([]byte{0x77}, 4<<20)) {
		t.Fatal("flushed data lost after kill -9")
	}
}

func TestNbdCmdForkPidFile(t *testing.T) {
	needCmd(t, "nbdinfo")
	dir := t.TempDir()
	img := filepath.Join(dir, "a.raw")
	os.WriteFile(img, make([]byte, 1<<20), 0o644)
	sock, pidf := filepath.Join(dir, "s"), filepath.Join(dir, "pid")
	_, stderr, code := clitest.RunRingblk(t, nil, "nbd", "--fork", "--pid-file", pidf, "-t", "-r", "-f", "raw", "-x", "vm", "-D", "a disk", "-A", "-k", sock, img)
	if code != 0 {
		t.Fatalf("--fork: exit %d %s", code, stderr)
	}
	b, err := os.ReadFile(pidf)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	defer syscall.Kill(pid, syscall.SIGKILL)
	out, err := exec.Command("nbdinfo", "nbd+unix:///vm?socket="+sock).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "is_read_only: true") || !strings.Contains(string(out), "description: a disk") || !strings.Contains(string(out), "qemu:allocation-depth") {
		t.Fatalf("nbdinfo on the forked server: %v %s", err, out)
	}
	syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; ; i++ {
		if _, err := os.Stat(pidf); os.IsNotExist(err) {
			break
		}
		if i == 400 {
			t.Fatal("pid file still there after SIGTERM")
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// TestNbdCmdDetectZeroes: with --detect-zeroes=unmap --discard=unmap a
// client's write of zero bytes deallocates the range in the image.
func TestNbdCmdDetectZeroes(t *testing.T) {
	needCmd(t, "qemu-io", "nbdinfo")
	dir := t.TempDir()
	img := filepath.Join(dir, "a.raw")
	os.WriteFile(img, bytes.Repeat([]byte{0xaa}, 4<<20), 0o644)
	sock := filepath.Join(dir, "s")
	startNbd(t, sock, "-t", "-f", "raw", "--discard=unmap", "--detect-zeroes=unmap", img)
	u := "nbd+unix:///?socket=" + sock
	if out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0 1M 1M", "-c", "flush", u).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v %s", err, out)
	}
	out, err := exec.Command("nbdinfo", "--map", u).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "   1048576     1048576    3  hole,zero") {
		t.Fatalf("nbdinfo --map after a zero write: %v\n%s", err, out)
	}
}

// TestNbdCmdTCP serves on 127.0.0.1 with -b and -p.
func TestNbdCmdTCP(t *testing.T) {
	needCmd(t, "qemu-io")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	dir := t.TempDir()
	img := filepath.Join(dir, "a.raw")
	os.WriteFile(img, make([]byte, 2<<20), 0o644)
	exe, _ := os.Executable()
	cmd := exec.Command(exe, "nbd", "-b", "127.0.0.1", "-p", port, "-f", "raw", "-x", "d", img)
	cmd.Env = append(os.Environ(), clitest.AsMainEnv+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err == nil {
			c.Close() // a client that leaves at once; -e 1 and no -t: the server exits
			break
		}
		if i == 200 {
			t.Fatalf("ringblk nbd does not listen on port %s: %s", port, stderr.String())
		}
		time.Sleep(25 * time.Millisecond)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after the client left: %v %s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("still running after its only client left")
	}
	// Persistent this time, and a real client.
	cmd = exec.Command(exe, "nbd", "-t", "-b", "127.0.0.1", "-p", port, "-f", "raw", "-x", "d", img)
	cmd.Env = append(os.Environ(), clitest.AsMainEnv+"=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var out []byte
	for i := 0; i < 200; i++ {
		out, err = exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0x3c 4k 4k", "-c", "read -P 0x3c 4k 4k", "nbd://127.0.0.1:"+port+"/d").CombinedOutput()
		if err == nil {
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	if err != nil || strings.Contains(string(out), "fail") {
		t.Fatalf("qemu-io over TCP: %v %s", err, out)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit status after SIGTERM: %v (want 0)", err)
	}
}

// TestNbdCmdStaleSocket: a socket file left by a killed server is
// replaced; a regular file at that path is not.
func TestNbdCmdStaleSocket(t *testing.T) {
	needCmd(t, "qemu-io")
	dir := t.TempDir()
	img := filepath.Join(dir, "a.raw")
	os.WriteFile(img, make([]byte, 1<<20), 0o644)
	sock := filepath.Join(dir, "s")
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: sock}); err != nil {
		t.Fatal(err)
	}
	syscall.Close(fd) // the file stays, nobody listens
	startNbd(t, sock, "-t", "-f", "raw", img)
	var out []byte
	for i := 0; i < 200; i++ {
		out, err = exec.Command("qemu-io", "-f", "raw", "-c", "read 0 4k", "nbd+unix:///?socket="+sock).CombinedOutput()
		if err == nil {
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("qemu-io on a server that replaced a stale socket: %v %s", err, out)
	}
	reg := filepath.Join(dir, "r")
	os.WriteFile(reg, []byte("keep"), 0o644)
	img2 := filepath.Join(dir, "b.raw")
	os.WriteFile(img2, make([]byte, 1<<20), 0o644)
	_, stderr, code := clitest.RunRingblk(t, nil, "nbd", "-k", reg, "-f", "raw", img2)
	if code != 1 || !strings.Contains(stderr, "Failed to bind socket") {
		t.Fatalf("-k on a regular file: exit %d %q", code, stderr)
	}
	if b, _ := os.ReadFile(reg); string(b) != "keep" {
		t.Fatal("a regular file at the socket path was replaced")
	}
}

// TestNbdCmdDiscardIgnore: with --discard=ignore (the default) a client's
// TRIM changes nothing in a qcow2 image, as with qemu-nbd, which drops the
// discard at the image's top node. The setting reached only the file node
// under the qcow2 layer, so the qcow2 driver still discarded: over a
// backing file it wrote zero clusters, and the backing file's data read
// as zeroes afterwards.
func TestNbdCmdDiscardIgnore(t *testing.T) {
	needCmd(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	base, top := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	for _, args := range [][]string{
		{"qemu-img", "create", "-q", "-f", "qcow2", base, "4M"},
		{"qemu-io", "-f", "qcow2", "-c", "write -P 0xaa 0 4M", base},
		{"qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top, "4M"},
		{"qemu-io", "-f", "qcow2", "-c", "write -P 0xbb 2M 1M", top},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
	}
	sock := filepath.Join(dir, "s")
	startNbd(t, sock, "-t", "-f", "qcow2", top)
	u := "nbd+unix:///?socket=" + sock
	out, err := exec.Command("qemu-io", "-f", "raw", "-c", "discard 0 4M", "-c", "flush",
		"-c", "read -P 0xaa 0 2M", "-c", "read -P 0xbb 2M 1M", "-c", "read -P 0xaa 3M 1M", u).CombinedOutput()
	if err != nil || strings.Contains(string(out), "fail") {
		t.Fatalf("data after a TRIM with --discard=ignore: %v\n%s", err, out)
	}
}

// TestNbdCmdDetectZeroesQcow2: --detect-zeroes turns a client's write of
// zero bytes into a write-zeroes at the image's top node, as qemu-nbd
// does, so a qcow2 image gets zero clusters and no data. The setting
// reached only the file node under the qcow2 layer, which then allocated
// data clusters for the zeroes (qemu-img map: "data": true).
func TestNbdCmdDetectZeroesQcow2(t *testing.T) {
	needCmd(t, "qemu-img", "qemu-io")
	for _, mode := range []string{"on", "unmap"} {
		dir := t.TempDir()
		img := filepath.Join(dir, "a.qcow2")
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", img, "8M").CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		sock := filepath.Join(dir, "s")
		cmd := startNbd(t, sock, "-f", "qcow2", "--discard=unmap", "--detect-zeroes="+mode, img)
		u := "nbd+unix:///?socket=" + sock
		if out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0 1M 1M", "-c", "write -P 0 3M 4k",
			"-c", "write -P 0x11 5M 64k", "-c", "read -P 0 1M 1M", u).CombinedOutput(); err != nil || strings.Contains(string(out), "fail") {
			t.Fatalf("qemu-io: %v %s", err, out)
		}
		if err := cmd.Wait(); err != nil { // the last client left
			t.Fatalf("exit: %v", err)
		}
		out, err := exec.Command("qemu-img", "map", "--output=json", img).CombinedOutput()
		if err != nil {
			t.Fatalf("qemu-img map: %v %s", err, out)
		}
		var m []struct {
			Start, Length int64
			Data          bool
		}
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		for _, e := range m {
			if e.Data && e.Start < 4<<20 {
				t.Errorf("--detect-zeroes=%s: zero writes stored as data at %d+%d\n%s", mode, e.Start, e.Length, out)
			}
		}
		if data, _ := exec.Command("qemu-io", "-f", "qcow2", "-c", "read -P 0x11 5M 64k", img).CombinedOutput(); strings.Contains(string(data), "fail") {
			t.Errorf("--detect-zeroes=%s: the data write is lost\n%s", mode, data)
		}
	}
}
