// Package contract is the interface between ringblk and the programs that
// use it: hosts that load ringblk's Go plugin, and appliances that embed
// the library (package host implements these interfaces, with these
// types). It imports the standard library only: every package a host and a
// plugin share must be built from identical source with identical flags,
// so the contract keeps that set as small as it can be.
//
// A plugin exports one variable per ABI major version, named PluginV<major>
// (PluginV0 today), of type Manifest. A host looks it up with
// plugin.Lookup, which returns a *Manifest, and checks Magic and ABIMajor
// before using anything else; package plugin/loader does that, after
// checking the .so's build information against the host's.
//
// ABI major 0 is unstable: it grows with the plugin's capabilities until the
// first release freezes it as major 1.
package contract

// Magic identifies a ringblk plugin manifest.
const Magic = "ringblk-plugin"

// ABI version of this contract. Minor 2 added NewHost and the host API;
// minor 3 Host.RunLoop (polled mode), Device.Paused and Stats.Parked (the
// stop policy pauses the device); minor 4 HostOptions.WorkerCPUs.
const (
	ABIMajor = 0
	ABIMinor = 4
)

// SymbolName is the name of the variable a plugin of this ABI major
// exports.
const SymbolName = "PluginV0"

// PluginPath is the import path of ringblk's plugin main package: the
// path in the build information of every ringblk plugin.
const PluginPath = "github.com/ringblk/ringblk/plugin"

// Manifest is what a plugin exports.
type Manifest struct {
	Magic    string // always Magic
	ABIMajor int
	ABIMinor int
	Version  string // the backend's version
	// GoVersion is the toolchain that compiled the plugin, read from the
	// plugin's own build information at link time. (runtime.Version() in
	// a loaded plugin reports the host's runtime, which the plugin
	// shares, so it cannot tell a mismatch.)
	GoVersion string

	// Probe sets up (and closes) one io_uring instance and reports what
	// the kernel offers, or why io_uring cannot be used here.
	Probe func() (ProbeInfo, error)

	// NewHost starts a ringblk instance: its Contexts (event loops, one
	// io_uring ring each) and its block graph.
	NewHost func(HostOptions) (Host, error)
}

// ProbeInfo describes the io_uring setup the plugin would use on this host.
type ProbeInfo struct {
	SQEntries int
	CQEntries int
	Setup     string // setup flags, features and supported opcodes, as text
}
