// Package main is ringblk's Go plugin: build it with
// `go build -buildmode=plugin` (make plugin; docs/plugin.md for hosts in
// their own modules) and load it with package plugin/loader, which checks
// the .so's build information against the host's first. It exports
// PluginV0, a contract.Manifest whose NewHost starts the host API of
// package host. The package starts no goroutine when loaded.
package main

import (
	"bufio"
	"debug/buildinfo"
	"os"
	"reflect"
	"strconv"
	"strings"

	"github.com/ringblk/ringblk/host"
	"github.com/ringblk/ringblk/plugin/contract"
	"github.com/ringblk/ringblk/uring"
)

// Version is the backend version this plugin was built from.
const Version = "0.2.0-dev"

// PluginV0 is the manifest hosts look up.
var PluginV0 = contract.Manifest{
	Magic:     contract.Magic,
	ABIMajor:  contract.ABIMajor,
	ABIMinor:  contract.ABIMinor,
	Version:   Version,
	GoVersion: builtBy(),
	Probe:     probe,
	NewHost:   newHost,
}

func newHost(o contract.HostOptions) (contract.Host, error) {
	h, err := host.New(o)
	if err != nil {
		return nil, err
	}
	return h, nil
}

func probe() (contract.ProbeInfo, error) {
	r, err := uring.New(8)
	if err != nil {
		return contract.ProbeInfo{}, err
	}
	defer r.Close()
	return contract.ProbeInfo{
		SQEntries: r.SQEntries(),
		CQEntries: r.CQEntries(),
		Setup:     r.Params().String(),
	}, nil
}

// builtBy returns the Go version that compiled this plugin. A loaded
// plugin shares the host's runtime, so runtime.Version() (and
// debug.ReadBuildInfo) describe the host; the plugin's own toolchain is in
// the build information of its .so file, found through the mapping that
// holds this package's code.
func builtBy() string {
	path := mappedFile(reflect.ValueOf(probe).Pointer())
	if path == "" {
		return "unknown (the plugin's file is not in /proc/self/maps)"
	}
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return bi.GoVersion
}

// mappedFile returns the file whose mapping in this process holds addr.
func mappedFile(addr uintptr) string {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		a, err1 := strconv.ParseUint(lo, 16, 64)
		b, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 == nil && err2 == nil && uint64(addr) >= a && uint64(addr) < b {
			return strings.Join(fields[5:], " ")
		}
	}
	return ""
}

func main() {}
