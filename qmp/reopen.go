package qmp

import (
	"maps"
	"slices"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/nbd"
)

// blockdev-reopen (QEMU 6.1+): each member of options describes a node as
// blockdev-add does; what differs from the node as it is changes. ringblk
// changes read-only only (absent, as in QEMU, means false); any other
// option that differs from the node's, an absent one read as its default,
// is refused ("Cannot change the option 'X'"). A
// format node made read-write needs its file node writable too: a file
// node the user added read-only must be reopened read-write in the same
// command (QEMU's rule, "Block node is read-only"). Every member is
// checked before anything changes; a reopen that fails half-way puts back
// the ones it changed.

type reopenArgs struct {
	Options []AddOptions `json:"options"`
}

type reopenStep struct {
	b    *blockdev
	node *block.Node // what SetReadOnly applies to; nil: a file node its format node's step covers
	ro   bool
}

func (d *Daemon) blockdevReopen(a *reopenArgs) error {
	byName := map[string]*AddOptions{}
	for i := range a.Options {
		o := &a.Options[i]
		if o.Driver == "" {
			return Errorf("Parameter 'options[%d].driver' is missing", i)
		}
		if o.NodeName == "" {
			return Errorf("Parameter 'options[%d].node-name' is missing", i)
		}
		byName[o.NodeName] = o
	}
	var steps []reopenStep
	for i := range a.Options {
		o := &a.Options[i]
		b := d.nodes[o.NodeName]
		if b == nil {
			// A file given inline with a node-name: nothing of it can
			// change here, and it follows its format node's read-only.
			if err := d.reopenInlineFile(o, byName); err != nil {
				return err
			}
			continue
		}
		if o.Driver != b.driver {
			return Errorf("Cannot change the option 'driver'")
		}
		st := reopenStep{b: b, ro: o.ReadOnly}
		if o.ReadOnly && !b.opts.ReadOnly {
			// Its writers would fail from now on: QEMU's permission
			// system refuses the reopen instead.
			if id := d.exportOf(b.name); id != "" {
				return Errorf("Node '%s' is busy: block device is in use by block export '%s'", b.name, id)
			}
			if typ := d.jobOn(b); typ != "" {
				return Errorf("Node '%s' is busy: block device is in use by block job: %s", b.name, typ)
			}
		}
		switch {
		case b.role == "file" && b.usedBy != "":
			// A file node under a format node: the format node's step
			// covers it when it is listed too; alone, its graph node.
			if _, ok := byName[b.usedBy]; !ok {
				st.node = d.fileGraphNode(d.nodes[b.usedBy])
				if st.node == nil {
					return Errorf("Cannot reopen '%s' on its own", b.name)
				}
				if o.ReadOnly && !d.nodes[b.usedBy].opts.ReadOnly {
					return Errorf("Block node '%s' is used for writing by '%s'", b.name, b.usedBy)
				}
			}
		default:
			st.node = b.dev.Root()
			if !o.ReadOnly {
				for _, l := range b.lower {
					f := d.nodes[l]
					if f == nil || f.role != "file" || !f.opts.ReadOnly {
						continue
					}
					if fo, ok := byName[f.name]; !ok || fo.ReadOnly {
						return Errorf("Block node is read-only")
					}
				}
			}
		}
		// QEMU checks the read-only change before the driver's options.
		if err := d.reopenUnchanged(b, o); err != nil {
			return err
		}
		steps = append(steps, st)
	}
	var done []reopenStep
	for _, st := range steps {
		if st.node != nil && st.node.ReadOnly() != st.ro {
			if err := st.node.SetReadOnly(st.ro); err != nil {
				for k := len(done) - 1; k >= 0; k-- {
					_ = done[k].node.SetReadOnly(!done[k].ro)
				}
				return Errorf("%v", reopenErr(err))
			}
			done = append(done, st)
		}
	}
	d.mu.Lock()
	for _, st := range steps {
		st.b.opts.ReadOnly = st.ro
	}
	d.mu.Unlock()
	return nil
}

// reopenInlineFile checks a reopen of a file node that a format node's
// blockdev-add named inline ("file": {"node-name": …}): only the options
// it was opened with are taken, and read-only only as its format node
// has it (or gets it in the same reopen).
func (d *Daemon) reopenInlineFile(o *AddOptions, byName map[string]*AddOptions) error {
	var owner *blockdev
	for _, x := range d.nodes {
		if x.spec != nil && x.spec["file.node-name"] == o.NodeName {
			owner = x
		}
	}
	if owner == nil {
		return Errorf("Failed to find node with node-name='%s'", o.NodeName)
	}
	sp := owner.spec
	if o.Driver != sp["file.driver"] {
		return Errorf("Cannot change the option 'driver'")
	}
	if o.Filename != "" && o.Filename != sp["file.filename"] {
		return Errorf("Cannot change the option 'filename'")
	}
	if err := sameOption("locking", o.Locking, sp["file.locking"], lockingMode); err != nil {
		return err
	}
	if err := sameOption("aio", o.AIO, sp["file.aio"], aioMode); err != nil {
		return err
	}
	switch {
	case o.ForceShare:
		return Errorf("Cannot change the option 'force-share'")
	case o.DetectZeroes != "" && o.DetectZeroes != "off":
		return Errorf("Cannot change the option 'detect-zeroes'")
	case o.File != nil || o.Backing != nil || o.Qcow2Options.set():
		return Errorf("Parameter 'file' is unexpected")
	}
	if o.ReadOnly && !owner.opts.ReadOnly {
		if fo, ok := byName[owner.name]; !ok || !fo.ReadOnly {
			return Errorf("Block node '%s' is used for writing by '%s'", o.NodeName, owner.name)
		}
	}
	return nil // read-write with its format node: that node's step reopens it
}

