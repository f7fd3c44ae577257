package formattest

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// NeedQemu skips t unless qemu-img and qemu-io are installed.
func NeedQemu(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found: qcow2 interop tests need qemu-utils (apt-get install qemu-utils)", tool)
		}
	}
}

// QemuImg runs qemu-img and fails t if it fails.
func QemuImg(t *testing.T, args ...string) []byte {
	t.Helper()
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// OpenFile runs ReadImage on the file at path.
func OpenFile(t *testing.T, path string, opts format.Options) (*format.Image, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return format.ReadImage(f, st.Size(), opts)
}
