package qcow2

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/block"
)

// Helpers for matrix_test.go. Virtual disks there are large (64 MiB to
// 11 GiB) but only a few MiB are ever written, so the expected content is
// kept as a sparse model: a few windows of explicit bytes, zeros
// everywhere else. Random workloads only touch bytes inside windows.

type mWindow struct {
	off int64
	b   []byte
}

type mModel struct {
	size int64
	wins []mWindow // sorted, disjoint, not adjacent
}

// newMModel makes a model of an all-zero disk with windows [off, off+n)
// (clipped to the disk).
func newMModel(size int64, wins ...[2]int64) *mModel {
	m := &mModel{size: size}
	for _, w := range wins {
		m.addWindow(w[0], w[1])
	}
	return m
}

// addWindow makes [off, off+n) explicit (zeros where it was not yet),
// merging it with windows it overlaps or touches.
func (m *mModel) addWindow(off, n int64) {
	off = max(0, off)
	end := min(m.size, off+n)
	if off >= end {
		return
	}
	var keep, merged []mWindow
	lo, hi := off, end
	for _, w := range m.wins {
		wend := w.off + int64(len(w.b))
		if wend < lo || w.off > hi {
			keep = append(keep, w)
			continue
		}
		merged = append(merged, w)
		lo, hi = min(lo, w.off), max(hi, wend)
	}
	nw := mWindow{off: lo, b: make([]byte, hi-lo)}
	for _, w := range merged {
		copy(nw.b[w.off-lo:], w.b)
	}
	keep = append(keep, nw)
	slices.SortFunc(keep, func(a, b mWindow) int { return int(a.off - b.off) })
	m.wins = keep
}

func (m *mModel) clone() *mModel {
	c := &mModel{size: m.size}
	for _, w := range m.wins {
		c.wins = append(c.wins, mWindow{w.off, append([]byte(nil), w.b...)})
	}
	return c
}

// resize changes the disk size: windows past the new end are cut, a
// grown disk reads zeros in the new space.
func (m *mModel) resize(size int64) {
	m.size = size
	var keep []mWindow
	for _, w := range m.wins {
		if w.off >= size {
			continue
		}
		if end := w.off + int64(len(w.b)); end > size {
			w.b = w.b[:size-w.off]
		}
		keep = append(keep, w)
	}
	m.wins = keep
}

// set writes p at off (which must be inside one window).
func (m *mModel) set(off int64, p []byte) {
	for _, w := range m.wins {
		if off >= w.off && off+int64(len(p)) <= w.off+int64(len(w.b)) {
			copy(w.b[off-w.off:], p)
			return
		}
	}
	panic(fmt.Sprintf("model: %d+%d outside every window", off, len(p)))
}

func (m *mModel) zero(off, n int64) {
	for _, w := range m.wins {
		lo, hi := max(off, w.off), min(off+n, w.off+int64(len(w.b)))
		if lo < hi {
			clear(w.b[lo-w.off : hi-w.off])
		}
	}
}

// load fills every window from a raw file (qemu-img convert's output).
func (m *mModel) load(t *testing.T, rawPath string) {
	t.Helper()
	f, err := os.Open(rawPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, w := range m.wins {
		if _, err := f.ReadAt(w.b, w.off); err != nil {
			t.Fatalf("read %s at %d: %v", rawPath, w.off, err)
		}
	}
}

// loadFromImage fills the model's windows with img's content as QEMU
// reads it, and checks that QEMU sees zeros everywhere else.
func (m *mModel) loadFromImage(t *testing.T, img string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "content.raw")
	qemuImg(t, "convert", "-O", "raw", img, p)
	m.load(t, p)
	m.qemuCompare(t, img)
}

// writeRaw writes the model as a sparse raw file.
func (m *mModel) writeRaw(t *testing.T, p string) {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(m.size); err != nil {
		t.Fatal(err)
	}
	for _, w := range m.wins {
		if _, err := f.WriteAt(w.b, w.off); err != nil {
			t.Fatal(err)
		}
	}
}

// qemuCompare: qemu-img compare img (qcow2, with its backing chain)
// against the model as raw exits 0.
func (m *mModel) qemuCompare(t *testing.T, img string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "model.raw")
	m.writeRaw(t, p)
	if code, out := qemuExit(t, "compare", "-f", "qcow2", "-F", "raw", img, p); code != 0 {
		t.Fatalf("qemu-img compare %s against the model: exit %d\n%s", filepath.Base(img), code, out)
	}
}

