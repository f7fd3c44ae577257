package raw_test

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/drivers/raw"
)

// fdFlags returns the open flags of descriptor fd (/proc/self/fdinfo).
func fdFlags(t *testing.T, fd int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		t.Skipf("no fdinfo: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "flags:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
			if err != nil {
				t.Fatalf("fdinfo flags %q: %v", v, err)
			}
			return int(n)
		}
	}
	t.Fatalf("fdinfo of %d has no flags line", fd)
	return 0
}

// TestNoAtimeOpensWithONoatime: Options.NoAtime opens the image with
// O_NOATIME (reads skip the kernel's access-time check, as fio's files
// do); without it the flag is absent.
func TestNoAtimeOpensWithONoatime(t *testing.T) {
	path, _ := image(t, 1<<20, 1)
	for _, noatime := range []bool{false, true} {
		d, err := raw.Open(path, raw.Options{ReadOnly: true, NoAtime: noatime})
		if err != nil {
			t.Fatal(err)
		}
		got := fdFlags(t, d.Fd())&unix.O_NOATIME != 0
		d.Release()
		if got != noatime {
			t.Errorf("NoAtime=%v: file opened with O_NOATIME = %v", noatime, got)
		}
	}
}
