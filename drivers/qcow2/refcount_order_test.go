package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// refcountBitsOf returns the refcount width qemu-img info reports.
func refcountBitsOf(t *testing.T, img string) int {
	t.Helper()
	out := string(qemuImg(t, "info", img))
	i := strings.Index(out, "refcount bits: ")
	if i < 0 {
		t.Fatalf("qemu-img info has no refcount bits:\n%s", out)
	}
	rest := out[i+len("refcount bits: "):]
	n, err := strconv.Atoi(strings.TrimSpace(rest[:strings.IndexByte(rest, '\n')]))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestQcow2AmendRefcountWidth: Amend with RefcountBits walks an image
// through every width 1..64 and back (a 64 KiB-cluster image with data
// and a snapshot, and a 512-byte-cluster one whose refcount structures
// span several blocks of every width); after each step qemu-img check
// finds no error and no leak, qemu-img info reports the new width, and
// the guest data, read by qemu-img, is unchanged (and the snapshot's
// too).
func TestQcow2AmendRefcountWidth(t *testing.T) {
	needQemu(t)
	cases := []struct {
		name, create string
		size         int64
		setup        []string
		snapshot     bool
	}{
		{"c64k-snap", "", 8 << 20, []string{"write -P 1 1M 3M", "write -P 2 6M 64k"}, true},
		{"c512", "cluster_size=512", 4 << 20, []string{"write -P 3 0 1M", "write -P 4 2M 300k"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "x.qcow2")
			qemuCreate(t, img, c.create, c.size)
			qemuIO(t, img, c.setup...)
			var snapData []byte
			if c.snapshot {
				qemuImg(t, "snapshot", "-c", "s", img)
				snapData = convertRaw(t, img)
				qemuIO(t, img, "write -P 5 1M 64k") // different refcounts across the image
			}
			want := convertRaw(t, img)
			widths := []int{2, 4, 8, 32, 64, 16}
			if !c.snapshot {
				widths = []int{1, 64, 2, 32, 4, 8, 16, 1, 16}
			}
			for _, w := range widths {
				e := newTestEnv(t)
				n := e.mustOpen(img, false)
				err := Amend(n, AmendOptions{RefcountBits: w})
				n.Unref()
				if err != nil {
					t.Fatalf("amend to %d bits: %v", w, err)
				}
				if q := qemuCheckResult(t, img); q.Corruptions != 0 || q.CheckErrors != 0 || q.Leaks != 0 {
					t.Fatalf("after amend to %d bits: qemu-img check %+v", w, q)
				}
				if got := refcountBitsOf(t, img); got != w {
					t.Fatalf("qemu-img info says %d refcount bits, want %d", got, w)
				}
				checkSame(t, convertRaw(t, img), want)
			}
			if c.snapshot {
				qemuImg(t, "snapshot", "-a", "s", img)
				checkSame(t, convertRaw(t, img), snapData)
			}
		})
	}
}

// TestQcow2AmendRefcountWidthOverflow: a cluster shared by a snapshot
// has refcount 2, which one bit cannot hold: the change is refused with
// qemu-img's message, the width stays, and the image checks clean with
// its data intact (what the refused change allocated is given back).
// Two bits hold it.
func TestQcow2AmendRefcountWidthOverflow(t *testing.T) {
	needQemu(t)
	img := filepath.Join(t.TempDir(), "x.qcow2")
	qemuCreate(t, img, "", 64<<20)
	qemuIO(t, img, "write -P 1 0 16M")
	qemuImg(t, "snapshot", "-c", "foo", img)
	qemuIO(t, img, "write -P 2 0 1M")
	want := convertRaw(t, img)
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	err := Amend(n, AmendOptions{RefcountBits: 1})
	n.Unref()
	const msg = "Cannot decrease refcount entry width to 1 bits: Cluster at offset 0x"
	if err == nil || !strings.Contains(err.Error(), msg) || !strings.Contains(err.Error(), " has a refcount of 2") {
		t.Fatalf("amend to 1 bit: %v, want %q", err, msg)
	}
	if q := qemuCheckResult(t, img); q.Corruptions != 0 || q.CheckErrors != 0 || q.Leaks != 0 {
		t.Fatalf("after the refused amend: qemu-img check %+v", q)
	}
	if got := refcountBitsOf(t, img); got != 16 {
		t.Fatalf("refcount bits %d after the refused amend", got)
	}
	checkSame(t, convertRaw(t, img), want)
	n = e.mustOpen(img, false)
	err = Amend(n, AmendOptions{RefcountBits: 2})
	n.Unref()
	if err != nil {
		t.Fatalf("amend to 2 bits: %v", err)
	}
	qemuCheck(t, img)
	checkSame(t, convertRaw(t, img), want)
}

