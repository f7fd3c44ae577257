package qmp

// blockdev-add of the drivers the daemon opens from a block option tree
// (drivers/chain.OpenSpec): nbd (an NBD client node, QEMU's
// BlockdevOptionsNbd) and blkdebug (QEMU's BlockdevOptionsBlkdebug), and
// raw or qcow2 over either of them, inline or by node name.

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/host"
	"github.com/ringblk/ringblk/nbd"
)

// TreeOptions are the members of the nbd and blkdebug drivers, in
// blockdev-add's arguments and in an inline child (file, image).
type TreeOptions struct {
	// nbd
	Server         *SocketAddress `json:"server" qmp:"optional"`
	Export         string         `json:"export" qmp:"optional"`
	TLSCreds       string         `json:"tls-creds" qmp:"optional"`
	TLSHostname    string         `json:"tls-hostname" qmp:"optional"`
	XDirtyBitmap   string         `json:"x-dirty-bitmap" qmp:"optional"`
	ReconnectDelay *uint32        `json:"reconnect-delay" qmp:"optional"`
	OpenTimeout    *uint32        `json:"open-timeout" qmp:"optional"`
	// blkdebug
	Image        *FileRef           `json:"image" qmp:"optional"`
	Config       string             `json:"config" qmp:"optional"`
	Align        *int64             `json:"align" qmp:"optional"`
	MaxTransfer  *int32             `json:"max-transfer" qmp:"optional"`
	OptWriteZero *int32             `json:"opt-write-zero" qmp:"optional"`
	MaxWriteZero *int32             `json:"max-write-zero" qmp:"optional"`
	OptDiscard   *int32             `json:"opt-discard" qmp:"optional"`
	MaxDiscard   *int32             `json:"max-discard" qmp:"optional"`
	InjectError  []BlkdebugInject   `json:"inject-error" qmp:"optional"`
	SetState     []BlkdebugSetState `json:"set-state" qmp:"optional"`
	FileOptions
	Qcow2Options
}

// FileOptions are QAPI's BlockdevOptionsFile members besides filename and
// locking, which libvirt sends (aio=native with cache.direct, aio=io_uring).
// They are checked as QEMU checks them and change nothing: ringblk's file
// I/O is io_uring's, batched by its own rules, and it keeps no page-cache
// state to drop. pr-manager names an object ringblk cannot have.
type FileOptions struct {
	AIO                string `json:"aio" qmp:"optional"`
	AIOMaxBatch        *int64 `json:"aio-max-batch" qmp:"optional"`
	DropCache          *bool  `json:"drop-cache" qmp:"optional"`
	XCheckCacheDropped *bool  `json:"x-check-cache-dropped" qmp:"optional"`
	PRManager          string `json:"pr-manager" qmp:"optional"`
}

// Qcow2Options are QAPI's BlockdevOptionsQcow2 runtime members. A qcow2
// node that sets any opens from an option tree, where drivers/chain
// applies them as qemu-io --image-opts does (cache sizes, lazy refcounts,
// discard passing) and checks the rest in QEMU's words.
type Qcow2Options struct {
	LazyRefcounts       *bool  `json:"lazy-refcounts" qmp:"optional"`
	PassDiscardRequest  *bool  `json:"pass-discard-request" qmp:"optional"`
	PassDiscardSnapshot *bool  `json:"pass-discard-snapshot" qmp:"optional"`
	PassDiscardOther    *bool  `json:"pass-discard-other" qmp:"optional"`
	DiscardNoUnref      *bool  `json:"discard-no-unref" qmp:"optional"`
	OverlapCheck        any    `json:"overlap-check" qmp:"optional"` // an enum value or Qcow2OverlapCheckFlags
	CacheSize           *int64 `json:"cache-size" qmp:"optional"`
	L2CacheSize         *int64 `json:"l2-cache-size" qmp:"optional"`
	L2CacheEntrySize    *int64 `json:"l2-cache-entry-size" qmp:"optional"`
	RefcountCacheSize   *int64 `json:"refcount-cache-size" qmp:"optional"`
	CacheCleanInterval  *int64 `json:"cache-clean-interval" qmp:"optional"`
}

// set reports whether any member is given.
func (q *Qcow2Options) set() bool { return !reflect.ValueOf(q).Elem().IsZero() }

