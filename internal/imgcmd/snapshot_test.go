package imgcmd

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// Tests for `ringblk snapshot` with qemu-img snapshot 7.2 as the oracle:
// the -l table byte for byte, and images handed back and forth.

// snapOurs runs `ringblk snapshot args…`; it fails the test unless the
// exit code is want.
func snapOurs(t *testing.T, want int, args ...string) (stdout, stderr string) {
	t.Helper()
	out, errs, code := clitest.Ours(Snapshot, args...)
	if code != want {
		t.Fatalf("ringblk snapshot %q: exit %d, want %d\nstdout %q\nstderr %q", args, code, want, out, errs)
	}
	return out, errs
}

// qemuPattern fails the test unless qemu-io reads pattern p at [off, off+n).
func qemuPattern(t *testing.T, img string, p byte, off, n int64) {
	t.Helper()
	cmd := "read -P " + itoa(int64(p)) + " " + itoa(off) + " " + itoa(n)
	out := clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", cmd, img)
	if strings.Contains(out, "fail") {
		t.Fatalf("qemu-io %q on %s: %s", cmd, img, out)
	}
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

// TestSnapshotListMatchesQemu: `snapshot -l` prints exactly what
// `qemu-img snapshot -l` prints, for snapshots made by either tool, long
// names and IDs that push the columns, an entry without extra data (no
// icount column) and an image without snapshots (no output at all).
func TestSnapshotListMatchesQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "4M")
	for _, args := range [][]string{nil, {"-U"}} {
		out, _ := snapOurs(t, 0, append(args, "-l", "a.qcow2")...)
		want, code := clitest.Qemu(t, "qemu-img", append(append([]string{"snapshot"}, args...), "-l", "a.qcow2")...)
		if code != 0 || out != want || out != "" {
			t.Errorf("empty list %v: ours %q, qemu-img %q (exit %d)", args, out, want, code)
		}
	}
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", "a.qcow2")
	snapOurs(t, 0, "-c", "first", "a.qcow2")
	clitest.MustQemu(t, "qemu-img", "snapshot", "-c", "by-qemu", "a.qcow2")
	snapOurs(t, 0, "-q", "-c", "a-rather-long-snapshot-name-past-the-column", "a.qcow2")
	snapOurs(t, 0, "-c", "", "a.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "1M")
	clitest.MustQemu(t, "qemu-img", "snapshot", "-c", "old", "v2.qcow2")
	stripExtraData(t, "v2.qcow2")
	snapOurs(t, 0, "-c", "new", "v2.qcow2")
	for _, img := range []string{"a.qcow2", "v2.qcow2"} {
		for _, args := range [][]string{{"-l"}, {"-U", "-l"}, {"-q", "-l"}} {
			a := append(args, img)
			out, _ := snapOurs(t, 0, a...)
			want, code := clitest.Qemu(t, "qemu-img", append([]string{"snapshot"}, a...)...)
			if code != 0 || out != want {
				t.Errorf("snapshot %v:\nours:\n%s\nqemu-img (exit %d):\n%s", a, out, code, want)
			}
			if !strings.HasPrefix(out, "Snapshot list:\nID        TAG") {
				t.Errorf("snapshot %v: no table header in %q", a, out)
			}
		}
	}
	// The v2 entry without extra data has no icount: its row ends in an
	// empty 11-wide column.
	out, _ := snapOurs(t, 0, "-l", "v2.qcow2")
	lines := strings.Split(out, "\n")
	if len(lines) < 4 || !strings.HasPrefix(lines[2], "1 ") || !strings.HasSuffix(lines[2], ".000"+strings.Repeat(" ", 11)) {
		t.Errorf("v2 entry without extra data should end in an empty ICOUNT column: %q", out)
	}
}

