package qmp

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ringblk/ringblk/host"
	"github.com/ringblk/ringblk/job"
	"github.com/ringblk/ringblk/txn"
)

// TransactionAction is one member of transaction's "actions" list.
type TransactionAction struct {
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
	// args, when set, are Data already decoded and checked (a command
	// that runs as a one-action transaction): a JSON round trip would
	// turn an absent optional member into null.
	args any
}

// TransactionArgs is the transaction command's argument.
type TransactionArgs struct {
	Actions    []TransactionAction `json:"actions"`
	Properties *struct {
		CompletionMode string `json:"completion-mode"`
	} `json:"properties" qmp:"optional"`
}

// SnapshotSyncArgs is blockdev-snapshot-sync's argument.
type SnapshotSyncArgs struct {
	Device           string `json:"device" qmp:"optional"`
	NodeName         string `json:"node-name" qmp:"optional"`
	SnapshotFile     string `json:"snapshot-file"`
	SnapshotNodeName string `json:"snapshot-node-name" qmp:"optional"`
	Format           string `json:"format" qmp:"optional"`
	Mode             string `json:"mode" qmp:"optional"`
}

// SnapshotArgs is blockdev-snapshot's argument.
type SnapshotArgs struct {
	Node    string `json:"node"`
	Overlay string `json:"overlay"`
}

// InternalSnapshotArgs is blockdev-snapshot-internal-sync's argument.
type InternalSnapshotArgs struct {
	Device string `json:"device"`
	Name   string `json:"name"`
}

// txnState is what the actions of one transaction share: the nodes
// already claimed, so two actions never stage changes of one node.
type txnState struct {
	claimed map[string]int
	group   *job.Txn // completion-mode grouped: the jobs complete together; nil: individual
}

func (s *txnState) claim(node string, action int) error {
	if prev, ok := s.claimed[node]; ok {
		return Errorf("Node '%s' is used by transaction actions %d and %d; one action per node", node, prev, action)
	}
	s.claimed[node] = action
	return nil
}

// makeAction turns a transaction member into an Action (the job and
// bitmap actions are jobs.go's jobAction).
func (d *Daemon) makeAction(st *txnState, i int, a TransactionAction) (txn.Action, error) {
	act, err := d.makeAction1(st, i, a)
	if err == nil && st.group != nil && !groupable[a.Type] {
		// QEMU refuses it in the action's prepare: after the actions
		// before it, and before the ones after it.
		return refusedAction{Errorf("Action '%s' does not support Transaction property completion-mode = grouped", a.Type)}, nil
	}
	return act, err
}

// groupable are the actions that may join a grouped transaction: the
// backups (QEMU's drive-backup and blockdev-backup) and abort.
var groupable = map[string]bool{"blockdev-backup": true, "drive-backup": true, "abort": true}

// refusedAction fails in prepare.
type refusedAction struct{ err error }

func (r refusedAction) Prepare() error { return r.err }
func (refusedAction) Commit() error    { return nil }
func (refusedAction) Abort()           {}
func (refusedAction) Clean()           {}

func (d *Daemon) makeAction1(st *txnState, i int, a TransactionAction) (txn.Action, error) {
	switch a.Type {
	case "blockdev-snapshot-sync":
		args, err := decodeAs[SnapshotSyncArgs](i, a)
		if err != nil {
			return nil, err
		}
		return &snapshotSync{d: d, st: st, i: i, a: *args}, nil
	case "blockdev-snapshot":
		args, err := decodeAs[SnapshotArgs](i, a)
		if err != nil {
			return nil, err
		}
		return &snapshotExisting{d: d, st: st, i: i, a: *args}, nil
	case "blockdev-snapshot-internal-sync":
		args, err := decodeAs[InternalSnapshotArgs](i, a)
		if err != nil {
			return nil, err
		}
		return &internalSnapshot{d: d, st: st, i: i, a: *args}, nil
	case "abort":
		if len(a.Data) > 0 && string(a.Data) != "{}" {
			var m map[string]json.RawMessage
			if json.Unmarshal(a.Data, &m) != nil || len(m) > 0 {
				return nil, Errorf("Parameter 'data' of action 'abort' must be empty")
			}
		}
		return abortAction{}, nil
	}
	if act, ok, err := d.jobAction(st, i, a); ok {
		return act, err
	}
	return nil, Errorf("Invalid parameter 'type': transaction action '%s' does not exist", a.Type)
}

