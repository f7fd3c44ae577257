//go:build !rbd

package main

import (
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

func stopRBDCluster() error { return nil }

// TestRBDNotBuilt: a binary built without the rbd tag says how to get RBD
// support when given an rbd: name, whatever the command.
func TestRBDNotBuilt(t *testing.T) {
	const want = "built without RBD support; rebuild with -tags rbd (needs librbd-dev)"
	for _, args := range [][]string{
		{"info", "rbd:rbd/img"},
		{"create", "-f", "raw", "rbd:rbd/img", "1M"},
		{"io", "-c", "read 0 512", "rbd:rbd/img"},
		{"convert", "-O", "raw", "rbd:rbd/img", t.TempDir() + "/x.raw"},
		{"snapshot", "-l", "rbd:rbd/img"},
		{"resize", "rbd:rbd/img", "2M"},
		{"bench", "--name=j", "--ioengine=ringblk", "--filename=rbd:rbd/img", "--rw=read", "--size=1M"},
	} {
		_, stderr, code := clitest.RunRingblk(t, nil, args...)
		if code == 0 || !strings.Contains(stderr, want) {
			t.Errorf("%v: exit %d, stderr %q; want an error containing %q", args, code, stderr, want)
		}
	}
}
