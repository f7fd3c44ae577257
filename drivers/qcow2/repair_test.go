package qcow2

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
)

// Repair tests: images made by qemu-img/qemu-io, damaged with raw byte
// edits, repaired by the driver (Node.Check with a repair mode) and by
// `qemu-img check -r` on an identical copy. The messages, the counts and
// the image afterwards must agree, and the guest data must not change.

// damage is a raw edit of an image file.
type damage func(t *testing.T, path string)

// setRefcount16 stores v as the 16-bit refcount of host cluster idx, in
// the refcount block the table's entry ti points at.
func setRefcount16(idx int64, v uint16) damage {
	return func(t *testing.T, path string) {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		cs := int64(1) << binary.BigEndian.Uint32(b[20:])
		per := cs / 2
		rt := int64(binary.BigEndian.Uint64(b[48:]))
		rb := int64(binary.BigEndian.Uint64(b[rt+idx/per*8:]))
		if rb == 0 {
			t.Fatalf("no refcount block for cluster %d", idx)
		}
		patch(t, path, rb+idx%per*2, []byte{byte(v >> 8), byte(v)})
	}
}

// setRefcount stores v as the refcount of host cluster idx, whatever the
// image's refcount width.
func setRefcount(idx int64, v uint64) damage {
	return func(t *testing.T, path string) {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		h, err := format.ParseHeader(b[:min(len(b), 1<<16)])
		if err != nil {
			t.Fatal(err)
		}
		g := h.Geometry(int64(len(b)))
		ti, bi := g.RefcountIndex(idx * g.ClusterSize())
		rb := int64(binary.BigEndian.Uint64(b[int64(h.RefcountTableOffset)+ti*8:]))
		if rb == 0 {
			t.Fatalf("no refcount block for cluster %d", idx)
		}
		blk := b[rb : rb+g.ClusterSize()]
		if err := format.RefcountSet(blk, g.RefcountOrder, bi, v); err != nil {
			t.Fatal(err)
		}
		patch(t, path, rb, blk)
	}
}

// setU64 stores v at off.
func setU64(off int64, v uint64) damage {
	return func(t *testing.T, path string) {
		t.Helper()
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], v)
		patch(t, path, off, b[:])
	}
}

// shortSnapshotExtra rewrites the snapshot table in place with every
// entry's extra data cut to n bytes (n below what the entries have), the
// form old version 2 writers used; the table only gets shorter.
func shortSnapshotExtra(n uint32) damage {
	return func(t *testing.T, path string) {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		be := binary.BigEndian
		nb, off := int(be.Uint32(b[60:])), int64(be.Uint64(b[64:]))
		var out []byte
		p := off
		for i := 0; i < nb; i++ {
			p = (p + 7) &^ 7
			hdr := append([]byte(nil), b[p:p+40]...)
			idl, nl, ex := int64(be.Uint16(hdr[12:])), int64(be.Uint16(hdr[14:])), int64(be.Uint32(hdr[36:]))
			if int64(n) > ex {
				t.Fatalf("snapshot %d has %d bytes of extra data, fewer than %d", i, ex, n)
			}
			be.PutUint32(hdr[36:], n)
			for len(out)%8 != 0 {
				out = append(out, 0)
			}
			out = append(out, hdr...)
			out = append(out, b[p+40:p+40+int64(n)]...)
			out = append(out, b[p+40+ex:p+40+ex+idl+nl]...)
			p += 40 + ex + idl + nl
		}
		patch(t, path, off, out)
	}
}