// reopenUnchanged refuses a member that would change what ringblk cannot
// change on an open node: everything but read-only (and auto-read-only,
// which acts at open only). QEMU also changes detect-zeroes, discard and
// the qcow2 cache and discard members on reopen; ringblk refuses them in
// QEMU's words for an option that cannot change, rather than take and
// ignore them.
func (d *Daemon) reopenUnchanged(b *blockdev, o *AddOptions) error {
	if o.Filename != "" && o.Filename != b.filename {
		return Errorf("Cannot change the option 'filename'")
	}
	if o.File != nil {
		name := o.File.Ref
		var cur string
		for _, l := range b.lower {
			if f := d.nodes[l]; f != nil && f.role == "file" {
				cur = f.name
			}
		}
		if cur == "" && b.spec != nil {
			cur = b.spec["file.node-name"] // an inline file named in the tree
		}
		if name == "" && o.File.Filename != b.filename || name != "" && name != cur {
			return Errorf("Cannot change the option 'file'")
		}
	}
	if o.Backing != nil {
		var cur string
		for _, x := range d.nodes {
			if x.byRef && x.usedBy == b.name {
				cur = x.name
			}
		}
		if o.Backing.Null && cur != "" || !o.Backing.Null && (o.Backing.Opts != nil || o.Backing.S != cur) {
			return Errorf("Cannot change the option 'backing'")
		}
	}
	if o.Cache != nil && o.Cache.mode() != b.opts.Cache && !(b.opts.Cache == "" && o.Cache.mode() == "writeback") {
		return Errorf("Cannot change the option 'cache'")
	}
	// QEMU's own fixed options, then those QEMU changes and ringblk
	// cannot on an open node: refused by name rather than taken and
	// ignored.
	if o.ForceShare != b.forceShare {
		return Errorf("Cannot change the option 'force-share'")
	}
	if err := sameOption("locking", o.Locking, b.locking, lockingMode); err != nil {
		return err
	}
	if err := sameOption("aio", o.AIO, b.fileOpts.AIO, aioMode); err != nil {
		return err
	}
	var dz nbd.DetectZeroes
	switch o.DetectZeroes {
	case "on":
		dz = nbd.DetectZeroesOn
	case "unmap":
		dz = nbd.DetectZeroesUnmap
	}
	if dz != b.detectZeroes {
		return Errorf("Cannot change the option 'detect-zeroes'")
	}
	if (o.Discard == "unmap" || o.Discard == "on") != b.discardUnmap {
		return Errorf("Cannot change the option 'discard'")
	}
	was, now := chain.Spec{}, chain.Spec{}
	if err := o.Qcow2Options.put(now, ""); err != nil {
		return err
	}
	_ = b.qcow2Opts.put(was, "")
	keys := slices.AppendSeq(slices.Collect(maps.Keys(was)), maps.Keys(now))
	slices.Sort(keys)
	for _, k := range keys {
		if was[k] != now[k] {
			return Errorf("Cannot change the option '%s'", k)
		}
	}
	return nil
}

// sameOption refuses a reopen that changes an option QEMU keeps fixed:
// left out when the node was opened with it, or given another value (mode
// reads an absent value as the default).
func sameOption(key, now, was string, mode func(string) string) *Error {
	switch {
	case now == "" && was != "":
		return Errorf("Option '%s' cannot be reset to its default value", key)
	case mode(now) != mode(was):
		return Errorf("Cannot change the option '%s'", key)
	}
	return nil
}

// lockingMode and aioMode read an absent value as QEMU's default.
func lockingMode(v string) string {
	if v == "" {
		return "auto"
	}
	return v
}

func aioMode(v string) string {
	if v == "" {
		return "threads"
	}
	return v
}

// fileGraphNode is the file node under format blockdev f's node.
func (d *Daemon) fileGraphNode(f *blockdev) *block.Node {
	if f == nil {
		return nil
	}
	root := f.dev.Root()
	if root == nil {
		return nil
	}
	var n *block.Node
	root.Graph().Control(func() {
		if c := root.Child(block.RoleFile); c != nil {
			n = c.Node()
		}
	})
	return n
}

// userReadOnly reports whether n is the node of a read-only blockdev
// that QEMU refuses to reopen read-write for a job ("Block node is
// read-only"): one whose protocol (file) node the user added read-only,
// or a protocol node so added. A read-only format node over a file node
// the user left writable or auto-read-only (libvirt's backing layers) is
// reopened, as is one the chain opened read-only from a header.
func (d *Daemon) userReadOnly(n *block.Node) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, b := range d.nodes {
		if b.dev == nil || b.dev.Root() != n || !b.opts.ReadOnly {
			continue
		}
		// An implicit node (an inline backing object) is read-only as
		// a backing child is, even when its options say so: QEMU lets a
		// job reopen it read-write, as its parent allows writes.
		if b.role == "" || b.byRef && b.owner == "" {
			if d.protocolReadOnly(b) {
				return true
			}
		}
	}
	return false
}

// protocolReadOnly reports whether read-only blockdev b cannot be made
// writable because of its protocol node: b is one, or its file node was
// added read-only (d.mu held).
func (d *Daemon) protocolReadOnly(b *blockdev) bool {
	if b.driver == "file" || b.driver == "host_device" {
		return true
	}
	for _, l := range b.lower {
		if f := d.nodes[l]; f != nil && f.role == "file" && f.opts.ReadOnly {
			return true
		}
	}
	// An inline file, or a tree: its read-only follows the format node's.
	return false
}
