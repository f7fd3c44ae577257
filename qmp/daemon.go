package qmp

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/host"
	"github.com/ringblk/ringblk/job"
	"github.com/ringblk/ringblk/nbd"
	"github.com/ringblk/ringblk/plugin/contract"
)

// Daemon is the state behind the block commands: the host, the nodes
// added with blockdev-add, the IOThreads and the NBD exports. Commands
// reach it through the Server's command lock, so its maps need no lock
// of their own except for readers outside commands (metrics), which take
// mu.
type Daemon struct {
	h    *host.Host
	srv  *Server
	jobs *job.Manager
	// chains are the checkpoint chains of x-ringblk-checkpoint, by
	// "node/chain".
	chains map[string]*job.Chain

	mu        sync.Mutex
	nodes     map[string]*blockdev
	iothreads map[string]int // id -> host I/O Context index
	nbdSrv    *nbd.Server
	nbdLis    net.Listener
	nbdDone   chan struct{}
	exports   map[string]*export

	anon      int // the last "#blockNNN" name given to an inline child
	exportSeq int // the last export's creation number

	// out prints a line on the daemon's standard output (SetOutput); nil:
	// the daemon prints nothing.
	out func(line string)

	// bg counts the closes of drive-* targets under way (driveTarget.release).
	bg sync.WaitGroup

	quit     chan struct{}
	quitOnce sync.Once
	// Shutdown's, run once: by quit, or by the host on a signal.
	shutdownOnce sync.Once
	shutdownErr  error
	closed       bool // Close began (metrics stop reading)
}

// blockdev is one node added with blockdev-add (or by a snapshot), and the
// host device that keeps it open.
type blockdev struct {
	name     string
	driver   string // QAPI driver: file, raw, qcow2, null-co
	filename string
	dev      *host.Device
	opts     host.OpenOptions
	// spec is the option tree a node of a tree driver (nbd, blkdebug,
	// or a format over one) was opened from, to reopen it by; nil for
	// a node opened by filename.
	spec chain.Spec
	// usedBy names the node that took this one as its backing (after an
	// external snapshot) or file (blockdev-add of a format over a file
	// node); such a node cannot be deleted or snapshotted on its own.
	usedBy string
	role   string // "backing" or "file", with usedBy
	// byRef: the node is another's backing node because blockdev-add
	// named it ("backing": "NAME"): it keeps its own device and is free
	// again when that node is deleted.
	byRef bool
	// owner: the node was opened for owner's inline "backing" object
	// (QEMU's implicit node, "#blockNNN" unless the object named it). It
	// is byRef too, and goes away with owner or when a job takes it out
	// of owner's chain (reapImplicit).
	owner string
	// discardUnmap and detectZeroes are the node's discard and
	// detect-zeroes options, which its exports apply at the top (a qcow2
	// node would otherwise discard even with discard=ignore, QEMU's
	// default, since the chain puts the setting on its file node only).
	discardUnmap bool
	detectZeroes nbd.DetectZeroes
	// fileOpts and qcow2Opts are the node's file and qcow2 members as
	// blockdev-add gave them, which blockdev-reopen must not change.
	fileOpts  FileOptions
	qcow2Opts Qcow2Options
	// locking and forceShare are the node's own members as given (an
	// inline file's go to its file, not here).
	locking    string
	forceShare bool
	// top is the node added last over this device's chain; blockdev-del
	// of it closes the device and every node under it.
	lower []string
}

type export struct {
	seq      int // creation order: query-block-exports lists the newest first, as QEMU does
	id       string
	node     string
	name     string // the NBD export name
	writable bool
	exp      *nbd.Export
}

// NewDaemon registers the block commands on reg and returns the daemon.
// h's I/O Contexts are the IOThreads object-add can create.
func NewDaemon(h *host.Host, reg *Registry) *Daemon {
	d := &Daemon{h: h, nodes: map[string]*blockdev{}, iothreads: map[string]int{},
		exports: map[string]*export{}, quit: make(chan struct{})}
	d.jobs = job.NewManager(h.Graph(), d.jobEvent)
	d.chains = map[string]*job.Chain{}
	d.register(reg)
	return d
}