func patch(t *testing.T, path string, off int64, p []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// qemuRepair runs qemu-img check with args on img and returns its stdout,
// its stderr lines and its exit code.
func qemuRepair(t *testing.T, img string, args ...string) (string, []string, int) {
	t.Helper()
	cmd := exec.Command("qemu-img", append(append([]string{"check"}, args...), img)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), lines(e.String()), code
}

func lines(s string) []string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// repairResult is what a repair through the driver did, in qemu-img's
// terms: the repair pass (first), the double check (final), and every
// message logged.
type repairResult struct {
	first, final block.CheckResult
	err          error
	msgs         []string
}

// driverRepair opens img read-write for a check (CheckOpen), repairs it
// with mode, checks it again as qemu-img does when something was fixed,
// and closes it.
func driverRepair(t *testing.T, img string, mode block.CheckMode) repairResult {
	t.Helper()
	e := newTestEnv(t)
	var rr repairResult
	file, err := raw.NewNode(e.g, img, raw.Options{Locking: raw.LockingOff}, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	n, err := NewNode(e.g, file, DriverOptions{CheckOpen: true, CheckLog: func(m string) { rr.msgs = append(rr.msgs, m) }}, block.Options{})
	if err != nil {
		t.Fatalf("open %s: %v", img, err)
	}
	defer n.Unref()
	rr.first, rr.err = n.Check(mode)
	if rr.err == nil && (rr.first.LeaksFixed > 0 || rr.first.CorruptionsFixed > 0) {
		var err error
		rr.final, err = n.Check(0)
		if err != nil {
			t.Fatalf("double check: %v", err)
		}
	} else {
		rr.final = rr.first
	}
	return rr
}

type qemuRepairJSON struct {
	qemuCheckJSON
	LeaksFixed       int `json:"leaks-fixed"`
	CorruptionsFixed int `json:"corruptions-fixed"`
}

// repairCase is a damaged image and what both tools must make of it.
type repairCase struct {
	name    string
	snap    bool // take an internal snapshot before damaging (refcounts of 2)
	damages []damage
}

// The base image: 16 MiB, 64 KiB clusters; qemu-io writes guest 0 (host
// cluster 5), 1 MiB and 1 MiB+64k (host clusters 6 and 7). Header 0,
// refcount table 1, refcount block 2, L1 3, L2 4.
var repairCases = []repairCase{
	{name: "leaks", damages: []damage{setRefcount16(5, 2), setRefcount16(7, 3)}},
	{name: "unreferenced-tail", damages: []damage{setU64(0x40000+17*8, 0)}},
	{name: "metadata-leaks", damages: []damage{setRefcount16(3, 2), setRefcount16(4, 4)}},
	{name: "copied-cleared", damages: []damage{setU64(0x30000, 0x40000), setU64(0x40000, 0x50000)}},
	{name: "copied-set-shared", damages: []damage{setRefcount16(6, 2)}},
	{name: "refcount-zero", damages: []damage{setRefcount16(5, 0), setRefcount16(6, 5)}},
	{name: "refcount-zero-l2", damages: []damage{setRefcount16(4, 0)}},
	{name: "snapshot-refcount-low", snap: true, damages: []damage{setRefcount16(6, 1)}},
	// Version 3 snapshot entries need 16 bytes of extra data (issue 14).
	{name: "snapshot-incomplete", snap: true, damages: []damage{shortSnapshotExtra(8)}},
	{name: "snapshot-incomplete-leak", snap: true, damages: []damage{shortSnapshotExtra(0), setRefcount16(5, 2)}},
}

func makeRepairBase(t *testing.T, dir string, snap bool) string {
	t.Helper()
	img := filepath.Join(dir, "base.qcow2")
	qemuCreate(t, img, "", 16<<20)
	qemuIO(t, img, "write -P 0x11 0 64k", "write -P 0x22 1M 128k")
	if snap {
		qemuImg(t, "snapshot", "-c", "s1", img)
	}
	return img
}

// TestRepairMatchesQemu: for each damage and each mode, the driver's
// repair logs the same messages as qemu-img check -r on a copy, fixes the
// same counts, ends in the same state (qemu-img check of both images
// agrees, exit 0 when qemu-img's repair succeeded), and the guest data
// equals the damaged image's.
func TestRepairMatchesQemu(t *testing.T) {
	needQemu(t)
	for _, tc := range repairCases {
		for _, mode := range []string{"leaks", "all"} {
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				dir := t.TempDir()
				base := makeRepairBase(t, dir, tc.snap)
				for _, d := range tc.damages {
					d(t, base)
				}
				ref := filepath.Join(dir, "ref.qcow2")
				ours := filepath.Join(dir, "ours.qcow2")
				theirs := filepath.Join(dir, "theirs.qcow2")
				copyFile(t, base, ref)
				copyFile(t, base, ours)
				copyFile(t, base, theirs)

				_, qmsgs, qcode := qemuRepair(t, theirs, "-r", mode)
				qjsonOut, _ := exec.Command("qemu-img", "check", "--output=json", theirs).Output()
				var qfinal qemuCheckJSON
				if err := json.Unmarshal(qjsonOut, &qfinal); err != nil {
					t.Fatalf("qemu-img check json: %v\n%s", err, qjsonOut)
				}

				m := block.CheckFixLeaks
				if mode == "all" {
					m |= block.CheckFixErrors
				}
				rr := driverRepair(t, ours, m)
				// qemu-img prints "Check failed" itself; the driver
				// reports the failure as an error instead.
				want := qmsgs
				if n := len(want); n > 0 && strings.HasPrefix(want[n-1], "qemu-img: Check failed") {
					want = want[:n-1]
					if rr.err == nil {
						t.Errorf("repair succeeded; qemu-img failed: %q", qmsgs)
					}
				} else if rr.err != nil {
					t.Errorf("repair: %v (qemu-img succeeded)", rr.err)
				}
				if strings.Join(rr.msgs, "\n") != strings.Join(want, "\n") {
					t.Errorf("messages:\n%s\nqemu-img:\n%s", strings.Join(rr.msgs, "\n"), strings.Join(want, "\n"))
				}

				if rr.err == nil {
					// The fixed counts of the repair pass, from qemu-img's JSON.
					var qj qemuRepairJSON
					copyFile(t, base, theirs)
					out, _ := exec.Command("qemu-img", "check", "-r", mode, "--output=json", theirs).Output()
					if err := json.Unmarshal(out, &qj); err != nil {
						t.Fatalf("qemu-img check -r json: %v\n%s", err, out)
					}
					if rr.first.LeaksFixed != qj.LeaksFixed || rr.first.CorruptionsFixed != qj.CorruptionsFixed {
						t.Errorf("fixed leaks %d corruptions %d; qemu-img %d %d", rr.first.LeaksFixed, rr.first.CorruptionsFixed, qj.LeaksFixed, qj.CorruptionsFixed)
					}
					f := rr.final
					got := qemuCheckJSON{int64(f.Corruptions), int64(f.Leaks), int64(f.CheckErrors), f.ImageEndOffset,
						f.TotalClusters, f.AllocatedClusters, f.FragmentedClusters, f.CompressedClusters}
					if got != qj.qemuCheckJSON {
						t.Errorf("after repair %+v; qemu-img %+v", got, qj.qemuCheckJSON)
					}
				}

				// Both images are now in the same state for qemu-img.
				ojson, _ := exec.Command("qemu-img", "check", "--output=json", ours).Output()
				var ofinal qemuCheckJSON
				if err := json.Unmarshal(ojson, &ofinal); err != nil {
					t.Fatalf("qemu-img check json: %v\n%s", err, ojson)
				}
				if ofinal != qfinal {
					t.Errorf("qemu-img check after our repair %+v; after its own %+v", ofinal, qfinal)
				}
				if qcode == 0 {
					qemuCheck(t, ours)
				}
				if a, b := qemuMapNoOffsets(t, ours), qemuMapNoOffsets(t, theirs); a != b {
					t.Errorf("map after repair:\n%s\nqemu-img's:\n%s", a, b)
				}
				out, err := exec.Command("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", ref, ours).CombinedOutput()
				if err != nil {
					t.Errorf("guest data changed by the repair: %v\n%s", err, out)
				}
			})
		}
	}
}

