// Package loader is the host side of loading ringblk's Go plugin. Go
// refuses (or worse, crashes on) a plugin built differently from the host
// with messages that do not say what to change; Load first reads the
// .so's build information (debug/buildinfo, without loading it) and
// compares it with the host's, reporting every difference at once in one
// error: Go toolchain (patch included), -race/-msan/-asan, -trimpath,
// build tags, cgo, GOOS/GOARCH and the architecture level, experiments,
// and the version of every module both contain. A file that is not a Go
// plugin (a C shared library, an executable) or not ringblk's plugin is
// refused the same way, and is never opened. Only then does Load call
// plugin.Open and check the manifest's magic and ABI.
//
// The package imports the standard library and plugin/contract only, so
// a host that loads ringblk shares nothing else with it.
package loader

import (
	"debug/buildinfo"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"plugin"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"

	"github.com/ringblk/ringblk/plugin/contract"
)

// Mismatch is one difference between the plugin's build and the host's.
type Mismatch struct {
	What   string // e.g. "Go toolchain", "-race", "module golang.org/x/sys"
	Plugin string // the plugin's value
	Host   string // the host's value
}

func (m Mismatch) String() string {
	return fmt.Sprintf("%s: plugin %s, host %s", m.What, show(m.Plugin), show(m.Host))
}

func show(s string) string {
	if s == "" {
		return "(unset)"
	}
	return s
}

// Error is a refused plugin: the file, what is wrong with it, and (for a
// refusal after the build information matched) the cause from plugin.Open
// or the handshake.
type Error struct {
	Path       string
	Problem    string     // not loadable at all: missing file, not a Go plugin, ...
	Mismatches []Mismatch // built differently from this host
	Err        error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "ringblk plugin %s cannot be loaded into this host", e.Path)
	if e.Problem != "" {
		b.WriteString(": " + e.Problem)
	}
	if len(e.Mismatches) > 0 {
		fmt.Fprintf(&b, ": it was built differently (%d difference(s); build the .so with the host's toolchain, flags and module versions, see docs/plugin.md):", len(e.Mismatches))
		for _, m := range e.Mismatches {
			b.WriteString("\n\t" + m.String())
		}
	}
	if e.Err != nil {
		b.WriteString(": " + e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// ErrNotLoadable matches (errors.Is) every refusal of Load and Check.
var ErrNotLoadable = errors.New("ringblk plugin not loadable")

// Is makes errors.Is(err, ErrNotLoadable) true.
func (e *Error) Is(target error) bool { return target == ErrNotLoadable }

// settings compared between plugin and host; a missing setting is
// compared as "" except where defaults are given.
var settings = []struct{ key, def string }{
	{"-race", "false"}, {"-msan", "false"}, {"-asan", "false"},
	{"-trimpath", "false"}, {"-tags", ""}, {"CGO_ENABLED", ""},
	{"GOOS", ""}, {"GOARCH", ""}, {"GOAMD64", ""}, {"GOARM64", ""}, {"GOARM", ""},
	{"GO386", ""}, {"GOPPC64", ""}, {"GORISCV64", ""}, {"GOEXPERIMENT", ""},
	{"-gcflags", ""}, {"-compiler", "gc"},
}

// Check reads the build information of the .so at path and compares it
// with this host's; it returns that information, or an *Error listing
// every problem. It never opens the file as a plugin.
func Check(path string) (*buildinfo.BuildInfo, error) {
	host, ok := debug.ReadBuildInfo()
	if !ok {
		return nil, &Error{Path: path, Problem: "this host has no build information (built without module support?), so the plugin's build cannot be checked"}
	}
	return check(path, host)
}

func check(path string, host *debug.BuildInfo) (*buildinfo.BuildInfo, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, &Error{Path: path, Problem: "cannot read it", Err: err}
	}
	if !st.Mode().IsRegular() {
		return nil, &Error{Path: path, Problem: "not a regular file"}
	}
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return nil, &Error{Path: path, Problem: "not a Go binary (no Go build information: a C shared library or another file)", Err: err}
	}
	if err := compare(path, bi, host); err != nil {
		return nil, err
	}
	return bi, nil
}

// compare lists every difference between the plugin's build (bi) and the
// host's; nil when there is none.
func compare(path string, bi, host *debug.BuildInfo) error {
	e := &Error{Path: path}
	pset := settingMap(bi.Settings)
	hset := settingMap(host.Settings)
	if mode := pset["-buildmode"]; mode != "plugin" {
		e.Problem = fmt.Sprintf("not a Go plugin (built with -buildmode=%s)", show(mode))
		return e
	}
	if bi.Path != contract.PluginPath {
		e.Problem = fmt.Sprintf("not ringblk's plugin (its main package is %s, not %s)", show(bi.Path), contract.PluginPath)
	}
	if bi.GoVersion != host.GoVersion {
		e.Mismatches = append(e.Mismatches, Mismatch{"Go toolchain", bi.GoVersion, host.GoVersion})
	}
	for _, s := range settings {
		p, h := pset[s.key], hset[s.key]
		if p == "" {
			p = s.def
		}
		if h == "" {
			h = s.def
		}
		if p != h {
			e.Mismatches = append(e.Mismatches, Mismatch{s.key, p, h})
		}
	}
	e.Mismatches = append(e.Mismatches, moduleMismatches(bi, host)...)
	if e.Problem != "" || len(e.Mismatches) > 0 {
		return e
	}
	return nil
}