// SetOutput gives the daemon its standard output, where it prints what
// qemu-storage-daemon prints there besides a stdio monitor's messages
// (the "Formatting" line of an image drive-backup or drive-mirror makes):
// through a stdio monitor's queue when there is one (Server.Print), so
// that it comes after the replies before it; otherwise whole, in one
// write.
func (d *Daemon) SetOutput(w io.Writer) {
	var mu sync.Mutex
	d.out = func(line string) {
		if d.srv != nil && d.srv.Print(line) {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		_, _ = io.WriteString(w, line+"\n")
	}
}

// Attach tells the daemon the server its events go to.
func (d *Daemon) Attach(s *Server) { d.srv = s }

// Quit is closed by the quit command.
func (d *Daemon) Quit() <-chan struct{} { return d.quit }

// Host returns the daemon's host.
func (d *Daemon) Host() *host.Host { return d.h }

func (d *Daemon) emit(name string, data any) {
	if d.srv != nil {
		d.srv.Emit(name, data)
	}
}

// cancelJobs cancels every job (a mirror does not pivot) and waits for
// each to end and be dismissed.
func (d *Daemon) cancelJobs() {
	if d.jobs == nil {
		return
	}
	for _, in := range d.jobs.List() {
		if j := d.jobs.Get(in.ID); j != nil {
			_ = j.Cancel(true)
			_ = j.Wait()
			_ = j.Dismiss()
		}
	}
}

// Shutdown ends, while the clients are still connected, what they may be
// waiting on, in qemu-storage-daemon's order when it quits: the NBD
// server stops, each export announced by BLOCK_EXPORT_DELETED, and every
// job is cancelled (its events go out: aborting, BLOCK_JOB_CANCELLED, or
// BLOCK_JOB_COMPLETED for a mirror that was ready, concluded, null).
// Run it under the server's command lock (Server.Locked); Close does the
// rest and finds no job or export left. It runs once: quit runs it before
// its reply, a host calls it on a signal, and a later call returns the
// first one's error.
func (d *Daemon) Shutdown() error {
	d.shutdownOnce.Do(func() {
		if d.nbdSrv != nil {
			d.shutdownErr = d.nbdServerStop()
		}
		d.cancelJobs()
	})
	return d.shutdownErr
}

// Close ends the exports and the NBD server, then closes every device
// (draining each) and returns their errors (a failed metadata write-back
// on close). The host stays for the caller to close.
func (d *Daemon) Close() error {
	d.mu.Lock()
	d.closed = true
	exps := d.exports
	d.exports = map[string]*export{}
	srv, lis, done := d.nbdSrv, d.nbdLis, d.nbdDone
	d.nbdSrv, d.nbdLis = nil, nil
	nodes := d.nodes
	d.nodes = map[string]*blockdev{}
	d.mu.Unlock()
	var errs []error
	// Jobs end first (cancelled: a mirror does not pivot), so that no job
	// holds a node the devices below close.
	d.cancelJobs()
	d.bg.Wait()
	for _, e := range exps {
		errs = append(errs, e.exp.Close())
	}
	if srv != nil {
		lis.Close()
		srv.Close()
		<-done
	}
	seen := map[*host.Device]bool{}
	names := make([]string, 0, len(nodes))
	for n := range nodes {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		b := nodes[n]
		if b.dev == nil || seen[b.dev] {
			continue
		}
		seen[b.dev] = true
		errs = append(errs, b.dev.Close())
	}
	return errors.Join(errs...)
}

// ---- lookups ----

func notFound(name string) *Error {
	return &Error{Class: DeviceNotFound, Desc: fmt.Sprintf("Device '%s' not found", name)}
}

func nodeNotFound(name string) *Error {
	return Errorf("Cannot find device='' nor node-name='%s'", name)
}

// lookup finds a node by device or node-name (QMP accepts either), with
// QEMU's message when neither names one.
func (d *Daemon) lookup(device, nodeName string) (*blockdev, *Error) {
	if device != "" {
		if b := d.nodes[device]; b != nil {
			// A device name stands for what the device shows now: after
			// an external snapshot, the overlay on top (as QEMU's
			// BlockBackend name does).
			for b.usedBy != "" && d.nodes[b.usedBy] != nil {
				b = d.nodes[b.usedBy]
			}
			return b, nil
		}
	}
	if nodeName != "" {
		if b := d.nodes[nodeName]; b != nil {
			return b, nil
		}
	}
	return nil, Errorf("Cannot find device='%s' nor node-name='%s'", device, nodeName)
}

// top returns b if its device's top node is b itself, else an error
// saying which node uses it.
func (b *blockdev) top() *Error {
	if b.byRef {
		users := b.backingParents()
		switch {
		case len(users) == 0:
			// A stream or commit took it out of the chain: it is free
			// again, as QEMU drops its backing blocker.
			b.usedBy, b.role, b.byRef = "", "", false
		case !slices.Contains(users, b.usedBy):
			// Taken out of the chain of the overlay it named, it is
			// still another's backing (a shared base).
			b.usedBy = users[0]
		}
	}
	if b.usedBy != "" {
		role := b.role
		if role == "backing" {
			role = "backing hd" // QEMU's op blocker's words
		}
		return Errorf("Node '%s' is busy: node is used as %s of '%s'", b.name, role, b.usedBy)
	}
	return nil
}

// fileBase applies an inline file's BlockdevOptionsBase members, as QEMU
// does for the file node of a raw or qcow2 node: a read-only file under a
// writable format node is refused ("Block node is read-only"); a writable
// one under a read-only format node is taken and opened read-only (nothing
// writes it); discard and force-share act on the file node, which is where
// ringblk applies them; detect-zeroes works at the format node only here.
// Before, every one of them was "Parameter 'file.read-only' is unexpected".
func fileBase(o *AddOptions, oo *host.OpenOptions) *Error {
	f := o.File
	if f.ReadOnly != nil && *f.ReadOnly && !o.ReadOnly {
		return Errorf("Block node is read-only")
	}
	if f.ForceShare != nil && *f.ForceShare {
		if !o.ReadOnly && (f.ReadOnly == nil || !*f.ReadOnly) {
			return Errorf("force-share=on can only be used with read-only images")
		}
		oo.ForceShare = true
	}
	switch f.Discard {
	case "":
	case "ignore", "off":
	case "unmap", "on":
		if o.Discard == "" {
			oo.Discard = "unmap"
		}
	default:
		return Errorf("Parameter 'file.discard' does not accept value '%s'", f.Discard)
	}
	switch f.DetectZeroes {
	case "", "off":
	case "on", "unmap":
		return Errorf("Parameter 'file.detect-zeroes': detect-zeroes acts on the format node here; set it on '%s'", o.NodeName)
	default:
		return Errorf("Parameter 'file.detect-zeroes' does not accept value '%s'", f.DetectZeroes)
	}
	return nil
}

// backingUser names a node that still has b's node as its backing child
// ("" if none), for a backing node shared by several overlays.
func (d *Daemon) backingUser(b *blockdev) string {
	for _, name := range b.backingParents() {
		if _, ok := d.nodes[name]; ok {
			return name
		}
	}
	return ""
}

// backingParents names the nodes that have b's node as their backing
// child.
func (b *blockdev) backingParents() []string {
	n := b.dev.Root()
	if n == nil {
		return nil
	}
	var out []string
	n.Graph().Control(func() {
		for _, p := range n.Parents() {
			if p.Role()&block.RoleBacking != 0 && p.Parent() != nil {
				out = append(out, p.Parent().Name())
			}
		}
	})
	return out
}

// isBacking reports whether b's node is still some node's backing child.
func (b *blockdev) isBacking() bool {
	n := b.dev.Root()
	if n == nil {
		return false
	}
	found := false
	n.Graph().Control(func() {
		for _, p := range n.Parents() {
			if p.Role()&block.RoleBacking != 0 {
				found = true
			}
		}
	})
	return found
}

// ---- IOThreads ----

func (d *Daemon) addIOThread(id string) error {
	if id == "" {
		return Errorf("Parameter 'id' is missing")
	}
	if _, ok := d.iothreads[id]; ok {
		return Errorf("attempt to add duplicate property '%s' to object (type 'container')", id)
	}
	used := map[int]bool{}
	for _, i := range d.iothreads {
		used[i] = true
	}
	for i := 0; i < d.h.Contexts(); i++ {
		if !used[i] {
			d.mu.Lock()
			d.iothreads[id] = i
			d.mu.Unlock()
			return nil
		}
	}
	return Errorf("Cannot add IOThread '%s': all %d I/O Contexts are in use (start the daemon with a larger --iothreads-max)", id, d.h.Contexts())
}

func (d *Daemon) delIOThread(id string) error {
	i, ok := d.iothreads[id]
	if !ok {
		return Errorf("object '%s' not found", id)
	}
	for _, b := range d.nodes {
		if b.dev != nil && b.dev.Root() != nil && b.dev.Root().Context() == d.h.Context(i) {
			return Errorf("object '%s' is in use by node '%s'", id, b.name)
		}
	}
	d.mu.Lock()
	delete(d.iothreads, id)
	d.mu.Unlock()
	return nil
}

// IOThread returns the Context index of IOThread id.
func (d *Daemon) IOThread(id string) (int, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	i, ok := d.iothreads[id]
	return i, ok
}

func threadID(c interface{ Run(func()) }) int {
	var tid int
	c.Run(func() { tid = unix.Gettid() })
	return tid
}

// ---- nodes ----

// AddOptions is blockdev-add's argument, the QAPI BlockdevOptions union
// for the drivers the daemon has.
type AddOptions struct {
	Driver       string      `json:"driver"`
	NodeName     string      `json:"node-name" qmp:"optional"`
	Filename     string      `json:"filename" qmp:"optional"` // driver file
	File         *FileRef    `json:"file" qmp:"optional"`     // raw, qcow2
	ReadOnly     bool        `json:"read-only" qmp:"optional"`
	Cache        *CacheOpts  `json:"cache" qmp:"optional"`
	Discard      string      `json:"discard" qmp:"optional"`
	Backing      *BackingRef `json:"backing" qmp:"optional"` // null, a node's name or inline options (qcow2)
	Size         int64       `json:"size" qmp:"optional"`    // null-co
	AutoReadOnly bool        `json:"auto-read-only" qmp:"optional"`
	DetectZeroes string      `json:"detect-zeroes" qmp:"optional"`
	Locking      string      `json:"locking" qmp:"optional"`
	ForceShare   bool        `json:"force-share" qmp:"optional"`
	TreeOptions
}

// CacheOpts is QAPI's BlockdevCacheOptions.
type CacheOpts struct {
	Direct  bool `json:"direct"`
	NoFlush bool `json:"no-flush"`
}

func (c *CacheOpts) mode() string {
	switch {
	case c == nil:
		return ""
	case c.NoFlush:
		return "unsafe"
	case c.Direct:
		return "none"
	}
	return "writeback"
}

// Limits QEMU puts on names (its node_name buffer, qcow2's bitmap name).
const (
	maxNodeName   = 31
	maxBitmapName = 1023
)

// idWellFormed is QEMU's rule for node names and job IDs: a letter, then
// letters, digits, '-', '.' and '_'. Besides matching QEMU, it keeps the
// user's names apart from those the daemon and the job package make up
// for their own nodes and bitmaps, which begin with '#' ("#backup-cbw-ID",
// "#node3"): a user node so named would collide with one of them.
func idWellFormed(id string) bool {
	for i := 0; i < len(id); i++ {
		c := id[i]
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if letter || i > 0 && (c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			continue
		}
		return false
	}
	return id != ""
}

// checkNodeName applies QEMU's rules to a new node's name.
func checkNodeName(name string) error {
	if !idWellFormed(name) {
		return Errorf("Invalid node-name: '%s'", name)
	}
	if len(name) > maxNodeName {
		return Errorf("Node name too long")
	}
	return nil
}

func (d *Daemon) blockdevAdd(o *AddOptions) error {
	d.reapImplicit()
	if o.NodeName == "" {
		return Errorf("node-name is required for blockdev-add in this daemon")
	}
	if err := checkNodeName(o.NodeName); err != nil {
		return err
	}
	return d.addNode(o, nil)
}

// addNode opens the node o describes, named o.NodeName (checked);
// outer lists the nodes whose inline "backing" objects o is nested in,
// outermost first.
func (d *Daemon) addNode(o *AddOptions, outer []string) (err error) {
	if o.Driver == "" {
		return Errorf("Parameter 'driver' is missing")
	}
	if d.nodes[o.NodeName] != nil || d.h.Graph().NodeByName(o.NodeName) != nil || slices.Contains(outer, o.NodeName) {
		return Errorf("Duplicate nodes with node-name='%s'", o.NodeName)
	}
	var backing *blockdev // "backing": a node's name or inline options
	if o.Backing != nil && o.Backing.Opts != nil {
		if o.Driver != "qcow2" {
			return Errorf("Parameter 'backing' is unexpected")
		}
		if d.needsTree(o) {
			return Errorf("A backing node for '%s' is not supported with a file given as an option tree (nbd, blkdebug, or an inline file with a node-name)", o.NodeName)
		}
		if backing, err = d.addImplicitBacking(o, outer); err != nil {
			return err
		}
		defer func() {
			if err != nil {
				d.dropImplicit(backing)
			}
		}()
	} else if o.Backing != nil && !o.Backing.Null {
		if o.Driver != "qcow2" {
			return Errorf("Parameter 'backing' is unexpected")
		}
		if backing = d.nodes[o.Backing.S]; backing == nil {
			return Errorf("Could not open backing file: Cannot find device='%s' nor node-name='%s'", o.Backing.S, o.Backing.S)
		}
		// A node may be the backing of several overlays (a base image
		// under many VMs' overlays), as in QEMU: only its other uses
		// (a file, an image under a filter) refuse it.
		if err := backing.top(); err != nil && backing.role != "backing" {
			return err
		}
		// An exported node may become a backing node, as in
		// qemu-storage-daemon: a VM's disk under a fleecing scratch
		// overlay (whose backup job then keeps the point in time).
		if typ := d.jobOn(backing); typ != "" {
			return Errorf("Node '%s' is busy: block device is in use by block job: %s", backing.name, typ)
		}
	}
	oo := host.OpenOptions{Name: o.NodeName, ReadOnly: o.ReadOnly, Cache: o.Cache.mode(),
		Discard: o.Discard, Locking: o.Locking, ForceShare: o.ForceShare, NoBacking: o.Backing != nil}
	switch oo.Discard {
	case "ignore", "off":
		oo.Discard = ""
	case "on":
		oo.Discard = "unmap"
	}
	var dz nbd.DetectZeroes
	switch o.DetectZeroes {
	case "", "off":
	case "on":
		dz = nbd.DetectZeroesOn
	case "unmap":
		if oo.Discard != "unmap" {
			return Errorf("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap")
		}
		dz = nbd.DetectZeroesUnmap
	default:
		return Errorf("Parameter 'detect-zeroes' does not accept value '%s'", o.DetectZeroes)
	}
	direct := o.Cache != nil && o.Cache.Direct
	if o.Driver == "file" || o.Driver == "host_device" {
		if err := o.FileOptions.check("", direct); err != nil {
			return err
		}
	}
	if f := o.File; f != nil && f.Ref == "" && (f.Driver == "file" || f.Driver == "host_device") {
		if f.Cache != nil {
			direct = f.Cache.Direct
		}
		if err := f.FileOptions.check("file.", direct); err != nil {
			return err
		}
	}
	if d.needsTree(o) {
		return d.blockdevAddTree(o, oo, dz, backing)
	}
	if m := o.TreeOptions.unexpected(o.Driver); m != "" {
		return Errorf("Parameter '%s' is unexpected", m)
	}
	if o.File != nil && o.File.Ref == "" {
		if m := o.File.TreeOptions.unexpected(o.File.Driver); m != "" {
			return Errorf("Parameter 'file.%s' is unexpected", m)
		}
	}
	var filename string
	var fileNode *blockdev
	switch o.Driver {
	case "file", "host_device":
		if o.Filename == "" {
			return Errorf("Parameter 'filename' is missing")
		}
		if o.File != nil {
			return Errorf("Parameter 'file' is unexpected")
		}
		filename, oo.Format = o.Filename, "raw"
	case "raw", "qcow2":
		if o.File == nil {
			return Errorf("Parameter 'file' is missing")
		}
		if o.Filename != "" {
			return Errorf("Parameter 'filename' is unexpected")
		}
		oo.Format = o.Driver
		if o.File.Ref != "" {
			fb := d.nodes[o.File.Ref]
			if fb == nil {
				return nodeNotFound(o.File.Ref)
			}
			if fb.driver != "file" && fb.driver != "host_device" {
				return Errorf("Node '%s' is not a protocol (file) node", fb.name)
			}
			if err := fb.top(); err != nil {
				return err
			}
			if d.exportOf(fb.name) != "" {
				return Errorf("Node '%s' is busy: exported as '%s'", fb.name, d.exportOf(fb.name))
			}
			if typ := d.jobOn(fb); typ != "" {
				// Its device is closed to be reopened under the new node.
				return Errorf("Node '%s' is busy: block device is in use by block job: %s", fb.name, typ)
			}
			fileNode, filename = fb, fb.filename
			oo.FileNodeName = fb.name // the graph's file node keeps the user's name
			if o.Cache == nil {
				oo.Cache = fb.opts.Cache
			}
			oo.ReadOnly = oo.ReadOnly || fb.opts.ReadOnly
		} else {
			if o.File.Driver != "file" && o.File.Driver != "host_device" {
				return Errorf("file: driver '%s' is not supported (file)", o.File.Driver)
			}
			if o.File.Filename == "" {
				return Errorf("Parameter 'file.filename' is missing")
			}
			filename = o.File.Filename
			if o.File.Cache != nil && o.Cache == nil {
				oo.Cache = o.File.Cache.mode()
			}
			if o.File.Locking != "" {
				oo.Locking = o.File.Locking
			}
			if err := fileBase(o, &oo); err != nil {
				return err
			}
		}
	case "null-co", "null-aio":
		if o.Size <= 0 {
			return Errorf("Parameter 'size' is missing")
		}
		oo.Format, oo.Size, filename = "null", o.Size, "null-co://"
	default:
		return Errorf("Invalid parameter '%s' (drivers: file, host_device, raw, qcow2, null-co, null-aio, nbd, blkdebug)", o.Driver)
	}
	oo.Callbacks = d.callbacks(o.NodeName)
	if fileNode != nil {
		// The file node's device gives way to the format node over it.
		if err := fileNode.dev.Close(); err != nil {
			return Errorf("Could not close '%s' to reopen it under '%s': %v", fileNode.name, o.NodeName, err)
		}
	}
	var dev *host.Device
	if backing != nil {
		dev, err = d.openOver(filename, nil, oo, backing)
	} else {
		dev, err = d.open(filename, oo)
	}
	if err != nil {
		if fileNode != nil {
			// Give the file node its device back.
			if nd, rerr := d.reopen(fileNode); rerr == nil {
				d.mu.Lock()
				fileNode.dev = nd
				d.mu.Unlock()
			} else {
				d.lost(fileNode.name, rerr)
				err = errors.Join(err, rerr)
			}
		}
		return openFailure(filename, err)
	}
	b := &blockdev{name: o.NodeName, driver: o.Driver, filename: filename, dev: dev, opts: oo,
		discardUnmap: oo.Discard == "unmap", detectZeroes: dz, fileOpts: o.FileOptions, qcow2Opts: o.Qcow2Options,
		locking: o.Locking, forceShare: o.ForceShare}
	d.mu.Lock()
	if fileNode != nil {
		fileNode.dev, fileNode.usedBy, fileNode.role = dev, b.name, "file"
		b.lower = append(b.lower, fileNode.name)
	}
	if backing != nil {
		// Shared by several overlays, it names the newest, as QEMU's op
		// blocker does; when that one goes, blockdevDel names another
		// (backingUser).
		backing.usedBy, backing.role, backing.byRef = b.name, "backing", true
		if o.Backing.Opts != nil {
			backing.owner = b.name
		}
	}
	d.nodes[b.name] = b
	d.mu.Unlock()
	return nil
}

// addImplicitBacking opens o's inline "backing" object as a node of its
// own (QEMU's implicit node), as blockdev-add opens one: named
// "#blockNNN" unless the object names it, read-only unless it says
// "read-only": false (QEMU's default for a backing child) or o is
// read-only, its own "backing" opened the same way. The caller attaches
// it and marks it owned. Errors are worded as QEMU's: a member by its
// place ("Parameter 'backing.file' is missing"), anything else after
// "Could not open backing file: ".
func (d *Daemon) addImplicitBacking(o *AddOptions, outer []string) (*blockdev, error) {
	bo := o.Backing.Opts
	if o.ReadOnly {
		bo.ReadOnly = true
	}
	wrap := func(err error) error {
		msg := err.Error()
		var qe *Error
		if errors.As(err, &qe) {
			msg = qe.Desc
		}
		if rest, ok := strings.CutPrefix(msg, "Parameter '"); ok {
			return Errorf("Parameter 'backing.%s", rest)
		}
		return Errorf("Could not open backing file: %s", msg)
	}
	if bo.NodeName == "" {
		d.anon++
		bo.NodeName = fmt.Sprintf("#block%03d", d.anon)
	} else if err := checkNodeName(bo.NodeName); err != nil {
		return nil, wrap(err)
	}
	if err := d.addNode(bo, append(slices.Clip(outer), o.NodeName)); err != nil {
		return nil, wrap(err)
	}
	return d.nodes[bo.NodeName], nil
}

// dropImplicit closes an implicit backing node and the implicit nodes
// under it, and forgets them (their owner is gone, or was never opened).
func (d *Daemon) dropImplicit(b *blockdev) {
	if b == nil {
		return
	}
	var under *blockdev
	d.mu.Lock()
	for _, x := range d.nodes {
		if x.owner == b.name {
			under = x
		}
	}
	delete(d.nodes, b.name)
	for _, l := range b.lower {
		if x := d.nodes[l]; x != nil && x.usedBy == b.name {
			delete(d.nodes, l)
		}
	}
	d.mu.Unlock()
	if err := b.dev.Close(); err != nil {
		d.lost(b.name, err)
	}
	d.dropImplicit(under)
}

// reapImplicit drops the implicit backing nodes that are nobody's
// backing any more (a stream or commit took them out of their owner's
// chain) and not their owner's top either (an active commit's pivot):
// QEMU frees such a node with its last reference. It runs at the
// start of the commands that add, delete or list nodes.
func (d *Daemon) reapImplicit() {
	for {
		var gone *blockdev
		for _, x := range d.nodes {
			if x.owner == "" {
				continue
			}
			// An active commit that pivoted made it its owner's top.
			o := d.nodes[x.owner]
			if o == nil || !x.isBacking() && (o.dev.Root() == nil || o.dev.Root() != x.dev.Root()) {
				gone = x
				break
			}
		}
		if gone == nil {
			return
		}
		d.mu.Lock()
		gone.owner = "" // dropImplicit closes what is under it
		d.mu.Unlock()
		d.dropImplicit(gone)
	}
}

// FileRef is a BlockdevRef: a node name or inline options.
type FileRef struct {
	Ref      string
	Driver   string     `json:"driver"`
	NodeName string     `json:"node-name"`
	Filename string     `json:"filename"`
	File     *FileRef   `json:"file"` // raw, qcow2 (in a tree)
	Cache    *CacheOpts `json:"cache"`
	Locking  string     `json:"locking"`
	// BlockdevOptionsBase's members, which every node takes (libvirt
	// sends read-only on the file of a read-only image).
	ReadOnly     *bool  `json:"read-only"`
	AutoReadOnly *bool  `json:"auto-read-only"`
	Discard      string `json:"discard"`
	DetectZeroes string `json:"detect-zeroes"`
	ForceShare   *bool  `json:"force-share"`
	TreeOptions
}

// UnmarshalJSON accepts a string (a node's name) or an object.
func (f *FileRef) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		return jsonUnmarshal(b, &f.Ref)
	}
	if len(b) == 0 || b[0] != '{' {
		return Errorf("Invalid parameter type for 'file', expected: BlockdevRef")
	}
	type plain FileRef
	var p plain
	if err := strictUnmarshal(b, &p); err != nil {
		var um *unexpectedMember
		if errors.As(err, &um) {
			return err // named with its place by typeError
		}
		return Errorf("Invalid parameter 'file': %v", err)
	}
	*f = FileRef(p)
	return nil
}

