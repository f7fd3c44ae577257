package imgcmd

import (
	"os"
	"strings"
	"testing"
)

// TestCheckDataFileLikeQemu: qemu-img check opens an image's external
// data file, as qemu-img 7.2 does: a missing data file or none recorded
// fails the check (exit 1, qemu-img's words; it used to pass), and an
// --image-opts tree may give the data file (iotest 061's form).
func TestCheckDataFileLikeQemu(t *testing.T) {
	t.Chdir(t.TempDir())
	if o, e, code := runAsQemuImg(t, "create", "-q", "-f", "qcow2", "-o", "data_file=t.data", "t.qcow2", "4M"); code != 0 {
		t.Fatalf("create: exit %d\n%s%s", code, o, e)
	}
	tree := "data-file.filename=t.data,file.filename=t.qcow2"
	check := func(want string, args ...string) {
		t.Helper()
		o, e, code := runAsQemuImg(t, append([]string{"check"}, args...)...)
		if want == "" {
			if code != 0 || !strings.Contains(o, "No errors were found on the image.") {
				t.Errorf("check %v: exit %d\n%s%s", args, code, o, e)
			}
		} else if code != 1 || e != "qemu-img: "+want+"\n" {
			t.Errorf("check %v: exit %d, stderr %q; want exit 1, %q", args, code, e, want)
		}
	}
	check("", "t.qcow2")
	check("", "--image-opts", tree)
	check("Could not open 'data-file.filename=nothere,file.filename=t.qcow2': Could not open 'nothere': No such file or directory",
		"--image-opts", "data-file.filename=nothere,file.filename=t.qcow2")
	if err := os.Rename("t.data", "u.data"); err != nil {
		t.Fatal(err)
	}
	check("Could not open 't.qcow2': Could not open 't.data': No such file or directory", "t.qcow2")
	if err := os.Rename("u.data", "t.data"); err != nil {
		t.Fatal(err)
	}
	if o, e, code := runAsQemuImg(t, "amend", "-o", "data_file=", "t.qcow2"); code != 0 {
		t.Fatalf("amend: exit %d\n%s%s", code, o, e)
	}
	check("Could not open 't.qcow2': 'data-file' is required for this image", "t.qcow2")
	check("", "--image-opts", tree)
}
