package block_test

import (
	"errors"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// reopenMem is an in-memory driver that can be reopened and records the
// order of its reopens in a shared log; fail makes the next one fail.
type reopenMem struct {
	*blocktest.Mem
	name string
	log  *[]string
	fail bool
}

func (d *reopenMem) Reopen(n *block.Node, ro bool) error {
	if d.fail {
		return errors.New(d.name + " refuses")
	}
	if ro {
		*d.log = append(*d.log, d.name+":ro")
	} else {
		*d.log = append(*d.log, d.name+":rw")
	}
	return nil
}

// TestSetReadOnly: the generic rules of block.Node.SetReadOnly on a
// format-like node "fmt" with a file child, a data child and a backing
// child. To read-write the non-backing children reopen first, then the
// node; the backing child is never touched. To read-only the node goes
// first, then each child no writer still uses (a child with a writable
// second parent stays read-write). A child that refuses makes the whole
// reopen fail with the children reopened so far put back; a driver
// without Reopener is refused with ErrReopenUnsupported.
func TestSetReadOnly(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	var log []string
	open := func(name string, ro bool) (*block.Node, *reopenMem) {
		d := &reopenMem{Mem: blocktest.NewMem(1 << 20), name: name, log: &log}
		n, err := e.G.Open(d, block.Options{Name: name, ReadOnly: ro})
		if err != nil {
			t.Fatal(err)
		}
		return n, d
	}
	attach := func(p, c *block.Node, name string, role block.Role) {
		if _, err := e.G.Attach(p, c, block.ChildSpec{Name: name, Role: role}); err != nil {
			t.Fatal(err)
		}
	}
	fmtN, _ := open("fmt", true)
	file, fileDrv := open("file", true)
	data, _ := open("data", true)
	backing, _ := open("backing", true)
	attach(fmtN, file, "file", block.RoleFile|block.RolePrimary)
	attach(fmtN, data, "data", block.RolePrimary)
	attach(fmtN, backing, "backing", block.RoleBacking)

	// A child that refuses (file, reopened after data: children go
	// newest first): data is put back, nothing stays read-write.
	fileDrv.fail = true
	if err := fmtN.SetReadOnly(false); err == nil {
		t.Fatal("SetReadOnly(false) succeeded with a child that refuses")
	}
	fileDrv.fail = false
	if len(log) != 2 || log[0] != "data:rw" || log[1] != "data:ro" {
		t.Fatalf("reopens of the failed SetReadOnly(false): %v, want [data:rw data:ro]", log)
	}
	for _, n := range []*block.Node{fmtN, file, data, backing} {
		if !n.ReadOnly() {
			t.Errorf("%s writable after a failed reopen", n.Name())
		}
	}
	log = nil

	if err := fmtN.SetReadOnly(false); err != nil {
		t.Fatal(err)
	}
	if fmtN.ReadOnly() || file.ReadOnly() || data.ReadOnly() || !backing.ReadOnly() {
		t.Fatalf("after SetReadOnly(false): fmt %v file %v data %v backing %v (read-only), want false false false true",
			fmtN.ReadOnly(), file.ReadOnly(), data.ReadOnly(), backing.ReadOnly())
	}
	if last := log[len(log)-1]; len(log) != 3 || last != "fmt:rw" {
		t.Fatalf("reopen order %v, want both children then fmt:rw", log)
	}
	if _, err := fmtN.WriteAt(make([]byte, 512), 0); err != nil {
		t.Fatalf("write after SetReadOnly(false): %v", err)
	}

	// data gets a second, writable parent: it stays read-write.
	other, _ := open("other", false)
	attach(other, data, "data", block.RolePrimary)
	log = nil
	if err := fmtN.SetReadOnly(true); err != nil {
		t.Fatal(err)
	}
	if !fmtN.ReadOnly() || !file.ReadOnly() || data.ReadOnly() {
		t.Fatalf("after SetReadOnly(true): fmt %v file %v data %v (read-only), want true true false", fmtN.ReadOnly(), file.ReadOnly(), data.ReadOnly())
	}
	if len(log) != 2 || log[0] != "fmt:ro" || log[1] != "file:ro" {
		t.Fatalf("reopen order %v, want [fmt:ro file:ro]", log)
	}
	if _, err := fmtN.WriteAt(make([]byte, 512), 0); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("write after SetReadOnly(true): %v, want EACCES", err)
	}

	plain, err := e.G.Open(blocktest.NewMem(1<<20), block.Options{Name: "plain", ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := plain.SetReadOnly(false); !errors.Is(err, block.ErrReopenUnsupported) || !plain.ReadOnly() {
		t.Fatalf("SetReadOnly(false) of a driver without Reopener: %v (read-only %v), want ErrReopenUnsupported", err, plain.ReadOnly())
	}
}
