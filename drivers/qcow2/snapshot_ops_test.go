package qcow2

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Snapshot operation tests: QEMU 7.2 is the oracle in both directions
// (qemu-img snapshot -l/-a/-c, qemu-img check, qemu-io read -P,
// qemu-img convert for whole-disk content).

func drv(t *testing.T, n *block.Node) *Driver {
	t.Helper()
	d, ok := n.Driver().(*Driver)
	if !ok {
		t.Fatalf("node driver is %T, not *qcow2.Driver", n.Driver())
	}
	return d
}

// qemuSnapshots lists the snapshots qemu-img info reports.
func qemuSnapshots(t *testing.T, img string) []map[string]any {
	t.Helper()
	var info struct {
		Snapshots   []map[string]any `json:"snapshots"`
		VirtualSize int64            `json:"virtual-size"`
	}
	out := qemuImg(t, "info", "--output=json", "-U", img)
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("qemu-img info json: %v\n%s", err, out)
	}
	return info.Snapshots
}

func qemuVirtualSize(t *testing.T, img string) int64 {
	t.Helper()
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	out := qemuImg(t, "info", "--output=json", "-U", img)
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("qemu-img info json: %v\n%s", err, out)
	}
	return info.VirtualSize
}

func snapNames(t *testing.T, img string) string {
	t.Helper()
	var names []string
	for _, s := range qemuSnapshots(t, img) {
		names = append(names, s["id"].(string)+":"+s["name"].(string))
	}
	return strings.Join(names, ",")
}

// fill returns n bytes of pattern p.
func fill(p byte, n int64) []byte { return bytes.Repeat([]byte{p}, int(n)) }

// TestQcow2SnapshotCreateQemuApplies: content written by qemu-io,
// snapshot created by ringblk, then overwritten by ringblk; qemu-img
// lists the snapshot, check is clean, and qemu-img snapshot -a brings the
// old content back (and a second ringblk snapshot of the new content
// survives that).
func TestQcow2SnapshotCreateQemuApplies(t *testing.T) {
	needQemu(t)
	for _, tc := range []struct{ name, opts string }{
		{"v3", ""},
		{"v3-c4k", "cluster_size=4096"},
		{"v2", "compat=0.10"},
		{"rc64-c512", "cluster_size=512,refcount_bits=64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "a.qcow2")
			qemuCreate(t, img, tc.opts, 4<<20)
			cmds := []string{"write -P 0x11 0 1M", "write -c -P 0x12 2M 128k", "write -P 0x13 3M 64k"}
			if tc.opts != "compat=0.10" {
				cmds = append(cmds, "write -z 3M 4k") // a zero-alloc cluster in v3
			}
			qemuIO(t, img, cmds...)
			before := convertRaw(t, img)

			e := newTestEnv(t)
			n := e.mustOpen(img, false)
			d := drv(t, n)
			date := time.Unix(1700000000, 123456789)
			sn, err := d.CreateSnapshot(SnapshotCreateOptions{Name: "first", Date: date})
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			if sn.ID != "1" || sn.Name != "first" || sn.DiskSize != 4<<20 || sn.DateSec != 1700000000 || sn.DateNsec != 123456000 {
				t.Errorf("snapshot entry %+v", sn)
			}
			ref := append([]byte(nil), before...)
			writeWorkload(t, n, ref, 11, 60, d.mu.geo.ClusterSize())
			if _, err := n.WriteAt(fill(0x21, 512<<10), 256<<10); err != nil {
				t.Fatal(err)
			}
			copy(ref[256<<10:], fill(0x21, 512<<10))
			if _, err := d.CreateSnapshot(SnapshotCreateOptions{Name: "second"}); err != nil {
				t.Fatalf("create second: %v", err)
			}
			if got := len(d.Snapshots()); got != 2 {
				t.Fatalf("Snapshots() has %d entries, want 2", got)
			}
			checkSame(t, readAll(t, n, 1<<20), ref)
			n.Unref()

			if got := snapNames(t, img); got != "1:first,2:second" {
				t.Fatalf("qemu-img lists %q", got)
			}
			qs := qemuSnapshots(t, img)
			if qs[0]["date-sec"].(float64) != 1700000000 || qs[0]["date-nsec"].(float64) != 123456000 {
				t.Errorf("qemu-img sees date %v.%v", qs[0]["date-sec"], qs[0]["date-nsec"])
			}
			qemuCheck(t, img)
			qemuCompare(t, img, ref)
			qemuImg(t, "snapshot", "-a", "first", img)
			qemuCheck(t, img)
			checkSame(t, convertRaw(t, img), before)
			qemuImg(t, "snapshot", "-a", "second", img)
			qemuCheck(t, img)
			checkSame(t, convertRaw(t, img), ref)
		})
	}
}

