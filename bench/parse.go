package bench

import (
	"bufio"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/ringblk/ringblk/drivers/nbd"
	"github.com/ringblk/ringblk/drivers/rbd"
)

// section is a [name] of a job file or a --name on the command line.
type section struct {
	name string
	loc  Loc
	opts []Option
}

// jobSource collects sections in order. Globals accumulate: a [global]
// section sets defaults for the jobs below it only.
type jobSource struct {
	globals    []Option // [global] options in effect so far
	allGlobals []Option // every [global] option, for the JSON "global options"
	jobs       []*pendingJob
	sections   map[string]bool // fio's --section: only these jobs run (nil: all)
}

type pendingJob struct {
	sec     *section
	globals []Option
}

func (s *jobSource) addSection(sec *section) {
	if sec.name == "global" {
		s.globals = append(s.globals, sec.opts...)
		s.allGlobals = append(s.allGlobals, sec.opts...)
		return
	}
	s.jobs = append(s.jobs, &pendingJob{sec: sec, globals: append([]Option(nil), s.globals...)})
}

// readJobFile parses path into src.
func readJobFile(path string, src *jobSource) error {
	var cur *section
	flush := func() {
		if cur != nil {
			src.addSection(cur)
			cur = nil
		}
	}
	if err := readLines(path, 0, func(loc Loc, line string) error {
		if strings.HasPrefix(line, "[") {
			end := strings.IndexByte(line, ']')
			if end < 0 || strings.TrimSpace(line[end+1:]) != "" {
				return &ParseError{Loc: loc, Msg: fmt.Sprintf("bad section header %q", line)}
			}
			name := strings.TrimSpace(line[1:end])
			if name == "" {
				return &ParseError{Loc: loc, Msg: "empty section name"}
			}
			flush()
			cur = &section{name: name, loc: loc}
			return nil
		}
		if cur == nil {
			return &ParseError{Loc: loc, Msg: fmt.Sprintf("option %q outside a section (start with [global] or [jobname])", line)}
		}
		o, err := splitOption(line, loc)
		if err != nil {
			return err
		}
		cur.opts = append(cur.opts, o)
		return nil
	}); err != nil {
		return err
	}
	flush()
	return nil
}

const maxIncludeDepth = 16

// readLines calls fn for every meaningful line of path, with comments
// stripped, variables expanded and includes followed.
func readLines(path string, depth int, fn func(Loc, string) error) error {
	if depth > maxIncludeDepth {
		return fmt.Errorf("%s: includes nested deeper than %d", path, maxIncludeDepth)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("job file: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		loc := Loc{File: path, Line: n}
		line := stripComment(sc.Text())
		if line == "" {
			continue
		}
		if rest, ok := strings.CutPrefix(line, "include "); ok || line == "include" {
			inc := strings.TrimSpace(rest)
			if inc == "" {
				return &ParseError{Loc: loc, Msg: "include needs a file name"}
			}
			if !filepath.IsAbs(inc) {
				inc = filepath.Join(filepath.Dir(path), inc)
			}
			if err := readLines(inc, depth+1, fn); err != nil {
				var pe *ParseError
				if errors.As(err, &pe) {
					return err
				}
				return &ParseError{Loc: loc, Msg: err.Error()}
			}
			continue
		}
		expanded, err := expandVars(line)
		if err != nil {
			return &ParseError{Loc: loc, Msg: err.Error()}
		}
		if err := fn(loc, expanded); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("job file %s: %w", path, err)
	}
	return nil
}

// stripComment drops everything from ';' or '#' on, and surrounding blanks.
func stripComment(s string) string {
	if i := strings.IndexAny(s, ";#"); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}

// splitOption reads "key=value" or a bare "key".
func splitOption(s string, loc Loc) (Option, error) {
	k, v, ok := strings.Cut(s, "=")
	k = strings.TrimSpace(k)
	if k == "" {
		return Option{}, &ParseError{Loc: loc, Msg: fmt.Sprintf("bad option line %q", s)}
	}
	if !ok {
		return Option{Key: k, Bare: true, Loc: loc}, nil
	}
	return Option{Key: k, Value: strings.TrimSpace(v), Loc: loc}, nil
}

// expandVars replaces ${VAR} with the environment's value (empty if unset),
// the reserved $ncpus, $pagesize and $mb_memory, and evaluates ((expr))
// integer arithmetic.
func expandVars(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '$' && i+1 < len(s) && s[i+1] == '{' {
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				return "", errors.New("unterminated ${")
			}
			b.WriteString(os.Getenv(s[i+2 : i+end]))
			i += end
			continue
		}
		b.WriteByte(s[i])
	}
	s = b.String()
	s = strings.ReplaceAll(s, "$ncpus", strconv.Itoa(runtime.NumCPU()))
	s = strings.ReplaceAll(s, "$pagesize", strconv.Itoa(os.Getpagesize()))
	if strings.Contains(s, "$mb_memory") {
		s = strings.ReplaceAll(s, "$mb_memory", strconv.FormatInt(memoryMB(), 10))
	}
	for {
		start := strings.Index(s, "((")
		if start < 0 {
			break
		}
		end := strings.Index(s[start:], "))")
		if end < 0 {
			return "", errors.New("unterminated ((")
		}
		v, err := evalArith(s[start+2 : start+end])
		if err != nil {
			return "", err
		}
		s = s[:start] + strconv.FormatInt(v, 10) + s[start+end+2:]
	}
	return s, nil
}

func memoryMB() int64 {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(l, "MemTotal:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb >> 10
		}
	}
	return 0
}

// evalArith evaluates + - * / % and parentheses over integers.
func evalArith(expr string) (int64, error) {
	p := &arith{s: strings.ReplaceAll(expr, " ", "")}
	v, err := p.sum()
	if err == nil && p.i != len(p.s) {
		err = fmt.Errorf("bad arithmetic %q", expr)
	}
	return v, err
}

