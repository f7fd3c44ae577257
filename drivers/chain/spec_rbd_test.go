package chain

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/drivers/rbd"
)

// TestSpecRBD: a json: option tree with driver=rbd reaches the rbd driver
// (without the rbd tag: rbd.ErrNotBuilt; with it: the unreachable config
// file named), key-secret names a secret object, and bad options fail
// before any cluster is contacted.
func TestSpecRBD(t *testing.T) {
	g := newGraph(t)
	var asked []string
	o := Options{Name: "r", Secret: func(id string) ([]byte, error) {
		asked = append(asked, id)
		if id != "sec0" {
			return nil, fmt.Errorf("No secret with id '%s'", id)
		}
		return []byte("AQBkey=="), nil
	}}
	s, err := ParseJSONFilename(`json:{"driver":"rbd","pool":"rbd","namespace":"ns","image":"img","snapshot":"s1",
		"conf":"/nonexistent/ceph.conf","user":"admin","key-secret":"sec0"}`)
	if err != nil {
		t.Fatal(err)
	}
	_, err = OpenSpec(g, s, o)
	if err == nil {
		t.Fatal("opened an RBD image that cannot exist")
	}
	if len(asked) != 1 || asked[0] != "sec0" {
		t.Errorf("secrets looked up: %v, want [sec0]", asked)
	}
	if !rbd.Supported && !errors.Is(err, rbd.ErrNotBuilt) {
		t.Fatalf("without the rbd tag: %v, want ErrNotBuilt", err)
	}
	if rbd.Supported && !strings.Contains(err.Error(), "/nonexistent/ceph.conf") {
		t.Fatalf("with the rbd tag: %v, want the config file named", err)
	}
	// A qcow2 image over an RBD file child takes the same path.
	s = Spec{"driver": "qcow2", "file.driver": "rbd", "file.pool": "p", "file.image": "i", "file.conf": "/nonexistent/ceph.conf"}
	if _, err := OpenSpec(g, s, o); err == nil || !rbd.Supported && !errors.Is(err, rbd.ErrNotBuilt) {
		t.Fatalf("qcow2 over rbd: %v", err)
	}
	for _, c := range []struct {
		s    Spec
		want string
	}{
		{Spec{"driver": "rbd", "pool": "p", "image": "i", "key-secret": "nosuch"}, "No secret with id 'nosuch'"},
		{Spec{"driver": "rbd", "pool": "p", "image": "i", "bogus": "1"}, `unknown option "bogus"`},
		{Spec{"driver": "rbd", "pool": "p"}, "need a pool and an image"},
	} {
		if _, err := OpenSpec(g, c.s, o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.s, err, c.want)
		}
	}
}