// TestQcow2SnapshotQemuCreatedApplyDelete: snapshots made by qemu-img
// snapshot -c, applied and deleted by ringblk; check is clean after each
// step (no leaks after the delete), the content is the snapshot's, read
// through ringblk and through qemu-io.
func TestQcow2SnapshotQemuCreatedApplyDelete(t *testing.T) {
	needQemu(t)
	for _, opts := range []string{"", "compat=0.10", "cluster_size=4096,refcount_bits=8"} {
		t.Run("opts="+opts, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "q.qcow2")
			qemuCreate(t, img, opts, 2<<20)
			qemuIO(t, img, "write -P 0x41 0 768k", "write -c -P 0x42 1M 64k")
			qemuImg(t, "snapshot", "-c", "q1", img)
			old := convertRaw(t, img)
			qemuIO(t, img, "write -P 0x43 128k 1M", "write -P 0x44 1536k 64k")
			qemuImg(t, "snapshot", "-c", "q2", img)
			qemuIO(t, img, "write -P 0x45 0 64k")
			cur := convertRaw(t, img)

			e := newTestEnv(t)
			n := e.mustOpen(img, false)
			d := drv(t, n)
			if err := d.ApplySnapshot("q1"); err != nil {
				t.Fatalf("apply: %v", err)
			}
			checkSame(t, readAll(t, n, 256<<10), old)
			n.Unref()
			qemuCheck(t, img)
			qemuIO(t, img, "read -P 0x41 0 768k", "read -P 0x42 1M 64k")
			checkSame(t, convertRaw(t, img), old)

			n = e.mustOpen(img, false)
			d = drv(t, n)
			if err := d.DeleteSnapshot("q1"); err != nil {
				t.Fatalf("delete q1: %v", err)
			}
			// Delete by ID.
			if err := d.DeleteSnapshot("2"); err != nil {
				t.Fatalf("delete 2: %v", err)
			}
			if s := d.Snapshots(); len(s) != 0 {
				t.Errorf("snapshots left: %+v", s)
			}
			checkSame(t, readAll(t, n, 256<<10), old)
			// Every cluster is now COPIED again: writes go in place.
			if _, err := n.WriteAt(fill(0x46, 4096), 0); err != nil {
				t.Fatal(err)
			}
			copy(old, fill(0x46, 4096))
			n.Unref()
			qemuCheck(t, img)
			if got := snapNames(t, img); got != "" {
				t.Errorf("qemu-img still lists %q", got)
			}
			checkSame(t, convertRaw(t, img), old)
			_ = cur
		})
	}
}

// TestQcow2SnapshotRoundTrip: create → write → apply → delete cycles on a
// ringblk image, with qemu-img check clean and the content checked through
// ringblk and qemu-io after every step, and image sizes that change
// between snapshots (apply restores the snapshot's disk size).
func TestQcow2SnapshotRoundTrip(t *testing.T) {
	needQemu(t)
	img := filepath.Join(t.TempDir(), "r.qcow2")
	qemuCreate(t, img, "cluster_size=4096", 1<<20)
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	d := drv(t, n)
	ref := make([]byte, 1<<20)
	writeWorkload(t, n, ref, 3, 40, 4096)
	if _, err := d.CreateSnapshot(SnapshotCreateOptions{Name: "small"}); err != nil {
		t.Fatal(err)
	}
	small := append([]byte(nil), ref...)
	if err := n.Truncate(3 << 20); err != nil {
		t.Fatal(err)
	}
	ref = append(ref, make([]byte, 2<<20)...)
	writeWorkload(t, n, ref, 4, 60, 4096)
	if _, err := d.CreateSnapshot(SnapshotCreateOptions{Name: "big"}); err != nil {
		t.Fatal(err)
	}
	big := append([]byte(nil), ref...)
	writeWorkload(t, n, ref, 5, 30, 4096)
	latest := append([]byte(nil), ref...)
	if _, err := d.CreateSnapshot(SnapshotCreateOptions{Name: "latest"}); err != nil {
		t.Fatal(err)
	}

	for _, step := range []struct {
		apply string
		want  []byte
	}{{"small", small}, {"big", big}, {"3", latest}, {"1", small}} {
		if err := d.ApplySnapshot(step.apply); err != nil {
			t.Fatalf("apply %s: %v", step.apply, err)
		}
		if sz, _ := n.Length(); sz != int64(len(step.want)) {
			t.Fatalf("after apply %s: size %d, want %d", step.apply, sz, len(step.want))
		}
		checkSame(t, readAll(t, n, 512<<10), step.want)
		if err := n.Flush(); err != nil {
			t.Fatal(err)
		}
		if res, err := n.Check(0); err != nil || res.Corruptions != 0 || res.Leaks != 0 {
			t.Fatalf("after apply %s: check %+v %v", step.apply, res, err)
		}
	}
	// Writes after an apply must not leak into the snapshot.
	ref = append([]byte(nil), small...)
	writeWorkload(t, n, ref, 6, 40, 4096)
	if err := d.DeleteSnapshot("big"); err != nil {
		t.Fatal(err)
	}
	n.Unref()
	qemuCheck(t, img)
	if got := qemuVirtualSize(t, img); got != 1<<20 {
		t.Errorf("qemu-img virtual size %d", got)
	}
	qemuCompare(t, img, ref)
	if got := snapNames(t, img); got != "1:small,3:latest" {
		t.Errorf("qemu-img lists %q", got)
	}
	qemuImg(t, "snapshot", "-a", "latest", img)
	qemuCheck(t, img)
	checkSame(t, convertRaw(t, img), latest)
	qemuImg(t, "snapshot", "-a", "small", img)
	checkSame(t, convertRaw(t, img), small)

	// The next ID follows the largest one, as in QEMU.
	n = e.mustOpen(img, false)
	sn, err := drv(t, n).CreateSnapshot(SnapshotCreateOptions{Name: "again"})
	if err != nil {
		t.Fatal(err)
	}
	if sn.ID != "4" {
		t.Errorf("new ID %q, want 4", sn.ID)
	}
	if err := drv(t, n).DeleteSnapshot("small"); err != nil {
		t.Fatal(err)
	}
	if err := drv(t, n).DeleteSnapshot("latest"); err != nil {
		t.Fatal(err)
	}
	if err := drv(t, n).DeleteSnapshot("again"); err != nil {
		t.Fatal(err)
	}
	n.Unref()
	qemuCheck(t, img)
	checkSame(t, convertRaw(t, img), small)
	if off := readHeader(t, img).SnapshotsOffset; off != 0 {
		t.Errorf("snapshots_offset %#x after deleting every snapshot, want 0 as QEMU writes", off)
	}
}

