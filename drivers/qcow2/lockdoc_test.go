package qcow2

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// releasedDoc matches a doc comment that says the caller's lock is let go
// inside the function ("it is released", "released around ...", "dropped
// for ...").
var releasedDoc = regexp.MustCompile(`(?i)\b(it is|is|are) (released|dropped)\b|\b(released|dropped) (around|while|for)\b`)

// lockViolations reports, for the package's Go files (tests excluded),
// every function whose doc comment says the lock its caller holds is
// released inside it, and every function documented "REQUIRES: mu held"
// (or "metaLock held") that unlocks that lock itself. Issue #15 item 2:
// the function that took a lock is the only one that lets it go; callees
// return what they need (a wait, a plan) instead.
func lockViolations(t *testing.T, files []string) []string {
	t.Helper()
	fset := token.NewFileSet()
	var bad []string
	for _, name := range files {
		f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Doc == nil || fn.Body == nil {
				continue
			}
			doc := strings.Join(strings.Fields(fn.Doc.Text()), " ")
			where := fset.Position(fn.Pos()).String() + " " + fn.Name.Name
			if i := strings.Index(doc, "REQUIRES:"); i >= 0 {
				req := doc[i:]
				if j := strings.Index(req, ". "); j >= 0 {
					req = req[:j]
				}
				if releasedDoc.MatchString(req) {
					bad = append(bad, where+": doc says the caller's lock is released: "+req)
				}
				for _, lk := range []struct{ held, unlock string }{
					{"mu held", "mu.Unlock"},
					{"metaLock held", "metaLock.unlock"},
				} {
					if strings.Contains(req, lk.held) && callsUnlock(fn.Body, lk.unlock) {
						bad = append(bad, where+": documented "+lk.held+" but calls "+lk.unlock)
					}
				}
			}
		}
	}
	return bad
}

// callsUnlock reports whether body calls d.<sel> (d.mu.Unlock,
// d.metaLock.unlock), outside function literals it starts or returns
// (those run later, on their own).
func callsUnlock(body *ast.BlockStmt, sel string) bool {
	found := false
	ast.Inspect(body, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.FuncLit:
			return false
		case *ast.CallExpr:
			if s, ok := n.Fun.(*ast.SelectorExpr); ok {
				if x, ok := s.X.(*ast.SelectorExpr); ok {
					if id, ok := x.X.(*ast.Ident); ok && id.Name == "d" && x.Sel.Name+"."+s.Sel.Name == sel {
						found = true
					}
				}
			}
		}
		return !found
	})
	return found
}

// TestNoCalleeReleasesCallersLock is the lint for issue #15 item 2.
func TestNoCalleeReleasesCallersLock(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var src []string
	for _, f := range files {
		if !strings.HasSuffix(f, "_test.go") {
			src = append(src, f)
		}
	}
	if len(src) < 10 {
		t.Fatalf("found only %d source files", len(src))
	}
	for _, b := range lockViolations(t, src) {
		t.Error(b)
	}
}

// TestLockLintFires shows the lint catches both shapes.
func TestLockLintFires(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "x.go")
	src := `package x

// a waits. REQUIRES: metaLock held; it is released while waiting.
func (d writer) a() {}

// b changes things. REQUIRES: mu held.
func (d writer) b() { d.mu.Unlock(); d.mu.Lock() }

// c is fine. REQUIRES: metaLock held; it never releases it.
func (d writer) c() { go func() { d.metaLock.unlock() }() }

// e drops it. REQUIRES: metaLock held.
func (d writer) e() { d.metaLock.unlock() }
`
	if err := os.WriteFile(name, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := lockViolations(t, []string{name})
	want := []string{" a: doc says", " b: documented mu held", " e: documented metaLock held"}
	if len(bad) != len(want) {
		t.Fatalf("got %d findings, want %d: %q", len(bad), len(want), bad)
	}
	for i, w := range want {
		if !strings.Contains(bad[i], w) {
			t.Errorf("finding %d = %q, want it to contain %q", i, bad[i], w)
		}
	}
}