type arith struct {
	s string
	i int
}

func (p *arith) sum() (int64, error) {
	v, err := p.product()
	for err == nil && p.i < len(p.s) && (p.s[p.i] == '+' || p.s[p.i] == '-') {
		op := p.s[p.i]
		p.i++
		var w int64
		if w, err = p.product(); op == '+' {
			v += w
		} else {
			v -= w
		}
	}
	return v, err
}

func (p *arith) product() (int64, error) {
	v, err := p.atom()
	for err == nil && p.i < len(p.s) && strings.IndexByte("*/%", p.s[p.i]) >= 0 {
		op := p.s[p.i]
		p.i++
		var w int64
		if w, err = p.atom(); err != nil {
			break
		}
		switch {
		case op == '*':
			v *= w
		case w == 0:
			return 0, errors.New("division by zero in (( ))")
		case op == '/':
			v /= w
		default:
			v %= w
		}
	}
	return v, err
}

func (p *arith) atom() (int64, error) {
	if p.i < len(p.s) && p.s[p.i] == '(' {
		p.i++
		v, err := p.sum()
		if err != nil {
			return 0, err
		}
		if p.i >= len(p.s) || p.s[p.i] != ')' {
			return 0, fmt.Errorf("missing ) in %q", p.s)
		}
		p.i++
		return v, nil
	}
	neg := false
	if p.i < len(p.s) && p.s[p.i] == '-' {
		neg = true
		p.i++
	}
	start := p.i
	for p.i < len(p.s) && p.s[p.i] >= '0' && p.s[p.i] <= '9' {
		p.i++
	}
	if start == p.i {
		return 0, fmt.Errorf("bad arithmetic %q", p.s)
	}
	v, err := strconv.ParseInt(p.s[start:p.i], 10, 64)
	if neg {
		v = -v
	}
	return v, err
}

// Spec is a parsed benchmark: its jobs in order and the [global] options
// (fio's "global options").
type Spec struct {
	Jobs    []*Job
	Globals []Option
}

// build turns the collected sections into jobs: globals in effect, then the
// job's own options, then overrides.
func (s *jobSource) build(overrides []Option) (*Spec, error) {
	spec := &Spec{Globals: s.allGlobals}
	if len(s.jobs) == 0 {
		return nil, errors.New("no jobs defined (a job file needs a [jobname] section; on the command line use --name=…)")
	}
	// Unsupported options do not stop the parse: every one of them, in
	// every job, is named in one error at the end.
	var unsupported unsupportedList
	var firstErr error
	apply := func(j *Job, o Option, record bool) {
		err := j.apply(o, record)
		var ue *unsupportedError
		switch {
		case err == nil:
		case errors.As(err, &ue):
			unsupported = unsupported.add(ue)
		case firstErr == nil:
			firstErr = err
		}
	}
	picked := 0
	for _, p := range s.jobs {
		if s.sections != nil && !s.sections[p.sec.name] {
			continue
		}
		picked++
		j := newJob(p.sec.name, p.sec.loc)
		for _, o := range p.globals {
			apply(j, o, false)
		}
		j.globals = p.globals
		j.Name = p.sec.name // the section name wins over a global name=
		for _, o := range p.sec.opts {
			apply(j, o, true)
		}
		for _, o := range overrides {
			apply(j, o, true)
		}
		if len(unsupported) > 0 || firstErr != nil {
			continue
		}
		if j.Directory != "" && j.Filename != "" && !filepath.IsAbs(j.Filename) && !nbd.IsURI(j.Filename) && !rbd.IsName(j.Filename) {
			j.Filename = filepath.Join(j.Directory, j.Filename)
		}
		for i, f := range j.Files {
			if j.Directory != "" && !filepath.IsAbs(f) {
				j.Files[i] = filepath.Join(j.Directory, f)
			}
		}
		if err := j.validate(); err != nil {
			return nil, err
		}
		if j.WaitFor != "" {
			found := false
			for _, e := range spec.Jobs {
				found = found || e.Name == j.WaitFor
			}
			if !found {
				return nil, &ParseError{Loc: j.set["wait_for"], Msg: fmt.Sprintf("job %q: wait_for=%s: no job of that name before it", j.Name, j.WaitFor)}
			}
		}
		spec.Jobs = append(spec.Jobs, j)
	}
	if len(unsupported) > 0 {
		return nil, unsupported
	}
	if firstErr != nil {
		return nil, firstErr
	}
	if picked == 0 {
		return nil, fmt.Errorf("no jobs defined: no job is named by --section (%s)", strings.Join(slices.Sorted(maps.Keys(s.sections)), ", "))
	}
	return spec, nil
}

// ParseJobFile reads one fio job file; overrides apply to every job after
// its own options.
func ParseJobFile(path string, overrides ...Option) (*Spec, error) {
	src := &jobSource{}
	if err := readJobFile(path, src); err != nil {
		return nil, err
	}
	return src.build(overrides)
}

// ParseJobText parses job-file text (tests, generated jobs); name is used
// in error messages.
func ParseJobText(name, text string, overrides ...Option) (*Spec, error) {
	dir, err := os.MkdirTemp("", "ringblk-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, filepath.Base(name))
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		return nil, err
	}
	spec, err := ParseJobFile(p, overrides...)
	var ul unsupportedList
	var pe *ParseError
	if errors.As(err, &ul) {
		for _, e := range ul {
			if e.Loc.File == p {
				e.Loc.File = name
			}
		}
	} else if errors.As(err, &pe) && pe.Loc.File == p {
		pe.Loc.File = name
	}
	return spec, err
}
