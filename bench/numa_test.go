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

// TestScrambleLayout pins what scramble writes: the little-endian byte
// offset of each 512-byte block into its first 8 bytes and the write count
// into the next 8, nothing else, and nothing into a tail shorter than 16
// bytes.
func TestScrambleLayout(t *testing.T) {
	buf := make([]byte, 1024+10)
	for i := range buf {
		buf[i] = 0xAA
	}
	scramble(buf, 0x1122334455667700, 0x0102030405060708)
	want := func(at int, v uint64) {
		t.Helper()
		for i := 0; i < 8; i++ {
			if got := buf[at+i]; got != byte(v>>(8*i)) {
				t.Fatalf("byte %d = %#x, want %#x", at+i, got, byte(v>>(8*i)))
			}
		}
	}
	want(0, 0x1122334455667700)
	want(8, 0x0102030405060708)
	want(512, 0x1122334455667700+512)
	want(520, 0x0102030405060708)
	for i, b := range buf {
		if (i%512 < 16 && i < 1024) || b == 0xAA {
			continue
		}
		t.Fatalf("byte %d changed to %#x", i, b)
	}
}

// BenchmarkScramble1M: scramble_buffers on a 1 MiB write buffer that is
// cold in cache (a fresh one of 64 each time, 64 MiB in all).
func BenchmarkScramble1M(b *testing.B) {
	bufs := make([][]byte, 64)
	for i := range bufs {
		bufs[i] = make([]byte, 1<<20)
	}
	b.SetBytes(1 << 20)
	for i := 0; b.Loop(); i++ {
		scramble(bufs[i%len(bufs)], int64(i)<<20, uint64(i))
	}
}
