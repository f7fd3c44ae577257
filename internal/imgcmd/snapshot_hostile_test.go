package imgcmd

import (
	"encoding/binary"
	"os"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// Snapshot tables as hostile input (issue 22; QEMU 7.2's iotests 261 and
// 080): qemu-img and ringblk named qemu-img run the same commands on two
// copies of one damaged image and must print the same, exit the same and
// leave images qemu-img check finds alike.

func patchFile(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// sameAsQemu runs args (with the image name last) on theirs with
// qemu-img and on ours as ringblk named qemu-img, and compares.
func sameAsQemu(t *testing.T, theirs, ours string, args ...string) {
	t.Helper()
	qout, qerr, qcode := qemuAll(t, "qemu-img", append(args, theirs)...)
	out, errs, code := runAsQemuImg(t, append(args, ours)...)
	out, errs = strings.ReplaceAll(out, ours, theirs), strings.ReplaceAll(errs, ours, theirs)
	if code != qcode || out != qout || errs != qerr {
		t.Errorf("%v: exit %d, qemu-img %d\nours:\n%s%s\nqemu-img:\n%s%s", args, code, qcode, out, errs, qout, qerr)
	}
}

// TestSnapshotTableRepairMatchesQemu: tables a normal open refuses, which
// `check -r all` repairs (iotest 261): too much extra data in an entry
// (the entry's bytes spill into a cluster without a refcount, so the
// repair also rebuilds the refcount structure), and more than 65536
// entries.
func TestSnapshotTableRepairMatchesQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	cases := []struct {
		name string
		make func(t *testing.T, path string)
	}{
		{"extra-data", func(t *testing.T, p string) {
			clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "64M")
			clitest.MustQemu(t, "qemu-io", "-c", "write -P 0x5a 0 64k", p)
			clitest.MustQemu(t, "qemu-img", "snapshot", "-c", "sn0", p)
			clitest.MustQemu(t, "qemu-img", "snapshot", "-c", "sn1", p)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			tab := int64(binary.BigEndian.Uint64(b[64:]))
			// Entry 1 follows entry 0 (40 + 24 + "1" + "sn0", aligned).
			patchFile(t, p, tab+72+36, be32(0x10000))
		}},
		{"too-many", func(t *testing.T, p string) {
			clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", p, "64M")
			// 65537 all-zero entries at 1 MiB (valid in version 2), their
			// clusters counted in refcount block 0 (at 0x20000).
			const n = 65537
			end := int64(1<<20 + 40*n)
			if err := os.Truncate(p, end); err != nil {
				t.Fatal(err)
			}
			for c := int64(16); c*65536 < end; c++ {
				patchFile(t, p, 0x20000+2*c, []byte{0, 1})
			}
			patchFile(t, p, 60, be32(n))
			patchFile(t, p, 64, be64(1<<20))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := c.name + ".qcow2"
			c.make(t, src)
			for _, mode := range [][]string{nil, {"-r", "leaks"}, {"-r", "all"}} {
				theirs, ours := "q-"+src, "o-"+src
				copyFile(t, src, theirs)
				copyFile(t, src, ours)
				sameAsQemu(t, theirs, ours, "info")
				sameAsQemu(t, theirs, ours, append([]string{"check"}, mode...)...)
				// The images afterwards: same check result and snapshot
				// list (a repaired table) for qemu-img.
				a, ae, acode := qemuAll(t, "qemu-img", "check", "--output=json", theirs)
				b, be, bcode := qemuAll(t, "qemu-img", "check", "--output=json", ours)
				if acode != bcode || a != strings.ReplaceAll(b, ours, theirs) || ae != strings.ReplaceAll(be, ours, theirs) {
					t.Errorf("%v: qemu-img check after ours: exit %d %s%s\nafter qemu-img's: exit %d %s%s", mode, bcode, b, be, acode, a, ae)
				}
				if mode != nil && mode[1] == "all" {
					la, _, _ := qemuAll(t, "qemu-img", "snapshot", "-l", theirs)
					lb, _, _ := qemuAll(t, "qemu-img", "snapshot", "-l", ours)
					if la != lb {
						t.Errorf("snapshot list after ours:\n%.2000s\nafter qemu-img's:\n%.2000s", lb, la)
					}
				}
			}
		})
	}
}