// verify reads every window through the node, and a few probes outside
// the windows that must read zeros.
func (m *mModel) verify(t *testing.T, n *block.Node) {
	t.Helper()
	if l, err := n.Length(); err != nil || l != m.size {
		t.Fatalf("node length %d (%v), model %d", l, err, m.size)
	}
	for _, w := range m.wins {
		got := make([]byte, len(w.b))
		for off := 0; off < len(got); off += 1 << 20 {
			if _, err := n.ReadAt(got[off:min(len(got), off+1<<20)], w.off+int64(off)); err != nil {
				t.Fatalf("read %d: %v", w.off+int64(off), err)
			}
		}
		if i := firstDiff(got, w.b); i >= 0 {
			t.Fatalf("guest byte %#x: got %#x, want %#x", w.off+int64(i), got[i], w.b[i])
		}
	}
	rng := rand.New(rand.NewPCG(uint64(m.size), 1))
	probe := make([]byte, 8192)
	for i := 0; i < 16; i++ {
		off := rng.Int64N(max(1, m.size-int64(len(probe)))) &^ 511
		end := min(m.size, off+int64(len(probe)))
		inside := false
		for _, w := range m.wins {
			if off < w.off+int64(len(w.b)) && end > w.off {
				inside = true
			}
		}
		if inside || off >= end {
			continue
		}
		if _, err := n.ReadAt(probe[:end-off], off); err != nil {
			t.Fatalf("probe read %d: %v", off, err)
		}
		for j, b := range probe[:end-off] {
			if b != 0 {
				t.Fatalf("guest byte %#x outside the written windows is %#x, want 0", off+int64(j), b)
			}
		}
	}
}

// mWorkload applies a seeded random mix of writes (whole clusters,
// sectors, arbitrary bytes), compressed whole-cluster writes, write-zeroes
// (with and without unmap), discards (when discardOK) and flushes inside
// the model's windows, through the node and to the model. (No zstd
// images: the driver refuses compressed writes to those.)
func mWorkload(t *testing.T, n *block.Node, m *mModel, seed uint64, ops int, cs int64, discardOK bool) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 0x5851f42d4c957f2d))
	for i := 0; i < ops; i++ {
		w := m.wins[rng.IntN(len(m.wins))]
		wlo, whi := w.off, w.off+int64(len(w.b))
		var off, ln int64
		switch rng.IntN(4) {
		case 0: // whole clusters
			first := (wlo + cs - 1) / cs * cs
			if first >= whi {
				off, ln = wlo, min(whi-wlo, 512)
				break
			}
			off = first + rng.Int64N(max(1, (whi-first)/cs))*cs
			ln = min(whi-off, cs*(1+rng.Int64N(3)))
		case 1: // sector aligned
			first := (wlo + 511) / 512 * 512
			off = first + rng.Int64N(max(1, (whi-first)/512))*512
			ln = min(whi-off, 512*(1+rng.Int64N(2*cs/512)))
		default:
			off = wlo + rng.Int64N(whi-wlo)
			ln = min(whi-off, 1+rng.Int64N(2*cs))
		}
		if ln <= 0 {
			continue
		}
		switch rng.IntN(10) {
		case 0:
			if !discardOK {
				break
			}
			if err := n.Discard(off, ln); err != nil {
				t.Fatalf("op %d: discard %d+%d: %v", i, off, ln, err)
			}
			// Whole clusters read zeros afterwards (and the partial last
			// cluster of the disk when the range reaches the end).
			for c := (off + cs - 1) / cs * cs; c < off+ln; c += cs {
				if c+cs <= off+ln || off+ln == m.size {
					m.zero(c, min(cs, m.size-c))
				}
			}
			continue
		case 1:
			var fl block.Flags
			if rng.IntN(2) == 0 {
				fl = block.MayUnmap
			}
			if err := n.WriteZeroes(off, ln, fl); err != nil {
				t.Fatalf("op %d: write-zeroes %d+%d: %v", i, off, ln, err)
			}
			m.zero(off, ln)
			continue
		}
		if rng.IntN(12) == 0 {
			// A whole cluster, compressed (compressible data).
			c := (off + cs - 1) / cs * cs
			if c+cs <= whi {
				buf := make([]byte, cs)
				for j := range buf {
					buf[j] = byte(i) + byte(j%13)
				}
				if _, err := n.WriteCompressed(buf, c); err != nil {
					t.Fatalf("op %d: compressed write at %d: %v", i, c, err)
				}
				m.set(c, buf)
				continue
			}
		}
		buf := make([]byte, ln)
		s := byte(seed*31 + uint64(i)*7)
		for j := range buf {
			buf[j] = s + byte(j>>9)
		}
		if _, err := n.WriteAt(buf, off); err != nil {
			t.Fatalf("op %d: write %d+%d: %v", i, off, ln, err)
		}
		m.set(off, buf)
		if rng.IntN(12) == 0 {
			if err := n.Flush(); err != nil {
				t.Fatalf("op %d: flush: %v", i, err)
			}
		}
	}
}

