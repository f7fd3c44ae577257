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

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/qcow2/format/formattest"
	"github.com/ringblk/ringblk/drivers/raw"
)

// External data files (datafile.go): images made by qemu-img 7.2 read and
// written here, images made here read and checked by qemu-img, with
// qemu-img convert -O raw as the oracle for guest content.

// openDataFileImage opens the qcow2 image at path with a data file opener
// that resolves names against the image's directory; dataRO opens the
// data file read-only whatever the image is (a data file that fails
// every write).
func (e *testEnv) openDataFileImage(path string, readOnly, dataRO bool) (*block.Node, error) {
	file, err := raw.NewNode(e.g, path, raw.Options{ReadOnly: readOnly, Locking: raw.LockingOff}, block.Options{})
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	opts := DriverOptions{
		ID: fileID(path),
		DataFile: func(req DataFileRequest) (*block.Node, error) {
			p := req.Name
			if !filepath.IsAbs(p) {
				p = filepath.Join(dir, p)
			}
			ro := req.ReadOnly || dataRO
			return raw.NewNode(e.g, p, raw.Options{ReadOnly: ro, Locking: raw.LockingOff}, block.Options{ReadOnly: ro})
		},
	}
	return NewNode(e.g, file, opts, block.Options{ReadOnly: readOnly})
}

// qemuRaw returns the guest content of img as qemu-img convert -O raw
// reads it.
func qemuRaw(t *testing.T, img string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.raw")
	qemuImg(t, "convert", "-f", "qcow2", "-O", "raw", img, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestQcow2DataFileQemuMade: an image qemu-img made with data_file=
// (relative name) and qemu-io filled (guest cluster 0 included, whose
// host offset is 0, zero writes and a discard) reads here exactly as
// qemu-img reads it; writes made here (into cluster 0, new clusters, a
// zeroed one) read back the same through qemu-img, whose check is clean.
func TestQcow2DataFileQemuMade(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "t.qcow2")
	t.Chdir(dir) // qemu-img takes a relative data file name against its working directory
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "data_file=t.data", img, "8M")
	qemuIO(t, img, "write -P 0x11 0 64k", "write -P 0x22 1M 2M", "write -z 2M 64k", "discard 2560k 64k", "write -P 0x33 7M 100k")
	e := newTestEnv(t)
	n, err := e.openDataFileImage(img, false, false)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := readAll(t, n, 1<<20), qemuRaw(t, img); !bytes.Equal(got, want) {
		t.Fatalf("guest content differs from qemu-img's at byte %d", firstDiff(got, want))
	}
	for _, w := range []struct {
		b      byte
		off, n int64
	}{{0x44, 4096, 8192}, {0x55, 5 << 20, 192 << 10}, {0x66, 2<<20 + 512, 512}} {
		if _, err := n.WriteAt(bytes.Repeat([]byte{w.b}, int(w.n)), w.off); err != nil {
			t.Fatalf("write at %d: %v", w.off, err)
		}
	}
	if err := n.WriteZeroes(1<<20, 64<<10, 0); err != nil {
		t.Fatal(err)
	}
	want := readAll(t, n, 1<<20)
	if err := n.Unref(); err != nil {
		t.Fatal(err)
	}
	qemuImgCheckClean(t, img)
	if got := qemuRaw(t, img); !bytes.Equal(got, want) {
		t.Fatalf("qemu-img reads byte %d differently from what was written here", firstDiff(got, want))
	}
	if st, err := os.Stat(img); err != nil || st.Size() > 1<<20 {
		t.Fatalf("the qcow2 file holds data (size %v, %v): data clusters must go to the data file", st.Size(), err)
	}
}

