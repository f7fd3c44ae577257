// Package lint holds policy checks that run as ordinary tests.
package lint

import (
	"bufio"
	"bytes"
	"io/fs"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

const module = "github.com/ringblk/ringblk"

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

// buildPackages is the build's import graph (non-test imports) in the
// form Policy.Check takes.
func buildPackages(t *testing.T) []Package {
	var out []Package
	for _, p := range listPackages(t) {
		pk := Package{Path: p.path}
		for _, imp := range p.imports {
			switch {
			case imp == module || strings.HasPrefix(imp, module+"/"):
				pk.Project = append(pk.Project, rel(imp))
			case isStd(imp):
				pk.Std = append(pk.Std, imp)
			default:
				pk.Ext = append(pk.Ext, imp)
			}
		}
		out = append(out, pk)
	}
	return out
}

func policy(t *testing.T) *Policy {
	t.Helper()
	p, err := ParsePolicy(Lattice)
	if err != nil {
		t.Fatalf("internal/lint/lattice.txt: %v", err)
	}
	return p
}

// TestImportPolicy checks the build against the import lattice of
// lattice.txt (docs/ARCHITECTURE.md §Layers): every package has a place,
// every import is below its importer, test support is imported by tests
// only, and the never rules hold.
func TestImportPolicy(t *testing.T) {
	for _, e := range policy(t).Check(buildPackages(t)) {
		t.Error(e)
	}
}

// TestImportPolicyCatchesViolations injects edges the policy forbids into
// the real import graph, in memory, and checks that each is reported.
func TestImportPolicyCatchesViolations(t *testing.T) {
	p := policy(t)
	cases := []struct {
		name string
		edit func(map[string]*Package) []Package
		want string
	}{
		{"driver imports uring", addImport("drivers/raw", "uring"),
			"drivers/... never import uring/...: drivers/raw imports uring"},
		{"driver imports the fake ring", addImport("drivers/null", "uring/uringtest"),
			"drivers/null imports test-support package uring/uringtest from non-test code"},
		{"format layer imports block", withPackage(Package{Path: "drivers/qcow2/format", Project: []string{"block"}}),
			"drivers/qcow2/format never reach block, aio, cache, uring/...: drivers/qcow2/format imports block"},
		{"format layer reaches cache through units", func(m map[string]*Package) []Package {
			withPackage(Package{Path: "drivers/qcow2/format", Project: []string{"internal/units"}})(m)
			return addImport("internal/units", "cache")(m)
		}, "drivers/qcow2/format never reach block, aio, cache, uring/...: drivers/qcow2/format reaches cache through internal/units"},
		{"block imports a driver", addImport("block", "drivers/raw"),
			"block imports drivers/raw, which the lattice does not place below it"},
		{"contract imports x/sys", func(m map[string]*Package) []Package {
			m["plugin/contract"].Ext = append(m["plugin/contract"].Ext, "golang.org/x/sys/unix")
			return flat(m)
		}, "plugin/contract never reach NONSTD: plugin/contract imports golang.org/x/sys/unix"},
		{"upward import", addImport("aio", "block"),
			"aio imports block, which the lattice does not place below it"},
		{"sibling import", addImport("drivers/raw", "drivers/null"),
			"drivers/raw imports drivers/null, which the lattice does not place below it"},
		{"reflect in the loop", func(m map[string]*Package) []Package {
			m["aio"].Std = append(m["aio"].Std, "reflect")
			return flat(m)
		}, "uring, aio never import reflect: aio imports reflect"},
		{"import of a command", addImport("host", "cmd/ringblk"),
			"* never reach cmd/...: host imports cmd/ringblk"},
		{"unknown package", withPackage(Package{Path: "drivers/iscsi", Project: []string{"block"}}),
			`package drivers/iscsi has no place in the import lattice: add a rule "block < drivers/iscsi;" to internal/lint/lattice.txt`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := map[string]*Package{}
			for _, pk := range buildPackages(t) {
				m[pk.Path] = &pk
			}
			errs := p.Check(c.edit(m))
			found := false
			for _, e := range errs {
				if strings.Contains(e, c.want) {
					found = true
				}
			}
			if !found {
				t.Errorf("no report containing %q; got %q", c.want, errs)
			}
		})
	}
}

func flat(m map[string]*Package) []Package {
	var out []Package
	for _, pk := range m {
		out = append(out, *pk)
	}
	return out
}

func addImport(from, to string) func(map[string]*Package) []Package {
	return func(m map[string]*Package) []Package {
		m[from].Project = append(m[from].Project, to)
		return flat(m)
	}
}

func withPackage(pk Package) func(map[string]*Package) []Package {
	return func(m map[string]*Package) []Package {
		m[pk.Path] = &pk
		return flat(m)
	}
}

// TestLatticeSyntax checks the parser's refusals, so a malformed edit of
// lattice.txt fails with a reason instead of loosening the policy.
func TestLatticeSyntax(t *testing.T) {
	bad := map[string]string{
		"STD < a; STD < a;":               "a is already defined",
		"b < a;":                          "b is used before the rule that defines it",
		"STD < a; planned b;":             "planned b has no rule placing it",
		"STD < a; a never see b;":         "want \"p never import q\"",
		"STD < a, ;  < b;":                "empty side of <",
		"STD < a; a < STD;":               "STD is the bottom",
		"STD < a; testonly c;":            "testonly c has no rule placing it",
		"STD < a; a < b; b never reach ;": "empty side",
		"STD < a b;":                      "a comma missing",
	}
	for text, want := range bad {
		if _, err := ParsePolicy(text); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParsePolicy(%q) = %v, want an error containing %q", text, err, want)
		}
	}
	p, err := ParsePolicy("STD < a; a < b < c; # comment\nSTD < t; t, c < d; testonly t;")
	if err != nil {
		t.Fatal(err)
	}
	if !p.below["c"]["a"] || !p.below["c"]["b"] || p.below["b"]["c"] {
		t.Errorf("chain a < b < c: below(c) = %v, below(b) = %v", p.below["c"], p.below["b"])
	}
	errs := p.Check([]Package{{Path: "a"}, {Path: "b"}, {Path: "c"}, {Path: "t"}, {Path: "d"}})
	if len(errs) != 1 || !strings.Contains(errs[0], "lattice: t is below d") {
		t.Errorf("testonly t below d: got %q", errs)
	}
}

// assertionPanic is a hand-made assertion: the one idiom is
// invariants.Failf on the failing branch (docs/ARCHITECTURE.md §Errors).
var assertionPanic = regexp.MustCompile(`panic\((fmt\.Sprintf\()?"assertion failed`)

// idiomPending are the directories whose branches were in flight when the
// idiom was introduced; they convert when they land (job converted with
// the job framework, drivers/qcow2 with q2meta). Remove an entry once
// converted.
var idiomPending = map[string]bool{}

// TestOneAssertionIdiom keeps assertions to the idiom of internal/invariants:
// no panic spelled "assertion failed" by hand.
func TestOneAssertionIdiom(t *testing.T) {
	root := repoRoot(t)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		r, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if strings.HasPrefix(d.Name(), ".") || idiomPending[filepath.ToSlash(r)] || r == "internal/invariants" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		for i, l := range readLines(t, path) {
			if assertionPanic.MatchString(l) {
				t.Errorf("%s:%d: a hand-made assertion panic; use `if … { invariants.Failf(…) }`", r, i+1)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
