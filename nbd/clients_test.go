package nbd

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"

	"github.com/ringblk/ringblk/internal/nbdproto"

	"github.com/ringblk/ringblk/internal/nbdtest"
)

// Tests with real NBD clients (libnbd's nbdinfo and nbdcopy, QEMU's
// qemu-img and qemu-io) against the server. Each skips only when its tool
// is not installed (scripts/deps.sh installs them).

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (scripts/deps.sh installs it)", name)
	}
	return p
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func uri(e *env, name string) string {
	return "nbd+unix:///" + name + "?socket=" + e.sock
}

func TestNbdinfo(t *testing.T) {
	needTool(t, "nbdinfo")
	e := newEnv(t, ExportOptions{Name: "disk", Description: "test disk", AllocationDepth: true})
	e2, err := NewExport(e.g, e.node, ExportOptions{Name: "ro", ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e2.Close() })
	e.srv.AddExport(e2)
	out := runTool(t, "nbdinfo", "--list", uri(e, "disk"))
	for _, w := range []string{"export=\"disk\"", "export=\"ro\"", "description: test disk", "export-size: 16777216", "base:allocation", "qemu:allocation-depth", "is_read_only: true", "can_multi_conn: true", "maximum: 33554432"} {
		if !strings.Contains(out, w) {
			t.Errorf("nbdinfo --list: no %q in\n%s", w, out)
		}
	}
	// Some data at 1 MiB; --map shows it between holes.
	f, _ := os.OpenFile(e.path, os.O_WRONLY, 0)
	f.WriteAt(pattern(1<<20, 1), 1<<20)
	f.Close()
	out = runTool(t, "nbdinfo", "--map", uri(e, "disk"))
	want := "         0     1048576    3  hole,zero\n   1048576     1048576    0  data\n   2097152    14680064    3  hole,zero\n"
	if out != want {
		t.Errorf("nbdinfo --map:\n%s\nwant\n%s", out, want)
	}
	out = runTool(t, "nbdinfo", "--map=qemu:allocation-depth", uri(e, "disk"))
	if !strings.Contains(out, "0    16777216    1  local") {
		t.Errorf("nbdinfo --map=qemu:allocation-depth:\n%s", out)
	}
}

func TestNbdcopyBothWays(t *testing.T) {
	needTool(t, "nbdcopy")
	e := newEnv(t, ExportOptions{Name: ""})
	src := filepath.Join(t.TempDir(), "src.raw")
	data := make([]byte, testSize)
	copy(data[4096:], pattern(3<<20, 7))
	copy(data[9<<20:], pattern(1<<20, 9))
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	runTool(t, "nbdcopy", "--connections=4", "--requests=32", src, uri(e, ""))
	got, _ := os.ReadFile(e.path)
	if !bytes.Equal(got, data) {
		t.Fatal("nbdcopy file -> nbd: the export's file differs from the source")
	}
	dst := filepath.Join(t.TempDir(), "dst.raw")
	runTool(t, "nbdcopy", "--connections=4", uri(e, ""), dst)
	got, _ = os.ReadFile(dst)
	if !bytes.Equal(got, data) {
		t.Fatal("nbdcopy nbd -> file: the copy differs from the export")
	}
}

