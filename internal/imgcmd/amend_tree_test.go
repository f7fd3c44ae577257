package imgcmd

import (
	"strings"
	"testing"
)

// TestAmendDataFileImageOpts: iotest 061's "Try changing the external
// data file" section. amend -o data_file= on an image named by
// --image-opts with a data-file child drops the recorded name and keeps
// the data file bit (qemu-img 7.2 does the same); opening it afterwards
// without a data file is refused in qemu-img's words, and info, given the
// data file the same way, names the image by its file.
func TestAmendDataFileImageOpts(t *testing.T) {
	t.Chdir(t.TempDir())
	if o, e, code := runAsQemuImg(t, "create", "-q", "-f", "qcow2", "-o", "data_file=t.qcow2.data", "t.qcow2", "4M"); code != 0 {
		t.Fatalf("create: exit %d\n%s%s", code, o, e)
	}
	tree := "data-file.filename=t.qcow2.data,file.filename=t.qcow2"
	if o, e, code := runAsQemuImg(t, "amend", "-o", "data_file=", "--image-opts", tree); code != 0 || o != "" || e != "" {
		t.Fatalf("amend -o data_file= --image-opts %s: exit %d, stdout %q, stderr %q; want exit 0, no output", tree, code, o, e)
	}
	o, e, code := runAsQemuImg(t, "info", "t.qcow2")
	if code != 0 || strings.Contains(o, "data file:") || !strings.Contains(o, "    refcount bits: 16\n    data file raw: false\n") {
		t.Errorf("info after dropping the data file name: exit %d\n%s%s", code, o, e)
	}
	if _, e, code := runAsQemuImg(t, "map", "t.qcow2"); code == 0 || !strings.Contains(e, "'data-file' is required for this image") {
		t.Errorf("map without a data file: exit %d, %q; want 'data-file' is required", code, e)
	}
}

// TestInfoImageOptsDataFileName: qemu-img info names an image given with
// a data-file child or qcow2 cache options by its file, not by a json:
// rendering of the options (only a node's strong options make one, a
// file child's other driver among them).
func TestInfoImageOptsDataFileName(t *testing.T) {
	t.Chdir(t.TempDir())
	if o, e, code := runAsQemuImg(t, "create", "-q", "-f", "qcow2", "-o", "data_file=t.qcow2.data", "t.qcow2", "4M"); code != 0 {
		t.Fatalf("create: exit %d\n%s%s", code, o, e)
	}
	for _, c := range []struct{ opts, want string }{
		{"data-file.filename=t.qcow2.data,file.filename=t.qcow2", "image: t.qcow2\n"},
		{"driver=qcow2,data-file.driver=file,data-file.filename=t.qcow2.data,file.filename=t.qcow2", "image: t.qcow2\n"},
		{"driver=qcow2,l2-cache-size=1M,file.filename=t.qcow2", "image: t.qcow2\n"},
		{"driver=qcow2,file.driver=blkdebug,file.image.filename=t.qcow2", "image: json:{"},
	} {
		o, e, code := runAsQemuImg(t, "info", "--image-opts", c.opts)
		if code != 0 || !strings.HasPrefix(o, c.want) {
			t.Errorf("info --image-opts %s: exit %d, first line %q; want %q\n%s", c.opts, code, strings.SplitN(o, "\n", 2)[0], c.want, e)
		}
	}
}

// TestAmendDataFileRawOrder: amend's data_file_raw refusals in
// qemu-img 7.2's order and words: setting the flag is refused on any
// existing image (with a data file or not) before a downgrade is looked
// at; clearing a flag that is not set is no change, also on an image
// without a data file.
func TestAmendDataFileRawOrder(t *testing.T) {
	t.Chdir(t.TempDir())
	for _, a := range [][]string{
		{"create", "-q", "-f", "qcow2", "p.qcow2", "1M"},
		{"create", "-q", "-f", "qcow2", "-o", "data_file=d.data", "d.qcow2", "1M"},
	} {
		if o, e, code := runAsQemuImg(t, a...); code != 0 {
			t.Fatalf("%v: exit %d\n%s%s", a, code, o, e)
		}
	}
	for _, c := range []struct{ img, opt, want string }{
		{"p.qcow2", "data_file_raw=off", ""},
		{"p.qcow2", "data_file_raw=on", "data-file-raw cannot be set on existing images"},
		{"d.qcow2", "compat=0.10,data_file_raw=on", "data-file-raw cannot be set on existing images"},
		{"d.qcow2", "compat=0.10", "Cannot downgrade an image with a data file"},
	} {
		_, e, code := runAsQemuImg(t, "amend", "-o", c.opt, c.img)
		if (c.want == "") != (code == 0) || !strings.Contains(e, c.want) {
			t.Errorf("amend -o %s %s: exit %d, %q; want %q", c.opt, c.img, code, e, c.want)
		}
	}
	if o, _, _ := runAsQemuImg(t, "info", "p.qcow2"); strings.Contains(o, "data file") {
		t.Errorf("data_file_raw=off gave a plain image a data file:\n%s", o)
	}
}
