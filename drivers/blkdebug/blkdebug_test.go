package blkdebug_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/drivers/blkdebug"
	"github.com/ringblk/ringblk/drivers/chain"
)

// TestParse: QEMU 7.2's config syntax (quoted and bare values, comments,
// both groups, sector in 512-byte units), and a clear error naming the
// line for each kind of mistake.
func TestParse(t *testing.T) {
	rules, err := blkdebug.Parse(strings.NewReader(`# comment
[inject-error]
event = "read_aio"
errno = "28"
once ="on"
sector = 8
state = "2"

[set-state]
event = "l2_update"
state = "1"
new_state = "2"
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 2 {
		t.Fatalf("%d rules", len(rules))
	}
	r0, r1 := rules[0], rules[1]
	if r0.Action != blkdebug.ActionInjectError || r0.Event != block.DbgReadAIO || r0.Errno != 28 || !r0.Once || r0.Immediately || r0.Offset != 8*512 || r0.State != 2 {
		t.Errorf("inject-error rule %+v", r0)
	}
	if r1.Action != blkdebug.ActionSetState || r1.Event != block.DbgL2Update || r1.State != 1 || r1.NewState != 2 {
		t.Errorf("set-state rule %+v", r1)
	}
	d, _ := blkdebug.Parse(strings.NewReader("[inject-error]\nevent = \"write_aio\"\n"))
	if d[0].Errno != 5 || d[0].Offset != -1 || d[0].Once {
		t.Errorf("defaults %+v, want errno 5 (EIO), any offset, not once", d[0])
	}
	for _, bad := range []struct{ conf, want string }{
		{"[inject-errors]\nevent = \"read_aio\"\n", "no option group 'inject-errors'"},
		{"[inject-error]\nevent = \"read_aoi\"\n", "invalid event name 'read_aoi'"},
		{"[inject-error]\nerrno = \"5\"\n", "missing event"},
		{"[inject-error]\nevent = \"read_aio\"\nerrno = \"five\"\n", "'errno' expects a number"},
		{"[inject-error]\nevent = \"read_aio\"\nonce = \"maybe\"\n", "'once' expects 'on' or 'off'"},
		{"[set-state]\nevent = \"read_aio\"\nerrno = \"5\"\n", "invalid parameter 'errno'"},
		{"event = \"read_aio\"\n", "line 1: parse error"},
	} {
		if _, err := blkdebug.Parse(strings.NewReader(bad.conf)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("config %q: error %v, want one containing %q", bad.conf, err, bad.want)
		}
	}
}

func openDebug(t *testing.T, e *blocktest.Env, conf string) (*block.Node, *blkdebug.Driver, *blocktest.Mem) {
	t.Helper()
	mem := blocktest.NewMem(1 << 20)
	img := e.Open(mem, block.Options{Name: "img"})
	rules, err := blkdebug.Parse(strings.NewReader(conf))
	if err != nil {
		t.Fatal(err)
	}
	d := blkdebug.New(img, rules)
	n := e.Open(d, block.Options{Name: "dbg"})
	return n, d, mem
}

// TestInjectAfterEvent: requests pass until the rule's event fires; then
// they fail with its errno (only those covering its sector, when it has
// one), a once rule fails one request only, and state-gated rules act
// only in their state, which set-state rules change at the event.
func TestInjectAfterEvent(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	n, d, _ := openDebug(t, e, `
[inject-error]
event = "read_aio"
errno = "28"
sector = "2"
[inject-error]
event = "write_aio"
once = "on"
state = "2"
[set-state]
event = "l2_update"
new_state = "2"
`)
	defer n.Unref()
	buf := make([]byte, 512)
	if _, err := n.ReadAt(buf, 1024); err != nil {
		t.Fatalf("read before the event: %v", err)
	}
	d.DebugEvent(block.DbgReadAIO)
	if _, err := n.ReadAt(buf, 0); err != nil {
		t.Fatalf("read not covering sector 2: %v", err)
	}
	if _, err := n.ReadAt(buf, 1024); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("read of sector 2 after read_aio: %v, want ENOSPC", err)
	}
	// write_aio's rule is for state 2: in state 1 nothing is injected.
	d.DebugEvent(block.DbgWriteAIO)
	if _, err := n.WriteAt(buf, 0); err != nil {
		t.Fatalf("write in state 1: %v", err)
	}
	d.DebugEvent(block.DbgL2Update) // state 1 → 2
	d.DebugEvent(block.DbgWriteAIO)
	if _, err := n.WriteAt(buf, 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write in state 2 after write_aio: %v, want EIO", err)
	}
	if _, err := n.WriteAt(buf, 0); err != nil {
		t.Fatalf("second write after a once rule: %v", err)
	}
}

// TestBreakpoint: break holds the request after its event under a tag;
// Suspended sees it, resume lets it complete, and remove_break of an
// unknown tag is ENOENT.
func TestBreakpoint(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	n, d, mem := openDebug(t, e, "")
	defer n.Unref()
	var msgs []string
	d.SetNotify(func(s string) { msgs = append(msgs, s) })
	if err := d.Break("write_aio", "A"); err != nil {
		t.Fatal(err)
	}
	if err := d.Break("no_such_event", "B"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("break on an unknown event: %v", err)
	}
	d.DebugEvent(block.DbgWriteAIO)
	done := make(chan error, 1)
	go func() {
		_, err := n.WriteAt([]byte{7}, 5)
		done <- err
	}()
	e.WaitFor("request suspended", func() bool { return d.Suspended("A") })
	select {
	case err := <-done:
		t.Fatalf("held write completed: %v", err)
	default:
	}
	if err := d.Resume("A"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil || mem.Data[5] != 7 {
		t.Fatalf("resumed write: %v, byte %d", err, mem.Data[5])
	}
	if err := d.Resume("A"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("second resume: %v, want ENOENT", err)
	}
	if err := d.RemoveBreak("Z"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("remove_break of an unknown tag: %v", err)
	}
	if strings.Join(msgs, "|") != "blkdebug: Suspended request 'A'|blkdebug: Resuming request 'A'" {
		t.Errorf("messages %q", msgs)
	}
}

// TestQcow2WriteFailureLeavesImageClean is a fault test of our qcow2
// driver through blkdebug: the first guest-data write of an allocating
// write fails (write_aio, ENOSPC, once); the write reports the error, a
// retry succeeds, and after close qemu-img check finds the image clean
// (no corruption; leaks allowed) with the retried data in place.
func TestQcow2WriteFailureLeavesImageClean(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (make test installs it via scripts/deps.sh)")
	}
	dir := t.TempDir()
	img, conf := filepath.Join(dir, "t.qcow2"), filepath.Join(dir, "bd.conf")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", img, "4M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v %s", err, out)
	}
	if err := os.WriteFile(conf, []byte("[inject-error]\nevent = \"write_aio\"\nerrno = \"28\"\nonce = \"on\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := blocktest.NewEnv(t, 0)
	im, err := chain.Open(e.G, "blkdebug:"+conf+":"+img, chain.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if im.Format != "qcow2" || blkdebug.Find(im.Node) == nil {
		t.Fatalf("format %s, filter found %v", im.Format, blkdebug.Find(im.Node) != nil)
	}
	data := []byte(strings.Repeat("x", 64<<10))
	if _, err := im.Node.WriteAt(data, 1<<20); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("first write: %v, want ENOSPC", err)
	}
	if _, err := im.Node.WriteAt(data, 1<<20); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("qemu-img", "check", img).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); err != nil && (!ok || ee.ExitCode() != 3) {
		t.Fatalf("qemu-img check: %v\n%s", err, out)
	}
	raw := filepath.Join(dir, "r.raw")
	if out, err := exec.Command("qemu-img", "convert", "-O", "raw", img, raw).CombinedOutput(); err != nil {
		t.Fatalf("convert: %v %s", err, out)
	}
	got, _ := os.ReadFile(raw)
	if string(got[1<<20:1<<20+len(data)]) != string(data) {
		t.Fatal("retried data not in the image")
	}
}

// TestQcow2ReadPathsRaiseReadAIO: every way our qcow2 driver reads guest
// data from the file raises read_aio — a one-cluster read (the lock-free
// path), a read of several clusters contiguous on the host, a read of
// scattered clusters — so an inject-error rule on read_aio fails each
// (iotest 074 reads through the second).
func TestQcow2ReadPathsRaiseReadAIO(t *testing.T) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("qemu-io not installed (make test installs it via scripts/deps.sh)")
	}
	dir := t.TempDir()
	img, conf := filepath.Join(dir, "t.qcow2"), filepath.Join(dir, "bd.conf")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=64k", img, "4M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v %s", err, out)
	}
	// Clusters 0-3 contiguous on the host; 8 and 5 written after them, so
	// guest 4..9 maps to scattered host clusters.
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 1 0 256k", "-c", "write -P 2 512k 64k", "-c", "write -P 3 320k 64k", img).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v %s", err, out)
	}
	if err := os.WriteFile(conf, []byte("[inject-error]\nevent = \"read_aio\"\nonce = \"on\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		off, n int64
	}{{"one cluster", 4096, 4096}, {"contiguous clusters", 0, 256 << 10}, {"scattered clusters", 320 << 10, 256 << 10}} {
		e := blocktest.NewEnv(t, 0)
		im, err := chain.Open(e.G, "blkdebug:"+conf+":"+img, chain.Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, c.n)
		// Load the L2 table by reading unallocated clusters (no guest
		// data is read: no read_aio), so the reads below take the paths
		// of a cached table.
		if _, err := im.Node.ReadAt(buf[:4096], 2<<20); err != nil {
			t.Fatal(err)
		}
		_, err = im.Node.ReadAt(buf, c.off)
		if !errors.Is(err, syscall.EIO) {
			t.Errorf("%s: read %v, want EIO from the read_aio rule", c.name, err)
		}
		if _, err := im.Node.ReadAt(buf, c.off); err != nil {
			t.Errorf("%s: second read after a once rule: %v", c.name, err)
		}
		im.Close()
	}
}

// TestQcow2WriteOverReusedClustersIsOneHostWrite: a write over three
// clusters contiguous on the host — data, preallocated zero, data — is
// one host write (one write_aio), as in QEMU: a rule that fails every
// write after the first write_aio does not fail it (iotest 066, last
// case), and the clusters keep their host offsets.
func TestQcow2WriteOverReusedClustersIsOneHostWrite(t *testing.T) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("qemu-io not installed (make test installs it via scripts/deps.sh)")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "t.qcow2")
	mapOf := func() string {
		out, err := exec.Command("qemu-img", "map", "--output=json", img).CombinedOutput()
		if err != nil {
			t.Fatalf("qemu-img map: %v %s", err, out)
		}
		return string(out)
	}
	var before string
	for _, args := range [][]string{
		{"qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=64k", img, "192k"},
		{"qemu-io", "-f", "qcow2", "-c", "write -P 42 0 192k", img},
		{"qemu-io", "-f", "qcow2", "-c", "write -z 64k 64k", img},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
		if before == "" && args[0] == "qemu-io" {
			before = mapOf() // three data clusters, before the middle one becomes zero-alloc
		}
	}
	e := blocktest.NewEnv(t, 0)
	s, err := chain.ParseJSONFilename(`json:{"driver":"qcow2","file":{"driver":"blkdebug","image.filename":"` + img + `",
		"set-state":[{"event":"write_aio","new_state":2}],"inject-error":[{"event":"write_aio","state":2}]}}`)
	if err != nil {
		t.Fatal(err)
	}
	im, err := chain.OpenSpec(e.G, s, chain.Options{Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.Node.WriteAt([]byte(strings.Repeat("*", 192<<10)), 0); err != nil {
		t.Errorf("write of 192k over data, zero-alloc, data: %v (more than one host write?)", err)
	}
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	if after := mapOf(); after != before {
		t.Errorf("host clusters not reused in place:\nbefore %s\nafter  %s", before, after)
	}
}