func readHeader(t *testing.T, img string) *format.Header {
	t.Helper()
	im, err := openFile(t, img, format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return im.Header
}

// TestQcow2SnapshotErrors: duplicate names and IDs, unknown snapshots and
// read-only nodes are refused with errors naming the problem, and leave
// the image unchanged and clean.
func TestQcow2SnapshotErrors(t *testing.T) {
	needQemu(t)
	img := filepath.Join(t.TempDir(), "e.qcow2")
	qemuCreate(t, img, "", 1<<20)
	qemuIO(t, img, "write -P 0x51 0 128k")
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	d := drv(t, n)
	if _, err := d.CreateSnapshot(SnapshotCreateOptions{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(img)
	_, err := d.CreateSnapshot(SnapshotCreateOptions{Name: "a"})
	if !errors.Is(err, ErrSnapshotExists) || !strings.Contains(err.Error(), "'a'") {
		t.Errorf("duplicate name: %v", err)
	}
	_, err = d.CreateSnapshot(SnapshotCreateOptions{Name: "b", ID: "1"})
	if !errors.Is(err, ErrSnapshotExists) || !strings.Contains(err.Error(), "ID 1") {
		t.Errorf("duplicate ID: %v", err)
	}
	_, err = d.CreateSnapshot(SnapshotCreateOptions{Name: "nul\x00"})
	if !errors.Is(err, format.ErrRange) {
		t.Errorf("NUL in name: %v", err)
	}
	for _, f := range []func(string) error{d.ApplySnapshot, d.DeleteSnapshot} {
		err := f("nope")
		var se *SnapshotError
		if !errors.Is(err, ErrSnapshotNotFound) || !errors.As(err, &se) || se.Snapshot != "nope" {
			t.Errorf("unknown snapshot: %v", err)
		}
	}
	if st2, _ := os.Stat(img); st2.Size() != st.Size() {
		t.Errorf("file grew from %d to %d on refused operations", st.Size(), st2.Size())
	}
	n.Unref()
	qemuCheck(t, img)
	if got := snapNames(t, img); got != "1:a" {
		t.Errorf("qemu-img lists %q", got)
	}

	ro := e.mustOpen(img, true)
	dro := drv(t, ro)
	if len(dro.Snapshots()) != 1 {
		t.Errorf("read-only Snapshots() = %+v", dro.Snapshots())
	}
	_, err = dro.CreateSnapshot(SnapshotCreateOptions{Name: "x"})
	var be *block.Error
	if !errors.As(err, &be) || be.Kind != block.Unsupported || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("create on a read-only node: %v", err)
	}
	if err := dro.DeleteSnapshot("a"); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("delete on a read-only node: %v", err)
	}
	if err := dro.ApplySnapshot("a"); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("apply on a read-only node: %v", err)
	}
	ro.Unref()
	qemuCheck(t, img)
}