// TestQcow2DataFileCreatedHere: CreateWithDataFile makes images qemu-img
// reports and checks as qemu-img create's (data file name, raw flag, file
// sizes with metadata preallocation), and data qemu-io writes reads back
// here; with data_file_raw the data file is the disk, byte for byte.
func TestQcow2DataFileCreatedHere(t *testing.T) {
	needQemu(t)
	for _, tc := range []struct {
		name     string
		raw      bool
		prealloc format.Prealloc
		qcowSize int64 // the qcow2 file, as qemu-img create leaves it
	}{
		{"off", false, format.PreallocOff, 196616},
		{"metadata", false, format.PreallocMetadata, 327680},
		{"raw", true, format.PreallocOff, 327680},
		{"falloc", false, format.PreallocFalloc, 327680},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			t.Chdir(dir) // where qemu-img looks for the relative name
			img, data := filepath.Join(dir, "t.qcow2"), filepath.Join(dir, "t.data")
			e := newTestEnv(t)
			f, err := newFileNode(t, e, img)
			if err != nil {
				t.Fatal(err)
			}
			dn, err := newFileNode(t, e, data)
			if err != nil {
				t.Fatal(err)
			}
			o := format.CreateOptions{DataFile: "t.data", DataFileRaw: tc.raw, Preallocation: tc.prealloc}
			if err := CreateWithDataFile(f, dn, 64<<20, o); err != nil {
				t.Fatal(err)
			}
			f.Unref()
			dn.Unref()
			if st, _ := os.Stat(img); st.Size() != tc.qcowSize {
				t.Errorf("qcow2 file is %d bytes, qemu-img create makes %d", st.Size(), tc.qcowSize)
			}
			if st, _ := os.Stat(data); st.Size() != 64<<20 {
				t.Errorf("data file is %d bytes, want the disk size", st.Size())
			}
			out, err := exec.Command("qemu-img", "info", "--output=json", img).Output()
			if err != nil {
				t.Fatal(err)
			}
			var info struct {
				FormatSpecific struct {
					Data struct {
						DataFile    string `json:"data-file"`
						DataFileRaw bool   `json:"data-file-raw"`
					} `json:"data"`
				} `json:"format-specific"`
			}
			if err := json.Unmarshal(out, &info); err != nil {
				t.Fatal(err)
			}
			if d := info.FormatSpecific.Data; d.DataFile != "t.data" || d.DataFileRaw != tc.raw {
				t.Errorf("qemu-img info: data-file %q raw %v, want t.data %v", d.DataFile, d.DataFileRaw, tc.raw)
			}
			qemuImgCheckClean(t, img)
			qemuIO(t, img, "write -P 0x77 0 128k", "write -P 0x78 32M 1M")
			qemuImgCheckClean(t, img)
			n, err := e.openDataFileImage(img, true, false)
			if err != nil {
				t.Fatal(err)
			}
			got := readAll(t, n, 4<<20)
			n.Unref()
			if want := qemuRaw(t, img); !bytes.Equal(got, want) {
				t.Fatalf("read here differs from qemu-img at byte %d", firstDiff(got, want))
			}
			if tc.raw {
				b, err := os.ReadFile(data)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(b, got) {
					t.Fatalf("data_file_raw: the data file differs from the disk at byte %d", firstDiff(b, got))
				}
			}
		})
	}
}

// TestQcow2DataFileRawZeroes: with data_file_raw a write-zeroes reaches
// the data file too (it must stay the disk's raw image); without it, the
// data file keeps its old bytes under a zero cluster, as in QEMU.
func TestQcow2DataFileRawZeroes(t *testing.T) {
	for _, rawFlag := range []bool{false, true} {
		_, data, n := newDataFileImage(t, rawFlag)
		if _, err := n.WriteAt(bytes.Repeat([]byte{0xaa}, 128<<10), 0); err != nil {
			t.Fatal(err)
		}
		if err := n.WriteZeroes(0, 64<<10, 0); err != nil {
			t.Fatal(err)
		}
		mustRead(t, n, 0, 0, 64<<10)
		if err := n.Unref(); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(data)
		if err != nil {
			t.Fatal(err)
		}
		if zeroed := b[0] == 0; zeroed != rawFlag {
			t.Fatalf("data_file_raw=%v: data file byte 0 is %#x after write-zeroes", rawFlag, b[0])
		}
	}
}

