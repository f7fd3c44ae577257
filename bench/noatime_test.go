package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestJobFileOpensNoatime: the bare ring's job file is opened with
// O_NOATIME, as fio opens its files, so the two pay the same kernel work
// per read (the access-time check is tens of ns per request on a RAM
// device: docs/design/fast-devices.md).
func TestJobFileOpensNoatime(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, make([]byte, 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := openJobFile(&Job{Filename: p})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", f.Fd()))
	if err != nil {
		t.Skipf("no fdinfo: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "flags:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
			if err != nil {
				t.Fatal(err)
			}
			if n&unix.O_NOATIME == 0 {
				t.Errorf("job file opened with flags %#o: no O_NOATIME", n)
			}
			return
		}
	}
	t.Fatal("no flags line in fdinfo")
}
