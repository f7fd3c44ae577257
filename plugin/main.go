// Package main is ringblk's Go plugin: build it with
// `go build -buildmode=plugin` (make plugin) and load it from a host with
// the standard plugin package. It exports PluginV0, a contract.Manifest; the
// package has no init side effects.
package main

import (
	"runtime"

	"github.com/ringblk/ringblk/plugin/contract"
	"github.com/ringblk/ringblk/uring"
)

// Version is the backend version this plugin was built from.
const Version = "0.1.0-dev"

// PluginV0 is the manifest hosts look up.
var PluginV0 = contract.Manifest{
	Magic:     contract.Magic,
	ABIMajor:  contract.ABIMajor,
	ABIMinor:  contract.ABIMinor,
	Version:   Version,
	GoVersion: runtime.Version(),
	Probe:     probe,
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

func main() {}