// decodeAs decodes an action's data with the command argument rules.
func decodeAs[T any](i int, a TransactionAction) (*T, error) {
	if v, ok := a.args.(*T); ok {
		return v, nil
	}
	reg := NewRegistry()
	reg.Register(a.Type, new(T), nil)
	data := a.Data
	if len(data) == 0 {
		data = json.RawMessage("{}")
	}
	out, qerr := reg.lookup(a.Type).decodeAt(fmt.Sprintf("actions[%d].data.", i), data)
	if qerr != nil {
		return nil, qerr
	}
	return out.(*T), nil
}

// Transaction runs actions as one QMP transaction; extra actions (built
// by a command that wants their results) run after them.
func (d *Daemon) Transaction(args *TransactionArgs, extra ...txn.Action) error {
	st := &txnState{claimed: map[string]int{}}
	if args.Properties != nil {
		switch m := args.Properties.CompletionMode; m {
		case "", "individual":
		case "grouped":
			st.group = job.NewTxn()
		default:
			return Errorf("Parameter 'completion-mode' does not accept value '%s'", m)
		}
	}
	acts := make([]txn.Action, 0, len(args.Actions))
	for i, a := range args.Actions {
		act, err := d.makeAction(st, i, a)
		if err != nil {
			return err
		}
		acts = append(acts, act)
	}
	acts = overlayBitmapsAfterSnapshot(acts)
	acts = append(acts, extra...)
	err := txn.Run(acts)
	var te *txn.Error
	if errors.As(err, &te) {
		return asError(te.Err) // QEMU reports the failing action's own error
	}
	if err != nil {
		return Errorf("%v", err)
	}
	return nil
}

// overlayBitmapsAfterSnapshot moves a bitmap action on the overlay of a
// later blockdev-snapshot to just after that snapshot. libvirt adds (and
// merges into) the new overlay's bitmaps before the snapshot that puts it
// on top, in one transaction. In QEMU the overlay stays the same node; in
// ringblk the snapshot opens the overlay's image again under its name
// (host.Device.StageSnapshot), so the bitmap action must find that node,
// and must not hold the old one, whose lock and name the snapshot needs.
// Before, that transaction failed and the overlay node was lost.
func overlayBitmapsAfterSnapshot(acts []txn.Action) []txn.Action {
	for k := 0; k < len(acts); k++ {
		snap, ok := acts[k].(*snapshotExisting)
		if !ok {
			continue
		}
		var moved, kept []txn.Action
		for _, a := range acts[:k] {
			if b, ok := a.(*bitmapAction); ok && b.nodeArg() == snap.a.Overlay {
				moved = append(moved, a)
				continue
			}
			kept = append(kept, a)
		}
		if len(moved) == 0 {
			continue
		}
		out := append(append(append(kept, acts[k]), moved...), acts[k+1:]...)
		acts = out
		k = len(kept) + len(moved)
	}
	return acts
}

// abortAction is QMP's 'abort' action: its prepare always fails (tests).
type abortAction struct{}

func (abortAction) Prepare() error { return Errorf("Transaction aborted using Abort action") }
func (abortAction) Commit() error  { return nil }
func (abortAction) Abort()         {}
func (abortAction) Clean()         {}

// ---- blockdev-snapshot-sync ----

type snapshotSync struct {
	d       *Daemon
	st      *txnState
	i       int
	a       SnapshotSyncArgs
	b       *blockdev
	dr      txn.Drained
	stage   *host.SnapshotStage
	overlay string
}

