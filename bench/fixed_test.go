package bench

import (
	"path/filepath"
	"testing"
)

// TestIOUringFixed: fio's io_uring engine options fixedbufs (READ_FIXED
// and WRITE_FIXED on the registered buffer region) and registerfiles (the
// file as registered slot 0), alone and together, buffered and O_DIRECT:
// random writes with verify read every block back intact.
func TestIOUringFixed(t *testing.T) {
	dir := benchDir(t)
	for _, direct := range []string{"0", "1"} {
		for _, opts := range [][]string{{"--fixedbufs"}, {"--registerfiles"}, {"--fixedbufs", "--registerfiles"}} {
			name := "direct=" + direct
			for _, o := range opts {
				name += o
			}
			t.Run(name, func(t *testing.T) {
				file := filepath.Join(dir, "fixed")
				args := append([]string{"--name=f", "--ioengine=io_uring", "--filename=" + file, "--size=1m",
					"--rw=randwrite", "--bs=4k", "--iodepth=8", "--verify=crc32c", "--direct=" + direct}, opts...)
				spec := mustParse(t, args...)
				if j := spec.Jobs[0]; j.FixedBufs != (opts[0] == "--fixedbufs") || j.RegisterFiles != (opts[len(opts)-1] == "--registerfiles") {
					t.Fatalf("%v: FixedBufs %t, RegisterFiles %t", opts, j.FixedBufs, j.RegisterFiles)
				}
				e := verifyEntry(t, mustRun(t, spec))
				if e.verify.checked != 256 || e.verify.mismatches != 0 {
					t.Errorf("checked %d blocks, %d mismatches: %v", e.verify.checked, e.verify.mismatches, e.verify.first)
				}
			})
		}
	}
}
