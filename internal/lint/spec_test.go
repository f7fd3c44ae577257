package lint

import (
	"bufio"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The specification lives in docs/spec (drain.md, qcow2.md, peers.md and
// the README with the seeds) and docs/STYLE.md. Code and docs cite it by
// id — D7, R4, T21, "drain.md K1", "qcow2.md §2.9", "seed 004", "style
// B5", "bug class 15" — and TestSpecCitations fails, naming file:line, for
// every citation that has no definition there. A definition is a heading
// or a table row that starts with the id (or section number), a "Seed NNN"
// heading in docs/spec/README.md, a numbered item of drain.md §5 for bug
// classes, and a "B<n>" heading (with numbered items) in docs/STYLE.md.
//
// What counts as a citation (kept tight to avoid false positives):
//   - in .go files comments, the names of Test/Benchmark/Fuzz functions
//     (TestT01…, TestI22…) and a parenthesised id closing a string literal
//     (a panic message "… (D14)"); other string contents and identifiers
//     such as unix.R1 are never citations;
//   - in README.md, docs/*.md and docs/design/*.md the whole text;
//     docs/spec itself is where ids are defined and is not scanned;
//   - bare ids: D, T, I, Q, U, B, W mean drain.md, R means qcow2.md;
//     K and L (L1/L2 are also qcow2 tables) count only after "drain.md";
//   - "drain.md"/"qcow2.md"/"peers.md" followed by a list of ids and §
//     sections resolves every item against that file;
//   - "seed NNN" (three digits), "bug class(es) N[–M]", "style B<n>[.<m>]".

// specDefs is what docs/spec and docs/STYLE.md define.
type specDefs struct {
	ids      map[string]map[string]bool // file ("drain.md") → ids ("D7", "R8")
	sections map[string]map[string]bool // file → section numbers ("1.10")
	seeds    map[string]bool            // "004"
	bugs     map[int]bool               // drain.md §5 items
	style    map[string]map[int]bool    // "B6" → numbered items under it
}

// A citation found in the source, and where.
type citation struct {
	pos  string // file:line, relative to the repository root
	kind string // "id", "section", "seed", "bug", "style"
	file string // spec file for ids and sections
	ref  string
}

var (
	specHeading  = regexp.MustCompile(`^#{1,6}\s+(?:§)?([0-9]+(?:\.[0-9]+)*)(?:[–-]([0-9]+(?:\.[0-9]+)*))?[.\s]`)
	specIDDef    = regexp.MustCompile(`^(?:#{1,6}\s+|\|\s*)([A-Z][0-9]{1,2})\b`)
	seedHeading  = regexp.MustCompile(`^#{1,6}\s+Seed ([0-9]{3})\b`)
	numberedItem = regexp.MustCompile(`^([0-9]+)\.\s`)
	styleHeading = regexp.MustCompile(`^#{1,6}\s+(B[0-9]+)\b`)
	anyHeading   = regexp.MustCompile(`^#{1,6}\s`)

	// A mention of a spec file; the prefix is examined to skip
	// docs/design/drain.md and the like.
	specFileRef = regexp.MustCompile(`([\w./-]*?)\b(drain|qcow2|peers)\.md\b`)
	// One item of the list that follows a spec file mention.
	refSep  = regexp.MustCompile(`^(?:[\s,/()` + "`" + `:]|and\b|–|-)*`)
	refItem = regexp.MustCompile(`^(?:§([0-9]+(?:\.[0-9]+)*)|([A-Z][0-9]{1,2})\b)`)

	bareID    = regexp.MustCompile(`\b([DTIQUBWR])([0-9]{1,2})\b`)
	seedRef   = regexp.MustCompile(`\b[Ss]eeds? ([0-9]{3})\b(?:(?:[–-]|\.\.)([0-9]{3})\b)?`)
	bugRef    = regexp.MustCompile(`\bbug class(?:es)? ([0-9]+)(?:[–-]([0-9]+))?`)
	styleRef  = regexp.MustCompile(`\bstyle (B[0-9]+)(?:\.([0-9]+))?\b`)
	stringID  = regexp.MustCompile(`\(([DTIQUBWR][0-9]{1,2})\)"$`)
	testIDRef = regexp.MustCompile(`^(?:Test|Benchmark|Fuzz)([TIQUBW])0?([0-9]{1,2})(?:[A-Z_]|$)`)
)

func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("spec: %v", err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("spec: %s: %v", path, err)
	}
	return lines
}

// loadSpec parses the definitions out of docs/spec and docs/STYLE.md.
func loadSpec(t *testing.T, root string) *specDefs {
	t.Helper()
	d := &specDefs{
		ids:      map[string]map[string]bool{},
		sections: map[string]map[string]bool{},
		seeds:    map[string]bool{},
		bugs:     map[int]bool{},
		style:    map[string]map[int]bool{},
	}
	for _, name := range []string{"drain.md", "qcow2.md", "peers.md"} {
		ids, secs := map[string]bool{}, map[string]bool{}
		d.ids[name], d.sections[name] = ids, secs
		section := "" // the innermost numbered section the line is in
		for _, l := range readLines(t, filepath.Join(root, "docs", "spec", name)) {
			if m := specHeading.FindStringSubmatch(l); m != nil {
				for _, s := range expandSections(m[1], m[2]) {
					secs[s] = true
				}
				section = m[1]
			} else if anyHeading.MatchString(l) {
				section = ""
			}
			if m := specIDDef.FindStringSubmatch(l); m != nil {
				ids[m[1]] = true
			}
			// A numbered item n of section s is cited as §s.n ("§1.10.6"),
			// and the items of drain.md §5 are the bug classes.
			if m := numberedItem.FindStringSubmatch(l); m != nil && section != "" {
				secs[section+"."+m[1]] = true
				if name == "drain.md" && section == "5" {
					n, _ := strconv.Atoi(m[1])
					d.bugs[n] = true
				}
			}
		}
	}
	for _, l := range readLines(t, filepath.Join(root, "docs", "spec", "README.md")) {
		if m := seedHeading.FindStringSubmatch(l); m != nil {
			d.seeds[m[1]] = true
		}
	}
	var cur map[int]bool
	for _, l := range readLines(t, filepath.Join(root, "docs", "STYLE.md")) {
		if m := styleHeading.FindStringSubmatch(l); m != nil {
			cur = map[int]bool{}
			d.style[m[1]] = cur
			continue
		}
		if anyHeading.MatchString(l) {
			cur = nil
			continue
		}
		if m := numberedItem.FindStringSubmatch(l); m != nil && cur != nil {
			n, _ := strconv.Atoi(m[1])
			cur[n] = true
		}
	}
	return d
}

// expandSections turns a heading number, or a range such as 3.1–3.3 that
// differs only in its last component, into the section numbers it defines.
func expandSections(from, to string) []string {
	if to == "" {
		return []string{from}
	}
	fi := strings.LastIndexByte(from, '.')
	ti := strings.LastIndexByte(to, '.')
	if fi < 0 || ti < 0 || from[:fi] != to[:ti] {
		return []string{from, to}
	}
	a, err1 := strconv.Atoi(from[fi+1:])
	b, err2 := strconv.Atoi(to[ti+1:])
	if err1 != nil || err2 != nil || b < a || b-a > 20 {
		return []string{from, to}
	}
	var out []string
	for i := a; i <= b; i++ {
		out = append(out, from[:fi+1]+strconv.Itoa(i))
	}
	return out
}

// scanText collects the citations of one line of prose (a comment line or
// a line of a doc).
func scanText(pos, line string, out []citation) []citation {
	// Qualified references: "drain.md §1.2, K1", "spec/qcow2.md §2.9".
	var spans [][2]int
	for _, m := range specFileRef.FindAllStringSubmatchIndex(line, -1) {
		prefix := line[m[2]:m[3]]
		if strings.Contains(prefix, "design/") || (strings.Contains(prefix, "docs/") && !strings.Contains(prefix, "spec/")) {
			continue
		}
		file := line[m[4]:m[5]] + ".md"
		end := m[1]
		for {
			sep := refSep.FindStringIndex(line[end:])
			item := refItem.FindStringSubmatchIndex(line[end+sep[1]:])
			if item == nil {
				break
			}
			s := line[end+sep[1]:]
			if item[2] >= 0 {
				out = append(out, citation{pos, "section", file, s[item[2]:item[3]]})
			} else {
				out = append(out, citation{pos, "id", file, s[item[4]:item[5]]})
			}
			end += sep[1] + item[1]
		}
		spans = append(spans, [2]int{m[0], end})
	}
	inSpan := func(i int) bool {
		for _, s := range spans {
			if i >= s[0] && i < s[1] {
				return true
			}
		}
		return false
	}
	// Style sections first: their B ids are not the drain catalogue's.
	for _, m := range styleRef.FindAllStringSubmatchIndex(line, -1) {
		ref := line[m[2]:m[3]]
		if m[4] >= 0 {
			ref += "." + line[m[4]:m[5]]
		}
		out = append(out, citation{pos, "style", "STYLE.md", ref})
		spans = append(spans, [2]int{m[0], m[1]})
	}
	for _, m := range bareID.FindAllStringSubmatchIndex(line, -1) {
		if inSpan(m[0]) {
			continue
		}
		// unix.R1, x.T2: a selector, not a citation.
		if m[0] > 0 && line[m[0]-1] == '.' {
			continue
		}
		file := "drain.md"
		if line[m[2]] == 'R' {
			file = "qcow2.md"
		}
		out = append(out, citation{pos, "id", file, line[m[2]:m[5]]})
	}
	for _, m := range seedRef.FindAllStringSubmatch(line, -1) {
		out = append(out, citation{pos, "seed", "README.md", m[1]})
		if m[2] != "" {
			out = append(out, citation{pos, "seed", "README.md", m[2]})
		}
	}
	for _, m := range bugRef.FindAllStringSubmatch(line, -1) {
		out = append(out, citation{pos, "bug", "drain.md", m[1]})
		if m[2] != "" {
			out = append(out, citation{pos, "bug", "drain.md", m[2]})
		}
	}
	return out
}

// scanGo collects the citations in the comments and test names of one Go
// file.
func scanGo(t *testing.T, root, path string, out []citation) []citation {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, parser.ParseComments|parser.SkipObjectResolution)
	if err != nil {
		t.Errorf("spec: %v", err)
		return out
	}
	rel, _ := filepath.Rel(root, path)
	for _, cg := range f.Comments {
		for _, c := range cg.List {
			line := fset.Position(c.Slash).Line
			for i, l := range strings.Split(c.Text, "\n") {
				out = scanText(fmt.Sprintf("%s:%d", rel, line+i), l, out)
			}
		}
	}
	// A string literal cites only an id in parentheses at the end of a
	// message, as in panic("… closed outside a drained section (D14)").
	ast.Inspect(f, func(n ast.Node) bool {
		lit, ok := n.(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING {
			return true
		}
		for _, m := range stringID.FindAllStringSubmatch(lit.Value, -1) {
			pos := fmt.Sprintf("%s:%d", rel, fset.Position(lit.Pos()).Line)
			file := "drain.md"
			if m[1][0] == 'R' {
				file = "qcow2.md"
			}
			out = append(out, citation{pos, "id", file, m[1]})
		}
		return true
	})
	for _, decl := range f.Decls {
		fn, ok := decl.(*ast.FuncDecl)
		if !ok || fn.Recv != nil {
			continue
		}
		if m := testIDRef.FindStringSubmatch(fn.Name.Name); m != nil && strings.HasSuffix(path, "_test.go") {
			pos := fmt.Sprintf("%s:%d", rel, fset.Position(fn.Name.Pos()).Line)
			n, _ := strconv.Atoi(m[2])
			out = append(out, citation{pos, "id", "drain.md", m[1] + strconv.Itoa(n)})
		}
	}
	return out
}

// collectCitations walks the repository's Go files and docs.
func collectCitations(t *testing.T, root string) []citation {
	t.Helper()
	var out []citation
	err := filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := e.Name()
		if e.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(name, ".go") {
			out = scanGo(t, root, path, out)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("spec: walking the repository: %v", err)
	}
	docs, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	design, _ := filepath.Glob(filepath.Join(root, "docs", "design", "*.md"))
	for _, p := range append(append(docs, design...), filepath.Join(root, "README.md")) {
		rel, _ := filepath.Rel(root, p)
		for i, l := range readLines(t, p) {
			if rel == filepath.Join("docs", "STYLE.md") && styleHeading.MatchString(l) {
				continue // a definition, not a citation
			}
			out = scanText(fmt.Sprintf("%s:%d", rel, i+1), l, out)
		}
	}
	return out
}

// unresolved returns one message per citation the spec does not define.
func unresolved(d *specDefs, cites []citation) []string {
	var bad []string
	for _, c := range cites {
		ok := false
		switch c.kind {
		case "id":
			ok = d.ids[c.file][c.ref]
		case "section":
			ok = d.sections[c.file][c.ref]
		case "seed":
			ok = d.seeds[c.ref]
		case "bug":
			n, _ := strconv.Atoi(c.ref)
			ok = d.bugs[n]
		case "style":
			sec, item, hasItem := strings.Cut(c.ref, ".")
			items, found := d.style[sec]
			ok = found
			if found && hasItem {
				n, _ := strconv.Atoi(item)
				ok = items[n]
			}
		}
		if !ok {
			where := "docs/spec/" + c.file
			if c.kind == "style" {
				where = "docs/STYLE.md"
			}
			bad = append(bad, fmt.Sprintf("%s: cites %s %s, which %s does not define", c.pos, c.kind, c.ref, where))
		}
	}
	return bad
}

// TestSpecCitations: every id, section, seed, bug class and style section
// cited in code or docs is defined in docs/spec or docs/STYLE.md.
func TestSpecCitations(t *testing.T) {
	root := repoRoot(t)
	d := loadSpec(t, root)
	cites := collectCitations(t, root)
	if len(cites) < 300 {
		t.Fatalf("spec: found only %d citations; the scanner is broken", len(cites))
	}
	for _, msg := range unresolved(d, cites) {
		t.Error(msg)
	}
}

// TestSpecCitationsDetectMissing removes definitions the code cites and
// expects the check to report each citation of them, so the lint cannot
// pass vacuously.
func TestSpecCitationsDetectMissing(t *testing.T) {
	root := repoRoot(t)
	d := loadSpec(t, root)
	cites := collectCitations(t, root)
	for _, probe := range []struct{ kind, file, ref string }{
		{"id", "drain.md", "D14"},
		{"id", "qcow2.md", "R2"},
		{"id", "drain.md", "T21"},
		{"id", "drain.md", "K1"},
		{"section", "qcow2.md", "2.9"},
		{"seed", "README.md", "004"},
		{"style", "STYLE.md", "B5"},
	} {
		want := 0
		for _, c := range cites {
			if c.kind == probe.kind && c.file == probe.file && c.ref == probe.ref {
				want++
			}
		}
		if want == 0 {
			t.Errorf("spec: no citation of %s %s found; the scanner missed it", probe.kind, probe.ref)
			continue
		}
		switch probe.kind {
		case "id":
			delete(d.ids[probe.file], probe.ref)
		case "section":
			delete(d.sections[probe.file], probe.ref)
		case "seed":
			delete(d.seeds, probe.ref)
		case "style":
			delete(d.style, probe.ref)
		}
		got := 0
		for _, msg := range unresolved(d, cites) {
			if strings.Contains(msg, " "+probe.ref+",") {
				got++
			}
		}
		if got != want {
			t.Errorf("spec: %s %s deleted: %d reports, want %d", probe.kind, probe.ref, got, want)
		}
	}
}

// TestSpecScannerCases pins what the scanner takes for a citation.
func TestSpecScannerCases(t *testing.T) {
	for _, c := range []struct {
		line string
		want []string
	}{
		{"refcounts durable first (R1, R4 via the flush)", []string{"id qcow2.md R1", "id qcow2.md R4"}},
		{"(drain.md §1.2, K1): who may wait", []string{"section drain.md 1.2", "id drain.md K1"}},
		{"drain.md D18, U7", []string{"id drain.md D18", "id drain.md U7"}},
		{"qcow2.md §3.2 rows 38 and 40", []string{"section qcow2.md 3.2"}},
		{"see docs/design/drain.md for T9", []string{"id drain.md T9"}},
		{"unix.R1 is a register, not a rule", nil},
		{"L1 and L2 tables", nil},
		{"(style B5: limits are errors)", []string{"style STYLE.md B5"}},
		{"style B6.9", []string{"style STYLE.md B6.9"}},
		{"seed 003 and seeds 000–004", []string{"seed README.md 003", "seed README.md 000", "seed README.md 004"}},
		{"seed 000..004", []string{"seed README.md 000", "seed README.md 004"}},
		{"bug classes 11–13", []string{"bug drain.md 11", "bug drain.md 13"}},
		{"RINGBLK_SEED replays a seed", nil},
	} {
		var got []string
		for _, ci := range scanText("x:1", c.line, nil) {
			got = append(got, ci.kind+" "+ci.file+" "+ci.ref)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%q: got %q, want %q", c.line, got, c.want)
		}
	}
}

// TestArchitectureRules checks the claims of docs/ARCHITECTURE.md that the
// import lattice does not encode itself: §Layers states the lattice of
// internal/lint/lattice.txt word for word, and §Packages lists exactly the
// packages that exist.
func TestArchitectureRules(t *testing.T) {
	pkgs := listPackages(t)
	exists := map[string]bool{}
	for _, p := range pkgs {
		exists[p.path] = true
	}
	doc := readLines(t, filepath.Join(repoRoot(t), "docs", "ARCHITECTURE.md"))
	var stated []string
	in := false
	for _, l := range doc {
		switch {
		case l == "```lattice":
			in = true
		case in && l == "```":
			in = false
		case in:
			stated = append(stated, l)
		}
	}
	want := strings.Split(strings.TrimRight(Lattice, "\n"), "\n")
	if !slices.Equal(stated, want) {
		t.Errorf("docs/ARCHITECTURE.md §Layers does not state internal/lint/lattice.txt word for word in a ```lattice block")
	}
	listed := map[string]bool{}
	inTable := false
	cell := regexp.MustCompile("`([a-z][a-z0-9/]*)`")
	for _, l := range doc {
		if anyHeading.MatchString(l) {
			inTable = strings.TrimSpace(strings.TrimLeft(l, "#")) == "Packages"
			continue
		}
		if !inTable || !strings.HasPrefix(l, "|") {
			continue
		}
		first := strings.Split(l, "|")[1]
		for _, m := range cell.FindAllStringSubmatch(first, -1) {
			listed[m[1]] = true
		}
	}
	if len(listed) == 0 {
		t.Fatal("docs/ARCHITECTURE.md has no package table under \"## Packages\"")
	}
	for p := range exists {
		if !listed[p] && p != "." {
			t.Errorf("package %s exists but docs/ARCHITECTURE.md §Packages does not list it", p)
		}
	}
	for p := range listed {
		if !exists[p] {
			t.Errorf("docs/ARCHITECTURE.md §Packages lists %s, which does not exist", p)
		}
	}
}
