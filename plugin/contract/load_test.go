package contract_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"plugin"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/plugin/contract"
)

// buildFlags mirrors the build settings of this test binary that the
// plugin's package hashes depend on (-race, -tags, -trimpath), so the
// plugin built here can be loaded into it.
func buildFlags(t *testing.T) []string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		t.Skip("no build info in the test binary")
	}
	var flags []string
	for _, s := range bi.Settings {
		switch s.Key {
		case "-race":
			if s.Value == "true" {
				flags = append(flags, "-race")
			}
		case "-tags":
			flags = append(flags, "-tags="+s.Value)
		case "-trimpath":
			if s.Value == "true" {
				flags = append(flags, "-trimpath")
			}
		case "CGO_ENABLED":
			if s.Value != "1" {
				t.Skip("Go plugins need cgo; this test binary was built with CGO_ENABLED=" + s.Value)
			}
		}
	}
	return flags
}

// TestPluginLoads builds the plugin with this binary's flags, loads it,
// checks the manifest handshake and calls Probe.
func TestPluginLoads(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a plugin with the go tool; skipped with -short")
	}
	if testing.CoverMode() != "" {
		t.Skip("coverage instrumentation changes package hashes; plugins cannot load")
	}
	gotool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool on PATH to build the plugin")
	}
	out, err := exec.Command(gotool, "env", "GOVERSION").Output()
	if err != nil || strings.TrimSpace(string(out)) != runtime.Version() {
		t.Skipf("go tool is %q, this test binary %s: a plugin must be built by the same toolchain", strings.TrimSpace(string(out)), runtime.Version())
	}
	so := filepath.Join(t.TempDir(), "ringblk.so")
	args := append([]string{"build", "-buildmode=plugin"}, buildFlags(t)...)
	args = append(args, "-o", so, "github.com/ringblk/ringblk/plugin")
	cmd := exec.Command(gotool, args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, msg)
	}

	p, err := plugin.Open(so)
	if err != nil {
		t.Fatalf("plugin.Open: %v", err)
	}
	sym, err := p.Lookup("PluginV0")
	if err != nil {
		t.Fatalf("Lookup(PluginV0): %v", err)
	}
	m, ok := sym.(*contract.Manifest)
	if !ok {
		t.Fatalf("PluginV0 is %T, want *contract.Manifest", sym)
	}
	if m.Magic != contract.Magic || m.ABIMajor != contract.ABIMajor || m.ABIMinor < contract.ABIMinor {
		t.Fatalf("handshake: magic %q ABI %d.%d, want %q %d.%d", m.Magic, m.ABIMajor, m.ABIMinor, contract.Magic, contract.ABIMajor, contract.ABIMinor)
	}
	if m.GoVersion != runtime.Version() {
		t.Errorf("plugin built by %s, host is %s", m.GoVersion, runtime.Version())
	}
	info, err := m.Probe()
	if err != nil {
		t.Skipf("io_uring unavailable through the plugin: %v", err)
	}
	if info.SQEntries < 8 || info.CQEntries < info.SQEntries || info.Setup == "" {
		t.Errorf("probe reported %+v", info)
	}
	t.Logf("plugin probe: sq=%d cq=%d %s", info.SQEntries, info.CQEntries, info.Setup)
}
