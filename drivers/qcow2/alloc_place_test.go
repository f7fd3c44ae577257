package qcow2

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestQcow2RefblockPlacedAfterRun: a large write that needs new refcount
// blocks lays the image out as qemu-io 7.2 does (each new block after the
// data run that needed it, counting itself), so the files are byte for
// byte the same: QEMU's iotest 313 setting (4 KiB clusters, 64-bit
// refcounts, enough data for five refcount blocks), and a single-cluster
// write that needs a new block (the block goes after the cluster).
func TestQcow2RefblockPlacedAfterRun(t *testing.T) {
	needQemu(t)
	const size = 8347648
	cases := []struct {
		name, opts string
		size       int64
		cmds       []string
		writes     [][2]int64 // offset, length
	}{
		{"run", "cluster_size=4096,refcount_bits=64", size, []string{"write -P 1 0 8347648"}, [][2]int64{{0, size}}},
		// 1017 data clusters end the allocation at cluster 1023: the L2
		// table of 4M is then the first cluster of a range without a block.
		{"single", "cluster_size=4096,refcount_bits=64", size, []string{"write -P 1 0 4165632", "write -P 1 4M 4k"}, [][2]int64{{0, 4165632}, {4 << 20, 4096}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			want := filepath.Join(dir, "qemu.qcow2")
			got := filepath.Join(dir, "ours.qcow2")
			qemuCreate(t, want, c.opts, c.size)
			copyFile(t, want, got)
			qemuIO(t, want, c.cmds...)
			e := newTestEnv(t)
			n := e.mustOpen(got, false)
			for _, w := range c.writes {
				if _, err := n.WriteAt(bytes.Repeat([]byte{1}, int(w[1])), w[0]); err != nil {
					t.Fatal(err)
				}
			}
			n.Unref()
			qemuCheck(t, got)
			a, b := readFile(t, want), readFile(t, got)
			if !bytes.Equal(a, b) {
				t.Errorf("file differs from qemu-io's at byte %d (lengths %d, %d)", firstDiff(a, b), len(b), len(a))
			}
		})
	}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
