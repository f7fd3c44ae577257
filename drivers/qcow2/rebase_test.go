package qcow2

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/block"
)

// rebaseChain makes base.raw <- mid.qcow2 <- top.qcow2 in a temporary
// directory, with data in every layer, and returns the directory.
func rebaseChain(t *testing.T, topOpts string) string {
	t.Helper()
	dir := t.TempDir()
	base, mid, top := filepath.Join(dir, "base.raw"), filepath.Join(dir, "mid.qcow2"), filepath.Join(dir, "top.qcow2")
	qemuImg(t, "create", "-q", "-f", "raw", base, "2M")
	qemuIO2(t, "raw", base, "write -P 0x55 0 2M")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", mid, "2M")
	qemuIO(t, mid, "write -P 0x66 64k 64k", "write -P 0x67 1M 3k")
	args := []string{"create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2"}
	if topOpts != "" {
		args = append(args, "-o", topOpts)
	}
	qemuImg(t, append(args, top, "2M")...)
	qemuIO(t, top, "write -P 0x77 70k 5k", "write -P 0x78 1M 1k")
	return dir
}

// sameAsQemuRebase checks that ours (changed by the driver) has the
// header cluster, qemu-img info and content of theirs (changed by
// qemu-img rebase -u), and that qemu-img check accepts it.
func sameAsQemuRebase(t *testing.T, ours, theirs string) {
	t.Helper()
	qemuCheck(t, ours)
	if a, b := headerCluster(t, ours), headerCluster(t, theirs); !bytes.Equal(a, b) {
		t.Errorf("header cluster differs from qemu-img rebase -u's at %d", firstDiff(a, b))
	}
	ja, _ := json.Marshal(qemuInfo(t, ours))
	jb, _ := json.Marshal(qemuInfo(t, theirs))
	if !bytes.Equal(ja, jb) {
		t.Errorf("qemu-img info differs:\nours   %s\ntheirs %s", ja, jb)
	}
	checkSame(t, rawOf(t, ours), rawOf(t, theirs))
}

func changer(t *testing.T, n *block.Node) block.BackingFileChanger {
	t.Helper()
	c, ok := n.Driver().(block.BackingFileChanger)
	if !ok {
		t.Fatalf("qcow2 driver does not implement block.BackingFileChanger")
	}
	return c
}

// TestQcow2ChangeBackingFile: DropIntermediate of mid (top's backing now
// base.raw) and dropping the backing file (as a stream without base
// does) rewrite top's header as qemu-img rebase -u does; the open node
// reads what a reopen of the file reads.
func TestQcow2ChangeBackingFile(t *testing.T) {
	needQemu(t)
	t.Run("change", func(t *testing.T) {
		dir := rebaseChain(t, "")
		ours, theirs := filepath.Join(dir, "top.qcow2"), filepath.Join(dir, "theirs.qcow2")
		amendCopyFile(t, ours, theirs)
		qemuImg(t, "rebase", "-u", "-b", "base.raw", "-F", "raw", theirs)
		e := newTestEnv(t)
		n := e.mustOpen(ours, false)
		mid := n.Child(block.RoleBacking).Node()
		base := mid.Child(block.RoleBacking).Node()
		if err := e.g.DropIntermediate(mid, base, "base.raw"); err != nil {
			t.Fatalf("DropIntermediate: %v", err)
		}
		live := readAll(t, n, 1<<20)
		if err := n.Unref(); err != nil {
			t.Fatal(err)
		}
		sameAsQemuRebase(t, ours, theirs)
		checkSame(t, live, rawOf(t, theirs))
		n = e.mustOpen(ours, true)
		checkSame(t, readAll(t, n, 1<<20), live)
		n.Unref()
	})
	t.Run("drop", func(t *testing.T) {
		dir := rebaseChain(t, "")
		ours, theirs := filepath.Join(dir, "top.qcow2"), filepath.Join(dir, "theirs.qcow2")
		amendCopyFile(t, ours, theirs)
		qemuImg(t, "rebase", "-u", "-b", "", theirs)
		e := newTestEnv(t)
		n := e.mustOpen(ours, false)
		ch := changer(t, n)
		var err error
		n.DrainedBegin()
		e.g.Control(func() {
			c := n.Child(block.RoleBacking)
			if err = ch.ChangeBackingFile(n, "", nil); err == nil {
				err = e.g.Detach(c)
			}
		})
		n.DrainedEnd()
		if err != nil {
			t.Fatalf("drop backing file: %v", err)
		}
		live := readAll(t, n, 1<<20)
		if err := n.Unref(); err != nil {
			t.Fatal(err)
		}
		sameAsQemuRebase(t, ours, theirs)
		if info := qemuInfo(t, ours); info["backing-filename"] != nil {
			t.Errorf("qemu-img info still shows a backing file: %v", info["backing-filename"])
		}
		checkSame(t, live, rawOf(t, theirs))
		n = e.mustOpen(ours, true)
		checkSame(t, readAll(t, n, 1<<20), live)
		n.Unref()
	})
	t.Run("too-long", func(t *testing.T) {
		for _, c := range []struct {
			opts, name, want string
		}{
			{"", strings.Repeat("b", 1024), "too long"},
			{"cluster_size=512", strings.Repeat("b", 1000), "exceed one cluster"},
		} {
			dir := rebaseChain(t, c.opts)
			top := filepath.Join(dir, "top.qcow2")
			before := headerCluster(t, top)
			e := newTestEnv(t)
			n := e.mustOpen(top, false)
			want := readAll(t, n, 1<<20)
			ch := changer(t, n)
			var err error
			n.DrainedBegin()
			e.g.Control(func() { err = ch.ChangeBackingFile(n, c.name, nil) })
			n.DrainedEnd()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%d-byte name with %q: err %v, want one saying %q", len(c.name), c.opts, err, c.want)
			}
			checkSame(t, readAll(t, n, 1<<20), want)
			if err := n.Unref(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(headerCluster(t, top), before) {
				t.Errorf("a refused name changed the header")
			}
			qemuCheck(t, top)
			if info := qemuInfo(t, top); info["backing-filename"] != "mid.qcow2" {
				t.Errorf("backing file after refusal: %v", info["backing-filename"])
			}
		}
	})
}