// TestQcow2AmendRefcountWidthProgress: the layout of iotest 112's "multiple
// walks" case (512-byte clusters, 1-bit refcounts, 58 data clusters):
// going to 64 bits fills the first new block exactly, so the new table
// needs one more block and a fourth walk; the progress goes back from
// two thirds to one half, as qemu-img amend -p shows it.
func TestQcow2AmendRefcountWidthProgress(t *testing.T) {
	needQemu(t)
	img := filepath.Join(t.TempDir(), "x.qcow2")
	qemuCreate(t, img, "refcount_bits=1,cluster_size=512", 64<<10)
	qemuIO(t, img, "write 0 "+strconv.Itoa(58*512))
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	var pcts []float64
	err := Amend(n, AmendOptions{RefcountBits: 64, Progress: func(done, total int64) {
		pcts = append(pcts, 100*float64(done)/float64(total))
	}})
	n.Unref()
	if err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, img)
	back := false
	for i := 1; i < len(pcts); i++ {
		if strconv.FormatFloat(pcts[i-1], 'f', 2, 64) == "66.67" && strconv.FormatFloat(pcts[i], 'f', 2, 64) == "50.00" {
			back = true
		}
	}
	if !back || pcts[len(pcts)-1] != 100 {
		t.Errorf("progress never went from 66.67%% to 50.00%% or did not end at 100%% (%d reports, last %v)", len(pcts), pcts[len(pcts)-1])
	}
}

// TestQcow2AmendRefcountWidthCrashStates: the file writes of a width
// change (16 → 1 and 1 → 64 bits; 512-byte clusters, so the structures
// span several blocks, and 4 KiB clusters, so writes span several
// sectors), recorded; every crash state — the writes up to a flush, plus
// none, each one alone (also torn: only the first half of its sectors),
// or all of the writes issued after it — must be an image both our check
// and qemu-img check accept with at most leaks, whose guest data is
// intact, and whose refcount width is the old one or the new one.
func TestQcow2AmendRefcountWidthCrashStates(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	states := 0
	for _, img := range []struct {
		create string
		size   int64
		io     []string
	}{
		{"cluster_size=512", 2 << 20, []string{"write -P 7 0 300k", "write -P 8 1M 100k"}},
		{"cluster_size=4096", 8 << 20, []string{"write -P 7 0 5M", "write -P 8 7M 100k"}},
	} {
		src := filepath.Join(dir, "src.qcow2")
		qemuCreate(t, src, img.create, img.size)
		qemuIO(t, src, img.io...)
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		for _, step := range []struct{ from, to uint32 }{{4, 0}, {0, 6}} {
			e := newTestEnv(t)
			f := &recFile{data: append([]byte(nil), b...)}
			fn, err := e.g.Open(f, block.Options{})
			if err != nil {
				t.Fatal(err)
			}
			n, err := NewNode(e.g, fn, DriverOptions{}, block.Options{})
			if err != nil {
				t.Fatal(err)
			}
			start := len(f.log)
			if err := Amend(n, AmendOptions{RefcountBits: 1 << step.to}); err != nil {
				t.Fatal(err)
			}
			n.Unref()
			log := f.log[start:]
			want, _ := readAllImage(t, b)
			var bounds []int // flush positions in log
			for i, op := range log {
				if op.flush {
					bounds = append(bounds, i)
				}
			}
			apply := func(img []byte, op recOp) []byte {
				if end := op.off + int64(len(op.b)); end > int64(len(img)) {
					img = append(img, make([]byte, end-int64(len(img)))...)
				}
				copy(img[op.off:], op.b)
				return img
			}
			check := func(img []byte, what string) {
				t.Helper()
				states++
				got, order := readAllImage(t, img)
				if order != step.from && order != step.to {
					t.Fatalf("%d→%d bits, %s: refcount order %d", 1<<step.from, 1<<step.to, what, order)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("%d→%d bits, %s: guest data changed", 1<<step.from, 1<<step.to, what)
				}
				im, err := format.ReadImage(bytes.NewReader(img), int64(len(img)), format.Options{})
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				res, err := im.Check()
				if err != nil || res.Corruptions != 0 || res.CheckErrors != 0 {
					t.Fatalf("%d→%d bits, %s: check %+v %v", 1<<step.from, 1<<step.to, what, res, err)
				}
				p := filepath.Join(dir, "s.qcow2")
				if err := os.WriteFile(p, img, 0o644); err != nil {
					t.Fatal(err)
				}
				if q := qemuCheckResult(t, p); q.Corruptions != 0 || q.CheckErrors != 0 {
					t.Fatalf("%d→%d bits, %s: qemu-img check %+v", 1<<step.from, 1<<step.to, what, q)
				}
			}
			durable := append([]byte(nil), b...)
			prev := 0
			for k := 0; k <= len(bounds); k++ {
				end := len(log)
				if k < len(bounds) {
					end = bounds[k]
				}
				epoch := log[prev:end]
				check(append([]byte(nil), durable...), "flush "+strconv.Itoa(k))
				for i, op := range epoch {
					if len(epoch) > 1 {
						check(apply(append([]byte(nil), durable...), op), "flush "+strconv.Itoa(k)+" + write "+strconv.Itoa(i))
					}
					// Torn: only the first half of its sectors persisted.
					if first := (op.off/512 + 1) * 512; first < op.off+int64(len(op.b)) {
						mid := max(first, (op.off+int64(len(op.b))/2)&^511)
						torn := recOp{off: op.off, b: op.b[:mid-op.off]}
						check(apply(append([]byte(nil), durable...), torn), "flush "+strconv.Itoa(k)+" + torn write "+strconv.Itoa(i))
					}
				}
				for _, op := range epoch {
					durable = apply(durable, op)
				}
				check(append([]byte(nil), durable...), "flush "+strconv.Itoa(k)+" + all")
				prev = end + 1
			}
			b = durable
			if o := func() uint32 { _, o := readAllImage(t, b); return o }(); o != step.to {
				t.Fatalf("after the amend: refcount order %d, want %d", o, step.to)
			}
		}
	}
	t.Logf("%d crash states checked", states)
}