// qemuExit runs qemu-img and returns its exit code and output.
func qemuExit(t *testing.T, args ...string) (int, string) {
	t.Helper()
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatalf("qemu-img %s: %v", strings.Join(args, " "), err)
	}
	return 0, string(out)
}

// qemuCheckClean: qemu-img check exits 0 (no corruption, no leak).
func qemuCheckClean(t *testing.T, img string) {
	t.Helper()
	if code, out := qemuExit(t, "check", img); code != 0 {
		t.Fatalf("qemu-img check %s: exit %d\n%s", filepath.Base(img), code, out)
	}
}

// mInfo is the part of qemu-img info --output=json the matrix checks.
type mInfo struct {
	VirtualSize     int64  `json:"virtual-size"`
	ClusterSize     int64  `json:"cluster-size"`
	DirtyFlag       bool   `json:"dirty-flag"`
	BackingFilename string `json:"backing-filename"`
	BackingFormat   string `json:"backing-filename-format"`
	Snapshots       []struct {
		Name string `json:"name"`
	} `json:"snapshots"`
	FormatSpecific struct {
		Data struct {
			Compat        string `json:"compat"`
			LazyRefcounts bool   `json:"lazy-refcounts"`
			RefcountBits  int    `json:"refcount-bits"`
			Corrupt       bool   `json:"corrupt"`
			ExtendedL2    bool   `json:"extended-l2"`
			Bitmaps       []struct {
				Name string `json:"name"`
			} `json:"bitmaps"`
		} `json:"data"`
	} `json:"format-specific"`
}

func mQemuInfo(t *testing.T, img string) mInfo {
	t.Helper()
	out := qemuImg(t, "info", "--output=json", img)
	var i mInfo
	if err := json.Unmarshal(out, &i); err != nil {
		t.Fatalf("qemu-img info json: %v\n%s", err, out)
	}
	return i
}

// qemuHealthy runs the checks of qcow2.md §5.2 item 2 on an image the
// driver wrote: check exits 0, compare against the model exits 0, info
// shows corrupt:false and dirty-flag:false, and QEMU can still write it
// with every overlap check on (the write goes into the model, and check
// stays clean).
func (m *mModel) qemuHealthy(t *testing.T, img string) {
	t.Helper()
	qemuCheckClean(t, img)
	m.qemuCompare(t, img)
	info := mQemuInfo(t, img)
	if info.FormatSpecific.Data.Corrupt || info.DirtyFlag {
		t.Fatalf("qemu-img info: corrupt %v, dirty-flag %v", info.FormatSpecific.Data.Corrupt, info.DirtyFlag)
	}
	if info.VirtualSize != m.size {
		t.Fatalf("qemu-img info: virtual-size %d, model %d", info.VirtualSize, m.size)
	}
	w := m.wins[0]
	n := min(int64(len(w.b)), 64<<10)
	out, err := exec.Command("qemu-io", "-c", "open -o driver=qcow2,overlap-check=all "+img,
		"-c", fmt.Sprintf("write -P 0x6b %d %d", w.off, n)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "wrote ") || strings.Contains(string(out), "failed") {
		t.Fatalf("qemu-io write with overlap-check=all: %v\n%s", err, out)
	}
	m.set(w.off, fill(0x6b, n))
	qemuCheckClean(t, img)
}
