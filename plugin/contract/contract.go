// Package contract is the interface between ringblk's Go plugin and the
// hosts that load it. It imports the standard library only: every package a
// host and a plugin share must be built from identical source with identical
// flags, so the contract keeps that set as small as it can be.
//
// A plugin exports one variable per ABI major version, named PluginV<major>
// (PluginV0 today), of type Manifest. A host looks it up with
// plugin.Lookup, which returns a *Manifest, and checks Magic and ABIMajor
// before using anything else.
//
// ABI major 0 is unstable: it grows with the plugin's capabilities until the
// first release freezes it as major 1.
package contract

// Magic identifies a ringblk plugin manifest.
const Magic = "ringblk-plugin"

// ABI version of this contract.
const (
	ABIMajor = 0
	ABIMinor = 1
)

// Manifest is what a plugin exports.
type Manifest struct {
	Magic     string // always Magic
	ABIMajor  int
	ABIMinor  int
	Version   string // the backend's version
	GoVersion string // runtime.Version() of the toolchain that built the plugin

	// Probe sets up (and closes) one io_uring instance and reports what
	// the kernel offers, or why io_uring cannot be used here.
	Probe func() (ProbeInfo, error)
}

// ProbeInfo describes the io_uring setup the plugin would use on this host.
type ProbeInfo struct {
	SQEntries int
	CQEntries int
	Setup     string // setup flags, features and supported opcodes, as text
}