// readAllImage returns the guest data and the refcount order of an image
// held in memory.
func readAllImage(t *testing.T, img []byte) ([]byte, uint32) {
	t.Helper()
	im, err := format.ReadImage(bytes.NewReader(img), int64(len(img)), format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, im.Geometry.Size)
	if _, err := im.ReadAt(buf, 0, nil); err != nil {
		t.Fatal(err)
	}
	return buf, im.Header.RefcountOrder
}

// TestQcow2CheckRefcountOverflow: iotest 112's "too many references"
// image — refcount_bits=1 and a second L2 entry naming the same data
// cluster. Our check and a repair of everything both report the overflow
// in qemu-img's two lines and count one corruption, as qemu-img check
// does; the repair does not give up, and changes nothing. After an amend
// to 2 bits the same repair fixes the refcount (and COPIED), and the
// image checks clean.
func TestQcow2CheckRefcountOverflow(t *testing.T) {
	needQemu(t)
	img := filepath.Join(t.TempDir(), "x.qcow2")
	qemuCreate(t, img, "refcount_bits=1", 64<<20)
	qemuIO(t, img, "write 0 64k")
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	im, err := format.ReadImage(bytes.NewReader(b), int64(len(b)), format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	l2 := int64(im.L1[0] & format.OffsetMask)
	copy(b[l2+8:l2+16], b[l2:l2+8]) // guest cluster 1 → the data cluster of guest cluster 0
	data := int64(binary.BigEndian.Uint64(b[l2:]) & format.OffsetMask)
	if err := os.WriteFile(img, b, 0o644); err != nil {
		t.Fatal(err)
	}
	wantMsgs := []string{
		"ERROR: overflow cluster offset=0x" + strconv.FormatInt(data, 16),
		"Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing",
	}
	im, err = format.ReadImage(bytes.NewReader(b), int64(len(b)), format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := im.Check()
	if err != nil {
		t.Fatal(err)
	}
	q := qemuCheckResult(t, img)
	if res.Corruptions != 1 || q.Corruptions != 1 || res.Leaks != 0 || !hasLines(res.Messages, wantMsgs) {
		t.Errorf("check: %d corruptions (qemu-img %d), %d leaks, messages %q", res.Corruptions, q.Corruptions, res.Leaks, res.Messages)
	}
	rr := driverRepair(t, img, block.CheckFixLeaks|block.CheckFixErrors)
	if rr.err != nil || rr.first.Corruptions != 1 || rr.first.CorruptionsFixed != 0 || rr.first.LeaksFixed != 0 || !hasLines(rr.msgs, wantMsgs) {
		t.Errorf("repair: err %v, result %+v, messages %q", rr.err, rr.first, rr.msgs)
	}
	if after, _ := os.ReadFile(img); !bytes.Equal(after[:len(b)], b) {
		t.Errorf("the repair changed the image at %d", firstDiff(after, b))
	}

	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	err = Amend(n, AmendOptions{RefcountBits: 2})
	n.Unref()
	if err != nil {
		t.Fatal(err)
	}
	rr = driverRepair(t, img, block.CheckFixLeaks|block.CheckFixErrors)
	if rr.err != nil || rr.first.CorruptionsFixed != 3 || rr.final.Corruptions != 0 {
		t.Errorf("repair after the amend: err %v, first %+v, final %+v, messages %q", rr.err, rr.first, rr.final, rr.msgs)
	}
	qemuCheck(t, img)
}

func hasLines(have, want []string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			found = found || h == w
		}
		if !found {
			return false
		}
	}
	return true
}

