//go:build rbd

package rbd_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/drivers/rbd"
)

// TestConfDefaults: a node's connection runs one librados completion
// thread (librados_thread_count=1, docs/design/rbd.md §"One completion
// thread") unless the config file or the name says otherwise; the name
// wins over the file.
func TestConfDefaults(t *testing.T) {
	s := newImage(t, imgSize)
	conf, err := os.ReadFile(s.Conf)
	if err != nil {
		t.Fatal(err)
	}
	withFile := filepath.Join(t.TempDir(), "ceph.conf")
	if err := os.WriteFile(withFile, append(conf, []byte("\n[client]\nlibrados_thread_count = 3\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		what string
		edit func(*rbd.Spec)
		want string
	}{
		{"default", func(*rbd.Spec) {}, "1"},
		{"name option", func(s *rbd.Spec) {
			s.Options = append(s.Options, rbd.Option{Key: "librados_thread_count", Value: "2"})
		}, "2"},
		{"config file", func(s *rbd.Spec) { s.Conf = withFile }, "3"},
		{"config file and name option", func(s *rbd.Spec) {
			s.Conf = withFile
			s.Options = append(s.Options, rbd.Option{Key: "librados_thread_count", Value: "2"})
		}, "2"},
	} {
		sp := s
		sp.Options = append([]rbd.Option(nil), s.Options...)
		tc.edit(&sp)
		d, err := rbd.Open(sp, true)
		if err != nil {
			t.Fatalf("%s: %v", tc.what, err)
		}
		got, err := d.ConfValue("librados_thread_count")
		d.Release()
		if err != nil {
			t.Fatalf("%s: %v", tc.what, err)
		}
		if got != tc.want {
			t.Errorf("%s: librados_thread_count = %s, want %s", tc.what, got, tc.want)
		}
	}
}

// TestLockHandover: two connections write one image in turn, so its
// exclusive lock moves between them on every write (librbd's release and
// acquire run on the completion thread, of which a connection now has
// one). Every write completes well inside the op timeout and the last
// writer reads its data back.
func TestLockHandover(t *testing.T) {
	s := newImage(t, imgSize)
	e1, e2 := blocktest.NewEnv(t, 0), blocktest.NewEnv(t, 0)
	nodes := []*block.Node{open(t, e1, s, false), open(t, e2, s, false)}
	var last []byte
	for i := range 12 {
		n := nodes[i%2]
		last = pattern(4096, uint64(i))
		start := time.Now()
		if _, err := n.WriteAt(last, 8192); err != nil {
			t.Fatalf("write %d (connection %d): %v", i, i%2, err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("write %d (connection %d) took %v to get the lock", i, i%2, d)
		}
	}
	got := make([]byte, 4096)
	if _, err := nodes[1].ReadAt(got, 8192); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, last) {
		t.Fatal("the last writer reads other data back")
	}
}
