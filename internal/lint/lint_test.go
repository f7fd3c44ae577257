// Package lint holds policy checks that run as ordinary tests.
package lint

import (
	"bufio"
	"bytes"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

const module = "github.com/ringblk/ringblk"

// layer gives each project package its place in the import lattice of
// docs/ARCHITECTURE.md §Layers: a package may import project packages of a
// strictly lower layer only. The table is a statement of policy: change it
// with a design note, never to make the build pass.
var layer = map[string]int{
	"internal/invariants":             0,
	"internal/units":                  0,
	"internal/prefetch":               0,
	"internal/pagecache":              0,
	"uring":                           1,
	"drivers/qcow2/format":            1,
	"drivers/qcow2/format/formattest": 2,
	"uring/uringtest":                 2,
	"aio":                             3,
	"cache":                           3,
	"block":                           4,
	"block/blocktest":                 5,
	"drivers/null":                    5,
	"drivers/raw":                     5,
	"drivers/qcow2":                   6,
	"drivers/chain":                   7,
	"bench":                           8,
	"nbd":                             8,
	"job":                             8,
	"host":                            8,
	"plugin":                          9,
	"plugin/contract":                 0,
	"plugin/loader":                   1,
	"txn":                             5,
	"qmp":                             9,
	"internal/servecmd":               10, // above qmp, below the dispatcher
	"cmd/ringblk":                     11,
	"internal/cli":                    8,
	"internal/cli/clitest":            0,
	"internal/imgcmd":                 9,
	"internal/qemuio":                 9,
	"internal/nbdcmd":                 9,
	"internal/benchcmd":               9,
}

// testSupport packages may be imported only from _test files and from other
// test-support packages.
var testSupport = map[string]bool{
	"uring/uringtest":                 true,
	"block/blocktest":                 true,
	"drivers/qcow2/format/formattest": true,
	"internal/cli/clitest":            true,
}

// external lists the non-standard-library modules a package may import.
var external = map[string][]string{
	"uring":                {"golang.org/x/sys"},
	"uring/uringtest":      {"golang.org/x/sys"},
	"aio":                  {"golang.org/x/sys", "github.com/klauspost/cpuid/v2"},
	"cache":                {"github.com/dgraph-io/ristretto/v2"},
	"drivers/qcow2":        {"github.com/klauspost/compress"},
	"drivers/qcow2/format": {"github.com/klauspost/compress"},
	"plugin/contract":      {},
	"plugin/loader":        {},
}

type pkg struct {
	path    string // relative to the module
	imports []string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	cmd := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "./...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		pkgs = append(pkgs, pkg{path: rel(f[0]), imports: f[1:]})
	}
	return pkgs
}

func rel(importPath string) string {
	if importPath == module {
		return "."
	}
	return strings.TrimPrefix(importPath, module+"/")
}

func isStd(path string) bool {
	first := strings.SplitN(path, "/", 2)[0]
	return !strings.Contains(first, ".")
}

// TestImportPolicy enforces the layer directions of the architecture: top
// imports bottom, never the reverse; nothing imports a test-support package
// from non-test code; listed packages import only their allowed modules.
func TestImportPolicy(t *testing.T) {
	for _, p := range listPackages(t) {
		if strings.HasPrefix(p.path, "internal/lint") {
			continue
		}
		from, known := layer[p.path]
		if !known {
			t.Errorf("package %s has no place in the import lattice (internal/lint/lint_test.go)", p.path)
			continue
		}
		for _, imp := range p.imports {
			switch {
			case strings.HasPrefix(imp, module+"/"):
				to := rel(imp)
				if testSupport[to] && !testSupport[p.path] {
					t.Errorf("%s imports test-support package %s from non-test code", p.path, to)
				}
				if l, ok := layer[to]; !ok || l >= from {
					t.Errorf("%s (layer %d) must not import %s (layer %d)", p.path, from, to, l)
				}
			case isStd(imp):
			default:
				allowed, restricted := external[p.path]
				if !restricted {
					continue
				}
				ok := false
				for _, a := range allowed {
					if imp == a || strings.HasPrefix(imp, a+"/") {
						ok = true
					}
				}
				if !ok {
					t.Errorf("%s must not import %s (allowed: %v)", p.path, imp, allowed)
				}
			}
		}
	}
}

// TestNoReflectInRing keeps reflection out of the ring and the event loop.
func TestNoReflectInRing(t *testing.T) {
	for _, p := range listPackages(t) {
		if p.path != "uring" && p.path != "aio" {
			continue
		}
		for _, imp := range p.imports {
			if imp == "reflect" {
				t.Errorf("%s imports reflect; the ring and loop stay reflection-free", p.path)
			}
		}
	}
}
