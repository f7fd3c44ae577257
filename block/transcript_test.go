package block_test

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/uring"
	"github.com/ringblk/ringblk/uring/uringtest"
)

// Transcripts: block/testdata/*.txt are scripts of drain and batching
// scenarios with their expected output, in the manner of Pebble's
// data-driven tests. A file is a sequence of blocks:
//
//	# comment lines, kept as they are
//	command arg key=value     one or more commands
//	----
//	output lines              what the commands printed, in order
//	(blank line)
//
// The commands of one block run in one closure on the main Context, so
// nothing runs between them unless a command waits (a drain, wait); the
// output is therefore exact. `go test ./block -run TestTranscripts -rewrite`
// writes the outputs of this run into the files (review the diff).
var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of block/testdata transcripts")

func TestTranscripts(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no transcripts in block/testdata (%v)", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			runTranscript(t, f)
		})
	}
}

// tblock is one block of a transcript file.
type tblock struct {
	pre  []string // comments and blank lines before the commands
	cmds []string
	line int // line of the first command
	want []string
}

func parseTranscript(t *testing.T, path string) (blocks []tblock, trailer []string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cur tblock
	inOut := false
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for ln := 1; sc.Scan(); ln++ {
		l := sc.Text()
		switch {
		case inOut && l == "":
			blocks = append(blocks, cur)
			cur, inOut = tblock{}, false
		case inOut:
			cur.want = append(cur.want, l)
		case l == "----":
			if len(cur.cmds) == 0 {
				t.Fatalf("%s:%d: ---- without commands", path, ln)
			}
			inOut = true
		case len(cur.cmds) == 0 && (l == "" || strings.HasPrefix(l, "#")):
			cur.pre = append(cur.pre, l)
		case l == "" || strings.HasPrefix(l, "#"):
			t.Fatalf("%s:%d: blank or comment line inside a block's commands", path, ln)
		default:
			if len(cur.cmds) == 0 {
				cur.line = ln
			}
			cur.cmds = append(cur.cmds, l)
		}
	}
	if inOut {
		blocks = append(blocks, cur)
	} else if len(cur.cmds) > 0 {
		t.Fatalf("%s:%d: commands without ----", path, cur.line)
	} else {
		trailer = cur.pre
	}
	return blocks, trailer
}