// BackingRef is QAPI's BlockdevRefOrNull: null, a node's name, or the
// inline options of a node to open (QEMU's implicit node).
type BackingRef struct {
	Null bool
	S    string
	Opts *AddOptions
}

// UnmarshalJSON accepts null, a string or an object.
func (r *BackingRef) UnmarshalJSON(b []byte) error {
	switch {
	case string(b) == "null":
		r.Null = true
		return nil
	case len(b) > 0 && b[0] == '"':
		return jsonUnmarshal(b, &r.S)
	case len(b) == 0 || b[0] != '{':
		return Errorf("Invalid parameter type for 'backing', expected: BlockdevRefOrNull")
	}
	// Decoded as blockdev-add's arguments are, each message naming the
	// member's place under "backing." (one more at each level).
	v, qe := addOptionsCmd.decodeAt("", b)
	if qe != nil {
		for _, p := range []string{"Parameter '", "Invalid parameter type for '"} {
			if rest, ok := strings.CutPrefix(qe.Desc, p); ok {
				return Errorf("%sbacking.%s", p, rest)
			}
		}
		return qe
	}
	o := *v.(*AddOptions)
	// A backing child is read-only unless its options say otherwise.
	var members map[string]json.RawMessage
	if json.Unmarshal(b, &members) == nil {
		if _, ok := members["read-only"]; !ok {
			o.ReadOnly = true
		}
	}
	r.Opts = &o
	return nil
}

