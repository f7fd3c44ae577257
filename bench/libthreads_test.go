package bench

import (
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// libMem stands for a driver whose I/O runs on a library's own threads
// (drivers/rbd).
type libMem struct{ *blocktest.Mem }

func (libMem) LibraryThreads() bool { return true }

// TestLibraryThreadsUnpinned: a clone whose every leaf is a
// library-threaded driver is left unpinned by default (placement gives
// no CPU), as fio leaves its threads; a tree with one other leaf, or a job
// with cpus_allowed or a policy, keeps bench's usual placement.
func TestLibraryThreadsUnpinned(t *testing.T) {
	g := blocktest.NewEnv(t, 0).G
	open := func(name string, d block.Driver) *block.Node {
		n, err := g.Open(d, block.Options{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	lib := open("lib", libMem{blocktest.NewMem(1 << 20)})
	plain := open("plain", blocktest.NewMem(1<<20))
	over := open("over", blocktest.NewMem(1<<20))
	if _, err := g.Attach(over, lib, block.ChildSpec{Name: "file", Role: block.RoleFile}); err != nil {
		t.Fatal(err)
	}
	mixed := open("mixed", blocktest.NewMem(1<<20))
	if _, err := g.Attach(mixed, plain, block.ChildSpec{Name: "file", Role: block.RoleFile}); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Attach(mixed, lib, block.ChildSpec{Name: "backing", Role: block.RoleBacking}); err != nil {
		t.Fatal(err)
	}
	jobs := func(ns ...*block.Node) []*ringblkJob {
		var rjs []*ringblkJob
		for _, n := range ns {
			rjs = append(rjs, &ringblkJob{node: n})
		}
		return rjs
	}
	for _, tc := range []struct {
		name string
		rjs  []*ringblkJob
		want bool
	}{
		{"library-threaded leaf", jobs(lib), true},
		{"format node over it", jobs(over), true},
		{"plain leaf", jobs(plain), false},
		{"one plain leaf in the tree", jobs(mixed), false},
		{"two jobs, one plain", jobs(lib, plain), false},
		{"no job", nil, false},
	} {
		if got := libraryThreads(tc.rjs); got != tc.want {
			t.Errorf("%s: libraryThreads = %v, want %v", tc.name, got, tc.want)
		}
	}

	spec := mustParse(t, "--name=a", "--rw=read", "--size=1m",
		"--name=b", "--rw=read", "--size=1m", "--cpus_allowed=1", "--cpus_allowed_policy=split",
		"--name=c", "--rw=read", "--size=1m", "--cpus_allowed_policy=split")
	if cpu, set := placement(spec.Jobs[0], 0, 1, 2, true); cpu != -1 || set != nil {
		t.Errorf("library-threaded, no cpus_allowed: placement = %d %v, want unpinned (-1, nil)", cpu, set)
	}
	if cpu, _ := placement(spec.Jobs[0], 0, 1, 2, false); cpu != 1 {
		t.Errorf("plain, no cpus_allowed: placement = %d, want clone 1 on CPU 1", cpu)
	}
	if cpu, _ := placement(spec.Jobs[1], 0, 1, 2, true); cpu != 1 {
		t.Errorf("library-threaded with cpus_allowed=1 split: placement = %d, want 1", cpu)
	}
	if cpu, _ := placement(spec.Jobs[2], 1, 1, 2, true); cpu != 1 {
		t.Errorf("library-threaded with policy split: placement = %d, want clone 1 on CPU 1", cpu)
	}
}
