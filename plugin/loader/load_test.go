package loader_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
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
	so := buildPlugin(t)
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
	// Go holds a loaded plugin until the process exits: the same file
	// loads again (the same manifest); a copy elsewhere is refused with
	// an error naming the loaded file, not Go's bare "already loaded".
	if again, err := loader.Load(so); err != nil || again != m {
		t.Fatalf("the same file again: %v (same manifest: %v)", err, again == m)
	}
	b, err := os.ReadFile(so)
	if err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(t.TempDir(), "copy.so")
	if err := os.WriteFile(copyPath, b, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = loader.Load(copyPath)
	if !errors.Is(err, loader.ErrNotLoadable) || !strings.Contains(err.Error(), "already loaded into this process, from "+so) {
		t.Fatalf("a copy of the loaded plugin: %v", err)
	}
}

// built is the plugin TestPluginLoads builds, once per test process: Go
// cannot load a second file of the same plugin into a process, so a
// second run of the test (-count) must load the same file again.
var built struct {
	sync.Mutex
	dir, so string
}

func buildPlugin(t *testing.T) string {
	built.Lock()
	defer built.Unlock()
	if built.so != "" {
		return built.so
	}
	gotool := goTool(t)
	dir, err := os.MkdirTemp("", "ringblk-loader-test")
	if err != nil {
		t.Fatal(err)
	}
	so := filepath.Join(dir, "ringblk.so")
	args := append([]string{"build", "-buildmode=plugin"}, buildFlags(t)...)
	args = append(args, "-o", so, contract.PluginPath)
	cmd := exec.Command(gotool, args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if msg, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, msg)
	}
	// EvalSymlinks: the loader names the file as plugin.Open keys it.
	if r, err := filepath.EvalSymlinks(so); err == nil {
		so = r
	}
	built.dir, built.so = dir, so
	return so
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}