// addOptionsCmd decodes an inline backing object as blockdev-add's
// arguments.
var addOptionsCmd = &command{name: "blockdev-add", argType: reflect.TypeOf(AddOptions{}), params: params(reflect.TypeOf(AddOptions{}), nil)}

// NullString is a StrOrNull.
type NullString struct {
	Null bool
	S    string
}

// UnmarshalJSON accepts null or a string.
func (n *NullString) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		n.Null = true
		return nil
	}
	return jsonUnmarshal(b, &n.S)
}

func (d *Daemon) exportOf(node string) string {
	for id, e := range d.exports {
		if e.node == node {
			return id
		}
	}
	return ""
}

func (d *Daemon) blockdevDel(name string) error {
	d.reapImplicit()
	b := d.nodes[name]
	if b == nil {
		return Errorf("Failed to find node with node-name='%s'", name)
	}
	if err := b.top(); err != nil {
		if b.role == "file" {
			// No op blocker in QEMU: its reference count refuses it.
			return Errorf("Block device %s is in use", name)
		}
		return err
	}
	if id := d.exportOf(name); id != "" {
		return Errorf("Node '%s' is busy: block device is in use by block export '%s'", name, id)
	}
	if typ := d.jobOn(b); typ != "" {
		return Errorf("Node '%s' is busy: block device is in use by block job: %s", name, typ)
	}
	root := b.dev.Root()
	err := b.dev.Close()
	// The nodes this one had as its backing by name that other overlays
	// still have: they stay in use, now by one of those.
	still := map[*blockdev]string{}
	for _, x := range d.nodes {
		if x.byRef && x.usedBy == name && x.owner != name {
			if p := d.backingUser(x); p != "" {
				still[x] = p
			}
		}
	}
	// Still open when another user holds the node (a commit that pivoted
	// moved the overlay's device onto it): its file is in use then.
	stillOpen := false
	if root != nil {
		d.h.Graph().Control(func() { stillOpen = !root.Closed() })
	}
	d.mu.Lock()
	// The nodes the user added and then named as this one's file or
	// image stay, as in QEMU (libvirt deletes its format node, then its
	// storage node): they get devices of their own again, unless the
	// node is still open under another user. Every other node under
	// this one goes with it.
	var revive []*blockdev
	for _, l := range b.lower {
		if x := d.nodes[l]; x != nil && (x.role == "file" || x.role == "image") && x.usedBy == name && !stillOpen {
			revive = append(revive, x)
		}
	}
	var drop func(n string)
	drop = func(n string) {
		x := d.nodes[n]
		if x == nil {
			return
		}
		for _, r := range revive {
			if r == x {
				return
			}
		}
		delete(d.nodes, n)
		for _, l := range x.lower {
			drop(l)
		}
	}
	drop(name)
	for _, x := range revive {
		x.usedBy, x.role = "", ""
	}
	// A node blockdev-add named as its backing is free again (it kept
	// its own device); one opened for its inline backing object goes
	// with it.
	var implicit *blockdev
	for _, x := range d.nodes {
		if p := still[x]; p != "" {
			x.usedBy = p
			continue
		}
		if x.byRef && x.usedBy == name {
			x.usedBy, x.role, x.byRef = "", "", false
			if x.owner == name {
				implicit = x
			}
		}
	}
	d.mu.Unlock()
	d.dropImplicit(implicit)
	var errs []error
	if err != nil {
		errs = append(errs, Errorf("Node '%s' closed with an error: %v", name, err))
	}
	for _, x := range revive {
		nd, rerr := d.reopen(x)
		if rerr != nil {
			d.lost(x.name, rerr)
			errs = append(errs, Errorf("Node '%s' could not be reopened on its own: %v", x.name, rerr))
			continue
		}
		d.setDev(x, nd)
	}
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// setDev makes dev the device of b and of every node under it.
func (d *Daemon) setDev(b *blockdev, dev *host.Device) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var set func(x *blockdev)
	set = func(x *blockdev) {
		x.dev = dev
		for _, l := range x.lower {
			if y := d.nodes[l]; y != nil {
				set(y)
			}
		}
	}
	set(b)
}