// TestQcow2SnapshotRefcountOverflow: with refcount_bits=1 no cluster can
// be shared, so creating a snapshot must fail (ErrLimit and
// ErrRefcountOverflow) and leave the image as it was but for the new L1
// table, left allocated and unreferenced as QEMU 7.2 leaves it (iotest
// 112): every increment taken back, qemu-img check finds one leak only.
func TestQcow2SnapshotRefcountOverflow(t *testing.T) {
	needQemu(t)
	img := filepath.Join(t.TempDir(), "rc1.qcow2")
	qemuCreate(t, img, "refcount_bits=1", 1<<20)
	qemuIO(t, img, "write -P 0x61 0 256k")
	before := convertRaw(t, img)
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	_, err := drv(t, n).CreateSnapshot(SnapshotCreateOptions{Name: "x"})
	if !errors.Is(err, format.ErrLimit) || !errors.Is(err, ErrRefcountOverflow) || !strings.Contains(err.Error(), "overflow") {
		t.Errorf("create with refcount_bits=1: %v", err)
	}
	if len(drv(t, n).Snapshots()) != 0 {
		t.Error("a snapshot was recorded")
	}
	// The image still works: an in-place write.
	if _, err := n.WriteAt(fill(0x62, 4096), 0); err != nil {
		t.Fatal(err)
	}
	copy(before, fill(0x62, 4096))
	n.Unref()
	if q := qemuCheckResult(t, img); q.Corruptions != 0 || q.CheckErrors != 0 || q.Leaks != 1 {
		t.Errorf("qemu-img check after the refused snapshot: %+v, want the L1 table's one leak", q)
	}
	checkSame(t, convertRaw(t, img), before)
}