// TestRepairRebuildGeometries: a refcount of 0 on a data cluster in
// images with many refcount blocks (small clusters), other refcount
// widths and a refcount table that must grow, rebuilt by -r all like
// qemu-img: same messages, same counts, same layout afterwards.
func TestRepairRebuildGeometries(t *testing.T) {
	needQemu(t)
	for _, c := range []struct {
		opts string
		size int64
		io   []string
	}{
		{"cluster_size=512", 16 << 20, []string{"write -P 0x31 0 9M", "write -P 0x32 15M 300k"}},
		{"cluster_size=512,refcount_bits=64", 4 << 20, []string{"write -P 0x33 0 600k", "write -P 0x34 2M 10k"}},
		{"cluster_size=4096,refcount_bits=1", 16 << 20, []string{"write -P 0x35 0 3M"}},
		{"cluster_size=4096,refcount_bits=4", 16 << 20, []string{"write -c -P 0x36 0 1M", "write -P 0x37 4M 1M"}},
		{"compat=0.10", 64 << 20, []string{"write -P 0x38 0 5M", "write -P 0x39 40M 64k"}},
	} {
		t.Run(c.opts, func(t *testing.T) {
			dir := t.TempDir()
			img := filepath.Join(dir, "img.qcow2")
			qemuCreate(t, img, c.opts, c.size)
			qemuIO(t, img, c.io...)
			// The last data cluster of the first write loses its refcount,
			// another cluster's refcount block entry is zeroed too.
			im, err := openFile(t, img, format.Options{})
			if err != nil {
				t.Fatal(err)
			}
			le, err := im.Lookup(0)
			if err != nil || le.Type == format.Unallocated {
				t.Fatalf("lookup: %+v %v", le, err)
			}
			host := le.HostOff
			if le.Type == format.Compressed {
				host = le.Compressed.HostOff
			}
			setRefcount(host/im.Geometry.ClusterSize(), 0)(t, img)
			ours := filepath.Join(dir, "ours.qcow2")
			theirs := filepath.Join(dir, "theirs.qcow2")
			copyFile(t, img, ours)
			copyFile(t, img, theirs)
			_, qmsgs, qcode := qemuRepair(t, theirs, "-r", "all")
			rr := driverRepair(t, ours, block.CheckFixLeaks|block.CheckFixErrors)
			if rr.err != nil || qcode != 0 {
				t.Fatalf("repair: %v; qemu-img exit %d", rr.err, qcode)
			}
			if strings.Join(rr.msgs, "\n") != strings.Join(qmsgs, "\n") {
				t.Errorf("messages:\n%s\nqemu-img:\n%s", strings.Join(rr.msgs, "\n"), strings.Join(qmsgs, "\n"))
			}
			if !strings.Contains(strings.Join(rr.msgs, "\n"), "Rebuilding refcount structure") {
				t.Errorf("no rebuild: %q", rr.msgs)
			}
			qemuCheck(t, ours)
			oj := qemuCheckResult(t, ours)
			qj := qemuCheckResult(t, theirs)
			if oj != qj {
				t.Errorf("after repair %+v; qemu-img's %+v", oj, qj)
			}
			a, err := os.ReadFile(ours)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(theirs)
			ha, _ := format.ParseHeader(a[:4096])
			hb, _ := format.ParseHeader(b[:4096])
			if ha.RefcountTableOffset != hb.RefcountTableOffset || ha.RefcountTableClusters != hb.RefcountTableClusters {
				t.Errorf("refcount table at %#x (%d clusters); qemu-img put it at %#x (%d)", ha.RefcountTableOffset, ha.RefcountTableClusters, hb.RefcountTableOffset, hb.RefcountTableClusters)
			}
			out, err := exec.Command("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", img, ours).CombinedOutput()
			if err != nil {
				t.Errorf("guest data changed by the repair: %v\n%s", err, out)
			}
		})
	}
}