// jobOn returns the type of a job that has an edge to a node b's device
// would close (its root, a job's filter on top and every node under
// them), or "" if none does. Closing such a device under a running job
// pulls its source or target away (QEMU's op blocker refuses it).
func (d *Daemon) jobOn(b *blockdev) string {
	root := b.dev.Root()
	if root == nil {
		return ""
	}
	typ := ""
	seen := map[*block.Node]bool{}
	var walk func(n *block.Node)
	walk = func(n *block.Node) {
		if n == nil || seen[n] || typ != "" {
			return
		}
		seen[n] = true
		if typ = jobOfNode(n, nil); typ != "" {
			return
		}
		for _, c := range n.Children() {
			walk(c.Node())
		}
	}
	d.h.Graph().Control(func() { walk(root) })
	return typ
}

// jobOfNode returns the type of a job with an edge to n, or "" (main
// Context). Edges that except accepts are not counted.
func jobOfNode(n *block.Node, except func(j *job.Job, c *block.Child) bool) string {
	for _, p := range n.Parents() {
		if j, ok := p.Owner().(*job.Job); ok && p.Class().Kind() == block.JobParent && (except == nil || !except(j, p)) {
			return j.Type()
		}
	}
	return ""
}

// backupSource is the one use of a node that a new backup may share: the
// source of another backup (each inserts its copy-before-write filter
// above the last; backups of one disk to several targets overlap).
func backupSource(j *job.Job, c *block.Child) bool {
	return j.Type() == "backup" && c.Name() == "source"
}

