// Package blkdebug is QEMU's blkdebug filter driver: a node over one
// image node that forwards every request and, by the rules of a QEMU 7.2
// configuration file, fails requests after chosen debug events, changes
// its state, or holds requests at breakpoints (qemu-io's break, resume,
// wait_break, remove_break). A format driver above it raises the events
// (block.DebugEvent) on its file child; drivers/qcow2 raises those QEMU's
// qcow2 does (drivers/qcow2/debugevents.go). Filenames
// "blkdebug:CONFIG:IMAGE" are opened by drivers/chain.
//
// Semantics (QEMU 7.2): the state starts at 1. When an event fires, its
// rules whose state is 0 or the current state act: inject-error rules
// become the active set (replacing the previous set at the first one of
// this event), set-state rules choose the state after the event, and a
// breakpoint (suspend) marks the next request to arrive for holding under
// its tag and disarms itself. A request (read, write, write-zeroes,
// discard, flush) fails with the errno of the first active rule whose
// sector, if any, falls in it and whose iotype matches; a once rule then
// goes. The filter is test support: its rule matching takes a mutex per
// request.
package blkdebug

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"

	"github.com/ringblk/ringblk/block"
)

// Driver is the blkdebug filter's driver.
type Driver struct {
	block.DriverBase

	mu      sync.Mutex
	state   int
	rules   [block.NumDebugEvents][]*Rule // newest first, as QEMU's list heads
	active  []*Rule
	pending []string     // breakpoint tags for the next requests to arrive
	held    []heldReq    // requests parked at a breakpoint
	notify  func(string) // breakpoint messages (qemu-io prints them)
	child   *block.Child // the image
	file    *block.Node  // until Open attaches it
	cfgPath string       // for the filename
	lim     Limits
}

// Limits are blkdebug's block limits options that shape write-zeroes
// requests (align, max-transfer, opt-write-zero, max-write-zero), as
// QEMU's block layer and blkdebug together treat them (zeroes.go).
type Limits struct {
	Align        int64 // request alignment (1 or 0: none)
	MaxTransfer  int64 // longest read or write (0: none)
	OptWriteZero int64 // write-zeroes alignment (0: none); need not be a power of two
	MaxWriteZero int64 // longest write-zeroes (0: none)
}

type heldReq struct {
	tag string
	r   *block.Request
}

// New returns a driver over file with rules (Parse's result). It takes
// over the caller's reference on file.
func New(file *block.Node, rules []Rule) *Driver {
	d := &Driver{state: 1, file: file}
	for i := range rules {
		ru := rules[i]
		d.rules[ru.Event] = append([]*Rule{&ru}, d.rules[ru.Event]...)
	}
	return d
}

// ReadConfig parses the configuration file at path; a failure names it.
func ReadConfig(path string) ([]Rule, error) {
	f, err := os.Open(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is not part of the message
		}
		return nil, &configError{err}
	}
	defer f.Close()
	rules, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("Could not parse blkdebug config file %s: %v", path, err)
	}
	return rules, nil
}

// configError is a configuration file that could not be opened, worded
// as QEMU words it: the cause (strerror) without the path.
type configError struct{ err error }

func (e *configError) Error() string {
	var errno syscall.Errno
	if errors.As(e.err, &errno) {
		msg := errno.Error()
		return "Could not read blkdebug config file: " + strings.ToUpper(msg[:1]) + msg[1:]
	}
	return "Could not read blkdebug config file: " + e.err.Error()
}

func (e *configError) Unwrap() error { return e.err }

// NewNode opens a blkdebug node over file in g with the rules of the
// configuration file cfg ("" : no rules), taking over the caller's
// reference on file (dropped on failure).
func NewNode(g *block.Graph, file *block.Node, cfg string, nopts block.Options) (*block.Node, error) {
	return NewNodeRules(g, file, cfg, nil, nopts)
}

// NewNodeRules is NewNode with extra rules after the configuration
// file's (QEMU's inline inject-error.N / set-state.N options).
func NewNodeRules(g *block.Graph, file *block.Node, cfg string, extra []Rule, nopts block.Options) (*block.Node, error) {
	return NewNodeLimits(g, file, cfg, extra, Limits{Align: int64(nopts.Align), MaxTransfer: nopts.MaxTransfer}, nopts)
}

