package chain

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/drivers/rbd"
)

// TestRBDBackingOptIn: a qcow2 overlay whose backing file is an rbd: name
// opens only when following such names was allowed; otherwise the open
// fails naming the opt-in, before any cluster is contacted. Names and
// resolution: an rbd: backing name is never joined to the overlay's
// directory.
func TestRBDBackingOptIn(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	top := filepath.Join(dir, "top.qcow2")
	const backing = "rbd:rbd/base:conf=/nonexistent/ceph.conf"
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "raw", top, "4M")
	if got := ResolveBacking(top, backing); got != backing {
		t.Fatalf("ResolveBacking joined the rbd: name: %q", got)
	}
	g := newGraph(t)
	_, err := Open(g, top, Options{Format: "qcow2", Name: "t1"})
	var be *BackingError
	if !errors.As(err, &be) || !strings.Contains(err.Error(), "RINGBLK_RBD_BACKING=1") {
		t.Fatalf("open without the opt-in: %v", err)
	}
	_, err = Open(g, top, Options{Format: "qcow2", Name: "t2", AllowRBDBacking: true})
	if err == nil {
		t.Fatal("opened an overlay whose RBD backing image cannot exist")
	}
	if !rbd.Supported && !errors.Is(err, rbd.ErrNotBuilt) {
		t.Fatalf("with the opt-in, without the rbd tag: %v, want ErrNotBuilt", err)
	}
	if rbd.Supported && !strings.Contains(err.Error(), "/nonexistent/ceph.conf") {
		t.Fatalf("with the opt-in: %v, want the config file named", err)
	}
}