func settingMap(s []debug.BuildSetting) map[string]string {
	m := make(map[string]string, len(s))
	for _, x := range s {
		m[x.Key] = x.Value
	}
	return m
}

// moduleMismatches compares every module both builds contain: version,
// checksum and replacement. A module that is one side's main module and
// a dependency of the other cannot be verified and is reported too.
func moduleMismatches(p, h *debug.BuildInfo) []Mismatch {
	hosts := map[string]*debug.Module{}
	hmain := h.Main
	hosts[hmain.Path] = &hmain
	for _, m := range h.Deps {
		hosts[m.Path] = m
	}
	pmods := append([]*debug.Module{&p.Main}, p.Deps...)
	var out []Mismatch
	for _, pm := range pmods {
		if pm.Path == "" {
			continue
		}
		hm, ok := hosts[pm.Path]
		if !ok {
			continue
		}
		pv, hv := describe(pm), describe(hm)
		if pv == hv {
			continue
		}
		if pm == &p.Main {
			pv += " (the plugin's main module)"
		}
		if hm == &hmain {
			hv += " (the host's main module)"
		}
		{
			out = append(out, Mismatch{"module " + pm.Path, pv, hv})
		}
	}
	return out
}

// describe is a module's identity: version, checksum and replacement.
func describe(m *debug.Module) string {
	s := m.Version
	if m.Sum != "" {
		s += " " + m.Sum
	}
	if r := m.Replace; r != nil {
		s += " => " + r.Path
		if r.Version != "" {
			s += " " + r.Version
		}
		if r.Sum != "" {
			s += " " + r.Sum
		}
	}
	return s
}

// Load checks the .so at path (Check), opens it, and performs the
// handshake: the PluginV0 symbol is a *contract.Manifest with this
// contract's magic and ABI major, an ABI minor at least this contract's,
// and the Go version this host runs. Every refusal is an *Error; nothing
// is opened unless the build information matched, so a refused file
// leaves the process as it was and a later Load of a good one works.
func Load(path string) (*contract.Manifest, error) {
	if _, err := Check(path); err != nil {
		return nil, err
	}
	// Go keeps one plugin per main package path for the life of the
	// process: a second file (a copy, an upgrade) is refused as "already
	// loaded" although its build matches, so say which file holds the
	// place and what to do. The same file again is Go's cached plugin.
	real := realPath(path)
	loaded.Lock()
	defer loaded.Unlock()
	if loaded.path != "" && loaded.path != real {
		return nil, &Error{Path: path, Problem: fmt.Sprintf("a ringblk plugin is already loaded into this process, from %s; "+
			"Go cannot unload a plugin or load a second copy: load that file again, or restart the process to change it", loaded.path)}
	}
	p, err := plugin.Open(path)
	if err != nil {
		return nil, &Error{Path: path, Problem: "plugin.Open refused it although its build information matches this host's", Err: err}
	}
	loaded.path = real
	sym, err := p.Lookup(contract.SymbolName)
	if err != nil {
		return nil, &Error{Path: path, Problem: "no " + contract.SymbolName + " symbol (a plugin of another ABI major?)", Err: err}
	}
	m, ok := sym.(*contract.Manifest)
	if !ok {
		return nil, &Error{Path: path, Problem: fmt.Sprintf("%s is a %T, not a *contract.Manifest", contract.SymbolName, sym)}
	}
	switch {
	case m.Magic != contract.Magic:
		return nil, &Error{Path: path, Problem: fmt.Sprintf("manifest magic %q, want %q", m.Magic, contract.Magic)}
	case m.ABIMajor != contract.ABIMajor || m.ABIMinor < contract.ABIMinor:
		return nil, &Error{Path: path, Problem: fmt.Sprintf("plugin ABI %d.%d, this host needs %d.%d or a later minor", m.ABIMajor, m.ABIMinor, contract.ABIMajor, contract.ABIMinor)}
	case m.GoVersion != runtime.Version():
		return nil, &Error{Path: path, Problem: fmt.Sprintf("plugin reports being built by %s, this host runs %s", m.GoVersion, runtime.Version())}
	case m.NewHost == nil || m.Probe == nil:
		return nil, &Error{Path: path, Problem: "manifest lacks NewHost or Probe"}
	}
	return m, nil
}

// loaded is the file Load opened ringblk's plugin from (Go holds it until
// the process exits).
var loaded struct {
	sync.Mutex
	path string
}

// realPath is path as plugin.Open keys it: absolute, symbolic links
// resolved (path itself when that fails).
func realPath(path string) string {
	if r, err := filepath.EvalSymlinks(path); err == nil {
		path = r
	}
	if a, err := filepath.Abs(path); err == nil {
		path = a
	}
	return path
}