// NewNodeLimits is NewNodeRules with the block limits options; the node's
// write-zeroes requests reach the driver whole (nopts.MaxWriteZeroes is
// set), which splits them as QEMU does.
func NewNodeLimits(g *block.Graph, file *block.Node, cfg string, extra []Rule, lim Limits, nopts block.Options) (*block.Node, error) {
	var rules []Rule
	if cfg != "" {
		var err error
		if rules, err = ReadConfig(cfg); err != nil {
			file.Unref()
			return nil, err
		}
	}
	rules = append(rules, extra...)
	d := New(file, rules)
	d.cfgPath = cfg
	d.lim = lim
	nopts.MaxWriteZeroes = maxZeroesWhole &^ int64(max(nopts.Align, 1)-1)
	n, err := g.Open(d, nopts)
	if err != nil {
		if d.file != nil {
			d.file.Unref()
		}
		return nil, err
	}
	return n, nil
}

func (d *Driver) Open(n *block.Node) error {
	f := d.file
	d.file = nil
	c, err := n.Graph().Attach(n, f, block.ChildSpec{Name: "image", Role: block.RoleFiltered | block.RolePrimary})
	f.Unref()
	if err != nil {
		return err
	}
	d.child = c
	d.DebugEvent(block.DbgNone)
	return nil
}

func (d *Driver) Length(n *block.Node) (int64, error) {
	if d.child == nil || d.child.Node() == nil {
		return 0, errors.New("blkdebug: no image")
	}
	return d.child.Node().Length()
}

// SetNotify sets the function that receives the breakpoint messages
// ("blkdebug: Suspended request 'A'", "blkdebug: Resuming request 'A'"),
// which qemu-io prints.
func (d *Driver) SetNotify(f func(string)) {
	d.mu.Lock()
	d.notify = f
	d.mu.Unlock()
}

// DebugEvent processes ev's rules (block.DebugEventer).
func (d *Driver) DebugEvent(ev block.DebugEvent) {
	if ev >= block.NumDebugEvents {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	newState := d.state
	injected := false
	rules := d.rules[ev]
	for _, ru := range rules {
		if ru.State != 0 && ru.State != d.state {
			continue
		}
		switch ru.Action {
		case ActionInjectError:
			if !injected {
				d.active = d.active[:0]
				injected = true
			}
			d.active = append([]*Rule{ru}, d.active...)
		case ActionSetState:
			newState = ru.NewState
		case ActionSuspend:
			d.removeLocked(ru)
			d.pending = append(d.pending, ru.Tag)
		}
	}
	d.state = newState
}

// removeLocked drops ru from its event's rules and the active set.
func (d *Driver) removeLocked(ru *Rule) {
	l := d.rules[ru.Event]
	for i, x := range l {
		if x == ru {
			d.rules[ru.Event] = append(l[:i:i], l[i+1:]...)
			break
		}
	}
	for i, x := range d.active {
		if x == ru {
			d.active = append(d.active[:i:i], d.active[i+1:]...)
			break
		}
	}
}

// check returns the errno to fail a request of type io over [off, off+n)
// with (0: none), and whether to hold it at a breakpoint.
func (d *Driver) check(r *block.Request, io int) (errno int, held bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.pending) > 0 {
		tag := d.pending[0]
		d.pending = d.pending[1:]
		d.held = append(d.held, heldReq{tag, r})
		if d.notify != nil {
			d.notify("blkdebug: Suspended request '" + tag + "'")
		}
		return 0, true
	}
	for _, ru := range d.active {
		if ru.IOTypes&io == 0 {
			continue
		}
		if ru.Offset >= 0 && (r.Len == 0 || ru.Offset < r.Off || ru.Offset >= r.Off+r.Len) {
			continue
		}
		if ru.Once {
			d.removeLocked(ru)
		}
		return ru.Errno, false
	}
	return 0, false
}

func (d *Driver) handle(r *block.Request, io int) {
	errno, held := d.check(r, io)
	switch {
	case held:
	case errno != 0:
		r.CompleteLater(&block.Error{Kind: block.Io, Op: r.Op, Node: r.Node().Name(), Offset: r.Off, Err: syscall.Errno(errno)})
	default:
		d.forward(r)
	}
}

func (d *Driver) forward(r *block.Request) {
	if r.Op == block.OpWriteZeroes {
		d.zeroes(r)
		return
	}
	d.forwardAs(r)
}

// forwardAs sends r to the image unchanged.
func (d *Driver) forwardAs(r *block.Request) {
	c := d.child
	if c == nil || c.Node() == nil {
		r.CompleteLater(&block.Error{Kind: block.Io, Op: r.Op, Node: r.Node().Name(), Offset: r.Off, Err: syscall.ENOMEDIUM})
		return
	}
	s := r.Sub()
	s.Op, s.Flags, s.Off, s.Len, s.Iov = r.Op, r.Flags, r.Off, r.Len, r.Iov
	c.Submit(s, fwdDone{d})
}

