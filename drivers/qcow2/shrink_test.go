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
)

// TestQcow2ShrinkLikeQemu: the same qemu-img-made image is shrunk by
// qemu-img resize --shrink 7.2 and by our driver's Truncate. Ours must be
// qemu-img check clean, read (through qemu-img) exactly as qemu-img's
// shrunk copy, map identically, and end no later than qemu-img's file
// (the tail past the last used cluster is cut). Growing both back to the
// old size must read the same again: the clusters past the new end were
// dropped, not kept as zero clusters or data (a full discard).
func TestQcow2ShrinkLikeQemu(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(base, bytes.Repeat([]byte{0x5a}, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	fill := []string{
		"write -P 0x11 0 1M", "write -P 0x22 1M 1M", "write -c -P 0x33 2M 128k",
		"write -z 2304k 128k", "write -P 0x44 3M 64k", "write -P 0x55 3583k 1k",
	}
	cases := []struct {
		name, opts string
		backing    bool
		cmds       []string // after fill
		size       int64
		old        int64
	}{
		{"plain", "", false, nil, 1<<20 + 520<<10, 4 << 20},
		{"cluster-aligned", "", false, nil, 2 << 20, 4 << 20},
		{"small-clusters", "cluster_size=512", false, nil, 300 << 10, 4 << 20},
		{"extended-l2", "extended_l2=on", false, nil, 1<<20 + 8<<10, 4 << 20},
		{"backing-partial", "", true, nil, 520 << 10, 4 << 20},
		{"snapshot", "", false, []string{"snap"}, 1 << 20, 4 << 20},
		{"to-one-cluster", "cluster_size=4096", false, nil, 4096, 4 << 20},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want := filepath.Join(dir, c.name+"-qemu.qcow2")
			got := filepath.Join(dir, c.name+"-ours.qcow2")
			args := []string{"create", "-q", "-f", "qcow2"}
			if c.backing {
				args = append(args, "-b", "base.raw", "-F", "raw")
			}
			if c.opts != "" {
				args = append(args, "-o", c.opts)
			}
			qemuImg(t, append(args, want, fmt.Sprint(c.old))...)
			qemuIO(t, want, fill...)
			for _, cmd := range c.cmds {
				if cmd == "snap" {
					qemuImg(t, "snapshot", "-c", "s1", want)
					qemuIO(t, want, "write -P 0x66 0 2M", "write -P 0x77 3M 1M")
				}
			}
			copyFile(t, want, got)

			qemuImg(t, "resize", "-q", "--shrink", want, fmt.Sprint(c.size))
			e := newTestEnv(t)
			n := e.mustOpen(got, false)
			if err := n.Truncate(c.size); err != nil {
				t.Fatalf("shrink to %d: %v", c.size, err)
			}
			if l, _ := n.Length(); l != c.size {
				t.Errorf("length after the shrink: %d, want %d", l, c.size)
			}
			ref := convertRaw(t, want)
			checkSame(t, readAll(t, n, 256<<10), ref)
			n.Unref()
			qemuCheck(t, got)
			qemuCompare(t, got, ref)
			if w, g := qemuImg(t, "map", "--output=json", want), qemuImg(t, "map", "--output=json", got); !bytes.Equal(w, g) {
				t.Errorf("qemu-img map after the shrink:\nqemu-img: %s\nours:     %s", w, g)
			}
			if wi, gi := fileSize(t, want), fileSize(t, got); gi > wi {
				t.Errorf("file is %d bytes after the shrink, qemu-img's %d", gi, wi)
			}
			if c.cmds != nil {
				// The snapshot still reads as it was taken.
				w := convertSnapshot(t, want, "s1")
				g := convertSnapshot(t, got, "s1")
				checkSame(t, g, w)
			}

			// Grow back: both must read alike past the old end too.
			qemuImg(t, "resize", "-q", want, fmt.Sprint(c.old))
			n = e.mustOpen(got, false)
			if err := n.Truncate(c.old); err != nil {
				t.Fatalf("grow back to %d: %v", c.old, err)
			}
			ref = convertRaw(t, want)
			checkSame(t, readAll(t, n, 256<<10), ref)
			n.Unref()
			qemuCheck(t, got)
		})
	}
}

// TestQcow2ShrinkRefused: shrinking a version 2 image with snapshots is
// refused unchanged, as qemu-img refuses it.
func TestQcow2ShrinkRefused(t *testing.T) {
	needQemu(t)
	img := filepath.Join(t.TempDir(), "v2.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "compat=0.10", img, "1M")
	qemuIO(t, img, "write -P 0x11 0 1M")
	qemuImg(t, "snapshot", "-c", "s1", img)
	if out, err := exec.Command("qemu-img", "resize", "--shrink", img, "512k").CombinedOutput(); err == nil || !strings.Contains(string(out), "v2 image which has snapshots") {
		t.Fatalf("qemu-img resize --shrink of a v2 image with snapshots: %v %s (the oracle changed?)", err, out)
	}
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	err := n.Truncate(512 << 10)
	if !block.IsKind(err, block.Unsupported) || !strings.Contains(err.Error(), "snapshots") {
		t.Errorf("shrink of a v2 image with snapshots: %v, want Unsupported naming the snapshots", err)
	}
	if l, _ := n.Length(); l != 1<<20 {
		t.Errorf("length after the refused shrink: %d", l)
	}
	n.Unref()
	qemuCheck(t, img)
}

// convertSnapshot reads snapshot name of img through qemu-img convert -l.
func convertSnapshot(t *testing.T, img, name string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "snap.raw")
	if b, err := exec.Command("qemu-img", "convert", "-l", "snapshot.name="+name, "-O", "raw", img, out).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert -l %s: %v\n%s", name, err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestQcow2AmendShrinks: amend with a smaller size shrinks as qemu-img
// amend -o size= 7.2 does (same content and map as its result on a copy,
// check clean).
func TestQcow2AmendShrinks(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	want := filepath.Join(dir, "qemu.qcow2")
	got := filepath.Join(dir, "ours.qcow2")
	qemuCreate(t, want, "", 4<<20)
	qemuIO(t, want, "write -P 0x11 0 3M", "write -P 0x22 3M 1M")
	copyFile(t, want, got)
	qemuImg(t, "amend", "-o", "size=1536k", want)
	e := newTestEnv(t)
	n := e.mustOpen(got, false)
	if err := Amend(n, AmendOptions{Size: 1536 << 10}); err != nil {
		t.Fatalf("amend size=1536k: %v", err)
	}
	n.Unref()
	qemuCheck(t, got)
	checkSame(t, convertRaw(t, got), convertRaw(t, want))
	if w, g := qemuImg(t, "map", "--output=json", want), qemuImg(t, "map", "--output=json", got); !bytes.Equal(w, g) {
		t.Errorf("qemu-img map:\nqemu-img amend: %s\nours: %s", w, g)
	}
}