func runTranscript(t *testing.T, path string) {
	blocks, trailer := parseTranscript(t, path)
	s := newScript(t)
	for i := range blocks {
		b := &blocks[i]
		var got []string
		s.e.OnMain(func() {
			for _, c := range b.cmds {
				got = append(got, s.run(c)...)
			}
		})
		if *rewrite {
			b.want = got
		} else if !slices.Equal(got, b.want) {
			t.Errorf("%s:%d: output differs\ncommands:\n  %s\ngot:\n  %s\nwant:\n  %s", path, b.line,
				strings.Join(b.cmds, "\n  "), strings.Join(got, "\n  "), strings.Join(b.want, "\n  "))
		}
	}
	if *rewrite {
		if err := os.WriteFile(path, []byte(formatTranscript(blocks, trailer)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s.close()
}

// formatTranscript writes blocks back in the file syntax.
func formatTranscript(blocks []tblock, trailer []string) string {
	var out strings.Builder
	for _, b := range blocks {
		for _, l := range b.pre {
			out.WriteString(l + "\n")
		}
		for _, l := range b.cmds {
			out.WriteString(l + "\n")
		}
		out.WriteString("----\n")
		for _, l := range b.want {
			out.WriteString(l + "\n")
		}
		out.WriteString("\n")
	}
	for _, l := range trailer {
		out.WriteString(l + "\n")
	}
	return strings.TrimRight(out.String(), "\n") + "\n"
}

// TestTranscriptSyntax: parsing a transcript and writing it back gives the
// file unchanged, so -rewrite changes outputs and nothing else.
func TestTranscriptSyntax(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.txt"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		blocks, trailer := parseTranscript(t, f)
		if got := formatTranscript(blocks, trailer); got != string(data) {
			t.Errorf("%s: parse and format do not round-trip", f)
		}
	}
}

// enterLog wraps the main Context's fake ring and records, for every
// io_uring_enter that submits NOPs (the script driver's completions), how
// many it submitted. The loop's own SQEs (its eventfd read) are not
// counted: when they go is a matter of timing, not of the scenario.
type enterLog struct {
	uring.Queue
	mu      sync.Mutex
	handed  []*uring.SQE
	batches []int
}

func (q *enterLog) GetSQE() *uring.SQE {
	sqe := q.Queue.GetSQE()
	if sqe != nil {
		q.handed = append(q.handed, sqe)
	}
	return sqe
}

func (q *enterLog) SubmitAndWait(minComplete int, timeout time.Duration) (int, error) {
	nops := 0
	for _, sqe := range q.handed {
		if sqe.Opcode == uring.IORING_OP_NOP {
			nops++
		}
	}
	n, err := q.Queue.SubmitAndWait(minComplete, timeout)
	if n == len(q.handed) || err == nil {
		// The fake consumes every prepared SQE unless it refuses the
		// whole call (ErrBusy, not configured here).
		q.handed = q.handed[:0]
		if nops > 0 {
			q.mu.Lock()
			q.batches = append(q.batches, nops)
			q.mu.Unlock()
		}
	}
	return n, err
}

func (q *enterLog) take() []int {
	q.mu.Lock()
	defer q.mu.Unlock()
	b := q.batches
	q.batches = nil
	return b
}

// script is the state of one transcript: the graph built by its commands
// and the log of callbacks in the order they ran.
type script struct {
	t      *testing.T
	e      *blocktest.Env
	ring   *enterLog
	nodes  map[string]*block.Node
	drvs   map[string]*scriptDriver
	order  []string // node names in opening order
	fes    map[string]*block.FrontEnd
	feNm   []string
	reqs   map[string]*scriptReq
	events []string
	limit  bool // "max-requests" was used: "state" shows the pool
}

func newScript(t *testing.T) *script {
	s := &script{t: t, nodes: map[string]*block.Node{}, drvs: map[string]*scriptDriver{},
		fes: map[string]*block.FrontEnd{}, reqs: map[string]*scriptReq{}}
	s.e = blocktest.NewEnvOpts(t, blocktest.EnvOptions{Queue: func(name string) uring.Queue {
		r := uringtest.New(uringtest.Options{SQEntries: 64, NoLog: true})
		if name != "main" {
			return r
		}
		s.ring = &enterLog{Queue: r}
		return s.ring
	}})
	return s
}

func (s *script) close() {
	for _, name := range s.feNm {
		if err := s.fes[name].Close(); err != nil {
			s.t.Errorf("close front end %s: %v", name, err)
		}
	}
	for i := len(s.order) - 1; i >= 0; i-- {
		if err := s.nodes[s.order[i]].Unref(); err != nil {
			s.t.Errorf("unref %s: %v", s.order[i], err)
		}
	}
}

func (s *script) logf(format string, args ...any) {
	s.events = append(s.events, fmt.Sprintf(format, args...))
}

// scriptDriver keeps data in memory, completes reads and writes through a
// NOP on the request's ring (so they stay in flight until the loop reaps,
// and batching shows in the enter log), and logs its drain hooks.
type scriptDriver struct {
	block.DriverBase
	s     *script
	name  string
	data  []byte
	hooks int // begin minus end
}

func (d *scriptDriver) Length(*block.Node) (int64, error) { return int64(len(d.data)), nil }
func (d *scriptDriver) Close(*block.Node) error           { return nil }
func (d *scriptDriver) DrainBegin(*block.Node) {
	d.hooks++
	d.s.logf("%s: drain hook begin", d.name)
}
func (d *scriptDriver) DrainEnd(*block.Node) {
	d.hooks--
	d.s.logf("%s: drain hook end", d.name)
}
func (d *scriptDriver) Read(r *block.Request) {
	off := r.Off
	for _, b := range r.Iov {
		copy(b, d.data[off:])
		off += int64(len(b))
	}
	r.Context().Nop(r, 0)
}
func (d *scriptDriver) Write(r *block.Request) {
	off := r.Off
	for _, b := range r.Iov {
		copy(d.data[off:], b)
		off += int64(len(b))
	}
	r.Context().Nop(r, 0)
}
func (d *scriptDriver) Flush(r *block.Request) { r.Context().Nop(r, 0) }

// scriptReq is one named request: its buffer and whether it completed.
type scriptReq struct {
	s      *script
	name   string
	buf    []byte
	done   bool
	err    error
	onDone []string // commands its callback runs (see "ondone")
}

func (q *scriptReq) RequestDone(_ *block.Request, err error) {
	q.done, q.err = true, err
	res := "ok"
	if err != nil {
		res = err.Error()
	}
	q.s.logf("%s: done %s", q.name, res)
	for _, c := range q.onDone {
		cmd, pos, kv := args(c)
		for _, l := range q.s.exec(cmd, pos, kv) {
			q.s.logf("%s", l)
		}
	}
}

// devOps logs a front end's device callbacks.
type devOps struct {
	s    *script
	name string
}

func (o devOps) DrainedBegin()     { o.s.logf("%s: device drained begin", o.name) }
func (o devOps) DrainedPoll() bool { return false }
func (o devOps) DrainedEnd()       { o.s.logf("%s: device drained end", o.name) }

// args splits "cmd a b k=v" into positional and keyed arguments.
func args(line string) (cmd string, pos []string, kv map[string]string) {
	f := strings.Fields(line)
	kv = map[string]string{}
	for _, a := range f[1:] {
		if k, v, ok := strings.Cut(a, "="); ok {
			kv[k] = v
		} else {
			pos = append(pos, a)
		}
	}
	return f[0], pos, kv
}

func size(s string, def int64) int64 {
	if s == "" {
		return def
	}
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		panic(fmt.Sprintf("bad size %q", s))
	}
	return v * mult
}

// run executes one command on the main Context and returns what it
// printed: the callbacks it caused, in order, then its own output.
func (s *script) run(line string) (out []string) {
	defer func() {
		if r := recover(); r != nil {
			out = append(out, fmt.Sprintf("panic: %v", r))
		}
	}()
	if rest, ok := strings.CutPrefix(line, "ondone "); ok {
		// ondone TAG cmd, cmd, ...: commands TAG's callback runs, in
		// order, when the request completes.
		name, cmds, _ := strings.Cut(strings.TrimSpace(rest), " ")
		r := s.reqs[name]
		if r == nil || r.done {
			panic("ondone: no running request " + name)
		}
		for _, c := range strings.Split(cmds, ",") {
			r.onDone = append(r.onDone, strings.TrimSpace(c))
		}
		return nil
	}
	cmd, pos, kv := args(line)
	out = s.exec(cmd, pos, kv)
	out = append(s.events, out...)
	s.events = nil
	return out
}

func (s *script) node(name string) *block.Node {
	n := s.nodes[name]
	if n == nil {
		panic("no node " + name)
	}
	return n
}

func (s *script) fe(name string) *block.FrontEnd {
	fe := s.fes[name]
	if fe == nil {
		panic("no front end " + name)
	}
	return fe
}

func (s *script) exec(cmd string, pos []string, kv map[string]string) []string {
	g := s.e.G
	main := s.e.Main
	one := func() string {
		if len(pos) != 1 {
			panic(cmd + ": want one name")
		}
		return pos[0]
	}
	switch cmd {
	case "open": // open NAME [size=64K]
		name := one()
		d := &scriptDriver{s: s, name: name, data: make([]byte, size(kv["size"], 64<<10))}
		n, err := g.Open(d, block.Options{Name: name})
		if err != nil {
			return []string{"error: " + err.Error()}
		}
		s.nodes[name], s.drvs[name] = n, d
		s.order = append(s.order, name)
	case "attach": // attach PARENT CHILD [role=backing|file]
		role := block.RoleBacking
		if kv["role"] == "file" {
			role = block.RoleFile
		}
		if _, err := g.Attach(s.node(pos[0]), s.node(pos[1]), block.ChildSpec{Name: pos[1], Role: role}); err != nil {
			return []string{"error: " + err.Error()}
		}
	case "frontend": // frontend NAME root=NODE [devops] [noqueue]
		name := pos[0]
		opts := block.FrontEndOptions{Name: name, DisableQueuing: slices.Contains(pos, "noqueue")}
		if slices.Contains(pos, "devops") {
			opts.DevOps = devOps{s, name}
		}
		fe := g.NewFrontEnd(opts)
		if err := fe.Insert(s.node(kv["root"])); err != nil {
			return []string{"error: " + err.Error()}
		}
		s.fes[name] = fe
		s.feNm = append(s.feNm, name)
	case "read", "write": // read FE TAG [off=0] [len=512]
		fe, name := s.fe(pos[0]), pos[1]
		r := &scriptReq{s: s, name: name, buf: make([]byte, size(kv["len"], 512))}
		if s.reqs[name] != nil && !s.reqs[name].done {
			panic("request " + name + " still running")
		}
		s.reqs[name] = r
		q := fe.Queue(main)
		if cmd == "read" {
			q.Read(r.buf, size(kv["off"], 0), r, 0)
		} else {
			q.Write(r.buf, size(kv["off"], 0), 0, r, 0)
		}
	case "max-requests": // max-requests N: the main Context's admission limit
		n, _ := strconv.Atoi(one())
		g.Pool(main).SetMaxRequests(n)
		s.limit = true
	case "plug":
		s.fe(one()).Queue(main).Plug()
	case "unplug":
		s.fe(one()).Queue(main).Unplug()
	case "drain-begin":
		s.node(one()).DrainedBegin()
		return []string{"drain-begin " + pos[0] + " returned"}
	case "drain-end":
		s.node(one()).DrainedEnd()
		return []string{"drain-end " + pos[0] + " returned"}
	case "subtree-begin":
		s.node(one()).SubtreeDrainedBegin()
		return []string{"subtree-begin " + pos[0] + " returned"}
	case "subtree-end":
		s.node(one()).SubtreeDrainedEnd()
		return []string{"subtree-end " + pos[0] + " returned"}
	case "drain-all-begin":
		g.DrainAllBegin()
		return []string{"drain-all-begin returned"}
	case "drain-all-end":
		g.DrainAllEnd()
		return []string{"drain-all-end returned"}
	case "wait": // wait TAG...: run the loop until they completed
		main.WaitWhile(func() bool {
			for _, name := range pos {
				if r := s.reqs[name]; r == nil || !r.done {
					return true
				}
			}
			return false
		})
	case "state": // per node: quiesce, in flight, hooks; per front end: quiesce, in flight, parked
		var lines []string
		for _, name := range s.order {
			n := s.nodes[name]
			lines = append(lines, fmt.Sprintf("node %s: quiesce=%d in-flight=%d hooks=%d", name, n.Quiesce(), n.InFlight(), s.drvs[name].hooks))
		}
		for _, name := range s.feNm {
			fe := s.fes[name]
			lines = append(lines, fmt.Sprintf("frontend %s: quiesce=%d in-flight=%d parked=%d", name, fe.Quiesce(), fe.InFlight(), fe.ParkedCount()))
		}
		if s.limit {
			admitted, _, waiting, _ := g.Pool(main).AdmissionStats()
			lines = append(lines, fmt.Sprintf("pool main: admitted=%d waiting=%d", admitted, waiting))
		}
		var pending []string
		for name, r := range s.reqs {
			if !r.done {
				pending = append(pending, name)
			}
		}
		sort.Strings(pending)
		if len(pending) > 0 {
			lines = append(lines, "not completed: "+strings.Join(pending, " "))
		}
		return lines
	case "enters": // the NOP submissions per io_uring_enter since the last "enters"
		b := s.ring.take()
		if len(b) == 0 {
			return []string{"enters: none"}
		}
		parts := make([]string, len(b))
		for i, n := range b {
			parts[i] = strconv.Itoa(n)
		}
		return []string{fmt.Sprintf("enters: %d, submitting %s", len(b), strings.Join(parts, " "))}
	default:
		panic("unknown command " + cmd)
	}
	return nil
}

var _ aio.Done = (*block.Request)(nil)