func TestQemuClients(t *testing.T) {
	needTool(t, "qemu-img")
	needTool(t, "qemu-io")
	e := newEnv(t, ExportOptions{Name: "vm", AllocationDepth: true})
	u := uri(e, "vm")
	out := runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 64k 128k", "-c", "flush", "-c", "read -P 0x5a 64k 128k", "-c", "write -z 96k 4k", "-c", "read -P 0 96k 4k", "-c", "discard 1M 64k", u)
	if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "failed") {
		t.Fatalf("qemu-io:\n%s", out)
	}
	out = runTool(t, "qemu-img", "info", "--output=json", u)
	if !strings.Contains(out, `"virtual-size": 16777216`) {
		t.Fatalf("qemu-img info:\n%s", out)
	}
	// The export and its file hold the same data.
	runTool(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", u, e.path)
	dst := filepath.Join(t.TempDir(), "out.qcow2")
	runTool(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", u, dst)
	runTool(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", dst, e.path)
	// Write through NBD from a qcow2 image and compare again.
	src := filepath.Join(t.TempDir(), "src.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", src, "16M")
	runTool(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 3M 1M", src)
	runTool(t, "qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", src, u)
	runTool(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", src, u)
}

// TestSingleClientExportNoMultiConn: an export limited to one client does
// not advertise CAN_MULTI_CONN (clients such as nbdcopy would open more
// connections, which are refused), and nbdcopy then works over its one
// connection.
func TestSingleClientExportNoMultiConn(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: "", MaxConnections: 1})
	cl := dial(t, e.sock, "", false)
	if cl.flags&nbdproto.TFlagMultiConn != 0 {
		t.Fatalf("flags %#x: CAN_MULTI_CONN on an export that takes one client", cl.flags)
	}
	// The second client's GO is refused with an error reply.
	second := dialRaw(t, e.sock)
	greet(t, second)
	second.Write(optBytes(nbdproto.OptGo, infoData("")))
	if r := readOptReply(t, second); r.typ != nbdproto.RepErrPolicy {
		t.Fatalf("GO on a full export: reply %#x %q", r.typ, r.data)
	}
	if _, _, errv := cl.read(2, 0, 4096, 0); errv != 0 {
		t.Fatalf("first client after the second was refused: %d", errv)
	}
	cl.send(nbdproto.CmdDisc, 0, 1, 0, 0, nil)
	expectClosed(t, cl.c, "after DISC")
	for e.exp.Connections() != 0 {
		time.Sleep(5 * time.Millisecond)
	}
	needTool(t, "nbdcopy")
	src := filepath.Join(t.TempDir(), "src.raw")
	data := make([]byte, testSize)
	copy(data[1<<20:], pattern(1<<20, 3))
	os.WriteFile(src, data, 0o644)
	runTool(t, "nbdcopy", src, uri(e, ""))
	got, _ := os.ReadFile(e.path)
	if !bytes.Equal(got, data) {
		t.Fatal("nbdcopy to a single-client export: data differs")
	}
}

// TestMapMatchesQemuNbd: on a qcow2 overlay over a qcow2 base, nbdinfo
// --map of base:allocation and qemu:allocation-depth give the same extents
// from this server as from qemu-nbd on the same chain.
func TestMapMatchesQemuNbd(t *testing.T) {
	needTool(t, "nbdinfo")
	needTool(t, "qemu-nbd")
	needTool(t, "qemu-io")
	dir := t.TempDir()
	base, top := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "8M")
	runTool(t, "qemu-io", "-f", "qcow2", "-c", "write -P 1 0 1M", "-c", "write -z 5M 1M", base)
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top, "16M")
	runTool(t, "qemu-io", "-f", "qcow2", "-c", "write -P 2 2M 1M", "-c", "write -z 512k 64k", top)
	e := newEnvFile(t, top, ExportOptions{Name: "", ReadOnly: true, AllocationDepth: true}, func(g *block.Graph) (*block.Node, error) {
		img, err := chain.Open(g, top, chain.Options{ReadOnly: true, Format: "qcow2", Name: "top"})
		if err != nil {
			return nil, err
		}
		return img.Node, nil
	})
	qsock := nbdtest.StartQemuNbd(t, "-r", "-A", "-t", "-f", "qcow2", top)
	for _, ctx := range []string{"base:allocation", "qemu:allocation-depth"} {
		ours := runTool(t, "nbdinfo", "--map="+ctx, uri(e, ""))
		theirs := runTool(t, "nbdinfo", "--map="+ctx, "nbd+unix:///?socket="+qsock)
		if ours != theirs {
			t.Errorf("--map=%s differs\nours:\n%s\nqemu-nbd:\n%s", ctx, ours, theirs)
		}
	}
	// And the data: qemu-img compare through both servers.
	runTool(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", uri(e, ""), "nbd+unix:///?socket="+qsock)
}
