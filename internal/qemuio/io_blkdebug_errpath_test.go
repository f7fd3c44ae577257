package qemuio

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli"
	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// qcow2 error paths under blkdebug, qemu-io 7.2 as the oracle (the shape
// of iotest 026): an inject-error rule on one qcow2 debug event, a write
// with --cache writethrough (the write is followed by the node's flush, so
// metadata written at a flush fails the write), then the close. stdout,
// stderr and `qemu-img check`'s verdict (leaks aside) must agree.

type errPathCase struct {
	event   string
	errno   int
	once    bool
	vmstate bool   // write -b
	cluster int    // cluster size (1024 when 0)
	length  string // the write's length (128k when "")
}

func (c errPathCase) String() string {
	s := fmt.Sprintf("%s/errno%d/once=%v", c.event, c.errno, c.once)
	if c.vmstate {
		s += "/-b"
	}
	return s
}

// runErrPath runs c with qemu-io (prog "qemu") or in process (as the
// qemu-io drop-in) and returns the normalised output and check lines.
func runErrPath(t *testing.T, dir string, c errPathCase, prog string) (out []string, check string) {
	t.Helper()
	d := filepath.Join(dir, strings.ReplaceAll(c.String(), "/", "_")+"-"+prog)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	once := "off"
	if c.once {
		once = "on"
	}
	conf := filepath.Join(d, "blkdebug.conf")
	rule := fmt.Sprintf("[inject-error]\nevent = \"%s\"\nerrno = \"%d\"\nimmediately = \"off\"\nonce = \"%s\"\n", c.event, c.errno, once)
	if err := os.WriteFile(conf, []byte(rule), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(d, "t.qcow2")
	cs := c.cluster
	if cs == 0 {
		cs = 1024
	}
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", fmt.Sprintf("cluster_size=%d", cs), img, "1G")
	b := ""
	if c.vmstate {
		b = "-b "
	}
	n := c.length
	if n == "" {
		n = "128k"
	}
	run := func(args ...string) (string, string) {
		if prog == "qemu" {
			o, e, _ := clitest.QemuIO(t, args...)
			return o, e
		}
		saved := cli.Prog
		cli.Prog = "qemu-io"
		defer func() { cli.Prog = saved }()
		o, e, _ := ioRun("", args...)
		return o, e
	}
	if c.event == "l2_update" {
		// As 026: an L2 table exists, so the write updates it.
		run("--cache", "writethrough", "-f", "qcow2", "-c", "write "+b+"0 512", img)
	}
	o, e := run("--cache", "writethrough", "-f", "qcow2", "-c", "write "+b+"0 "+n, "blkdebug:"+conf+":"+img)
	out = append(normIO(e), normIO(o)...)
	out = slices.DeleteFunc(out, func(l string) bool { return l == "" })
	co, code := clitest.Qemu(t, "qemu-img", "check", img)
	if code == 3 {
		// As 026's _check_test_img_ignore_leaks: leaks alone pass.
		return out, "No errors were found on the image."
	}
	var keep []string
	for _, l := range strings.Split(co, "\n") {
		if strings.HasPrefix(l, "Image end offset") || strings.Contains(l, "fragmented") || l == "" {
			continue
		}
		keep = append(keep, l)
	}
	return out, strings.Join(keep, "\n")
}

func checkErrPathCases(t *testing.T, cases []errPathCase) {
	clitest.NeedQemu(t, "qemu-io")
	dir := t.TempDir()
	for _, c := range cases {
		wo, wc := runErrPath(t, dir, c, "qemu")
		go_, gc := runErrPath(t, dir, c, "ours")
		if !slices.Equal(wo, go_) {
			t.Errorf("%v: qemu-io's output\n  %s\nours\n  %s", c, strings.Join(wo, "\n  "), strings.Join(go_, "\n  "))
		}
		if wc != gc {
			t.Errorf("%v: check after qemu-io\n%s\nafter ours\n%s", c, wc, gc)
		}
		os.RemoveAll(dir) // the images of the next case only
		os.MkdirAll(dir, 0o755)
	}
}

// TestIOErrPathVMStateWritethrough: `write -b` in writethrough mode is
// followed by the node's flush, as qemu-io's (blk_save_vmstate flushes
// when the device's write cache is off), so metadata written at that
// flush fails the write, not the close.
func TestIOErrPathVMStateWritethrough(t *testing.T) {
	checkErrPathCases(t, []errPathCase{
		{event: "l1_update", errno: 5, once: true, vmstate: true},
		{event: "l2_update", errno: 28, once: true, vmstate: true},
	})
}

// TestIOErrPathCloseWriteBack: with a rule that fails every request
// (once=off), the close's metadata write-back fails too; the qemu-io
// drop-in words it as qemu-io (one line per cache flush that failed).
func TestIOErrPathCloseWriteBack(t *testing.T) {
	checkErrPathCases(t, []errPathCase{
		{event: "l1_update", errno: 5, once: false},
		{event: "l2_update", errno: 28, once: false, vmstate: true},
		{event: "write_aio", errno: 5, once: false},
	})
}

// TestIOErrPathMetadataEvents: the events QEMU raises when it writes a new
// L2 table (l2_alloc_write) and around every refcount change
// (refblock_alloc, refblock_load) are raised by ringblk right before the
// corresponding write-back, so the injected error fails the same request.
func TestIOErrPathMetadataEvents(t *testing.T) {
	var cases []errPathCase
	for _, ev := range []string{"l2_alloc_write", "refblock_load", "refblock_alloc"} {
		for _, once := range []bool{true, false} {
			cases = append(cases, errPathCase{event: ev, errno: 5, once: once})
		}
	}
	cases = append(cases, errPathCase{event: "l2_alloc_write", errno: 28, once: false, vmstate: true})
	checkErrPathCases(t, cases)
}

// TestIOErrPathGrowthEvents: the steps of growing the L1 table (a VM
// state past the disk) and the refcount table (512-byte clusters, more
// than the first table covers) raise QEMU's events before their writes,
// and a failed L1 growth gives the new table's clusters back, so a
// failing close reports them as qemu-io's does.
func TestIOErrPathGrowthEvents(t *testing.T) {
	var cases []errPathCase
	for _, ev := range []string{"l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table"} {
		for _, once := range []bool{true, false} {
			cases = append(cases, errPathCase{event: ev, errno: 5, once: once, vmstate: true, length: "64k"})
		}
	}
	for _, ev := range []string{"refblock_alloc_write_blocks", "refblock_alloc_write_table", "refblock_alloc_switch_table"} {
		for _, once := range []bool{true, false} {
			cases = append(cases, errPathCase{event: ev, errno: 28, once: once, cluster: 512, length: "16M"})
		}
	}
	checkErrPathCases(t, cases)
}
