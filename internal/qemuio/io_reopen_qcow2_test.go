package qemuio

import (
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// TestReopenQcow2OptionsMatchQemuIO: reopen -o with qcow2's runtime
// options as iotest 137 uses them, against qemu-io: the options of the
// last open stay except where a new one overrides them (an old cache-size
// does not survive; a new overlap-check drops the old overlap options),
// the cache sizes are capped at what covers the image before they are
// counted (1 TiB in 512-byte entries is fine on a 64 MiB image), and the
// refcount cache, overlap-check and cache-clean-interval values are
// checked in QEMU's words and order. A refused reopen leaves the old
// options.
func TestReopenQcow2OptionsMatchQemuIO(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io", "qemu-img")
	cases := []struct {
		name string
		args func(img string) []string
	}{
		{"join", func(img string) []string {
			return append(cmds("reopen -o cache-size=1M", "reopen -o l2-cache-size=512k", "reopen -o l2-cache-entry-size=512",
				"reopen -o refcount-cache-size=128k", "reopen -o overlap-check.template=all", "reopen -o overlap-check=none",
				"reopen -o overlap-check.main-header=on", "reopen -o overlap-check=cached", "reopen -o cache-size=1M",
				"reopen -o l2-cache-size=2M", "write -P 5 0 64k", "read -P 5 0 64k"), img)
		}},
		{"invalid", func(img string) []string {
			return append(cmds("reopen -o lazy-refcounts=42",
				"reopen -o cache-size=1M,l2-cache-size=64k,refcount-cache-size=64k",
				"reopen -o cache-size=1M,l2-cache-size=2M", "reopen -o cache-size=1M,refcount-cache-size=2M",
				"reopen -o l2-cache-entry-size=33k", "reopen -o l2-cache-entry-size=128k",
				"reopen -o refcount-cache-size=256T", "reopen -o overlap-check=constant,overlap-check.template=all",
				"reopen -o overlap-check=blubb", "reopen -o overlap-check.template=blubb",
				"reopen -o cache-clean-interval=-1", "reopen -o cache-clean-interval=4294967296",
				"reopen -o cache-clean-interval=4294967295", "reopen -o cache-clean-interval=x",
				"reopen -o overlap-check.active-l2=maybe", "reopen -o l2-cache-entry-size=512,l2-cache-size=1T",
				"reopen -o lazy-refcounts=on,overlap-check=blubb", "write -P 6 0 64k", "read -P 6 0 64k"), img)
		}},
	}
	for _, c := range cases {
		compareIOArgs(t, c.name, "qcow2", "64M", c.args)
	}
}