// notWrittenByJob accepts the job edges to nodes the job only reads (a
// source, a stream's top that guests keep using): an export may share
// those.
func notWrittenByJob(_ *job.Job, c *block.Child) bool {
	return c.Name() != "target" && c.Name() != "base"
}

// checkNotExported refuses a job target that an NBD export serves.
func (d *Daemon) checkNotExported(n *block.Node) error {
	if id := d.exportOf(n.Name()); id != "" {
		return Errorf("Node '%s' is busy: exported as '%s'", n.Name(), id)
	}
	return nil
}

// checkNoJob refuses a new block job on nodes another job already uses,
// as QEMU's op blockers do: two jobs writing one target, or a job
// copying from a node another job writes, interleave their writes (a
// mirror's target, a stream's top, a commit's base). except (nil: none)
// names the uses a node may keep.
func (d *Daemon) checkNoJob(except func(*job.Job, *block.Child) bool, nodes ...*block.Node) error {
	var err error
	d.h.Graph().Control(func() {
		for _, n := range nodes {
			if n == nil {
				continue
			}
			if typ := jobOfNode(n, except); typ != "" {
				err = Errorf("Node '%s' is busy: block device is in use by block job: %s", n.Name(), typ)
				return
			}
		}
	})
	return err
}

// lost drops a node whose device could not be reopened (after it was
// closed to be reopened in another shape) and every node under it, and
// says so with an event: the image files are as they were, only this
// daemon no longer has them open.
func (d *Daemon) lost(name string, why error) {
	d.mu.Lock()
	var drop func(n string)
	drop = func(n string) {
		x := d.nodes[n]
		if x == nil {
			return
		}
		delete(d.nodes, n)
		for _, l := range x.lower {
			drop(l)
		}
	}
	drop(name)
	d.mu.Unlock()
	d.emit("BLOCK_NODE_LOST", map[string]any{"node-name": name, "reason": fmt.Sprint(why)})
}

