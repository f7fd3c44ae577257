//go:build rbd

package rbd_test

import (
	"os"
	"path/filepath"
	"testing"

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