func (s *snapshotSync) Prepare() error {
	if s.a.Format != "" && s.a.Format != "qcow2" {
		return Errorf("Snapshot format '%s' is not supported (qcow2)", s.a.Format)
	}
	existing := false
	switch s.a.Mode {
	case "", "absolute-paths":
	case "existing":
		existing = true
	default:
		return Errorf("Invalid parameter 'mode': '%s' (existing, absolute-paths)", s.a.Mode)
	}
	b, qerr := s.d.lookup(s.a.Device, s.a.NodeName)
	if qerr != nil {
		return qerr
	}
	if err := b.top(); err != nil {
		return err
	}
	if err := s.st.claim(b.name, s.i); err != nil {
		return err
	}
	if n := s.a.SnapshotNodeName; n != "" {
		if err := checkNodeName(n); err != nil {
			return err
		}
		if s.d.nodes[n] != nil || s.d.h.Graph().NodeByName(n) != nil {
			return Errorf("Duplicate nodes with node-name='%s'", n)
		}
	}
	root := b.dev.Root()
	if root == nil {
		return nodeNotFound(b.name)
	}
	s.b = b
	s.dr.Begin(root) // seed 001: held until Clean
	// The overlay takes the image's read-only state, as QEMU opens it
	// with the flags of the node it covers.
	st, err := b.dev.StageSnapshot(host.StageOptions{Path: s.a.SnapshotFile, Existing: existing,
		NodeName: s.a.SnapshotNodeName, ReadOnly: root.ReadOnly()})
	if err != nil {
		return Errorf("%v", err)
	}
	s.stage = st
	s.overlay = st.Overlay().Name()
	// The front ends move onto the overlay at commit; they stay quiesced
	// through it until Clean.
	s.dr.Begin(st.Overlay())
	return nil
}

func (s *snapshotSync) Commit() error {
	err := s.stage.Commit()
	s.d.swapIn(s.b, s.overlay, "qcow2", s.a.SnapshotFile)
	return errors.Join(err, s.d.refreshExports(s.overlay))
}

func (s *snapshotSync) Abort() {
	if s.stage != nil {
		_ = s.stage.Abort()
	}
}

func (s *snapshotSync) Clean() { _ = s.dr.End() }

// refreshExports makes the exports of node re-read its chain for block
// status. Called in a commit, while the node is still drained, so no
// client request sees the old chain.
func (d *Daemon) refreshExports(node string) error {
	var errs []error
	for _, e := range d.exports {
		if e.node == node {
			errs = append(errs, e.exp.Refresh())
		}
	}
	return errors.Join(errs...)
}

// swapIn records that overlay now sits on top of b.
func (d *Daemon) swapIn(b *blockdev, overlay, driver, filename string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nodes[overlay] = &blockdev{name: overlay, driver: driver, filename: filename, dev: b.dev, opts: b.opts, lower: []string{b.name},
		discardUnmap: b.discardUnmap, detectZeroes: b.detectZeroes}
	b.usedBy, b.role = overlay, "backing"
	for _, e := range d.exports {
		if e.node == b.name {
			e.node = overlay // the export's front end moved with the others
		}
	}
}

// ---- blockdev-snapshot ----

type snapshotExisting struct {
	d     *Daemon
	st    *txnState
	i     int
	a     SnapshotArgs
	b, ob *blockdev
	dr    txn.Drained
	stage *host.SnapshotStage
	// closed: the overlay's own device was closed for the swap; Clean
	// reopens it unless the transaction committed.
	closed, committed bool
}

func (s *snapshotExisting) Prepare() error {
	b, qerr := s.d.lookup("", s.a.Node)
	if qerr != nil {
		return qerr
	}
	ob, qerr := s.d.lookup("", s.a.Overlay)
	if qerr != nil {
		return qerr
	}
	if b == ob {
		return Errorf("Node '%s' cannot be its own overlay", b.name)
	}
	if err := b.top(); err != nil {
		return err
	}
	if err := ob.top(); err != nil {
		return err
	}
	if ob.driver != "qcow2" {
		return Errorf("The overlay '%s' does not support backing images (driver %s)", ob.name, ob.driver)
	}
	if id := s.d.exportOf(ob.name); id != "" {
		return Errorf("Node '%s' is busy: exported as '%s'", ob.name, id)
	}
	if typ := s.d.jobOn(ob); typ != "" {
		// Its device is closed to be reopened over the node.
		return Errorf("Node '%s' is busy: block device is in use by block job: %s", ob.name, typ)
	}
	if err := s.st.claim(b.name, s.i); err != nil {
		return err
	}
	if err := s.st.claim(ob.name, s.i); err != nil {
		return err
	}
	root := b.dev.Root()
	if root == nil {
		return nodeNotFound(b.name)
	}
	s.b, s.ob = b, ob
	s.dr.Begin(root)
	if err := ob.dev.Close(); err != nil {
		s.closed = true
		return Errorf("Could not reopen overlay '%s': %v", ob.name, err)
	}
	s.closed = true
	st, err := b.dev.StageSnapshot(host.StageOptions{Path: ob.filename, Existing: true, NodeName: ob.name, ReadOnly: ob.opts.ReadOnly})
	if err != nil {
		return Errorf("%v", err)
	}
	s.stage = st
	s.dr.Begin(st.Overlay())
	return nil
}