// TestSnapshotL1DeferredMatchesQemu: an entry whose L1 table offset is
// unaligned or whose L1 size is too large does not stop the open (iotest
// 080); the operations that need the table fail with QEMU's words, and
// check reports the entry.
func TestSnapshotL1DeferredMatchesQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	for _, c := range []struct {
		name string
		off  int64
		val  []byte
	}{
		{"offset", 0, be64(0x400200)},
		{"size", 8, be32(0x10000000)},
	} {
		t.Run(c.name, func(t *testing.T) {
			src := c.name + ".qcow2"
			clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", src, "64M")
			clitest.MustQemu(t, "qemu-io", "-c", "write 0 512", src)
			clitest.MustQemu(t, "qemu-img", "snapshot", "-c", "test", src)
			patchFile(t, src, 0x70000+c.off, c.val)
			theirs, ours := "q-"+src, "o-"+src
			copyFile(t, src, theirs)
			copyFile(t, src, ours)
			for _, args := range [][]string{
				{"info"},
				{"amend", "-o", "compat=0.10"},
				{"snapshot", "-a", "test"},
				{"snapshot", "-d", "test"},
				{"check"},
			} {
				sameAsQemu(t, theirs, ours, args...)
			}
			qout, qerr, qcode := qemuAll(t, "qemu-img", "convert", "-l", "test", theirs, "q.out")
			out, errs, code := runAsQemuImg(t, "convert", "-l", "test", ours, "o.out")
			if code != qcode || out != qout || errs != qerr {
				t.Errorf("convert -l: exit %d, qemu-img %d\nours: %s%s\nqemu-img: %s%s", code, qcode, out, errs, qout, qerr)
			}
		})
	}
}

// TestSnapshotTablePastEOFMatchesQemu: 65536 entries past the end of the
// file (iotest 080's "hitting snapshot table size limit") open; a new
// snapshot does not fit.
func TestSnapshotTablePastEOFMatchesQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	src := "limit.qcow2"
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", src, "64M")
	patchFile(t, src, 64, be64(16<<20))
	patchFile(t, src, 60, be32(65536))
	theirs, ours := "q-"+src, "o-"+src
	copyFile(t, src, theirs)
	copyFile(t, src, ours)
	sameAsQemu(t, theirs, ours, "snapshot", "-c", "test")
	sameAsQemu(t, theirs, ours, "check")
}

// TestSnapshotPlacementMatchesQemu: snapshot L1 copies and snapshot
// tables go where qemu-img puts them (the first free run of clusters), so
// after the same snapshot commands the table is at the same offset and
// the file has the same size (iotest 261 names those clusters).
func TestSnapshotPlacementMatchesQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "src.qcow2", "64M")
	clitest.MustQemu(t, "qemu-io", "-c", "write 0 64k", "src.qcow2")
	copyFile(t, "src.qcow2", "q.qcow2")
	copyFile(t, "src.qcow2", "o.qcow2")
	for _, args := range [][]string{
		{"snapshot", "-c", "sn0"}, {"snapshot", "-c", "sn1"}, {"snapshot", "-c", "sn2"},
		{"snapshot", "-d", "sn1"}, {"snapshot", "-c", "sn3"},
	} {
		sameAsQemu(t, "q.qcow2", "o.qcow2", args...)
		q, err := os.ReadFile("q.qcow2")
		if err != nil {
			t.Fatal(err)
		}
		o, err := os.ReadFile("o.qcow2")
		if err != nil {
			t.Fatal(err)
		}
		if qt, ot := binary.BigEndian.Uint64(q[64:]), binary.BigEndian.Uint64(o[64:]); qt != ot || len(q) != len(o) {
			t.Errorf("after %v: table at %#x, file %d bytes; qemu-img: %#x, %d bytes", args, ot, len(o), qt, len(q))
		}
	}
	sameAsQemu(t, "q.qcow2", "o.qcow2", "check")
}