type fwdDone struct{ d *Driver }

func (f fwdDone) RequestDone(s *block.Request, err error) {
	r := s.Parent
	r.Status, r.Pnum = s.Status, s.Pnum
	if r.Op == block.OpWrite || r.Op == block.OpWriteZeroes {
		f.d.DebugEvent(block.DbgPwritevDone)
	}
	r.Complete(err)
}

func (d *Driver) Read(r *block.Request) { d.handle(r, IORead) }

// Write raises pwritev before and pwritev_done after the write, as QEMU's
// block layer does for a write to this node.
func (d *Driver) Write(r *block.Request) {
	d.DebugEvent(block.DbgPwritev)
	d.handle(r, IOWrite)
}

// WriteZeroes raises pwritev_zero, then splits the request as QEMU does
// for blkdebug's limits (zeroes.go).
func (d *Driver) WriteZeroes(r *block.Request) {
	d.DebugEvent(block.DbgPwritevZero)
	d.handle(r, IOWriteZeroes)
}

func (d *Driver) Discard(r *block.Request) { d.handle(r, IODiscard) }

// Flush raises flush_to_os and flush_to_disk, then flushes the image.
func (d *Driver) Flush(r *block.Request) {
	d.DebugEvent(block.DbgFlushToOS)
	d.DebugEvent(block.DbgFlushToDisk)
	d.handle(r, IOFlush)
}

func (d *Driver) BlockStatus(r *block.Request) { d.forward(r) }

// Break sets a breakpoint: the next request after event fires is held
// under tag (qemu-io's break).
func (d *Driver) Break(event, tag string) error {
	ev, ok := block.DebugEventByName(event)
	if !ok {
		return syscall.ENOENT
	}
	d.mu.Lock()
	d.rules[ev] = append([]*Rule{{Event: ev, Action: ActionSuspend, Tag: tag}}, d.rules[ev]...)
	d.mu.Unlock()
	return nil
}

// Resume lets the oldest request held under tag go on (qemu-io's resume).
func (d *Driver) Resume(tag string) error {
	if d.resume(tag, false) == 0 {
		return syscall.ENOENT
	}
	return nil
}

// RemoveBreak drops the breakpoints with tag and resumes every request
// held under it (qemu-io's remove_break).
func (d *Driver) RemoveBreak(tag string) error {
	found := false
	d.mu.Lock()
	for ev := range d.rules {
		for _, ru := range append([]*Rule(nil), d.rules[ev]...) {
			if ru.Action == ActionSuspend && ru.Tag == tag {
				d.removeLocked(ru)
				found = true
			}
		}
	}
	d.mu.Unlock()
	if d.resume(tag, true) > 0 {
		found = true
	}
	if !found {
		return syscall.ENOENT
	}
	return nil
}

func (d *Driver) resume(tag string, all bool) int {
	d.mu.Lock()
	var go_ []*block.Request
	for i := 0; i < len(d.held); {
		if d.held[i].tag == tag && (all || len(go_) == 0) {
			go_ = append(go_, d.held[i].r)
			d.held = append(d.held[:i], d.held[i+1:]...)
			continue
		}
		i++
	}
	notify := d.notify
	d.mu.Unlock()
	for _, r := range go_ {
		if notify != nil {
			notify("blkdebug: Resuming request '" + tag + "'")
		}
		r := r
		r.Context().Schedule(func() { d.forward(r) })
	}
	return len(go_)
}

// Suspended reports whether a request is held under tag (qemu-io's
// wait_break waits for it).
func (d *Driver) Suspended(tag string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, h := range d.held {
		if h.tag == tag {
			return true
		}
	}
	return false
}

// Find returns the blkdebug driver at or below n (following primary
// children, as QEMU's bdrv_debug_* calls do), or nil.
func Find(n *block.Node) *Driver {
	var found *Driver
	n.Graph().Control(func() {
		for depth := 0; n != nil && depth < 64; depth++ {
			if d, ok := n.Driver().(*Driver); ok {
				found = d
				return
			}
			var next *block.Node
			for _, c := range n.Children() {
				if c.Role()&block.RolePrimary != 0 && c.Node() != nil {
					next = c.Node()
					break
				}
			}
			n = next
		}
	})
	return found
}

// Filename is the node's filename as QEMU shows a blkdebug node's over a
// child whose filename is image: "blkdebug:CONFIG:IMAGE", CONFIG empty
// without a configuration file.
func (d *Driver) Filename(image string) string { return "blkdebug:" + d.cfgPath + ":" + image }
