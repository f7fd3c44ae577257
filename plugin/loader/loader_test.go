package loader_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/plugin/contract"
	"github.com/ringblk/ringblk/plugin/loader"
)

func info(goVersion string, settings map[string]string, mods ...*debug.Module) *debug.BuildInfo {
	bi := &debug.BuildInfo{GoVersion: goVersion, Path: contract.PluginPath,
		Main: debug.Module{Path: "example.com/host", Version: "(devel)"}, Deps: mods}
	for k, v := range settings {
		bi.Settings = append(bi.Settings, debug.BuildSetting{Key: k, Value: v})
	}
	return bi
}

// TestCompareReportsEveryMismatch: one error names the toolchain (patch
// included), -race, -trimpath, the tags and a shared module's version,
// all at once; modules only one side has are not differences.
func TestCompareReportsEveryMismatch(t *testing.T) {
	h := info("go1.26.1", map[string]string{"-buildmode": "exe", "-tags": "invariants", "CGO_ENABLED": "1", "GOARCH": "amd64"},
		&debug.Module{Path: "golang.org/x/sys", Version: "v0.49.0", Sum: "h1:a"},
		&debug.Module{Path: "only.host/mod", Version: "v1.0.0"})
	p := info("go1.26.0", map[string]string{"-buildmode": "plugin", "-race": "true", "-trimpath": "true", "-tags": "other", "CGO_ENABLED": "1", "GOARCH": "amd64"},
		&debug.Module{Path: "golang.org/x/sys", Version: "v0.48.0", Sum: "h1:b"},
		&debug.Module{Path: "only.plugin/mod", Version: "v1.0.0"})
	err := loader.Compare("x.so", p, h)
	var le *loader.Error
	if !errors.As(err, &le) || !errors.Is(err, loader.ErrNotLoadable) {
		t.Fatalf("Compare: %v, want a *loader.Error", err)
	}
	msg := err.Error()
	for _, want := range []string{
		"Go toolchain: plugin go1.26.0, host go1.26.1",
		"-race: plugin true, host false",
		"-trimpath: plugin true, host false",
		"-tags: plugin other, host invariants",
		"module golang.org/x/sys: plugin v0.48.0 h1:b, host v0.49.0 h1:a",
		"5 difference(s)",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "only.") {
		t.Errorf("a module only one side has is reported:\n%s", msg)
	}
	// Identical builds: no error.
	p2 := info("go1.26.1", map[string]string{"-buildmode": "plugin", "-tags": "invariants", "CGO_ENABLED": "1", "GOARCH": "amd64"},
		&debug.Module{Path: "golang.org/x/sys", Version: "v0.49.0", Sum: "h1:a"})
	if err := loader.Compare("x.so", p2, h); err != nil {
		t.Fatalf("identical builds refused: %v", err)
	}
	// Another Go plugin, an executable.
	p2.Path = "example.com/other/plugin"
	if err := loader.Compare("x.so", p2, h); err == nil || !strings.Contains(err.Error(), "not ringblk's plugin (its main package is example.com/other/plugin") {
		t.Fatalf("foreign plugin: %v", err)
	}
	for i := range p2.Settings {
		if p2.Settings[i].Key == "-buildmode" {
			p2.Settings[i].Value = "exe"
		}
	}
	if err := loader.Compare("x.so", p2, h); err == nil || !strings.Contains(err.Error(), "not a Go plugin (built with -buildmode=exe)") {
		t.Fatalf("executable: %v", err)
	}
}

// TestRefusesNonGoFiles: a missing file, a text file and a C shared
// library are refused by name without being opened.
func TestRefusesNonGoFiles(t *testing.T) {
	dir := t.TempDir()
	_, err := loader.Load(filepath.Join(dir, "missing.so"))
	if err == nil || !strings.Contains(err.Error(), "cannot read it") || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	txt := filepath.Join(dir, "text.so")
	os.WriteFile(txt, []byte("not a library\n"), 0o644)
	if _, err := loader.Load(txt); err == nil || !strings.Contains(err.Error(), "not a Go binary") {
		t.Fatalf("text file: %v", err)
	}
	if _, err := loader.Load(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("directory: %v", err)
	}
	so := cLibrary(t)
	if _, err := loader.Load(so); err == nil || !strings.Contains(err.Error(), "not a Go binary") {
		t.Fatalf("C shared library: %v", err)
	}
}

// cLibrary builds a C shared library with gcc, or skips.
func cLibrary(t *testing.T) string {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("no gcc to build a C shared library")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "lib.c")
	os.WriteFile(src, []byte("int ringblk_c(void) { return 42; }\n"), 0o644)
	so := filepath.Join(dir, "libc.so")
	if out, err := exec.Command(gcc, "-shared", "-fPIC", "-o", so, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	return so
}
