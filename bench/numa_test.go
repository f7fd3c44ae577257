package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestScrambleBuffers: by default (fio's scramble_buffers=1) no two
// written blocks are equal even from one buffer; scramble_buffers=0
// writes the buffer as it is, so a depth-1 job writes one block's data
// everywhere.
func TestScrambleBuffers(t *testing.T) {
	dir := benchDir(t)
	distinct := func(extra ...string) int {
		file := filepath.Join(dir, "s"+strings.Join(extra, ""))
		args := append([]string{"--name=s", "--filename=" + file, "--size=256k", "--bs=4k", "--rw=write", "--ioengine=psync"}, extra...)
		mustRun(t, mustParse(t, args...))
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for off := 0; off < len(data); off += 4096 {
			seen[string(data[off:off+4096])] = true
		}
		return len(seen)
	}
	if n := distinct(); n != 64 {
		t.Errorf("scramble_buffers default: %d distinct blocks of 64", n)
	}
	if n := distinct("--scramble_buffers=0"); n != 1 {
		t.Errorf("scramble_buffers=0: %d distinct blocks, want 1 (the one buffer)", n)
	}
}

// TestNumaOptions: numa_cpu_nodes runs a job on its nodes' CPUs,
// numa_mem_policy binds the buffers (the run succeeds), and nodes that do
// not exist or a missing node list are refused as fio refuses them.
func TestNumaOptions(t *testing.T) {
	if _, err := os.Stat(filepath.Join(nodeDir, "node0")); err != nil {
		t.Skip("no NUMA node 0 listed in " + nodeDir)
	}
	dir := benchDir(t)
	spec := mustParse(t, "--name=n", "--filename="+filepath.Join(dir, "f"), "--size=64k", "--ioengine=io_uring",
		"--numa_cpu_nodes=0", "--numa_mem_policy=bind:0")
	want, err := nodeCPUs([]int{0})
	if err != nil {
		t.Fatal(err)
	}
	if got := spec.Jobs[0].CPUsAllowed; len(got) != len(want) {
		t.Errorf("cpus_allowed from numa_cpu_nodes=0: %v, want %v", got, want)
	}
	for _, eng := range []string{"io_uring", "ringblk"} {
		mustRun(t, mustParse(t, "--name=n", "--filename="+filepath.Join(dir, "f"), "--size=64k", "--ioengine="+eng, "--numa_mem_policy=bind:0"))
		mustRun(t, mustParse(t, "--name=n", "--filename="+filepath.Join(dir, "f"), "--size=64k", "--ioengine="+eng, "--numa_mem_policy=local"))
	}
	for _, c := range []struct{ opt, msg string }{
		{"--numa_cpu_nodes=999", "NUMA node 999 does not exist"},
		{"--numa_mem_policy=bind", "a node list is needed for 'bind'"},
		{"--numa_mem_policy=interleave:0-999", "does not exist"},
	} {
		_, err := ParseArgs([]string{"--name=n", "--filename=x", "--size=64k", c.opt})
		if err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v, want %q", c.opt, err, c.msg)
		}
	}
}