func (d *Daemon) callbacks(name string) contract.DeviceCallbacks {
	return contract.DeviceCallbacks{
		Stopped: func(op contract.Op, err error) {
			action := "stop"
			d.emit("BLOCK_IO_ERROR", map[string]any{"device": "", "node-name": name,
				"operation": opName(op), "action": action, "nospace": errors.Is(err, unix.ENOSPC),
				"reason": err.Error()})
		},
	}
}

func opName(op contract.Op) string {
	if op == contract.OpRead {
		return "read"
	}
	return "write"
}

// ---- NBD ----

// SocketAddress is QAPI's SocketAddress (unix and inet).
type SocketAddress struct {
	Type string `json:"type"`
	Path string `json:"path"`
	Host string `json:"host"`
	Port string `json:"port"`
}

// UnmarshalJSON accepts QMP's SocketAddressLegacy, {"type": "unix",
// "data": {"path": …}}, which QEMU's nbd-server-start takes (and libvirt
// sends), as well as the flat SocketAddress of the command line
// (--nbd-server addr.type=unix,addr.path=…).
func (a *SocketAddress) UnmarshalJSON(b []byte) error {
	type flat SocketAddress // the same members, without this method
	var members map[string]json.RawMessage
	if err := json.Unmarshal(b, &members); err != nil || members == nil {
		return Errorf("Invalid parameter type for 'addr', expected: object")
	}
	data, legacy := members["data"]
	if !legacy {
		return strictUnmarshal(b, (*flat)(a))
	}
	for k := range members {
		if k != "type" && k != "data" {
			return Errorf("Parameter 'addr.%s' is unexpected", k)
		}
	}
	var typ string
	if err := json.Unmarshal(members["type"], &typ); err != nil {
		return Errorf("Invalid parameter type for 'addr.type', expected: string")
	}
	var in struct {
		Path string `json:"path"`
		Host string `json:"host"`
		Port string `json:"port"`
	}
	if err := strictUnmarshal(data, &in); err != nil {
		return Errorf("Invalid parameter 'addr.data': %v", strings.TrimPrefix(err.Error(), "json: "))
	}
	*a = SocketAddress{Type: typ, Path: in.Path, Host: in.Host, Port: in.Port}
	return nil
}

func (a SocketAddress) listen() (net.Listener, error) {
	switch a.Type {
	case "unix":
		if a.Path == "" {
			return nil, Errorf("Parameter 'path' is missing")
		}
		_ = os.Remove(a.Path)
		return net.Listen("unix", a.Path)
	case "inet":
		if a.Host == "" || a.Port == "" {
			return nil, Errorf("inet address needs host and port")
		}
		return net.Listen("tcp", net.JoinHostPort(a.Host, a.Port))
	}
	return nil, Errorf("Invalid parameter 'type': socket address type '%s' (unix, inet)", a.Type)
}

// NBDServerStart starts the NBD server (nbd-server-start).
func (d *Daemon) NBDServerStart(addr SocketAddress) error {
	if d.nbdSrv != nil {
		return Errorf("NBD server already running")
	}
	l, err := addr.listen()
	if err != nil {
		return Errorf("Failed to bind socket: %v", err)
	}
	s := nbd.NewServer()
	done := make(chan struct{})
	d.mu.Lock()
	d.nbdSrv, d.nbdLis, d.nbdDone = s, l, done
	d.mu.Unlock()
	go func() {
		defer close(done)
		_ = s.Serve(l)
	}()
	return nil
}

func (d *Daemon) nbdServerStop() error {
	if d.nbdSrv == nil {
		return Errorf("NBD server not running")
	}
	d.mu.Lock()
	exps := d.exports
	d.exports = map[string]*export{}
	d.mu.Unlock()
	// Only the exports and the server end: the block jobs go on (they
	// hold nodes, not exports; Close cancels them because it closes the
	// devices).
	var errs []error
	for _, id := range sortedKeys(exps) {
		errs = append(errs, exps[id].exp.Close())
		// Every export that ends says so, as after block-export-del
		// (QEMU closes them all the same way).
		d.emit("BLOCK_EXPORT_DELETED", map[string]any{"id": id})
	}
	d.nbdLis.Close()
	d.nbdSrv.Close()
	<-d.nbdDone
	d.mu.Lock()
	d.nbdSrv, d.nbdLis = nil, nil
	d.mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		return Errorf("%v", err)
	}
	return nil
}

// ExportAdd adds an NBD export of node (block-export-add, type nbd),
// offering the named dirty bitmaps.
func (d *Daemon) ExportAdd(id, node, name string, writable bool, bitmaps ...string) error {
	if id == "" {
		return Errorf("Parameter 'id' is missing")
	}
	if d.exports[id] != nil {
		return Errorf("Block export id '%s' is already in use", id)
	}
	b, qerr := d.lookup("", node)
	if qerr != nil {
		return qerr
	}
	if name == "" {
		name = node
	}
	root := b.dev.Root()
	if root == nil {
		return nodeNotFound(node)
	}
	if err := d.exportPerm(b, root, writable); err != nil {
		return err
	}
	// A node a job writes (a mirror's or backup's target, a commit's
	// base) is no export's: clients would read a half-copied image, and
	// their writes would be lost to or mixed with the job's (QEMU's
	// permissions refuse it).
	except := notWrittenByJob
	if !writable {
		// A sync=none backup's target is there to be read while the
		// job runs (image fleecing, libvirt's pull-mode backup).
		except = func(j *job.Job, c *block.Child) bool {
			if b, ok := j.Driver().(*job.Backup); ok && b.Fleecing() && c.Name() == "target" {
				return true
			}
			return notWrittenByJob(j, c)
		}
	}
	if err := d.checkNoJob(except, root); err != nil {
		return err
	}
	if writable && root.ReadOnly() {
		// As QEMU: the export would be offered writable, and every client
		// that opens it for writing would be refused.
		return Errorf("Cannot export read-only node as writable")
	}
	// After the node's checks, as QEMU attaches the export to its node
	// before the NBD driver looks for its server.
	if d.nbdSrv == nil {
		return Errorf("NBD server not running")
	}
	for _, e := range d.exports {
		if e.name == name {
			return Errorf("NBD server already has export named '%s'", name)
		}
	}
	exp, err := nbd.NewExport(d.h.Graph(), root, nbd.ExportOptions{Name: name, ReadOnly: !writable, Context: root.Context(), Bitmaps: bitmaps,
		IgnoreDiscard: !b.discardUnmap, DetectZeroes: b.detectZeroes})
	var be *nbd.BitmapError
	if errors.As(err, &be) {
		return Errorf("%s", be.Msg) // QEMU's sentence alone
	}
	if err != nil {
		return Errorf("%v", err)
	}
	if err := d.nbdSrv.AddExport(exp); err != nil {
		return errors.Join(Errorf("%v", err), exp.Close())
	}
	d.mu.Lock()
	d.exportSeq++
	d.exports[id] = &export{id: id, node: node, name: name, writable: writable, exp: exp, seq: d.exportSeq}
	d.mu.Unlock()
	return nil
}