// TestRepairRefusesDamagedEntries: an image with an L2 entry the checker
// cannot count (a compressed descriptor with COPIED set; one merely past
// the end of the file is counted, as QEMU counts it) is not repaired: the
// repair fails naming the problem and the file is unchanged. A read-only
// node cannot repair.
func TestRepairRefusesDamagedEntries(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	img := makeRepairBase(t, dir, false)
	setRefcount16(5, 2)(t, img)                                                     // a leak it would fix
	setU64(0x40000+16*8, format.EntryCompressed|format.EntryCopied|0x50000)(t, img) // compressed with COPIED
	before, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	rr := driverRepair(t, img, block.CheckFixLeaks|block.CheckFixErrors)
	if rr.err == nil || !errors.Is(rr.err, format.ErrCorrupt) || !strings.Contains(rr.err.Error(), "damaged L2 entries") {
		t.Errorf("repair of a damaged image: %v", rr.err)
	}
	after, _ := os.ReadFile(img)
	if !bytes.Equal(before, after) {
		t.Error("the refused repair changed the file")
	}

	e := newTestEnv(t)
	n := e.mustOpen(img, true)
	defer n.Unref()
	if _, err := n.Check(block.CheckFixLeaks); err == nil {
		t.Error("repair on a read-only node succeeded")
	}
}

// memFile is an in-memory repairFile.
type memFile struct{ b []byte }

func (m *memFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memFile) WriteAt(p []byte, off int64) (int, error) {
	if end := off + int64(len(p)); end > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, end-int64(len(m.b)))...)
	}
	return copy(m.b[off:], p), nil
}

func (m *memFile) Sync() error          { return nil }
func (m *memFile) Size() (int64, error) { return int64(len(m.b)), nil }