// TestQcow2SnapshotV2NoExtraData: a version 2 image whose snapshot entry
// has no extra data (as pre-1.1 QEMU wrote them): ringblk applies it
// (taking the current size as its disk size, QEMU's rule), adds a
// snapshot of its own and deletes the old one; QEMU's view stays clean
// and the table it reads back has the fields QEMU would write.
func TestQcow2SnapshotV2NoExtraData(t *testing.T) {
	needQemu(t)
	img := filepath.Join(t.TempDir(), "v2.qcow2")
	qemuCreate(t, img, "compat=0.10", 1<<20)
	qemuIO(t, img, "write -P 0x71 0 192k")
	qemuImg(t, "snapshot", "-c", "old", img)
	snapData := convertRaw(t, img)
	qemuIO(t, img, "write -P 0x72 64k 64k")

	// Rewrite the table in place with extra_data_size 0.
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	im := openBytes(t, b, format.Options{})
	snaps := append([]format.Snapshot(nil), im.Snapshots...)
	snaps[0].ExtraDataSize, snaps[0].DiskSize, snaps[0].Icount = 0, 0, 0
	tb, err := format.AppendSnapshotTable(nil, snaps)
	if err != nil {
		t.Fatal(err)
	}
	off := im.Header.SnapshotsOffset
	copy(b[off:off+uint64(im.SnapshotTableSize)], make([]byte, im.SnapshotTableSize))
	copy(b[off:], tb)
	if err := os.WriteFile(img, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if im2 := openBytes(t, b, format.Options{}); im2.Snapshots[0].ExtraDataSize != 0 {
		t.Fatal("table rewrite did not take")
	}
	qemuCheck(t, img)

	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	d := drv(t, n)
	if err := d.ApplySnapshot("old"); err != nil {
		t.Fatalf("apply: %v", err)
	}
	checkSame(t, readAll(t, n, 1<<20), snapData)
	if _, err := d.CreateSnapshot(SnapshotCreateOptions{Name: "new"}); err != nil {
		t.Fatalf("create: %v", err)
	}
	// QEMU refuses to resize a version 2 image with snapshots (applying
	// a snapshot of another size would need it): so do we.
	if err := n.Truncate(2 << 20); !errors.Is(err, format.ErrUnsupported) || !strings.Contains(err.Error(), "version 2") {
		t.Errorf("resize of a v2 image with snapshots: %v", err)
	}
	if err := d.DeleteSnapshot("old"); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := n.WriteAt(fill(0x73, 4096), 0); err != nil {
		t.Fatal(err)
	}
	n.Unref()
	qemuCheck(t, img)
	if h := readHeader(t, img); h.Version != 2 {
		t.Errorf("version %d after the snapshot operations", h.Version)
	}
	qs := qemuSnapshots(t, img)
	if len(qs) != 1 || qs[0]["name"] != "new" || qs[0]["id"] != "2" {
		t.Fatalf("qemu-img lists %v", qs)
	}
	qemuImg(t, "snapshot", "-a", "new", img)
	checkSame(t, convertRaw(t, img), snapData)
}

// TestQcow2SnapshotTableMatchesQemu: the entry ringblk writes for a new
// snapshot has the layout qemu-img 7.2 writes (24 bytes of extra data,
// vm_state_size 0, the disk size, icount as qemu-img records it), so
// qemu-img info reports the same fields for both.
func TestQcow2SnapshotTableMatchesQemu(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	ours, theirs := filepath.Join(dir, "ours.qcow2"), filepath.Join(dir, "theirs.qcow2")
	for _, img := range []string{ours, theirs} {
		qemuCreate(t, img, "", 3<<20)
	}
	qemuImg(t, "snapshot", "-c", "s", theirs)
	e := newTestEnv(t)
	n := e.mustOpen(ours, false)
	if _, err := drv(t, n).CreateSnapshot(SnapshotCreateOptions{Name: "s"}); err != nil {
		t.Fatal(err)
	}
	n.Unref()
	a, b := readImageFile(t, ours), readImageFile(t, theirs)
	sa, sb := a.Snapshots[0], b.Snapshots[0]
	sa.L1Offset, sb.L1Offset = 0, 0
	sa.DateSec, sb.DateSec, sa.DateNsec, sb.DateNsec = 0, 0, 0, 0
	if !snapshotEqual(sa, sb) {
		t.Errorf("snapshot entry\n ours %+v\nqemu  %+v", sa, sb)
	}
	qa, qb := qemuSnapshots(t, ours)[0], qemuSnapshots(t, theirs)[0]
	for _, k := range []string{"date-sec", "date-nsec"} {
		delete(qa, k)
		delete(qb, k)
	}
	ja, _ := json.Marshal(qa)
	jb, _ := json.Marshal(qb)
	if !bytes.Equal(ja, jb) {
		t.Errorf("qemu-img info snapshot\n ours %s\nqemu  %s", ja, jb)
	}
}

func snapshotEqual(a, b format.Snapshot) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

func readImageFile(t *testing.T, img string) *format.Image {
	t.Helper()
	im, err := openFile(t, img, format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return im
}

// TestQcow2SnapshotCompressedShared: compressed clusters packed by QEMU
// into shared host clusters (qemu-img convert -c) keep consistent
// refcounts across create, apply and delete.
func TestQcow2SnapshotCompressedShared(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	src, img := filepath.Join(dir, "src.raw"), filepath.Join(dir, "c.qcow2")
	raw := make([]byte, 1<<20)
	for i := range raw {
		raw[i] = byte(i / 3000)
	}
	if err := os.WriteFile(src, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	qemuImg(t, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", src, img)
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	d := drv(t, n)
	if _, err := d.CreateSnapshot(SnapshotCreateOptions{Name: "c"}); err != nil {
		t.Fatal(err)
	}
	ref := append([]byte(nil), raw...)
	writeWorkload(t, n, ref, 9, 50, 4096)
	if err := d.ApplySnapshot("c"); err != nil {
		t.Fatal(err)
	}
	checkSame(t, readAll(t, n, 1<<20), raw)
	if err := d.DeleteSnapshot("c"); err != nil {
		t.Fatal(err)
	}
	n.Unref()
	qemuCheck(t, img)
	checkSame(t, convertRaw(t, img), raw)
}

// TestQcow2SnapshotConcurrentWriters: writes in flight on other
// goroutines while snapshots are created: each snapshot holds, for every
// block, either the old or the new content of a write that raced with
// it, never a mix inside one write, and the image stays consistent.
func TestQcow2SnapshotConcurrentWriters(t *testing.T) {
	needQemu(t)
	img := filepath.Join(t.TempDir(), "w.qcow2")
	qemuCreate(t, img, "cluster_size=4096", 1<<20)
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	d := drv(t, n)
	const blk = 8192
	stop := make(chan struct{})
	done := make(chan error, 2)
	for w := 0; w < 2; w++ {
		go func(w int) {
			var gen byte
			for {
				select {
				case <-stop:
					done <- nil
					return
				default:
				}
				gen++
				off := int64(w*64+int(gen)%64) * blk
				if _, err := n.WriteAt(fill(gen, blk), off); err != nil {
					done <- err
					return
				}
			}
		}(w)
	}
	for i := 0; i < 5; i++ {
		if _, err := d.CreateSnapshot(SnapshotCreateOptions{Name: "w" + strconv.Itoa(i)}); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	for w := 0; w < 2; w++ {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	n.Unref()
	qemuCheck(t, img)
	for i := 0; i < 5; i++ {
		qemuImg(t, "snapshot", "-a", "w"+strconv.Itoa(i), img)
		b := convertRaw(t, img)
		for off := 0; off < len(b); off += blk {
			if !bytes.Equal(b[off:off+blk], fill(b[off], blk)) {
				t.Fatalf("snapshot w%d: block at %d is torn", i, off)
			}
		}
	}
	qemuCheck(t, img)
}

// qemuImgExit runs qemu-img and returns its exit code and output.
func qemuImgExit(t *testing.T, args ...string) (int, []byte) {
	t.Helper()
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), out
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, out
}

// TestQcow2SnapshotCrashStates: snapshot create, apply and delete (with
// writes in between) on a recording file, then simulated power-loss
// states (everything before a flush, plus a random subset of the writes
// after it, some torn at sector granularity). In every state: the image
// opens; no refcount is below its references (the only errors a check may
// report are COPIED flags that disagree with a refcount, the windows QEMU
// has too — qemu-img check agrees on a sample of states); every snapshot
// in the table reads back the content it was taken with; and, inside a
// snapshot operation, the active disk reads as before or after it.
func TestQcow2SnapshotCrashStates(t *testing.T) {
	needQemu(t)
	e := newTestEnv(t)
	f := &recFile{}
	fn, err := e.g.Open(f, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const size = 1 << 20
	if err := Create(fn, size, format.CreateOptions{ClusterSize: 4096}); err != nil {
		t.Fatal(err)
	}
	n, err := NewNode(e.g, fn, DriverOptions{L2CacheBytes: 4 * 4096}, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := drv(t, n)
	ref := make([]byte, size)
	writeWorkload(t, n, ref, 21, 60, 4096)
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	start := append([]byte(nil), f.data...)
	f.log = nil

	// phase: a snapshot operation's log range and the active content
	// before and after it.
	type phase struct {
		from, to      int
		before, after []byte
	}
	var phases []phase
	want := map[string][]byte{} // snapshot name → content (names are not reused)
	logLen := func() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.log) }
	op := func(name string, fnc func() error, after []byte) {
		t.Helper()
		p := phase{from: logLen(), before: append([]byte(nil), ref...)}
		if err := fnc(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		p.to, p.after = logLen(), append([]byte(nil), after...)
		phases = append(phases, p)
	}
	op("create a", func() error { _, err := d.CreateSnapshot(SnapshotCreateOptions{Name: "a"}); return err }, ref)
	want["a"] = append([]byte(nil), ref...)
	writeWorkload(t, n, ref, 22, 40, 4096)
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	op("create b", func() error { _, err := d.CreateSnapshot(SnapshotCreateOptions{Name: "b"}); return err }, ref)
	want["b"] = append([]byte(nil), ref...)
	writeWorkload(t, n, ref, 23, 40, 4096)
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	op("apply a", func() error { return d.ApplySnapshot("a") }, want["a"])
	copy(ref, want["a"])
	writeWorkload(t, n, ref, 24, 20, 4096)
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	op("delete a", func() error { return d.DeleteSnapshot("a") }, ref)
	op("delete b", func() error { return d.DeleteSnapshot("b") }, ref)
	n.Unref()

	log := f.log
	var bounds []int
	for i, o := range log {
		if o.flush {
			bounds = append(bounds, i)
		}
	}
	rng := newSeededRand(t, 77)
	dir := t.TempDir()
	states, qemuRuns := 0, 0
	for k := -1; k < len(bounds); k++ {
		prefix := 0
		if k >= 0 {
			prefix = bounds[k] + 1
		}
		next := len(log)
		if k+1 < len(bounds) {
			next = bounds[k+1]
		}
		// Which phase is this epoch in?
		var in *phase
		for i := range phases {
			if prefix >= phases[i].from && prefix < phases[i].to {
				in = &phases[i]
			}
		}
		reps := 1
		if in != nil {
			reps = 3
		}
		for rep := 0; rep < reps; rep++ {
			img := append([]byte(nil), start...)
			put := func(o recOp, lo, hi int64) {
				if hi > int64(len(img)) {
					img = append(img, make([]byte, hi-int64(len(img)))...)
				}
				copy(img[lo:hi], o.b[lo-o.off:hi-o.off])
			}
			for _, o := range log[:prefix] {
				if !o.flush {
					put(o, o.off, o.off+int64(len(o.b)))
				}
			}
			for _, o := range log[prefix:next] {
				switch {
				case rep == 1: // torn at sector granularity
					end := o.off + int64(len(o.b))
					for lo := o.off; lo < end; lo = (lo/512 + 1) * 512 {
						if rng.IntN(2) == 0 {
							put(o, lo, min(end, (lo/512+1)*512))
						}
					}
				case rng.IntN(2) == 0:
					put(o, o.off, o.off+int64(len(o.b)))
				}
			}
			states++
			where := "state " + strconv.Itoa(states) + " (epoch " + strconv.Itoa(k) + ")"
			im, err := format.ReadImage(bytes.NewReader(img), int64(len(img)), format.Options{})
			if err != nil {
				t.Fatalf("%s: open: %v", where, err)
			}
			res, err := im.Check()
			if err != nil {
				t.Fatalf("%s: check: %v", where, err)
			}
			if mism := copiedMismatches(t, im); res.Corruptions != mism || res.CheckErrors != 0 {
				t.Fatalf("%s: %d corruptions (%d of them COPIED flags), %d check errors:\n%s", where, res.Corruptions, mism, res.CheckErrors, strings.Join(res.Messages, "\n"))
			}
			for i, s := range im.Snapshots {
				w, ok := want[s.Name]
				if !ok {
					t.Fatalf("%s: unexpected snapshot %q", where, s.Name)
				}
				v, err := im.Snapshot(i)
				if err != nil {
					t.Fatalf("%s: snapshot %s: %v", where, s.Name, err)
				}
				got := make([]byte, v.Geometry.Size)
				if _, err := v.ReadAt(got, 0, nil); err != nil {
					t.Fatalf("%s: read snapshot %s: %v", where, s.Name, err)
				}
				if !bytes.Equal(got, w) {
					t.Fatalf("%s: snapshot %s content differs at %d", where, s.Name, firstDiff(got, w))
				}
			}
			if in != nil {
				got := make([]byte, im.Geometry.Size)
				if _, err := im.ReadAt(got, 0, nil); err != nil {
					t.Fatalf("%s: read: %v", where, err)
				}
				if !bytes.Equal(got, in.before) && !bytes.Equal(got, in.after) {
					t.Fatalf("%s: active disk is neither the content before nor after the operation", where)
				}
			}
			// QEMU's view, on a sample: exit 0 (clean) or 3 (leaks), or
			// 2 with nothing but OFLAG_COPIED errors.
			if states%7 == 0 {
				qemuRuns++
				p := filepath.Join(dir, "s.qcow2")
				if err := os.WriteFile(p, img, 0o644); err != nil {
					t.Fatal(err)
				}
				code, out := qemuImgExit(t, "check", p)
				for _, line := range strings.Split(string(out), "\n") {
					if strings.HasPrefix(line, "ERROR") && !strings.Contains(line, "OFLAG_COPIED") {
						t.Fatalf("%s: qemu-img check: %s\n%s", where, line, out)
					}
				}
				if code != 0 && code != 2 && code != 3 {
					t.Fatalf("%s: qemu-img check exit %d\n%s", where, code, out)
				}
			}
		}
	}
	t.Logf("%d crash states over %d epochs, %d checked by qemu-img", states, len(bounds)+1, qemuRuns)
}

// newSeededRand returns a generator seeded with seed, logged so a failure
// can be replayed.
func newSeededRand(t *testing.T, seed uint64) *rand.Rand {
	t.Logf("seed %d", seed)
	return rand.New(rand.NewPCG(seed, 0x5eed))
}

// copiedMismatches counts the active L1 and L2 entries whose COPIED flag
// disagrees with "refcount == 1" (each is one corruption for Check and
// qemu-img check).
func copiedMismatches(t *testing.T, im *format.Image) int64 {
	t.Helper()
	g := &im.Geometry
	var n int64
	for _, e := range im.L1 {
		l2Off, copied, err := g.DecodeL1Entry(e)
		if err != nil || l2Off == 0 {
			continue
		}
		rc, err := im.Refcount(l2Off)
		if err != nil {
			t.Fatal(err)
		}
		if copied != (rc == 1) {
			n++
		}
		table, err := im.ReadL2(l2Off)
		if err != nil {
			t.Fatal(err)
		}
		for j := int64(0); j < g.L2Entries(); j++ {
			e, bm, _ := g.L2EntryAt(table, j)
			le, err := g.DecodeL2Entry(e, bm)
			if err != nil || (le.Type != format.Normal && le.Type != format.ZeroAlloc) {
				continue
			}
			rc, err := im.Refcount(le.HostOff)
			if err != nil {
				t.Fatal(err)
			}
			if le.Copied != (rc == 1) {
				n++
			}
		}
	}
	return n
}

// TestQcow2SnapshotHostileTables: a snapshot whose L1 table names other
// metadata (the refcount table, the active L1 table) as an L2 table, or holds an entry with
// reserved bits, is refused by apply and delete with a corruption error
// before anything changes: the file stays byte-identical.
func TestQcow2SnapshotHostileTables(t *testing.T) {
	needQemu(t)
	for _, tc := range []struct {
		name  string
		entry func(im *format.Image) uint64
		want  string
	}{
		{"l2-on-refcount-table", func(im *format.Image) uint64 { return im.Header.RefcountTableOffset }, "overlaps other metadata"},
		{"l2-on-active-l1", func(im *format.Image) uint64 { return im.Header.L1Offset }, "overlaps other metadata"},
		{"reserved-bits", func(im *format.Image) uint64 { return im.L1[0] | 1<<56 }, "reserved"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "h.qcow2")
			qemuCreate(t, img, "", 1<<20)
			qemuIO(t, img, "write -P 0x81 0 64k")
			qemuImg(t, "snapshot", "-c", "s", img)
			b, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			im := openBytes(t, b, format.Options{})
			putU64(b[im.Snapshots[0].L1Offset:], tc.entry(im))
			if err := os.WriteFile(img, b, 0o644); err != nil {
				t.Fatal(err)
			}
			env := newTestEnv(t)
			n, err := env.open(img, false)
			if err != nil {
				t.Skipf("open refuses the image already: %v", err)
			}
			d := drv(t, n)
			for _, f := range []func(string) error{d.ApplySnapshot, d.DeleteSnapshot} {
				err := f("s")
				if !errors.Is(err, format.ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("got %v, want a corruption error with %q", err, tc.want)
				}
			}
			n.Unref()
			after, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(after, b) {
				t.Errorf("the image changed (first difference at %d)", firstDiff(after, b))
			}
		})
	}
}

// TestQcow2SnapshotRandomOps: a random mix of writes, disk growth and
// snapshot create/apply/delete against a model of every snapshot's
// content; after each operation the driver's own check finds neither
// leaks nor corruptions, and at the end qemu-img check is clean and
// qemu-img snapshot -a restores every remaining snapshot's content.
func TestQcow2SnapshotRandomOps(t *testing.T) {
	needQemu(t)
	for _, opts := range []string{"cluster_size=4096", "cluster_size=512,compat=0.10"} {
		t.Run(opts, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "rnd.qcow2")
			qemuCreate(t, img, opts, 512<<10)
			e := newTestEnv(t)
			n := e.mustOpen(img, false)
			d := drv(t, n)
			cs := d.mu.geo.ClusterSize()
			rng := newSeededRand(t, uint64(len(opts)))
			ref := make([]byte, 512<<10)
			model := map[string][]byte{}
			var names []string
			seq := 0
			for i := 0; i < 40; i++ {
				var what string
				switch k := rng.IntN(10); {
				case k < 4:
					what = "write"
					writeWorkload(t, n, ref, uint64(i), 8, cs)
				case k < 6 || len(names) == 0:
					seq++
					name := "s" + strconv.Itoa(seq)
					what = "create " + name
					if _, err := d.CreateSnapshot(SnapshotCreateOptions{Name: name}); err != nil {
						t.Fatalf("op %d %s: %v", i, what, err)
					}
					model[name] = append([]byte(nil), ref...)
					names = append(names, name)
				case k < 8:
					name := names[rng.IntN(len(names))]
					what = "apply " + name
					if err := d.ApplySnapshot(name); err != nil {
						t.Fatalf("op %d %s: %v", i, what, err)
					}
					ref = append(ref[:0], model[name]...)
					checkSame(t, readAll(t, n, 256<<10), ref)
				case k < 9:
					j := rng.IntN(len(names))
					what = "delete " + names[j]
					if err := d.DeleteSnapshot(names[j]); err != nil {
						t.Fatalf("op %d %s: %v", i, what, err)
					}
					delete(model, names[j])
					names = append(names[:j], names[j+1:]...)
				default:
					what = "grow"
					size := int64(len(ref)) + 64<<10
					err := n.Truncate(size)
					if d.mu.hdr.Version < 3 && len(names) > 0 {
						// QEMU refuses to resize a v2 image with
						// snapshots, and so do we.
						if !errors.Is(err, format.ErrUnsupported) {
							t.Fatalf("op %d: grow of a v2 image with snapshots: %v", i, err)
						}
						break
					}
					if err != nil {
						t.Fatalf("op %d grow: %v", i, err)
					}
					ref = append(ref, make([]byte, 64<<10)...)
				}
				if res, err := n.Check(0); err != nil || res.Corruptions != 0 || res.Leaks != 0 {
					t.Fatalf("op %d %s: check %+v %v", i, what, res, err)
				}
			}
			checkSame(t, readAll(t, n, 256<<10), ref)
			n.Unref()
			qemuCheck(t, img)
			qemuCompare(t, img, ref)
			for _, name := range names {
				qemuImg(t, "snapshot", "-a", name, img)
				checkSame(t, convertRaw(t, img), model[name])
			}
			qemuCheck(t, img)
		})
	}
}