// stripExtraData rewrites img's snapshot table in place with no extra data
// in any entry, as QEMU before 1.1 wrote it.
func stripExtraData(t *testing.T, img string) {
	t.Helper()
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	im, err := format.ReadImage(f, int64(len(b)), format.Options{})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	snaps := append([]format.Snapshot(nil), im.Snapshots...)
	for i := range snaps {
		snaps[i].ExtraDataSize, snaps[i].DiskSize, snaps[i].Icount, snaps[i].ExtraUnknown = 0, 0, 0, nil
	}
	tb, err := format.AppendSnapshotTable(nil, snaps)
	if err != nil {
		t.Fatal(err)
	}
	off := int64(im.Header.SnapshotsOffset)
	clear(b[off : off+im.SnapshotTableSize])
	copy(b[off:], tb)
	if err := os.WriteFile(img, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestSnapshotCommandInterop: images move between the tools. ringblk
// creates, qemu-img lists and applies; qemu-img creates, ringblk applies
// and deletes; qemu-io checks the content and qemu-img check stays clean
// (exit 0: no leaks either) after every step.
func TestSnapshotCommandInterop(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	for _, opts := range []string{"cluster_size=65536", "compat=0.10", "cluster_size=4096,refcount_bits=4"} {
		t.Run(opts, func(t *testing.T) {
			clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, "i.qcow2", "2M")
			clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x31 0 1M", "i.qcow2")
			snapOurs(t, 0, "-c", "ours", "i.qcow2")
			clitest.MustQemu(t, "qemu-img", "check", "i.qcow2")
			clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x32 64k 512k", "i.qcow2")
			if out := clitest.MustQemu(t, "qemu-img", "snapshot", "-l", "i.qcow2"); !strings.Contains(out, " ours ") {
				t.Fatalf("qemu-img does not list the snapshot:\n%s", out)
			}
			clitest.MustQemu(t, "qemu-img", "snapshot", "-a", "ours", "i.qcow2")
			clitest.MustQemu(t, "qemu-img", "check", "i.qcow2")
			qemuPattern(t, "i.qcow2", 0x31, 0, 1<<20)

			clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 256k", "i.qcow2")
			clitest.MustQemu(t, "qemu-img", "snapshot", "-c", "theirs", "i.qcow2")
			clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x34 0 2M", "i.qcow2")
			snapOurs(t, 0, "-a", "theirs", "i.qcow2")
			clitest.MustQemu(t, "qemu-img", "check", "i.qcow2")
			qemuPattern(t, "i.qcow2", 0x33, 0, 256<<10)
			qemuPattern(t, "i.qcow2", 0x31, 256<<10, 768<<10)
			qemuPattern(t, "i.qcow2", 0, 1<<20, 1<<20)
			snapOurs(t, 0, "-d", "ours", "i.qcow2")
			snapOurs(t, 0, "-d", "theirs", "i.qcow2")
			clitest.MustQemu(t, "qemu-img", "check", "i.qcow2")
			if out, _ := snapOurs(t, 0, "-l", "i.qcow2"); out != "" {
				t.Errorf("snapshots left: %q", out)
			}
			qemuPattern(t, "i.qcow2", 0x33, 0, 256<<10)
			os.Remove("i.qcow2")
		})
	}
}

// TestSnapshotCommandErrors: mistakes and refusals are one "ringblk: …"
// line naming the cause, with qemu-img's exit code for the same command
// line where qemu-img accepts its syntax.
func TestSnapshotCommandErrors(t *testing.T) {
	clitest.NeedQemu(t)
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "s.qcow2", "1M")
	clitest.MustQemu(t, "qemu-img", "snapshot", "-c", "one", "s.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "r.raw", "1M")
	// An overlay whose backing file is gone: qemu-img snapshot opens the
	// chain, and so do we.
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "gone.qcow2", "1M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "gone.qcow2", "-F", "qcow2", "ov.qcow2")
	if err := os.Remove("gone.qcow2"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
		qemu bool // qemu-img takes the same arguments: compare exit codes
	}{
		{[]string{"-a", "nope", "s.qcow2"}, "Could not apply snapshot 'nope'", true},
		{[]string{"-d", "nope", "s.qcow2"}, "Could not delete snapshot 'nope': snapshot not found", true},
		{[]string{"-c", "one", "s.qcow2"}, "Could not create snapshot 'one'", false},
		{[]string{"-a", "x", "-d", "y", "s.qcow2"}, "Cannot mix", true},
		{[]string{"-l", "-l", "s.qcow2"}, "Cannot mix", true},
		{[]string{"-l"}, "Expecting one image file name", true},
		{[]string{"-l", "s.qcow2", "r.raw"}, "Expecting one image file name", true},
		{[]string{"-c"}, "'c'", true},
		{[]string{"-x", "s.qcow2"}, "'x'", true},
		{[]string{"-l", "missing.qcow2"}, "'missing.qcow2'", true},
		{[]string{"-U", "-c", "two", "s.qcow2"}, "force-share=on can only be used with read-only images", true},
		{[]string{"-a", "x", "r.raw"}, "Could not apply snapshot 'x'", true},
		{[]string{"-d", "x", "r.raw"}, "Could not delete snapshot 'x'", true},
		{[]string{"-c", "x", "r.raw"}, "Could not create snapshot 'x'", true},
		{[]string{"-f", "vdi", "-l", "s.qcow2"}, "'vdi'", false},
		{[]string{"-l", "ov.qcow2"}, "Could not open 'ov.qcow2'", true},
		{[]string{"-c", "x", "ov.qcow2"}, "Could not open 'ov.qcow2'", true},
	} {
		before, _ := os.ReadFile("s.qcow2")
		out, stderr, code := clitest.Ours(Snapshot, tc.args...)
		lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
		if code != 1 || out != "" || len(lines) != 1 || !strings.HasPrefix(stderr, "ringblk: ") || !strings.Contains(stderr, tc.want) {
			t.Errorf("snapshot %q: exit %d, stdout %q, stderr %q (want one line with %q, exit 1)", tc.args, code, out, stderr, tc.want)
		}
		if after, _ := os.ReadFile("s.qcow2"); string(after) != string(before) {
			t.Errorf("snapshot %q changed the image", tc.args)
		}
		if tc.qemu {
			_, qcode := clitest.Qemu(t, "qemu-img", append([]string{"snapshot"}, tc.args...)...)
			if qcode != code {
				t.Errorf("snapshot %q: exit %d, qemu-img exits %d", tc.args, code, qcode)
			}
		}
	}
	// Without an action the image is opened and nothing happens, as in
	// qemu-img.
	before, _ := os.ReadFile("s.qcow2")
	if out, stderr, code := clitest.Ours(Snapshot, "s.qcow2"); code != 0 || out != "" || stderr != "" {
		t.Errorf("no action: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	if after, _ := os.ReadFile("s.qcow2"); string(after) != string(before) {
		t.Error("no action changed the image")
	}
	// Raw images have no snapshots to list: nothing printed, exit 0.
	if out, _ := snapOurs(t, 0, "-l", "r.raw"); out != "" {
		t.Errorf("raw -l printed %q", out)
	}
	for _, h := range []string{"--help", "-h"} {
		out, stderr, code := clitest.Ours(Snapshot, h)
		if code != 0 || !strings.HasPrefix(out, "usage: ringblk snapshot") || stderr != "" {
			t.Errorf("snapshot %s: exit %d, stdout %q, stderr %q", h, code, out, stderr)
		}
	}
}

// TestSnapshotDeleteFreeFailure: when freeing a deleted snapshot's
// clusters fails (blkdebug fails every request after the first
// cluster_free), snapshot -d reports it as qemu-img does, the free's own
// line first, and the image only leaks clusters (iotest 217).
func TestSnapshotDeleteFreeFailure(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "t.qcow2", "64M")
	clitest.MustQemu(t, "qemu-io", "-c", "write 0 64k", "t.qcow2")
	clitest.MustQemu(t, "qemu-img", "snapshot", "-c", "foo", "t.qcow2")
	if err := os.WriteFile("blkdebug.conf", []byte("[inject-error]\nevent = \"cluster_free\"\nerrno = \"5\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := clitest.Ours(Snapshot, "-d", "foo", "blkdebug:blkdebug.conf:t.qcow2")
	want := "qcow2_free_clusters failed: Input/output error\nringblk: Could not delete snapshot 'foo': Failed to free the cluster and L1 table: Input/output error\n"
	if code != 1 || errOut != want {
		t.Errorf("snapshot -d with a failing free: exit %d, stderr %q; want 1, %q", code, errOut, want)
	}
	out, code := clitest.Qemu(t, "qemu-img", "check", "t.qcow2")
	if code != 3 || !strings.Contains(out, "leaked clusters were found") || strings.Contains(out, "ERROR") {
		t.Errorf("check after the failed delete: exit %d (want 3, leaks only):\n%s", code, out)
	}
}