// mutateRefcounts damages an image the ways a crash or a bug would:
// random refcount values (in existing refcount blocks) and flipped
// COPIED bits in the active L1 table and its L2 tables.
func mutateRefcounts(t *testing.T, b []byte, rng *rand.Rand, n int) {
	im := openBytes(t, b, format.Options{})
	g := &im.Geometry
	cs := g.ClusterSize()
	nb := (int64(len(b)) + cs - 1) / cs
	var l2s []int64
	for _, e := range im.L1 {
		if off := int64(e & format.OffsetMask); off != 0 {
			l2s = append(l2s, off)
		}
	}
	for i := 0; i < n; i++ {
		switch rng.IntN(3) {
		case 0:
			idx := rng.Int64N(nb)
			ti, bi := g.RefcountIndex(idx * cs)
			if ti >= int64(len(im.RefcountTable)) || im.RefcountTable[ti] == 0 {
				continue
			}
			rb := int64(im.RefcountTable[ti])
			v := uint64(rng.IntN(4))
			format.RefcountSet(b[rb:rb+cs], g.RefcountOrder, bi, min(v, format.RefcountMax(g.RefcountOrder)))
		case 1:
			if len(im.L1) == 0 {
				continue
			}
			at := int64(im.Header.L1Offset) + rng.Int64N(int64(len(im.L1)))*8
			if binary.BigEndian.Uint64(b[at:]) != 0 {
				b[at] ^= 0x80
			}
		case 2:
			if len(l2s) == 0 {
				continue
			}
			at := l2s[rng.IntN(len(l2s))] + rng.Int64N(g.L2Entries())*g.L2EntrySize()
			if at+8 <= int64(len(b)) && binary.BigEndian.Uint64(b[at:])&format.OffsetMask != 0 {
				b[at] ^= 0x80
			}
		}
	}
}

// TestRepairRandomDamage: random refcount and COPIED damage on the test
// images (several geometries, compressed clusters, snapshots); a repair
// of everything never panics, and when it succeeds the image checks
// clean (no corruption, no leak) and its guest data is unchanged.
func TestRepairRandomDamage(t *testing.T) {
	seed := uint64(1)
	if v := os.Getenv("RINGBLK_SEED"); v != "" {
		fmt.Sscan(v, &seed)
	}
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 3))
	repaired := 0
	for _, name := range []string{"v3", "v2", "c512", "rc1", "rc64", "comp", "snap", "lazy", "base64m"} {
		orig := loadImage(t, name)
		want := make([]byte, openBytes(t, orig, format.Options{}).Geometry.Size)
		if _, err := openBytes(t, orig, format.Options{}).ReadAt(want, 0, nil); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for round := 0; round < 12; round++ {
			b := append([]byte(nil), orig...)
			mutateRefcounts(t, b, rng, 1+rng.IntN(6))
			f := &memFile{b: b}
			rp := newRepairer(f, block.CheckFixLeaks|block.CheckFixErrors, nil)
			err := rp.run()
			if err != nil || rp.res.CheckErrors != 0 || rp.res.Corruptions != 0 {
				continue // refused (for example a refcount overflow under refcount_bits=1)
			}
			repaired++
			im := openBytes(t, f.b, format.Options{ReadWrite: true})
			res, err := im.Check()
			if err != nil {
				t.Fatalf("%s round %d: check after repair: %v", name, round, err)
			}
			if res.Corruptions != 0 || res.Leaks != 0 || res.CheckErrors != 0 {
				t.Fatalf("%s round %d: after repair %+v\n%q", name, round, res, res.Messages)
			}
			got := make([]byte, len(want))
			if _, err := im.ReadAt(got, 0, nil); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%s round %d: guest data changed by the repair (%v)", name, round, err)
			}
		}
	}
	t.Logf("%d damaged images repaired", repaired)
	if repaired == 0 {
		t.Fatal("no damaged image was repaired")
	}
}

// FuzzRepair: a repair of a fuzzed image (sparse encoding, as
// FuzzQcow2Open) never panics; when a full repair reports success the
// image checks clean.
func FuzzRepair(f *testing.F) {
	for _, name := range []string{"v3", "c512", "rc1", "comp", "snap"} {
		b := loadImage(f, name)
		f.Add(encodeSparse(b, metadataRanges(f, b)), uint8(3))
	}
	f.Fuzz(func(t *testing.T, data []byte, mode uint8) {
		watchdog := time.AfterFunc(20*time.Second, func() { panic("repair hung") }) // a hang becomes a crasher
		defer watchdog.Stop()
		file := decodeSparse(data)
		if file.Size > 8<<20 {
			return
		}
		img := make([]byte, file.Size)
		for _, c := range file.Chunks {
			copy(img[c.Off:], c.Data)
		}
		m := &memFile{b: img}
		rp := newRepairer(m, block.CheckMode(mode&3), nil)
		if rp.run() != nil || mode&3 != 3 || rp.res.CheckErrors != 0 || rp.res.Corruptions != 0 {
			return
		}
		im, err := format.ReadImage(bytes.NewReader(m.b), int64(len(m.b)), format.Options{})
		if err != nil {
			t.Fatalf("repaired image does not open: %v", err)
		}
		res, err := im.Check()
		if err == nil && (res.Corruptions != 0 || res.Leaks != 0) {
			t.Fatalf("after a successful repair: %+v %q", res, res.Messages)
		}
	})
}
