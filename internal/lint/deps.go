// Package lint holds policy checks that run as ordinary tests: the import
// lattice (this file and lattice.txt), spec citations and the architecture
// document's claims (the tests).
package lint

import (
	_ "embed"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Lattice is the import policy of the module, docs/ARCHITECTURE.md §Layers
// states it word for word. It is a statement of policy: change it with the
// design that needs the change, never to make a build pass.
//
//go:embed lattice.txt
var Lattice string

// The syntax of Lattice, one statement per ';':
//
//	a, b < c, d;         c and d may import a and b and everything below
//	                     them; c and d are siblings (neither may import the
//	                     other unless another rule says so). Rules chain:
//	                     "a < b < c" is "a < b; b < c".
//	planned x, y;        x and y are placed in the lattice before they exist
//	                     (branches that create them merge without editing it)
//	testonly x, y;       x and y are test support: only test files and other
//	                     testonly packages may import them
//	p never import q;    no package matching p imports one matching q directly
//	p never reach q;     ... nor indirectly: checked on the lattice (q is not
//	                     below p) and on the import graph of the build
//
// Names are module-relative package paths ("block", "drivers/raw"), module
// paths of dependencies ("golang.org/x/sys", which stands for its packages
// too) and STD, the standard library, the bottom that every package may
// import. Each name other than STD is defined by exactly one rule with it on
// the right, and that rule comes before the name is used on a left side, so
// the text reads bottom-up. In never rules, "x/..." matches x and the
// packages under it, "*" every package of the module, NONSTD every import
// outside the standard library, and other names (reflect) standard
// packages. Comments start with #.

// Policy is a parsed Lattice.
type Policy struct {
	below    map[string]map[string]bool // name → every name it may import (transitively)
	order    []string                   // names in definition order
	planned  map[string]bool
	testonly map[string]bool
	never    []neverRule
}

type neverRule struct {
	from, to []string // patterns
	reach    bool     // transitive
	text     string
}

// ParsePolicy parses the lattice syntax above.
func ParsePolicy(text string) (*Policy, error) {
	p := &Policy{
		below:    map[string]map[string]bool{"STD": {}},
		planned:  map[string]bool{},
		testonly: map[string]bool{},
	}
	var lines []string
	for _, l := range strings.Split(text, "\n") {
		if i := strings.IndexByte(l, '#'); i >= 0 {
			l = l[:i]
		}
		lines = append(lines, l)
	}
	for _, stmt := range strings.Split(strings.Join(lines, " "), ";") {
		f := strings.Fields(stmt)
		if len(f) == 0 {
			continue
		}
		stmt = strings.Join(f, " ")
		var err error
		switch {
		case f[0] == "planned":
			err = p.list(stmt, strings.TrimPrefix(stmt, "planned"), p.planned)
		case f[0] == "testonly":
			err = p.list(stmt, strings.TrimPrefix(stmt, "testonly"), p.testonly)
		case slices.Contains(f, "never"):
			err = p.neverRule(stmt)
		default:
			err = p.rule(stmt)
		}
		if err != nil {
			return nil, err
		}
	}
	for n := range p.planned {
		if _, ok := p.below[n]; !ok {
			return nil, fmt.Errorf("planned %s has no rule placing it", n)
		}
	}
	for n := range p.testonly {
		if _, ok := p.below[n]; !ok {
			return nil, fmt.Errorf("testonly %s has no rule placing it", n)
		}
	}
	return p, nil
}

func names(s string) []string {
	var out []string
	for _, n := range strings.Split(s, ",") {
		if n = strings.TrimSpace(n); n != "" {
			out = append(out, n)
		}
	}
	return out
}

func (p *Policy) list(stmt, rest string, set map[string]bool) error {
	ns := names(rest)
	if len(ns) == 0 {
		return fmt.Errorf("%q: empty list", stmt)
	}
	for _, n := range ns {
		set[n] = true
	}
	return nil
}

func (p *Policy) rule(stmt string) error {
	parts := strings.Split(stmt, "<")
	if len(parts) < 2 {
		return fmt.Errorf("%q: want \"a, b < c, d\"", stmt)
	}
	for i := 0; i+1 < len(parts); i++ {
		lo, hi := names(parts[i]), names(parts[i+1])
		if len(lo) == 0 || len(hi) == 0 {
			return fmt.Errorf("%q: empty side of <", stmt)
		}
		for _, n := range append(slices.Clip(lo), hi...) {
			if strings.Contains(n, " ") {
				return fmt.Errorf("%q: %q is not one name (a comma missing?)", stmt, n)
			}
		}
		for _, h := range hi {
			if h == "STD" {
				return fmt.Errorf("%q: STD is the bottom and is never defined", stmt)
			}
			if _, dup := p.below[h]; dup {
				return fmt.Errorf("%q: %s is already defined; each name has one defining rule", stmt, h)
			}
			set := map[string]bool{}
			for _, l := range lo {
				b, ok := p.below[l]
				if !ok {
					return fmt.Errorf("%q: %s is used before the rule that defines it", stmt, l)
				}
				set[l] = true
				for x := range b {
					set[x] = true
				}
			}
			p.below[h] = set
			p.order = append(p.order, h)
		}
	}
	return nil
}

func (p *Policy) neverRule(stmt string) error {
	f := strings.Fields(stmt)
	i := slices.Index(f, "never")
	if i < 0 || i+1 >= len(f) || (f[i+1] != "import" && f[i+1] != "reach") {
		return fmt.Errorf("%q: want \"p never import q\" or \"p never reach q\"", stmt)
	}
	r := neverRule{
		from:  names(strings.Join(f[:i], " ")),
		to:    names(strings.Join(f[i+2:], " ")),
		reach: f[i+1] == "reach",
		text:  stmt,
	}
	if len(r.from) == 0 || len(r.to) == 0 {
		return fmt.Errorf("%q: empty side", stmt)
	}
	p.never = append(p.never, r)
	return nil
}

// Package is one package of the build: its module-relative path and its
// non-test imports, each either module-relative (project), a standard
// library path, or an external import path.
type Package struct {
	Path    string
	Project []string // module-relative
	Std     []string
	Ext     []string
}

// match reports whether name matches a never-rule pattern. kind is
// "project", "std" or "ext".
func match(pat, name, kind string) bool {
	switch {
	case pat == "*":
		return kind == "project"
	case pat == "NONSTD":
		return kind != "std"
	case strings.HasSuffix(pat, "/..."):
		base := strings.TrimSuffix(pat, "/...")
		return kind != "std" && (name == base || strings.HasPrefix(name, base+"/"))
	default:
		return name == pat || (kind == "ext" && strings.HasPrefix(name, pat+"/"))
	}
}

// lookupExt finds the lattice name (a module path) for an external import.
func (p *Policy) lookupExt(imp string) (string, bool) {
	for n := range p.below {
		if imp == n || strings.HasPrefix(imp, n+"/") {
			return n, true
		}
	}
	return "", false
}

// Check returns one message per violation of the policy by the build whose
// packages are given. It checks that the lattice is complete (every package
// has a place, every place not planned has a package), that each import is
// below its importer, and the testonly and never rules.
func (p *Policy) Check(pkgs []Package) []string {
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	exists := map[string]*Package{}
	for i := range pkgs {
		exists[pkgs[i].Path] = &pkgs[i]
	}

	// The lattice itself: testonly names sit below testonly names only;
	// never-reach rules hold in the lattice.
	for _, n := range p.order {
		for b := range p.below[n] {
			if p.testonly[b] && !p.testonly[n] {
				fail("lattice: %s is below %s, but %s is test support (testonly) and %s is not", b, n, b, n)
			}
		}
	}
	for _, r := range p.never {
		if !r.reach {
			continue
		}
		for _, n := range p.order {
			if !matchAny(r.from, n, p.kindOf(n)) {
				continue
			}
			for b := range p.below[n] {
				if matchAny(r.to, b, p.kindOf(b)) {
					fail("lattice: %s is below %s, against %q", b, n, r.text)
				}
			}
		}
	}

	// Completeness.
	for _, pk := range pkgs {
		if _, ok := p.below[pk.Path]; !ok {
			fail("package %s has no place in the import lattice: add a rule %q to internal/lint/lattice.txt "+
				"after the rules that define what it imports (and the same line to docs/ARCHITECTURE.md §Layers, "+
				"and a row to §Packages)", pk.Path, suggest(pk)+" < "+pk.Path+";")
		}
	}
	for _, n := range p.order {
		if p.kindOf(n) == "project" && exists[n] == nil && !p.planned[n] {
			fail("lattice names %s, which does not exist; remove it from internal/lint/lattice.txt or mark it planned", n)
		}
	}

	// Imports follow the lattice.
	for _, pk := range pkgs {
		allowed, ok := p.below[pk.Path]
		if !ok {
			continue
		}
		for _, imp := range pk.Project {
			if !allowed[imp] {
				fail("%s imports %s, which the lattice does not place below it (internal/lint/lattice.txt)", pk.Path, imp)
			}
			if p.testonly[imp] && !p.testonly[pk.Path] {
				fail("%s imports test-support package %s from non-test code", pk.Path, imp)
			}
		}
		for _, imp := range pk.Ext {
			n, ok := p.lookupExt(imp)
			if !ok || !allowed[n] {
				fail("%s imports %s, which the lattice does not place below it (internal/lint/lattice.txt)", pk.Path, imp)
			}
		}
	}

	// Never rules on the build: direct imports, or everything reachable
	// through project packages for "never reach".
	for _, r := range p.never {
		for _, pk := range pkgs {
			if !matchAny(r.from, pk.Path, "project") {
				continue
			}
			seen := map[string]bool{pk.Path: true}
			var via []string
			var walk func(q *Package)
			walk = func(q *Package) {
				check := func(imp, kind string) {
					if !matchAny(r.to, imp, kind) {
						return
					}
					if len(via) == 0 {
						fail("%s: %s imports %s", r.text, pk.Path, imp)
					} else {
						fail("%s: %s reaches %s through %s", r.text, pk.Path, imp, strings.Join(via, " -> "))
					}
				}
				for _, imp := range q.Project {
					check(imp, "project")
				}
				for _, imp := range q.Std {
					check(imp, "std")
				}
				for _, imp := range q.Ext {
					check(imp, "ext")
				}
				if !r.reach {
					return
				}
				for _, imp := range q.Project {
					if next := exists[imp]; next != nil && !seen[imp] {
						seen[imp] = true
						via = append(via, imp)
						walk(next)
						via = via[:len(via)-1]
					}
				}
			}
			walk(&pk)
		}
	}
	sort.Strings(errs)
	return slices.Compact(errs)
}

func matchAny(pats []string, name, kind string) bool {
	for _, pat := range pats {
		if match(pat, name, kind) {
			return true
		}
	}
	return false
}

// kindOf classifies a lattice name: a module path of a dependency has a dot
// in its first element.
func (p *Policy) kindOf(n string) string {
	switch {
	case n == "STD":
		return "std"
	case strings.Contains(strings.SplitN(n, "/", 2)[0], "."):
		return "ext"
	default:
		return "project"
	}
}

// suggest names what pk imports, for the message about a missing rule.
func suggest(pk Package) string {
	var s []string
	s = append(s, pk.Project...)
	s = append(s, pk.Ext...)
	if len(s) == 0 {
		return "STD"
	}
	sort.Strings(s)
	return strings.Join(slices.Compact(s), ", ")
}