// TestQcow2SnapshotL1FirstFree: a one-cluster snapshot L1 table goes to
// the first free cluster, as QEMU allocates it: after two snapshots (the
// second freed the first snapshot table), a third one refused for a
// refcount overflow under refcount_bits=2 leaks its L1 table in the same
// cluster as qemu-img's (iotest 112 prints it).
func TestQcow2SnapshotL1FirstFree(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	leaked := func(img string) string {
		out, _ := exec.Command("qemu-img", "check", img).CombinedOutput()
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "Leaked cluster") {
				return l
			}
		}
		return "no leak:\n" + string(out)
	}
	theirs, ours := filepath.Join(dir, "theirs.qcow2"), filepath.Join(dir, "ours.qcow2")
	for _, img := range []string{theirs, ours} {
		qemuCreate(t, img, "refcount_bits=2", 64<<20)
		qemuIO(t, img, "write 0 512")
	}
	for _, name := range []string{"foo", "bar"} {
		qemuImg(t, "snapshot", "-c", name, theirs)
		e := newTestEnv(t)
		n := e.mustOpen(ours, false)
		_, err := drv(t, n).CreateSnapshot(SnapshotCreateOptions{Name: name})
		n.Unref()
		if err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("qemu-img", "snapshot", "-c", "baz", theirs).CombinedOutput(); err == nil {
		t.Fatalf("qemu-img created a fourth reference: %s", out)
	}
	e := newTestEnv(t)
	n := e.mustOpen(ours, false)
	_, err := drv(t, n).CreateSnapshot(SnapshotCreateOptions{Name: "baz"})
	n.Unref()
	if !errors.Is(err, ErrRefcountOverflow) {
		t.Fatalf("third snapshot: %v", err)
	}
	if a, b := leaked(ours), leaked(theirs); a != b {
		t.Errorf("ours: %s\nqemu-img's: %s", a, b)
	}
}

// TestAmendProgressTwoSteps: an amend that changes the refcount width and
// downgrades reports one figure: the first step covers the first half
// (its total projected once more for the step to come), the second step
// goes on from where the first ended, up to 100 %.
func TestAmendProgressTwoSteps(t *testing.T) {
	var got []float64
	p := &amendProgress{steps: 2, report: func(done, total int64) {
		got = append(got, 100*float64(done)/float64(total))
	}}
	s1, s2 := p.step(1), p.step(2)
	for i := int64(0); i <= 30; i += 10 {
		s1(i, 30)
	}
	for i := int64(0); i <= 10; i += 5 {
		s2(i, 10)
	}
	want := []float64{0, 100.0 / 6, 100.0 / 3, 50, 75, 87.5, 100}
	if len(got) != len(want) {
		t.Fatalf("reports %v, want %v", got, want)
	}
	for i := range want {
		if d := got[i] - want[i]; d > 1e-9 || d < -1e-9 {
			t.Fatalf("reports %v, want %v", got, want)
		}
	}
	if (&amendProgress{}).step(1) != nil {
		t.Error("a step without a listener reports")
	}
}
