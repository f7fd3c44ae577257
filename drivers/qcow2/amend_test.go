package qcow2

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// headerCluster returns the first cluster of an image file.
func headerCluster(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := format.ParseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	return b[:h.ClusterSize()]
}

func amendCopyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func boolPtr(b bool) *bool    { return &b }
func strPtr(s string) *string { return &s }
func rawOf(t *testing.T, img string) []byte {
	t.Helper()
	p := img + ".raw"
	qemuImg(t, "convert", "-O", "raw", img, p)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestQcow2Amend: each amend is applied by Amend to one copy of an image
// and by qemu-img amend (or rebase -u for the backing name) to another;
// the header clusters come out byte-identical, qemu-img check accepts the
// result, the content is unchanged and qemu-img map classifies the disk
// the same way.
func TestQcow2Amend(t *testing.T) {
	needQemu(t)
	type tc struct {
		name     string
		create   string   // qemu-img create -o
		backing  bool     // with base.raw as backing file
		setup    []string // qemu-io commands before the amend
		o        AmendOptions
		qemuArgs []string // qemu-img arguments doing the same (image appended)
	}
	zeroSetup := []string{"write -P 1 0 192k", "write -z 0 64k", "write -z -u 128k 64k", "write -z 320k 64k", "write -P 2 500k 3k"}
	cases := []tc{
		{"downgrade", "", false, zeroSetup, AmendOptions{Version: 2}, []string{"amend", "-o", "compat=0.10"}},
		{"downgrade-backing", "", true, zeroSetup, AmendOptions{Version: 2}, []string{"amend", "-o", "compat=0.10"}},
		{"downgrade-4k", "cluster_size=4096", false, zeroSetup, AmendOptions{Version: 2}, []string{"amend", "-o", "compat=0.10"}},
		{"upgrade", "compat=0.10", false, []string{"write -P 3 0 100k"}, AmendOptions{Version: 3}, []string{"amend", "-o", "compat=1.1"}},
		{"upgrade-4k", "compat=0.10,cluster_size=4096", false, nil, AmendOptions{Version: 3}, []string{"amend", "-o", "compat=1.1"}},
		{"upgrade-backing", "compat=0.10", true, nil, AmendOptions{Version: 3}, []string{"amend", "-o", "compat=1.1"}},
		{"lazy-on", "", false, []string{"write -P 3 0 100k"}, AmendOptions{LazyRefcounts: boolPtr(true)}, []string{"amend", "-o", "lazy_refcounts=on"}},
		{"lazy-off", "lazy_refcounts=on", false, []string{"write -P 3 0 100k"}, AmendOptions{LazyRefcounts: boolPtr(false)}, []string{"amend", "-o", "lazy_refcounts=off"}},
		{"downgrade-lazy", "lazy_refcounts=on", false, zeroSetup, AmendOptions{Version: 2}, []string{"amend", "-o", "compat=0.10"}},
		{"grow", "", false, []string{"write -P 3 0 100k"}, AmendOptions{Size: 3 << 20}, []string{"amend", "-o", "size=3145728"}},
		{"grow-l1", "cluster_size=512", false, []string{"write -P 3 0 10k"}, AmendOptions{Size: 64 << 20}, []string{"amend", "-o", "size=67108864"}},
		{"backing-set", "", false, []string{"write -P 3 0 100k"}, AmendOptions{BackingFile: strPtr("base.raw"), BackingFormat: strPtr("raw")},
			[]string{"rebase", "-u", "-b", "base.raw", "-F", "raw"}},
		{"backing-change", "", true, []string{"write -P 3 0 100k"}, AmendOptions{BackingFile: strPtr("base2.raw")},
			[]string{"rebase", "-u", "-b", "base2.raw", "-F", "raw"}},
		{"backing-remove", "", true, []string{"write -P 3 0 100k"}, AmendOptions{BackingFile: strPtr("")},
			[]string{"rebase", "-u", "-b", ""}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			base := bytes.Repeat([]byte{0xab, 0xcd}, 512<<9)
			for _, n := range []string{"base.raw", "base2.raw"} {
				if err := os.WriteFile(filepath.Join(dir, n), base, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			opts := c.create
			if c.backing {
				opts = strings.TrimPrefix(opts+",backing_file=base.raw,backing_fmt=raw", ",")
			}
			ours, theirs := filepath.Join(dir, "ours.qcow2"), filepath.Join(dir, "theirs.qcow2")
			qemuCreate(t, ours, opts, 1<<20)
			if len(c.setup) > 0 {
				qemuIO(t, ours, c.setup...)
			}
			amendCopyFile(t, ours, theirs)
			before := rawOf(t, ours)
			e := newTestEnv(t)
			n := e.mustOpen(ours, false)
			if err := Amend(n, c.o); err != nil {
				t.Fatalf("Amend: %v", err)
			}
			n.Unref()
			qemuImg(t, append(c.qemuArgs, theirs)...)
			qemuCheck(t, ours)
			if a, b := headerCluster(t, ours), headerCluster(t, theirs); !bytes.Equal(a, b) {
				t.Errorf("header cluster differs from qemu-img's at %d", firstDiff(a, b))
			}
			ia, ib := qemuInfo(t, ours), qemuInfo(t, theirs)
			ja, _ := json.Marshal(ia)
			jb, _ := json.Marshal(ib)
			if !bytes.Equal(ja, jb) {
				t.Errorf("qemu-img info differs:\nours   %s\ntheirs %s", ja, jb)
			}
			after, want := rawOf(t, ours), rawOf(t, theirs)
			checkSame(t, after, want)
			if c.o.BackingFile == nil && c.o.Size == 0 {
				checkSame(t, after, before) // an amend never changes the content
			}
			if ma, mb := qemuMapNoOffsets(t, ours), qemuMapNoOffsets(t, theirs); ma != mb {
				t.Errorf("qemu-img map differs:\nours\n%stheirs\n%s", ma, mb)
			}
		})
	}
}

// TestQcow2AmendRefusals: what qemu-img amend refuses is refused with its
// message, and the image is left unchanged.
func TestQcow2AmendRefusals(t *testing.T) {
	needQemu(t)
	cases := []struct {
		create string
		o      AmendOptions
		want   string
	}{
		{"extended_l2=on", AmendOptions{Version: 2}, "Cannot downgrade an image with incompatible features 0x10 set"},
		{"refcount_bits=8", AmendOptions{Version: 2}, "compat=0.10 requires refcount_bits=16"},
		{"", AmendOptions{Version: 2, RefcountBits: 8}, "Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)"},
		{"", AmendOptions{Version: 2, LazyRefcounts: boolPtr(true)}, "Lazy refcounts only supported with compatibility level 1.1 and above"},
		{"compat=0.10", AmendOptions{LazyRefcounts: boolPtr(true)}, "Lazy refcounts only supported with compatibility level 1.1 and above"},
		{"", AmendOptions{Version: 4}, "Unknown compatibility level"},
		{"", AmendOptions{RefcountBits: 12}, "Refcount width must be a power of two and may not exceed 64 bits"},
		{"", AmendOptions{BackingFormat: strPtr("raw")}, "backing format specified without a backing file"},
		{"compression_type=zstd", AmendOptions{Version: 2}, "Cannot downgrade an image with incompatible features 0x8 set"},
	}
	for _, c := range cases {
		img := filepath.Join(t.TempDir(), "x.qcow2")
		qemuCreate(t, img, c.create, 1<<20)
		before, _ := os.ReadFile(img)
		e := newTestEnv(t)
		n := e.mustOpen(img, false)
		err := Amend(n, c.o)
		n.Unref()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q %+v: err = %v, want %q", c.create, c.o, err, c.want)
		}
		if after, _ := os.ReadFile(img); !bytes.Equal(before, after) {
			t.Errorf("%q %+v: refused amend changed the image at %d", c.create, c.o, firstDiff(before, after))
		}
	}
}

// TestQcow2AmendKeepsBitmaps: a header-only amend of an image with
// persistent bitmaps keeps the bitmaps extension and its autoclear bit
// (qemu-img amend keeps the bitmaps too, though QEMU also rewrites their
// directory when it closes the image, so the bytes differ).
func TestQcow2AmendKeepsBitmaps(t *testing.T) {
	needQemu(t)
	img := filepath.Join(t.TempDir(), "bitmap.qcow2")
	if err := os.WriteFile(img, loadImage(t, "bitmap"), 0o644); err != nil {
		t.Fatal(err)
	}
	before, err := format.ParseHeader(headerCluster(t, img))
	if err != nil {
		t.Fatal(err)
	}
	if before.Bitmaps == nil || before.AutoclearFeatures&1 == 0 {
		t.Fatalf("testdata bitmap image has no consistent bitmaps (autoclear %#x)", before.AutoclearFeatures)
	}
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	if err := Amend(n, AmendOptions{LazyRefcounts: boolPtr(true)}); err != nil {
		t.Fatal(err)
	}
	n.Unref()
	qemuCheck(t, img)
	after, err := format.ParseHeader(headerCluster(t, img))
	if err != nil {
		t.Fatal(err)
	}
	// The bitmaps are stored again at close (a new directory): same
	// count, still trusted.
	if after.Bitmaps == nil || after.Bitmaps.Count != before.Bitmaps.Count || after.AutoclearFeatures != before.AutoclearFeatures {
		t.Errorf("bitmaps %+v autoclear %#x, want %+v %#x", after.Bitmaps, after.AutoclearFeatures, before.Bitmaps, before.AutoclearFeatures)
	}
	if after.CompatibleFeatures != before.CompatibleFeatures|format.CompatLazyRefcounts {
		t.Errorf("compatible features %#x, want lazy refcounts added to %#x", after.CompatibleFeatures, before.CompatibleFeatures)
	}
	if info := qemuImg(t, "info", img); !bytes.Contains(info, []byte("name: b0")) {
		t.Errorf("qemu-img info lost the bitmap:\n%s", info)
	}
}

// TestQcow2AmendUpgradeShortSnapshots (issue 14): a version 2 image whose
// snapshot entries carry less than the 16 bytes of extra data version 3
// requires. After amend compat=1.1, qemu-img check must find the image
// clean (it calls such entries corrupt), as after qemu-img amend, and the
// snapshot must still restore its data.
func TestQcow2AmendUpgradeShortSnapshots(t *testing.T) {
	needQemu(t)
	for _, extra := range []uint32{0, 8} {
		t.Run(fmt.Sprint("extra-", extra), func(t *testing.T) {
			dir := t.TempDir()
			img := filepath.Join(dir, "v2.qcow2")
			qemuCreate(t, img, "compat=0.10", 1<<20)
			qemuIO(t, img, "write -P 1 0 64k")
			qemuImg(t, "snapshot", "-c", "s1", img)
			qemuIO(t, img, "write -P 2 0 64k")
			qemuImg(t, "snapshot", "-c", "s2", img)
			shortSnapshotExtra(extra)(t, img)
			qemuCheck(t, img) // fine for version 2
			theirs := filepath.Join(dir, "theirs.qcow2")
			copyFile(t, img, theirs)
			qemuImg(t, "amend", "-o", "compat=1.1", theirs)
			qemuCheck(t, theirs) // the oracle

			e := newTestEnv(t)
			n := e.mustOpen(img, false)
			if err := Amend(n, AmendOptions{Version: 3}); err != nil {
				t.Fatalf("amend: %v", err)
			}
			n.Unref()
			if out, err := exec.Command("qemu-img", "check", img).CombinedOutput(); err != nil {
				t.Fatalf("qemu-img check after our upgrade: %v\n%s", err, out)
			}
			im, err := openFile(t, img, format.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if im.Header.Version != 3 {
				t.Fatalf("version %d after the upgrade", im.Header.Version)
			}
			for i, s := range im.Snapshots {
				if s.ExtraDataSize < 16 || s.DiskSize != 1<<20 {
					t.Errorf("snapshot %d: extra data %d, disk size %d", i, s.ExtraDataSize, s.DiskSize)
				}
			}
			res, err := im.Check()
			if err != nil || res.Corruptions != 0 {
				t.Errorf("our check after the upgrade: %+v %v", res, err)
			}
			qemuImg(t, "snapshot", "-a", "s1", img)
			qemuIO(t, img, "read -P 1 0 64k")
		})
	}
}
