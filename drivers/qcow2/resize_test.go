package qcow2

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// TestQcow2TruncateHidesBacking: growing an overlay whose backing file is
// longer than the old size makes the new area read as zeros, as qemu-img
// resize 7.2 does (zero flags from the next (sub)cluster boundary, real
// zeros for the rest of a partial last cluster). The same overlay is
// grown by qemu-img and by our driver (Truncate, and Amend with a size);
// the qemu-img map outputs must be identical, the content read through our
// node must be qemu-img convert's, and qemu-img check clean. A version 2
// overlay is refused unchanged, as qemu-img refuses it.
func TestQcow2TruncateHidesBacking(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(base, bytes.Repeat([]byte{0xff}, 2<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, opts string
		old, size  int64
		amend      bool
	}{
		{"aligned", "", 512 << 10, 1 << 20, false},
		{"partial-cluster", "", 500 << 10, 1 << 20, false},
		{"past-backing", "", 1 << 20, 4 << 20, false},
		{"extended-l2", "extended_l2=on", 500 << 10, 1 << 20, false},
		{"extended-l2-partial-sub", "extended_l2=on", 509 << 10, 3 << 20, false},
		{"amend", "", 500 << 10, 1 << 20, true},
		{"small-clusters", "cluster_size=4096", 100 << 10, 1 << 20, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want := filepath.Join(dir, c.name+"-qemu.qcow2")
			got := filepath.Join(dir, c.name+"-ours.qcow2")
			for _, img := range []string{want, got} {
				args := []string{"create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw"}
				if c.opts != "" {
					args = append(args, "-o", c.opts)
				}
				qemuImg(t, append(args, img, fmt.Sprint(c.old))...)
			}
			qemuImg(t, "resize", "-q", want, fmt.Sprint(c.size))
			e := newTestEnv(t)
			n := e.mustOpen(got, false)
			var err error
			if c.amend {
				err = Amend(n, AmendOptions{Size: c.size})
			} else {
				err = n.Truncate(c.size)
			}
			if err != nil {
				t.Fatalf("grow to %d: %v", c.size, err)
			}
			ref := convertRaw(t, want)
			checkSame(t, readAll(t, n, 256<<10), ref)
			n.Unref()
			qemuCheck(t, got)
			if w, g := qemuImg(t, "map", "--output=json", want), qemuImg(t, "map", "--output=json", got); !bytes.Equal(w, g) {
				t.Errorf("qemu-img map after the grow:\nqemu-img resize: %s\nours: %s", w, g)
			}
			qemuCompare(t, got, ref)
		})
	}
	t.Run("v2-refused", func(t *testing.T) {
		img := filepath.Join(dir, "v2.qcow2")
		qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", "base.raw", "-F", "raw", img, "512k")
		if out, err := exec.Command("qemu-img", "resize", img, "1M").CombinedOutput(); err == nil || !strings.Contains(string(out), "Failed to zero out new clusters") {
			t.Fatalf("qemu-img resize of a v2 overlay: %v %s (the oracle changed?)", err, out)
		}
		e := newTestEnv(t)
		n := e.mustOpen(img, false)
		err := n.Truncate(1 << 20)
		if !block.IsKind(err, block.Unsupported) || !strings.Contains(err.Error(), "Failed to zero out new clusters") {
			t.Errorf("Truncate of a v2 overlay: %v, want Unsupported naming the zeroing", err)
		}
		if l, _ := n.Length(); l != 512<<10 {
			t.Errorf("length after the refused grow: %d", l)
		}
		n.Unref()
		qemuCheck(t, img)
		if out := qemuImg(t, "info", img); !strings.Contains(string(out), "virtual size: 512 KiB") {
			t.Errorf("size changed on disk:\n%s", out)
		}
	})
}

// TestQcow2GrowL1AfterShrink: growing an image whose new L1 table needs
// several clusters, after a shrink dropped the refcount blocks past the new
// end, finds a contiguous run for the table. It failed with "no contiguous
// space for the L1 table": every try put the new refcount block right
// after the run's first cluster and retried the same clusters (found by
// TestQcow2KillNine with 512-byte clusters and 64-bit refcounts).
func TestQcow2GrowL1AfterShrink(t *testing.T) {
	e := newTestEnv(t)
	path := filepath.Join(t.TempDir(), "regrow.qcow2")
	if err := e.create(path, 1<<20, format.CreateOptions{ClusterSize: 512, RefcountBits: 64}); err != nil {
		t.Fatal(err)
	}
	n := e.mustOpen(path, false)
	data := bytes.Repeat([]byte{0x5a}, 1<<20)
	if _, err := n.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	const keep = 308 << 10
	if err := n.Truncate(keep); err != nil {
		t.Fatal(err)
	}
	// 6 MiB of 32 KiB L2 ranges: 192 L1 entries, three 512-byte clusters.
	if err := n.Truncate(6 << 20); err != nil {
		t.Fatalf("growing to 6 MiB after the shrink: %v", err)
	}
	got := make([]byte, 6<<20)
	if _, err := n.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:keep], data[:keep]) {
		t.Error("the data kept by the shrink differs after the grow")
	}
	if !bytes.Equal(got[keep:], make([]byte, len(got)-keep)) {
		t.Error("the grown range does not read as zeroes")
	}
	n.Unref()
	if _, err := exec.LookPath("qemu-img"); err == nil {
		qemuCheck(t, path)
	}
}