func (s *snapshotExisting) Commit() error {
	s.committed = true
	err := s.stage.Commit()
	d := s.d
	d.mu.Lock()
	s.ob.dev, s.ob.lower = s.b.dev, append(s.ob.lower, s.b.name)
	for _, l := range s.ob.lower {
		if x := d.nodes[l]; x != nil && x.role == "file" {
			x.dev = s.b.dev
		}
	}
	s.b.usedBy, s.b.role = s.ob.name, "backing"
	for _, e := range d.exports {
		if e.node == s.b.name {
			e.node = s.ob.name
		}
	}
	d.mu.Unlock()
	return errors.Join(err, d.refreshExports(s.ob.name))
}

func (s *snapshotExisting) Abort() {
	if s.stage != nil {
		_ = s.stage.Abort()
	}
}

// Clean ends the sections; after an abort it then gives the overlay node
// its device back (only now is its name free again: the staged overlay
// node lived until its section ended).
func (s *snapshotExisting) Clean() {
	_ = s.dr.End()
	if !s.closed || (s.stage != nil && s.committed) {
		return
	}
	dev, err := s.d.reopen(s.ob)
	if err != nil {
		s.d.lost(s.ob.name, err)
		return
	}
	s.d.mu.Lock()
	s.ob.dev = dev
	for _, l := range s.ob.lower {
		if x := s.d.nodes[l]; x != nil {
			x.dev = dev
		}
	}
	s.d.mu.Unlock()
}

// ---- blockdev-snapshot-internal-sync ----

// internalSnapshot checks everything in Prepare and writes the snapshot
// in Commit, so an aborted transaction leaves the image byte for byte as
// it was (QEMU writes it in prepare and deletes it on abort, which leaves
// the file changed).
type internalSnapshot struct {
	d  *Daemon
	st *txnState
	i  int
	a  InternalSnapshotArgs
	b  *blockdev
	dr txn.Drained
}

func (s *internalSnapshot) Prepare() error {
	if s.a.Name == "" {
		return Errorf("Name is empty")
	}
	b, qerr := s.d.lookup(s.a.Device, "")
	if qerr != nil {
		return qerr
	}
	if err := b.top(); err != nil {
		return err
	}
	if err := s.st.claim(b.name, s.i); err != nil {
		return err
	}
	root := b.dev.Root()
	if root == nil {
		return notFound(b.name)
	}
	if b.dev.Format() != "qcow2" {
		return Errorf("Block format '%s' used by device '%s' does not support internal snapshots", b.driver, b.name)
	}
	if root.ReadOnly() {
		return Errorf("Device '%s' is read only", b.name)
	}
	s.b = b
	s.dr.Begin(root)
	snaps, err := b.dev.Snapshots()
	if err != nil {
		return Errorf("%v", err)
	}
	for _, sn := range snaps {
		if sn.Name == s.a.Name {
			return Errorf("Snapshot with name '%s' already exists on device '%s'", s.a.Name, b.name)
		}
	}
	if err := root.Flush(); err != nil {
		return Errorf("Failed to flush '%s': %v", b.name, err)
	}
	return nil
}

func (s *internalSnapshot) Commit() error { return s.b.dev.CreateSnapshot(s.a.Name) }
func (s *internalSnapshot) Abort()        {}
func (s *internalSnapshot) Clean()        { _ = s.dr.End() }