// put adds the given members to s under prefix, as option-tree keys.
func (q *Qcow2Options) put(s chain.Spec, prefix string) *Error {
	for _, b := range []struct {
		k string
		v *bool
	}{{"lazy-refcounts", q.LazyRefcounts}, {"pass-discard-request", q.PassDiscardRequest},
		{"pass-discard-snapshot", q.PassDiscardSnapshot}, {"pass-discard-other", q.PassDiscardOther},
		{"discard-no-unref", q.DiscardNoUnref}} {
		if b.v != nil {
			s[prefix+b.k] = onOff(*b.v)
		}
	}
	for _, n := range []struct {
		k string
		v *int64
	}{{"cache-size", q.CacheSize}, {"l2-cache-size", q.L2CacheSize}, {"l2-cache-entry-size", q.L2CacheEntrySize},
		{"refcount-cache-size", q.RefcountCacheSize}, {"cache-clean-interval", q.CacheCleanInterval}} {
		if n.v != nil {
			if *n.v < 0 {
				return Errorf("Parameter '%s%s' expects uint64", prefix, n.k)
			}
			s[prefix+n.k] = strconv.FormatInt(*n.v, 10)
		}
	}
	mode := func(key, v string) *Error {
		switch v {
		case "none", "constant", "cached", "all":
			s[prefix+key] = v
			return nil
		}
		return Errorf("Parameter '%s%s' does not accept value '%s'", prefix, key, v)
	}
	switch v := q.OverlapCheck.(type) {
	case nil:
	case string:
		return mode("overlap-check", v)
	case map[string]any:
		// Qcow2OverlapCheckFlags: a template and per-structure flags.
		for k, x := range v {
			if !overlapFlags[k] {
				return Errorf("Parameter '%soverlap-check.%s' is unexpected", prefix, k)
			}
			if v, ok := x.(string); ok && k != "template" {
				// A command line's keyval gives every value as a string.
				switch v {
				case "on", "yes", "true":
					x = true
				case "off", "no", "false":
					x = false
				}
			}
			switch x := x.(type) {
			case string:
				if k != "template" {
					return Errorf("Invalid parameter type for '%soverlap-check.%s', expected: boolean", prefix, k)
				}
				if err := mode("overlap-check.template", x); err != nil {
					return err
				}
			case bool:
				if k == "template" {
					return Errorf("Invalid parameter type for '%soverlap-check.template', expected: string", prefix)
				}
				s[prefix+"overlap-check."+k] = onOff(x)
			default:
				return Errorf("Invalid parameter type for '%soverlap-check.%s', expected: boolean", prefix, k)
			}
		}
	default:
		return Errorf("Invalid parameter type for '%soverlap-check', expected: Qcow2OverlapChecks", prefix)
	}
	return nil
}

// overlapFlags are Qcow2OverlapCheckFlags' members.
var overlapFlags = map[string]bool{"template": true, "main-header": true, "active-l1": true, "active-l2": true,
	"refcount-table": true, "refcount-block": true, "snapshot-table": true, "inactive-l1": true,
	"inactive-l2": true, "bitmap-directory": true}

// check applies QEMU's rules to the file members (direct is the node's
// cache.direct).
func (f *FileOptions) check(prefix string, direct bool) *Error {
	switch f.AIO {
	case "", "threads", "io_uring":
	case "native":
		if !direct {
			return Errorf("aio=native was specified, but it requires cache.direct=on, which was not specified.")
		}
	default:
		return Errorf("Parameter '%saio' does not accept value '%s'", prefix, f.AIO)
	}
	if f.PRManager != "" {
		return Errorf("No persistent reservation manager with id '%s'", f.PRManager)
	}
	return nil
}

// BlkdebugInject is QAPI's BlkdebugInjectErrorOptions.
type BlkdebugInject struct {
	Event       string `json:"event"`
	State       *int64 `json:"state" qmp:"optional"`
	IOType      string `json:"iotype" qmp:"optional"`
	Errno       *int64 `json:"errno" qmp:"optional"`
	Sector      *int64 `json:"sector" qmp:"optional"`
	Once        *bool  `json:"once" qmp:"optional"`
	Immediately *bool  `json:"immediately" qmp:"optional"`
}

// BlkdebugSetState is QAPI's BlkdebugSetStateOptions.
type BlkdebugSetState struct {
	Event    string `json:"event"`
	State    *int64 `json:"state" qmp:"optional"`
	NewState *int64 `json:"new_state"`
}

// nbdMembers are TreeOptions' members of driver nbd; the others are
// blkdebug's.
var nbdMembers = map[string]bool{"server": true, "export": true, "tls-creds": true, "tls-hostname": true,
	"x-dirty-bitmap": true, "reconnect-delay": true, "open-timeout": true}

