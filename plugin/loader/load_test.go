package loader_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/plugin/contract"
	"github.com/ringblk/ringblk/plugin/loader"
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

// goTool returns the go command if it is this test binary's toolchain.
func goTool(t *testing.T) string {
	gotool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool on PATH to build the plugin")
	}
	out, err := exec.Command(gotool, "env", "GOVERSION").Output()
	if err != nil || strings.TrimSpace(string(out)) != runtime.Version() {
		t.Skipf("go tool is %q, this test binary %s: a plugin must be built by the same toolchain", strings.TrimSpace(string(out)), runtime.Version())
	}
	return gotool
}

// TestPluginLoads builds the plugin with this binary's flags, loads it
// through the loader (build information, then the handshake), and uses
// the host API through it: a null device, a queue in eventfd mode, stats.
func TestPluginLoads(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a plugin with the go tool (slow); skipped with -short")
	}
	if testing.CoverMode() != "" {
		t.Skip("coverage instrumentation changes package hashes; plugins cannot load")
	}
	gotool := goTool(t)
	so := filepath.Join(t.TempDir(), "ringblk.so")
	args := append([]string{"build", "-buildmode=plugin"}, buildFlags(t)...)
	args = append(args, "-o", so, contract.PluginPath)
	cmd := exec.Command(gotool, args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, msg)
	}
	// A refused file first: the good one must still load afterwards.
	if _, err := loader.Load(filepath.Join(t.TempDir(), "missing.so")); err == nil {
		t.Fatal("missing file loaded")
	}
	m, err := loader.Load(so)
	if err != nil {
		t.Fatalf("Load: %v", err)
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
	h, err := m.NewHost(contract.HostOptions{Contexts: 1})
	if err != nil {
		t.Fatal(err)
	}
	d, err := h.Open(filepath.Join(t.TempDir(), "disk.raw"), contract.OpenOptions{Format: "raw"})
	if err == nil {
		t.Fatal("opened a missing image")
	}
	p := filepath.Join(t.TempDir(), "disk.raw")
	if err := h.Create(p, contract.CreateOptions{Format: "raw", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if d, err = h.Open(p, contract.OpenOptions{}); err != nil {
		t.Fatal(err)
	}
	q, err := d.NewQueue(contract.QueueOptions{Depth: 4})
	if err != nil {
		t.Fatal(err)
	}
	w := bytes.Repeat([]byte{0xa5}, 4096)
	if err := q.Write(w, 4096, contract.FUA, 1); err != nil {
		t.Fatal(err)
	}
	if !q.Wait(-1) {
		t.Fatal("no completion")
	}
	if c, ok := q.Next(); !ok || c.Err != nil || c.UserData != 1 || c.Bytes != 4096 {
		t.Fatalf("completion %+v %v", c, ok)
	}
	r := make([]byte, 4096)
	if _, err := d.ReadAt(r, 4096); err != nil || !bytes.Equal(r, w) {
		t.Fatalf("read back: %v", err)
	}
	if st := d.Stats(); st.Write.Ops != 1 || st.Read.Ops != 1 {
		t.Errorf("stats %+v", st)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
}
