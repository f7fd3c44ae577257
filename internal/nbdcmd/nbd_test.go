package nbdcmd

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/internal/cli"
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
		// qemu-nbd's words, the errno capitalised as QEMU's strerror.
		{[]string{"nbd", "--image-opts", "driver=raw,file.driver=file,file.filename=" + filepath.Join(dir, "missing")},
			"Failed to blk_new_open 'driver=raw,file.driver=file,file.filename=" + filepath.Join(dir, "missing") + "': Could not open '" + filepath.Join(dir, "missing") + "': No such file or directory"},
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
	mustRun(t, [][]string{
		{"qemu-img", "create", "-q", "-f", "qcow2", base, "4M"},
		{"qemu-io", "-f", "qcow2", "-c", "write -P 0xaa 0 4M", base},
		{"qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top, "4M"},
		{"qemu-io", "-f", "qcow2", "-c", "write -P 0xbb 2M 1M", top},
	})
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

// TestNbdCmdLoadSnapshot: -l exports an internal snapshot of a qcow2 image,
// read-only, named either way qemu-nbd takes it (qemu-iotests 058), and
// refuses a snapshot that is not there. Before, -l was refused.
func TestNbdCmdLoadSnapshot(t *testing.T) {
	needCmd(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	img := filepath.Join(dir, "a.qcow2")
	mustRun(t, [][]string{
		{"qemu-img", "create", "-q", "-f", "qcow2", img, "8M"},
		{"qemu-io", "-c", "write -P 0xa 4k 4k", img},
		{"qemu-img", "snapshot", "-c", "sn1", img},
		{"qemu-io", "-c", "write -P 0xc 4k 4k", img},
	})
	for i, ref := range []string{"sn1", "snapshot.name=sn1", "snapshot.id=1"} {
		sock := filepath.Join(dir, fmt.Sprintf("s%d", i))
		startNbd(t, sock, "-t", "-l", ref, img)
		u := "nbd+unix:///?socket=" + sock
		out, err := exec.Command("qemu-io", "-r", "-f", "raw", "-c", "read -P 0xa 4k 4k", u).CombinedOutput()
		if err != nil || strings.Contains(string(out), "fail") || strings.Contains(string(out), "Pattern verification failed") {
			t.Errorf("-l %s: the snapshot's data: %v %s", ref, err, out)
		}
		// QEMU's older filename form, through ringblk's own client.
		readLegacy(t, "nbd:unix:"+sock, 4096, 0xa)
		out, _ = exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0xd 4k 4k", u).CombinedOutput()
		if !strings.Contains(string(out), "Permission denied") && !strings.Contains(string(out), "Operation not permitted") {
			t.Errorf("-l %s: a write was not refused: %s", ref, out)
		}
	}
	_, stderr, code := clitest.RunRingblk(t, nil, "nbd", "-k", filepath.Join(dir, "x"), "-l", "nosuch", img)
	if code != 1 || !strings.Contains(stderr, "Failed to load snapshot: Can't find snapshot") {
		t.Errorf("-l nosuch: exit %d, stderr %q", code, stderr)
	}
}

// readLegacy opens name (an NBD filename) with ringblk's client as a raw
// image and checks that the 4 KiB at off are all b.
func readLegacy(t *testing.T, name string, off int64, b byte) {
	t.Helper()
	ctx, g, err := cli.NewServerEnv()
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Stop()
	img, err := chain.Open(g, name, chain.Options{Format: "raw", ReadOnly: true})
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	defer img.Node.Unref()
	buf := make([]byte, 4096)
	if _, err := img.Node.ReadAt(buf, off); err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	if !bytes.Equal(buf, bytes.Repeat([]byte{b}, len(buf))) {
		t.Fatalf("%s at %d: not all 0x%x", name, off, b)
	}
}

// TestNbdCmdListSameAsQemuNbd: -L/--list prints a server's exports as
// qemu-nbd --list does, line for line, whichever of the two serves
// (qemu-iotests nbd-qemu-allocation). Before, --list was refused.
func TestNbdCmdListSameAsQemuNbd(t *testing.T) {
	needCmd(t, "qemu-nbd", "qemu-img")
	dir := t.TempDir()
	img := filepath.Join(dir, "a.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", img, "4M").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	list := func(sock string) (string, string) {
		t.Helper()
		want, err := exec.Command("qemu-nbd", "--list", "-k", sock).CombinedOutput()
		if err != nil {
			t.Fatalf("qemu-nbd --list: %v %s", err, want)
		}
		got, stderr, code := clitest.RunRingblk(t, nil, "nbd", "-L", "-k", sock)
		if code != 0 {
			t.Fatalf("ringblk nbd -L: exit %d %s", code, stderr)
		}
		return string(want), got
	}
	// qemu-nbd serving.
	qs := filepath.Join(dir, "q.sock")
	q := exec.Command("qemu-nbd", "-r", "-t", "-A", "-f", "qcow2", "-x", "vm", "-D", "a disk", "-k", qs, img)
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Process.Kill(); q.Wait() })
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(qs); err == nil {
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	want, got := list(qs)
	if got != want || !strings.Contains(want, "qemu:allocation-depth") {
		t.Errorf("listing qemu-nbd's export:\nqemu-nbd --list:\n%s\nringblk nbd -L:\n%s", want, got)
	}
	// ringblk serving.
	rs := filepath.Join(dir, "r.sock")
	startNbd(t, rs, "-t", "-r", "-A", "-f", "qcow2", "-D", "a disk", img)
	want, got = list(rs)
	if got != want || !strings.Contains(want, "description: a disk") {
		t.Errorf("listing ringblk's export:\nqemu-nbd --list:\n%s\nringblk nbd -L:\n%s", want, got)
	}
	if _, stderr, code := clitest.RunRingblk(t, nil, "nbd", "-L", "-k", filepath.Join(dir, "none.sock")); code != 1 || !strings.Contains(stderr, "Failed to connect to") {
		t.Errorf("-L without a server: exit %d, stderr %q", code, stderr)
	}
}

// TestNbdCmdXDirtyBitmap: an NBD node opened with x-dirty-bitmap reports
// the named metadata context's extents as its block status, read as
// base:allocation's flags, as QEMU's client does (qemu-iotests
// nbd-qemu-allocation: qemu:allocation-depth, 0 unallocated, 1 local, 2
// backing); a context the server does not offer fails the open. Before,
// x-dirty-bitmap was refused.
func TestNbdCmdXDirtyBitmap(t *testing.T) {
	needCmd(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	base, top := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	mustRun(t, [][]string{
		{"qemu-img", "create", "-q", "-f", "qcow2", base, "4M"},
		{"qemu-io", "-c", "write 0 2M", base},
		{"qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top},
		{"qemu-io", "-c", "write 1M 2M", top},
	})
	sock := filepath.Join(dir, "s")
	startNbd(t, sock, "-t", "-r", "-A", "-f", "qcow2", top)
	ctx, g, err := cli.NewServerEnv()
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Stop()
	spec := chain.Spec{"driver": "nbd", "server.type": "unix", "server.path": sock, "x-dirty-bitmap": "qemu:allocation-depth"}
	img, err := chain.OpenSpec(g, spec, chain.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Node.Unref()
	// Depth 2 (backing) has the "zero" bit, 1 (top) the "hole" bit, 0
	// (nowhere) neither.
	for _, w := range []struct {
		off            int64
		data, zero, al bool
	}{{0, true, true, true}, {1 << 20, false, false, false}, {3 << 20, true, false, true}} {
		st, _, err := img.Node.BlockStatus(w.off, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if st&block.StatusData != 0 != w.data || st&block.StatusZero != 0 != w.zero || st&block.StatusAllocated != 0 != w.al {
			t.Errorf("at %d: status %v, want data %v zero %v allocated %v", w.off, st, w.data, w.zero, w.al)
		}
	}
	spec = chain.Spec{"driver": "nbd", "server.type": "unix", "server.path": sock, "x-dirty-bitmap": "qemu:dirty-bitmap:nope"}
	if _, err := chain.OpenSpec(g, spec, chain.Options{ReadOnly: true}); err == nil || !strings.Contains(err.Error(), "requested x-dirty-bitmap qemu:dirty-bitmap:nope not found") {
		t.Errorf("a context the server lacks: %v", err)
	}
}

// TestNbdCmdTempSnapshot: -s serves the image writable through a
// temporary overlay in $TMPDIR: the client reads its own writes over the
// image's data, the image file is not changed, and no temporary file is
// left. Before, -s was refused.
func TestNbdCmdTempSnapshot(t *testing.T) {
	needCmd(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	img := filepath.Join(dir, "a.qcow2")
	mustRun(t, [][]string{
		{"qemu-img", "create", "-q", "-f", "qcow2", img, "4M"},
		{"qemu-io", "-c", "write -P 0x11 0 1M", img},
	})
	before, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", tmp)
	sock := filepath.Join(dir, "s")
	cmd := startNbd(t, sock, "-s", "-f", "qcow2", img)
	out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0x77 0 64k", "-c", "read -P 0x77 0 64k", "-c", "read -P 0x11 512k 64k",
		"nbd+unix:///?socket="+sock).CombinedOutput()
	if err != nil || strings.Contains(string(out), "fail") {
		t.Fatalf("qemu-io through -s: %v %s", err, out)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not exit after its client left")
	}
	after, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Error("the image file changed under -s")
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("temporary files left in TMPDIR: %v", left)
	}
}

// TestNbdCmdImageOpts: --image-opts takes QEMU's option string for the
// image, as qemu-nbd does. Before, it was refused.
func TestNbdCmdImageOpts(t *testing.T) {
	needCmd(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	img := filepath.Join(dir, "a.qcow2")
	mustRun(t, [][]string{
		{"qemu-img", "create", "-q", "-f", "qcow2", img, "4M"},
		{"qemu-io", "-c", "write -P 0x5a 1M 64k", img},
	})
	sock := filepath.Join(dir, "s")
	startNbd(t, sock, "-t", "--image-opts", "driver=qcow2,file.driver=file,file.filename="+img)
	readLegacy(t, "nbd:unix:"+sock, 1<<20, 0x5a)
}

// mustRun runs each command line (tools the test needs) and fails the
// test on the first that fails.
func mustRun(t *testing.T, cmds [][]string) {
	t.Helper()
	for _, args := range cmds {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
	}
}