// unexpected returns the first member t sets that driver does not take
// (QEMU's union refuses them: "Parameter 'x' is unexpected"), or "".
func (t *TreeOptions) unexpected(driver string) string {
	return unexpectedIn(reflect.ValueOf(t).Elem(), driver)
}

func unexpectedIn(v reflect.Value, driver string) string {
	for i := 0; i < v.NumField(); i++ {
		f := v.Type().Field(i)
		if f.Anonymous {
			if m := unexpectedIn(v.Field(i), driver); m != "" {
				return m
			}
			continue
		}
		if v.Field(i).IsZero() {
			continue
		}
		name := strings.Split(f.Tag.Get("json"), ",")[0]
		switch v.Type() {
		case reflect.TypeFor[FileOptions]():
			if driver == "file" || driver == "host_device" {
				continue
			}
		case reflect.TypeFor[Qcow2Options]():
			if driver == "qcow2" {
				continue
			}
		default:
			if driver == "nbd" && nbdMembers[name] || driver == "blkdebug" && !nbdMembers[name] {
				continue
			}
		}
		return name
	}
	return ""
}

// treeDriver reports whether driver opens from an option tree.
func treeDriver(driver string) bool { return driver == "nbd" || driver == "blkdebug" }

// needsTree reports whether blockdev-add o must open from an option
// tree: its driver does, or its file is (inline, or a node that was).
func (d *Daemon) needsTree(o *AddOptions) bool {
	if treeDriver(o.Driver) {
		return true
	}
	if o.Driver == "qcow2" && o.Qcow2Options.set() {
		return true
	}
	if (o.Driver == "raw" || o.Driver == "qcow2") && o.File != nil {
		if o.File.Ref != "" {
			fb := d.nodes[o.File.Ref]
			return fb != nil && fb.spec != nil
		}
		return treeDriver(o.File.Driver) || o.File.NodeName != "" || o.File.File != nil || o.File.Qcow2Options.set()
	}
	return false
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// putTree adds the options of one node to s under prefix ("", "file.",
// "image.", …). A child given by node name is taken from that node
// (refs collects it: its device is closed and the node reopened inside
// the new tree).
func (d *Daemon) putTree(s chain.Spec, prefix, driver, filename string, file *FileRef, t *TreeOptions, refs *[]*blockdev) error {
	if m := t.unexpected(driver); m != "" {
		return Errorf("Parameter '%s%s' is unexpected", prefix, m)
	}
	if filename != "" && driver != "file" && driver != "host_device" {
		return Errorf("Parameter '%sfilename' is unexpected", prefix)
	}
	if file != nil && driver != "raw" && driver != "qcow2" {
		return Errorf("Parameter '%sfile' is unexpected", prefix)
	}
	s[prefix+"driver"] = driver
	switch driver {
	case "file", "host_device":
		if filename == "" {
			return Errorf("Parameter '%sfilename' is missing", prefix)
		}
		s[prefix+"filename"] = filename
		return nil
	case "nbd":
		if t.Server == nil {
			return Errorf("Parameter '%sserver' is missing", prefix)
		}
		a := t.Server
		s[prefix+"server.type"] = a.Type
		switch a.Type {
		case "unix":
			if a.Path == "" {
				return Errorf("Parameter '%sserver.path' is missing", prefix)
			}
			s[prefix+"server.path"] = a.Path
		case "inet":
			if a.Host == "" {
				return Errorf("Parameter '%sserver.host' is missing", prefix)
			}
			if a.Port == "" {
				return Errorf("Parameter '%sserver.port' is missing", prefix)
			}
			s[prefix+"server.host"], s[prefix+"server.port"] = a.Host, a.Port
		}
		if t.Export != "" {
			s[prefix+"export"] = t.Export
		}
		if t.TLSCreds != "" {
			s[prefix+"tls-creds"] = t.TLSCreds
		}
		if t.XDirtyBitmap != "" {
			s[prefix+"x-dirty-bitmap"] = t.XDirtyBitmap
		}
		if t.ReconnectDelay != nil {
			s[prefix+"reconnect-delay"] = strconv.FormatUint(uint64(*t.ReconnectDelay), 10)
		}
		if t.OpenTimeout != nil {
			s[prefix+"open-timeout"] = strconv.FormatUint(uint64(*t.OpenTimeout), 10)
		}
		return nil
	case "blkdebug":
		if t.Config != "" {
			s[prefix+"config"] = t.Config
		}
		if t.Align != nil {
			s[prefix+"align"] = strconv.FormatInt(*t.Align, 10)
		}
		for _, l := range []struct {
			key string
			v   *int32
		}{{"max-transfer", t.MaxTransfer}, {"opt-write-zero", t.OptWriteZero}, {"max-write-zero", t.MaxWriteZero},
			{"opt-discard", t.OptDiscard}, {"max-discard", t.MaxDiscard}} {
			if l.v != nil {
				s[prefix+l.key] = strconv.FormatInt(int64(*l.v), 10)
			}
		}
		for i, r := range t.InjectError {
			p := prefix + "inject-error." + strconv.Itoa(i) + "."
			if r.Event == "" {
				return Errorf("Parameter '%sinject-error[%d].event' is missing", prefix, i)
			}
			if _, ok := block.DebugEventByName(r.Event); !ok {
				return Errorf("Parameter 'event' does not accept value '%s'", r.Event)
			}
			s[p+"event"] = r.Event
			if r.State != nil {
				s[p+"state"] = strconv.FormatInt(*r.State, 10)
			}
			switch r.IOType {
			case "", "read", "write", "write-zeroes", "discard", "flush", "block-status":
			default:
				return Errorf("Parameter 'iotype' does not accept value '%s'", r.IOType)
			}
			if r.IOType != "" {
				s[p+"iotype"] = r.IOType
			}
			if r.Errno != nil {
				s[p+"errno"] = strconv.FormatInt(*r.Errno, 10)
			}
			if r.Sector != nil {
				s[p+"sector"] = strconv.FormatInt(*r.Sector, 10)
			}
			if r.Once != nil {
				s[p+"once"] = onOff(*r.Once)
			}
			if r.Immediately != nil {
				s[p+"immediately"] = onOff(*r.Immediately)
			}
		}
		for i, r := range t.SetState {
			p := prefix + "set-state." + strconv.Itoa(i) + "."
			if r.Event == "" {
				return Errorf("Parameter '%sset-state[%d].event' is missing", prefix, i)
			}
			if r.NewState == nil {
				return Errorf("Parameter '%sset-state[%d].new_state' is missing", prefix, i)
			}
			if _, ok := block.DebugEventByName(r.Event); !ok {
				return Errorf("Parameter 'event' does not accept value '%s'", r.Event)
			}
			s[p+"event"] = r.Event
			if r.State != nil {
				s[p+"state"] = strconv.FormatInt(*r.State, 10)
			}
			s[p+"new_state"] = strconv.FormatInt(*r.NewState, 10)
		}
		if t.Image == nil {
			return Errorf("Parameter '%simage' is missing", prefix)
		}
		return d.putChild(s, prefix+"image.", t.Image, refs)
	case "raw", "qcow2":
		if file == nil {
			return Errorf("Parameter '%sfile' is missing", prefix)
		}
		if err := t.Qcow2Options.put(s, prefix); err != nil {
			return err
		}
		return d.putChild(s, prefix+"file.", file, refs)
	}
	return Errorf("Invalid parameter '%s' (drivers: file, host_device, raw, qcow2, null-co, null-aio, nbd, blkdebug)", driver)
}

// putChild adds a child (file, image) given inline or by node name.
func (d *Daemon) putChild(s chain.Spec, prefix string, f *FileRef, refs *[]*blockdev) error {
	if f.Ref == "" {
		if err := d.putTree(s, prefix, f.Driver, f.Filename, f.File, &f.TreeOptions, refs); err != nil {
			return err
		}
		if f.Locking != "" {
			s[prefix+"locking"] = f.Locking
		}
		if f.AIO != "" {
			s[prefix+"aio"] = f.AIO // checked by blockdevAdd; kept for blockdev-reopen
		}
		if f.Cache != nil {
			s[prefix+"cache.direct"] = onOff(f.Cache.Direct)
		}
		if f.NodeName == "" {
			// An anonymous node, named as QEMU names them.
			d.anon++
			s[prefix+"node-name"] = fmt.Sprintf("#block%03d", d.anon)
		} else {
			if err := checkNodeName(f.NodeName); err != nil {
				return err
			}
			if d.nodes[f.NodeName] != nil || d.h.Graph().NodeByName(f.NodeName) != nil {
				return Errorf("Duplicate nodes with node-name='%s'", f.NodeName)
			}
			s[prefix+"node-name"] = f.NodeName
		}
		return nil
	}
	fb := d.nodes[f.Ref]
	if fb == nil {
		return nodeNotFound(f.Ref)
	}
	switch fb.driver {
	case "file", "host_device", "nbd", "blkdebug":
	default:
		return Errorf("Node '%s' is not a protocol node (file, host_device, nbd, blkdebug)", fb.name)
	}
	if err := fb.top(); err != nil {
		return err
	}
	if id := d.exportOf(fb.name); id != "" {
		return Errorf("Node '%s' is busy: exported as '%s'", fb.name, id)
	}
	if typ := d.jobOn(fb); typ != "" {
		return Errorf("Node '%s' is busy: block device is in use by block job: %s", fb.name, typ)
	}
	for _, r := range *refs {
		if r == fb {
			return Errorf("Node '%s' is named twice in one tree", fb.name)
		}
	}
	*refs = append(*refs, fb)
	sub := fb.spec
	if sub == nil {
		sub = chain.Spec{"driver": fb.driver, "filename": fb.filename}
		if fb.opts.Locking != "" {
			sub["locking"] = fb.opts.Locking
		}
	}
	for k, v := range sub {
		s[prefix+k] = v
	}
	s[prefix+"node-name"] = fb.name
	return nil
}

// blockdevAddTree is blockdev-add of a node that opens from an option
// tree; oo and dz are the generic options blockdevAdd has checked, and
// backing the node "backing" named (nil: none, or the header's).
func (d *Daemon) blockdevAddTree(o *AddOptions, oo host.OpenOptions, dz nbd.DetectZeroes, backing *blockdev) error {
	s := chain.Spec{}
	var refs []*blockdev
	if err := d.putTree(s, "", o.Driver, o.Filename, o.File, &o.TreeOptions, &refs); err != nil {
		return err
	}
	if o.AutoReadOnly {
		s["auto-read-only"] = "on"
	}
	if o.Driver == "raw" || o.Driver == "qcow2" {
		oo.Format = o.Driver
	}
	for _, fb := range refs {
		if o.Cache == nil && fb.opts.Cache != "" {
			oo.Cache = fb.opts.Cache
		}
		oo.ReadOnly = oo.ReadOnly || fb.opts.ReadOnly
	}
	// The nodes named as children give way to the new tree, which
	// reopens them under their names.
	var closed []*blockdev
	for _, fb := range refs {
		if err := fb.dev.Close(); err != nil {
			d.reopenAll(closed)
			return Errorf("Could not close '%s' to reopen it under '%s': %v", fb.name, o.NodeName, err)
		}
		closed = append(closed, fb)
	}
	oo.Callbacks = d.callbacks(o.NodeName)
	var dev *host.Device
	var err error
	if backing != nil {
		dev, err = d.openOver("", s, oo, backing)
	} else {
		dev, err = d.openSpec(s, oo)
	}
	if err != nil {
		if rerr := d.reopenAll(closed); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return Errorf("%v", err)
	}
	b := &blockdev{name: o.NodeName, driver: o.Driver, filename: dev.Path(), dev: dev, opts: oo, spec: s,
		discardUnmap: oo.Discard == "unmap", detectZeroes: dz, fileOpts: o.FileOptions, qcow2Opts: o.Qcow2Options,
		locking: o.Locking, forceShare: o.ForceShare}
	d.mu.Lock()
	for _, fb := range refs {
		role := "file"
		if o.Driver == "blkdebug" {
			role = "image"
		}
		fb.usedBy, fb.role = b.name, role
		b.lower = append(b.lower, fb.name)
	}
	if backing != nil {
		// As addNode's: the newest overlay is the one named.
		backing.usedBy, backing.role, backing.byRef = b.name, "backing", true
	}
	d.nodes[b.name] = b
	d.mu.Unlock()
	d.setDev(b, dev)
	return nil
}

// openSpec opens a device from an option tree (see open).
func (d *Daemon) openSpec(s chain.Spec, o host.OpenOptions) (*host.Device, error) {
	dev, err := d.h.OpenDeviceSpec(s, o)
	if err != nil {
		return nil, err
	}
	dev.FrontEnd().AllowContextChange(true)
	return dev, nil
}

// reopen opens b's device again, as it was opened.
func (d *Daemon) reopen(b *blockdev) (*host.Device, error) {
	if b.spec != nil {
		return d.openSpec(b.spec, b.opts)
	}
	return d.open(b.filename, b.opts)
}

// reopenAll gives nodes whose devices were closed for a new tree that
// then failed their devices back; a node that cannot be reopened is lost
// (BLOCK_NODE_LOST).
func (d *Daemon) reopenAll(nodes []*blockdev) error {
	var errs []error
	for _, fb := range nodes {
		nd, err := d.reopen(fb)
		if err != nil {
			d.lost(fb.name, err)
			errs = append(errs, err)
			continue
		}
		d.setDev(fb, nd)
	}
	return errors.Join(errs...)
}
