package aio

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"unsafe"

	"github.com/klauspost/cpuid/v2"
	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/internal/invariants"
)

// Topology is what the package learned about the machine at start-up:
// cpuid's core counts and cache-line size, and the logical CPUs this process
// may run on (its affinity mask).
type Topology struct {
	PhysicalCores  int   // cpuid; never less than 1
	ThreadsPerCore int   // cpuid; never less than 1
	CacheLine      int   // bytes; cpuid, at least 64, a power of two
	CPUs           []int // logical CPUs in the affinity mask, ascending
	// CoreCPUs lists, for each physical core usable by this process, the
	// logical CPU to pin its Context to (the first SMT sibling in the mask).
	CoreCPUs []int
}

// topo is computed once at package init; it is read-only afterwards.
var topo = detectTopology()

// cacheLine is the padding granule for atomics shared between goroutines.
var cacheLine = topo.CacheLine

// MachineTopology returns the topology StartDefault uses.
func MachineTopology() Topology {
	t := topo
	t.CPUs = append([]int(nil), topo.CPUs...)
	t.CoreCPUs = append([]int(nil), topo.CoreCPUs...)
	return t
}

func detectTopology() Topology {
	t := Topology{
		PhysicalCores:  cpuid.CPU.PhysicalCores,
		ThreadsPerCore: cpuid.CPU.ThreadsPerCore,
		CacheLine:      cpuid.CPU.CacheLine,
	}
	if t.ThreadsPerCore < 1 {
		t.ThreadsPerCore = 1
	}
	if t.CacheLine < 64 {
		t.CacheLine = 64
	}
	for t.CacheLine&(t.CacheLine-1) != 0 { // round up to a power of two
		t.CacheLine += t.CacheLine & -t.CacheLine
	}
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err == nil {
		for cpu := 0; cpu < len(set)*64; cpu++ {
			if set.IsSet(cpu) {
				t.CPUs = append(t.CPUs, cpu)
			}
		}
	}
	if len(t.CPUs) == 0 {
		for cpu := 0; cpu < runtime.NumCPU(); cpu++ {
			t.CPUs = append(t.CPUs, cpu)
		}
	}
	if t.PhysicalCores < 1 {
		t.PhysicalCores = max(1, len(t.CPUs)/t.ThreadsPerCore)
	}
	t.CoreCPUs = coreCPUs(t)
	return t
}

// coreCPUs picks one logical CPU per physical core. cpuid gives the counts
// but not the numbering of SMT siblings, so the sibling lists come from
// sysfs when it is readable; otherwise every ThreadsPerCore-th CPU of the
// mask is taken.
func coreCPUs(t Topology) []int {
	seen := make(map[string]bool)
	var out []int
	for _, cpu := range t.CPUs {
		b, err := os.ReadFile("/sys/devices/system/cpu/cpu" + strconv.Itoa(cpu) + "/topology/thread_siblings_list")
		if err != nil {
			out = nil
			break
		}
		key := strings.TrimSpace(string(b))
		if !seen[key] {
			seen[key] = true
			out = append(out, cpu)
		}
	}
	if out == nil {
		for i := 0; i < len(t.CPUs); i += t.ThreadsPerCore {
			out = append(out, t.CPUs[i])
		}
	}
	if len(out) > t.PhysicalCores && t.PhysicalCores > 0 && len(t.CPUs) >= t.PhysicalCores*t.ThreadsPerCore {
		out = out[:t.PhysicalCores]
	}
	return out
}

// padded returns a pointer to a zero T that is alone on its cache line (of
// the size cpuid reported), so that atomics written by different goroutines
// do not share a line. T must be a small fixed-size value such as an atomic.
// Go has no runtime-sized struct padding, so the value lives inside a slab
// of two cache lines and the pointer is chosen at an aligned offset.
func padded[T any]() *T {
	var zero T
	size := int(unsafe.Sizeof(zero))
	if size <= 0 || size > cacheLine || cacheLine%size != 0 {
		invariants.Failf("aio: padded: unsupported element size %d", size)
	}
	slab := make([]T, 2*cacheLine/size)
	// SAFETY: the address is only read to find an aligned element; no
	// pointer is made from an integer.
	addr := uintptr(unsafe.Pointer(&slab[0]))
	skip := (uintptr(cacheLine) - addr%uintptr(cacheLine)) % uintptr(cacheLine)
	return &slab[int(skip)/size]
}