// permConflict is QEMU's message when a new user of node needs a
// permission (perm: "write", "resize") that an existing one does not
// share, or the reverse. Each user is worded as QEMU names a parent ("an
// unnamed block device" for an export, "node 'X'", "stream job 'J'") with
// the role of its edge to node ("root", "file", "intermediate node").
func permConflict(node, perm, needs, needsRole, unshares, unsharesRole string) *Error {
	return Errorf("Permission conflict on node '%s': permissions '%s' are both required by %s (uses node '%s' as '%s' child) and unshared by %s (uses node '%s' as '%s' child).",
		node, perm, needs, node, needsRole, unshares, node, unsharesRole)
}

// exportBlk is how QEMU names an export among a node's users.
const exportBlk = "an unnamed block device"

// exportPerm checks an NBD export of b (its node root) against b's other
// users, as QEMU's permissions do:
//
//   - an overlay's backing node may be exported, read-only or writable
//     (the overlay's backing edge shares write and resize), unless a
//     stream job copies from it and the export would write;
//   - a format node's file node may not be exported writable (the format
//     node unshares write), nor at all while the format node is writable
//     (an NBD export unshares resize, which a writable format node needs
//     to grow its file);
//   - other uses (a blkdebug image) keep the op blocker's refusal.
func (d *Daemon) exportPerm(b *blockdev, root *block.Node, writable bool) *Error {
	busy := b.top()
	if busy != nil {
		switch b.role {
		case "backing":
			busy = nil
		case "file":
			if writable {
				return permConflict(b.name, "write", exportBlk, "root", fmt.Sprintf("node '%s'", b.usedBy), "file")
			}
			if p := d.nodes[b.usedBy]; p != nil {
				if pn := p.dev.Root(); pn != nil && !pn.ReadOnly() {
					return permConflict(b.name, "resize", fmt.Sprintf("node '%s'", b.usedBy), "file", exportBlk, "root")
				}
			}
			busy = nil
		}
	}
	if busy != nil {
		return busy
	}
	if !writable {
		return nil
	}
	var conflict *Error
	d.h.Graph().Control(func() {
		for _, p := range root.Parents() {
			j, ok := p.Owner().(*job.Job)
			if ok && p.Class().Kind() == block.JobParent && j.Type() == "stream" && strings.HasPrefix(p.Name(), "layer") {
				conflict = permConflict(b.name, "write", exportBlk, "root", fmt.Sprintf("stream job '%s'", j.ID()), "intermediate node")
				return
			}
		}
	})
	return conflict
}

// writableExport returns the id of a writable export of n ("" if none).
func (d *Daemon) writableExport(n *block.Node) string {
	for id, e := range d.exports {
		if e.writable && e.node == n.Name() {
			return id
		}
	}
	return ""
}

// exportDel ends export id. In mode safe (the default) an export with
// connected clients is refused, as QEMU does: closing it would cut a
// client (a guest's disk) off mid-use; mode hard disconnects them.
func (d *Daemon) exportDel(id, mode string) error {
	e := d.exports[id]
	if e == nil {
		return Errorf("Export '%s' is not found", id)
	}
	switch mode {
	case "", "safe":
		if e.exp.Connections() > 0 {
			return Errorf("export '%s' still in use", id)
		}
	case "hard":
	default:
		return Errorf("Parameter 'mode' does not accept value '%s'", mode)
	}
	d.mu.Lock()
	delete(d.exports, id)
	d.mu.Unlock()
	if d.nbdSrv != nil {
		d.nbdSrv.RemoveExport(e.exp)
	}
	if err := e.exp.Close(); err != nil {
		return Errorf("%v", err)
	}
	d.emit("BLOCK_EXPORT_DELETED", map[string]any{"id": id})
	return nil
}

// open opens a node's device. Its front end lets jobs and other users
// move the node to another Context (a mirror moves its target to the
// source's IOThread): in the daemon a device is a node's handle, not a
// guest's disk pinned to a thread.
// openOver opens a qcow2 image (by path, or from option tree spec when
// not nil) with backing's node as its backing node (blockdev-add's
// "backing": a node name). The overlay opens on the backing node's
// Context, as a node and its children share one.
func (d *Daemon) openOver(path string, spec chain.Spec, o host.OpenOptions, backing *blockdev) (*host.Device, error) {
	bn := backing.dev.Root()
	if bn == nil {
		return nil, fmt.Errorf("node '%s' has no image", backing.name)
	}
	var dev *host.Device
	var err error
	if spec != nil {
		dev, err = d.h.OpenDeviceSpecOver(spec, o, bn)
	} else {
		dev, err = d.h.OpenDeviceOver(path, o, bn)
	}
	if err != nil {
		return nil, err
	}
	dev.FrontEnd().AllowContextChange(true)
	return dev, nil
}

func (d *Daemon) open(path string, o host.OpenOptions) (*host.Device, error) {
	dev, err := d.h.OpenDevice(path, o)
	if err != nil {
		return nil, err
	}
	dev.FrontEnd().AllowContextChange(true)
	return dev, nil
}