// TestQcow2DataFileWriteErrorFreesNothing (iotest 289): a data write that
// fails gives nothing back to the qcow2 file's refcounts (the guest
// offset is not a cluster of the qcow2 file; before abortData the header
// cluster at offset 0 lost its refcount and check found it corrupt).
func TestQcow2DataFileWriteErrorFreesNothing(t *testing.T) {
	dir := t.TempDir()
	img, data := filepath.Join(dir, "t.qcow2"), filepath.Join(dir, "t.data")
	e := newTestEnv(t)
	f, _ := newFileNode(t, e, img)
	dn, _ := newFileNode(t, e, data)
	if err := CreateWithDataFile(f, dn, 1<<20, format.CreateOptions{DataFile: "t.data"}); err != nil {
		t.Fatal(err)
	}
	f.Unref()
	dn.Unref()
	n, err := e.openDataFileImage(img, false, true) // every data write fails
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 64 << 10} {
		if _, err := n.WriteAt(make([]byte, 4096), off); err == nil {
			t.Fatalf("write at %d into a read-only data file succeeded", off)
		}
	}
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := n.Unref(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	im, err := format.ReadImage(bytes.NewReader(b), int64(len(b)), format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := im.Check()
	if err != nil {
		t.Fatal(err)
	}
	if res.Corruptions != 0 || res.Leaks != 0 {
		t.Fatalf("check after failed data writes: %d corruptions, %d leaks: %v", res.Corruptions, res.Leaks, res.Messages)
	}
}

// TestQcow2DataFileOpenRules: the data file's name is checked before any
// opener sees it (json: and protocol names refused), an image with the bit
// but no name needs the data file given, a data file given for an image
// without the bit is refused, compressed writes and snapshots are
// refused, each in QEMU's words.
func TestQcow2DataFileOpenRules(t *testing.T) {
	dir := t.TempDir()
	e := newTestEnv(t)
	mk := func(name string) string {
		img := filepath.Join(dir, name)
		f, _ := newFileNode(t, e, img)
		dn, _ := newFileNode(t, e, filepath.Join(dir, name+".data"))
		if err := CreateWithDataFile(f, dn, 1<<20, format.CreateOptions{DataFile: name + ".data"}); err != nil {
			t.Fatal(err)
		}
		f.Unref()
		dn.Unref()
		return img
	}
	for i, bad := range []string{`json:{"driver":"file","filename":"/x"}`, "nbd:host:10809"} {
		img := filepath.Join(dir, fmt.Sprintf("bad%d.qcow2", i))
		f, _ := newFileNode(t, e, img)
		if err := Create(f, 1<<20, format.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		f.Unref()
		b, _ := os.ReadFile(img)
		if err := os.WriteFile(img, formattest.SetDataFile(bad)(t, b), 0o644); err != nil {
			t.Fatal(err)
		}
		opened := false
		file, _ := raw.NewNode(e.g, img, raw.Options{ReadOnly: true, Locking: raw.LockingOff}, block.Options{})
		_, err := NewNode(e.g, file, DriverOptions{DataFile: func(DataFileRequest) (*block.Node, error) {
			opened = true
			return nil, os.ErrNotExist
		}}, block.Options{ReadOnly: true})
		if err == nil || opened || !strings.Contains(err.Error(), "not followed") {
			t.Errorf("data file name %q: err %v, opener called %v", bad, err, opened)
		}
	}
	// A data file given for an image that keeps its data inside.
	plain := filepath.Join(dir, "plain.qcow2")
	f, _ := newFileNode(t, e, plain)
	if err := Create(f, 1<<20, format.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.Unref()
	file, _ := raw.NewNode(e.g, plain, raw.Options{ReadOnly: true, Locking: raw.LockingOff}, block.Options{})
	given, _ := newFileNode(t, e, filepath.Join(dir, "plain.data"))
	if _, err := NewNode(e.g, file, DriverOptions{DataFileNode: given}, block.Options{ReadOnly: true}); err == nil || !strings.Contains(err.Error(), ErrDataFileNotExternal.Error()) {
		t.Errorf("data file for an image without one: %v", err)
	}
	// Compressed writes and snapshots.
	img := mk("ok.qcow2")
	n, err := e.openDataFileImage(img, false, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.WriteCompressed(make([]byte, 64<<10), 0); err == nil || !block.IsKind(err, block.Unsupported) {
		t.Errorf("compressed write: %v, want Unsupported", err)
	}
	if _, err := n.Driver().(*Driver).CreateSnapshot(SnapshotCreateOptions{Name: "s"}); err == nil || !strings.Contains(err.Error(), "Operation not supported") {
		t.Errorf("snapshot: %v, want Operation not supported", err)
	}
	n.Unref()
}

// newFileNode makes path (empty) and opens a writable raw node over it.
func newFileNode(t *testing.T, e *testEnv, path string) (*block.Node, error) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return raw.NewNode(e.g, path, raw.Options{Locking: raw.LockingOff}, block.Options{})
}

// TestQcow2DataFileRawKeptByWritesAndResize: the driver keeps a raw data
// file the disk's raw image — write-zeroes reach it, a resize sets its
// length to the new disk size (QEMU's file driver truncates it exactly,
// growing and shrinking) — so it keeps autoclear bit 1 as QEMU does.
// Before, the first write cleared the bit (only the bitmaps bit counted as
// maintained) and a resize left the data file at its old length.
func TestQcow2DataFileRawKeptByWritesAndResize(t *testing.T) {
	for _, rawFlag := range []bool{false, true} {
		img, data, n := newDataFileImage(t, rawFlag)
		if _, err := n.WriteAt(bytes.Repeat([]byte{0xaa}, 64<<10), 0); err != nil {
			t.Fatal(err)
		}
		for _, size := range []int64{3 << 20, 512 << 10} {
			if err := n.Truncate(size); err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(data)
			if err != nil {
				t.Fatal(err)
			}
			if st.Size() != size {
				t.Errorf("raw=%v: data file is %d bytes after a resize to %d", rawFlag, st.Size(), size)
			}
		}
		if err := n.Unref(); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		h, err := format.ParseHeader(b)
		if err != nil {
			t.Fatal(err)
		}
		if h.DataFileRaw() != rawFlag {
			t.Errorf("data_file_raw=%v at create, %v after writes and resizes", rawFlag, h.DataFileRaw())
		}
	}
}

// newDataFileImage creates a 1 MiB qcow2 image t.qcow2 with the external
// data file t.data (data_file_raw as raw) in a new directory and opens it.
func newDataFileImage(t *testing.T, raw bool) (img, data string, n *block.Node) {
	t.Helper()
	dir := t.TempDir()
	img, data = filepath.Join(dir, "t.qcow2"), filepath.Join(dir, "t.data")
	e := newTestEnv(t)
	f, _ := newFileNode(t, e, img)
	dn, _ := newFileNode(t, e, data)
	if err := CreateWithDataFile(f, dn, 1<<20, format.CreateOptions{DataFile: "t.data", DataFileRaw: raw}); err != nil {
		t.Fatal(err)
	}
	f.Unref()
	dn.Unref()
	n, err := e.openDataFileImage(img, false, false)
	if err != nil {
		t.Fatal(err)
	}
	return img, data, n
}
