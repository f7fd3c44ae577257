package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// NUMA placement (fio's numa_cpu_nodes and numa_mem_policy) and
// scramble_buffers. numa_cpu_nodes lets a clone run on the CPUs of the
// nodes given (it becomes cpus_allowed, which cpus_allowed_policy then
// shares or splits); numa_mem_policy binds, prefers or interleaves the
// clone's I/O buffers over nodes (mbind on the buffer memory, moving
// pages already there), or asks for local allocation.

// Memory policy modes (mbind's MPOL_*).
const (
	mpolDefault    = 0
	mpolPreferred  = 1
	mpolBind       = 2
	mpolInterleave = 3
	mpolLocal      = 4
	mpolMFMove     = 1 << 1
)

var mpolNames = map[string]int{"default": mpolDefault, "prefer": mpolPreferred, "bind": mpolBind, "interleave": mpolInterleave, "local": mpolLocal}

// nodeDir is where the kernel lists NUMA nodes (a variable for tests).
var nodeDir = "/sys/devices/system/node"

// parseNodes reads a node string ("0", "0-1", "0,2", "all") and checks
// each node exists here.
func parseNodes(v string) ([]int, error) {
	if v == "all" {
		ents, err := os.ReadDir(nodeDir)
		if err != nil {
			return nil, errors.New("this system shows no NUMA nodes")
		}
		var out []int
		for _, e := range ents {
			if n, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "node")); err == nil && strings.HasPrefix(e.Name(), "node") {
				out = append(out, n)
			}
		}
		return out, nil
	}
	var out []int
	for _, part := range strings.Split(v, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		a, err := strconv.Atoi(lo)
		b := a
		if err == nil && isRange {
			b, err = strconv.Atoi(hi)
		}
		if err != nil || a < 0 || b < a || b > 1023 {
			return nil, fmt.Errorf("bad node list entry %q (want N or N-M)", part)
		}
		for n := a; n <= b; n++ {
			if _, err := os.Stat(fmt.Sprintf("%s/node%d", nodeDir, n)); err != nil {
				return nil, fmt.Errorf("NUMA node %d does not exist here", n)
			}
			out = append(out, n)
		}
	}
	return out, nil
}

// nodeCPUs is the CPU list of nodes, as a cpus_allowed list.
func nodeCPUs(nodes []int) ([]int, error) {
	var parts []string
	for _, n := range nodes {
		b, err := os.ReadFile(fmt.Sprintf("%s/node%d/cpulist", nodeDir, n))
		if err != nil {
			return nil, err
		}
		if s := strings.TrimSpace(string(b)); s != "" {
			parts = append(parts, s)
		}
	}
	if len(parts) == 0 {
		return nil, fmt.Errorf("NUMA nodes %v have no CPUs", nodes)
	}
	return parseCPUList(strings.Join(parts, ","))
}

func registerNumaOptions() {
	for k, v := range map[string]optionSpec{
		"numa_cpu_nodes": {help: "run on the CPUs of these NUMA nodes (0, 0-1, 0,2, all)", set: func(j *Job, v string) error {
			nodes, err := parseNodes(v)
			if err != nil {
				return err
			}
			cpus, err := nodeCPUs(nodes)
			if err != nil {
				return err
			}
			j.NumaCPUs = cpus
			return nil
		}},
		"numa_mem_policy": {help: "memory policy of the I/O buffers: default, prefer:N, bind:NODES, interleave:NODES, local", set: func(j *Job, v string) error {
			mode, list, hasList := strings.Cut(v, ":")
			m, ok := mpolNames[mode]
			if !ok {
				return errors.New("want default, prefer:N, bind:NODES, interleave:NODES or local")
			}
			var nodes []int
			switch {
			case (m == mpolDefault || m == mpolLocal) && hasList:
				return fmt.Errorf("%s takes no node list", mode)
			case (m == mpolPreferred || m == mpolBind || m == mpolInterleave) && !hasList:
				return fmt.Errorf("a node list is needed for '%s'", mode)
			case hasList:
				var err error
				if nodes, err = parseNodes(list); err != nil {
					return err
				}
				if m == mpolPreferred && len(nodes) != 1 {
					return errors.New("prefer takes one node")
				}
			}
			j.NumaMem, j.NumaMemNodes = m, nodes
			return nil
		}},
		"scramble_buffers": {bool: true, help: "change a few bytes of each write's buffer (offset and a count per 512 bytes) so no two writes carry the same data (default 1)", set: boolSetter(func(j *Job, b bool) {
			j.ScrambleBuffers = b
		})},
	} {
		optionTable[k] = v
		delete(fioOnlyOptions, k)
	}
}

// bindBuffers applies the job's numa_mem_policy to buffer memory mem
// (page-aligned), moving pages already allocated; nothing without one.
func bindBuffers(j *Job, mem []byte) error {
	if _, ok := j.set["numa_mem_policy"]; !ok || len(mem) == 0 {
		return nil
	}
	var mask [16]uint64 // nodes 0..1023
	for _, n := range j.NumaMemNodes {
		mask[n/64] |= 1 << (n % 64)
	}
	var maskp unsafe.Pointer
	maxnode := uintptr(0)
	if len(j.NumaMemNodes) > 0 {
		maskp, maxnode = unsafe.Pointer(&mask[0]), uintptr(len(mask)*64)
	}
	page := uintptr(os.Getpagesize())
	start := uintptr(unsafe.Pointer(&mem[0])) &^ (page - 1)
	end := (uintptr(unsafe.Pointer(&mem[0])) + uintptr(len(mem)) + page - 1) &^ (page - 1)
	_, _, e := unix.Syscall6(unix.SYS_MBIND, start, end-start, uintptr(j.NumaMem), uintptr(maskp), maxnode, mpolMFMove)
	if e != 0 {
		return fmt.Errorf("numa_mem_policy: mbind: %w", e)
	}
	return nil
}

// scramble stamps the write's offset and a running count into the first
// 16 bytes of every 512 bytes of buf (fio's scramble_buffers: the data of
// two writes differs, so deduplication cannot fold them).
//
// Two 8-byte stores per 512 bytes, not sixteen byte stores: on a large
// block most of those lines are cold (the buffer went through librbd's or
// the kernel's copy an iodepth of blocks ago), and byte stores to cold
// lines fill the store buffer and stall the thread. On 1 MiB writes to an
// RBD image the byte loop was 10% of the process's CPU samples, twice
// fio's scramble (docs/performance.md, session 13).
func scramble(buf []byte, off int64, count uint64) {
	for k := 0; k+16 <= len(buf); k += 512 {
		binary.LittleEndian.PutUint64(buf[k:k+8], uint64(off)+uint64(k))
		binary.LittleEndian.PutUint64(buf[k+8:k+16], count)
	}
}
