package qmp

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ringblk/ringblk/bitmap"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/job"
	"github.com/ringblk/ringblk/txn"
)

// Block jobs (package job) and dirty bitmaps behind QEMU's commands and
// events: query-jobs, job-*, block-job-*, blockdev-mirror,
// blockdev-backup, block-stream, block-commit, block-dirty-bitmap-*, and
// the transaction actions for backups and bitmaps.

// jobEvent turns a job event into QMP's.
func (d *Daemon) jobEvent(ev job.Event) {
	switch ev.Type {
	case job.EventStatusChange:
		d.emit("JOB_STATUS_CHANGE", map[string]any{"id": ev.ID, "status": ev.Status.String()})
	case job.EventError, job.EventReady, job.EventCompleted, job.EventCancelled, job.EventPending:
		if ev.JobType == "create" {
			return // not a block job: QEMU sends only JOB_STATUS_CHANGE for it
		}
		d.blockJobEvent(ev)
	}
}

// blockJobEvent sends the BLOCK_JOB_* events of a block job.
func (d *Daemon) blockJobEvent(ev job.Event) {
	switch ev.Type {
	case job.EventError:
		d.emit("BLOCK_JOB_ERROR", map[string]any{"device": ev.ID, "operation": ev.Operation, "action": ev.Action.String()})
	case job.EventPending:
		d.emit("BLOCK_JOB_PENDING", map[string]any{"id": ev.ID, "type": ev.JobType})
	default:
		data := map[string]any{"device": ev.ID, "type": ev.JobType, "len": ev.Len, "offset": ev.Offset, "speed": ev.Speed}
		if ev.Type == job.EventCompleted && ev.Error != "" {
			data["error"] = ev.Error
		}
		d.emit(ev.Type.String(), data)
		if ev.Type == job.EventCompleted {
			// A mirror or commit may have pivoted an exported node. (The
			// callback may run on a Context: no synchronous call here.)
			go d.refreshAllExports()
		}
	}
}

// graphNode finds any node of the graph by name (backing nodes too).
func (d *Daemon) graphNode(name string) (*block.Node, *Error) {
	if name == "" {
		return nil, Errorf("Need a node name")
	}
	if n := d.h.Graph().NodeByName(name); n != nil {
		return n, nil
	}
	return nil, nodeNotFound(name)
}

// rootOf resolves a job's device argument: a device name (following its
// snapshots) or a node name, to the node on top.
func (d *Daemon) rootOf(device string) (*block.Node, *Error) {
	if b, qerr := d.lookup(device, ""); qerr == nil {
		if r := b.dev.Root(); r != nil {
			return belowFilters(r), nil
		}
	}
	return d.graphNode(device)
}

// belowFilters returns the first node under n that is not a filter (a
// running job's copy-before-write or stream filter sits on top of the
// node the user means).
func belowFilters(n *block.Node) *block.Node {
	n.Graph().Control(func() {
		for {
			var next *block.Node
			for _, c := range n.Children() {
				if c.Role()&block.RoleFiltered != 0 && c.Node() != nil {
					next = c.Node()
				}
			}
			if next == nil {
				return
			}
			n = next
		}
	})
	return n
}

// JobArgs are the generic job options every job command takes.
type JobArgs struct {
	JobID         string `json:"job-id" qmp:"optional"`
	Speed         int64  `json:"speed" qmp:"optional"`
	AutoFinalize  *bool  `json:"auto-finalize" qmp:"optional"`
	AutoDismiss   *bool  `json:"auto-dismiss" qmp:"optional"`
	OnSourceError string `json:"on-source-error" qmp:"optional"`
	OnTargetError string `json:"on-target-error" qmp:"optional"`
}

func (a JobArgs) options(device string) (job.Options, error) {
	// Without a job-id QEMU names a block job after its device's
	// BlockBackend; a node of the storage daemon has none, so the name
	// is empty and refused ("Invalid job ID ''", as qemu-storage-daemon
	// answers). device is kept for the day the daemon has devices.
	o := job.Options{ID: a.JobID, Speed: a.Speed}
	_ = device
	if a.AutoFinalize != nil && !*a.AutoFinalize {
		o.ManualFinalize = true
	}
	if a.AutoDismiss != nil && !*a.AutoDismiss {
		o.ManualDismiss = true
	}
	var err error
	if a.OnSourceError != "" {
		if o.OnSourceError, err = job.ParsePolicy(a.OnSourceError); err != nil {
			return o, Errorf("Invalid parameter 'on-source-error': %s", a.OnSourceError)
		}
	}
	if a.OnTargetError != "" {
		if o.OnTargetError, err = job.ParsePolicy(a.OnTargetError); err != nil {
			return o, Errorf("Invalid parameter 'on-target-error': %s", a.OnTargetError)
		}
	}
	if o.Speed < 0 {
		return o, Errorf("Parameter 'speed' expects a non-negative value")
	}
	if d := o.ID; d != "" {
		_ = d
	}
	return o, nil
}

func (d *Daemon) checkJobID(id string) error {
	if !idWellFormed(id) {
		return Errorf("Invalid job ID '%s'", id)
	}
	if d.jobs.Get(id) != nil {
		return Errorf("Job ID '%s' already in use", id)
	}
	return nil
}

// MirrorArgs is blockdev-mirror's argument.
type MirrorArgs struct {
	JobArgs
	Device      string `json:"device"`
	Target      string `json:"target"`
	Sync        string `json:"sync"`
	Replaces    string `json:"replaces" qmp:"optional"`
	Granularity int64  `json:"granularity" qmp:"optional"`
	BufSize     int64  `json:"buf-size" qmp:"optional"`
	FilterNode  string `json:"filter-node-name" qmp:"optional"`
	CopyMode    string `json:"copy-mode" qmp:"optional"`
	// release, when set, runs when the job ends: drive-mirror's hold on
	// the target it opened.
	release func() error
	// targetZeroed: drive-mirror created the target (job.MirrorOptions).
	targetZeroed bool
}

// BackupArgs is blockdev-backup's argument.
type BackupArgs struct {
	JobArgs
	Device     string `json:"device"`
	Target     string `json:"target"`
	Sync       string `json:"sync"`
	Bitmap     string `json:"bitmap" qmp:"optional"`
	BitmapMode string `json:"bitmap-mode" qmp:"optional"`
	Compress   bool   `json:"compress" qmp:"optional"`
	FilterNode string `json:"filter-node-name" qmp:"optional"`
	// release, when set, runs when the job ends: drive-backup's hold on
	// the target it opened.
	release func() error
}

// StreamArgs is block-stream's argument.
type StreamArgs struct {
	JobArgs
	Device      string `json:"device"`
	Base        string `json:"base" qmp:"optional"`
	BaseNode    string `json:"base-node" qmp:"optional"`
	Bottom      string `json:"bottom" qmp:"optional"`
	BackingFile string `json:"backing-file" qmp:"optional"`
	OnError     string `json:"on-error" qmp:"optional"`
	FilterNode  string `json:"filter-node-name" qmp:"optional"`
}

// CommitArgs is block-commit's argument.
type CommitArgs struct {
	JobArgs
	Device      string `json:"device"`
	BaseNode    string `json:"base-node" qmp:"optional"`
	Base        string `json:"base" qmp:"optional"`
	TopNode     string `json:"top-node" qmp:"optional"`
	Top         string `json:"top" qmp:"optional"`
	BackingFile string `json:"backing-file" qmp:"optional"`
	OnError     string `json:"on-error" qmp:"optional"`
	FilterNode  string `json:"filter-node-name" qmp:"optional"`
}

func (d *Daemon) newMirror(a *MirrorArgs) (*job.Job, error) {
	j, _, err := d.newMirrorDriver(a)
	return j, err
}

func (d *Daemon) newMirrorDriver(a *MirrorArgs) (*job.Job, *job.Mirror, error) {
	src, qerr := d.rootOf(a.Device)
	if qerr != nil {
		return nil, nil, qerr
	}
	tgt, qerr := d.graphNode(a.Target)
	if qerr != nil {
		return nil, nil, qerr
	}
	if a.Replaces != "" || a.FilterNode != "" {
		return nil, nil, Errorf("Parameters 'replaces' and 'filter-node-name' are not supported")
	}
	if g := a.Granularity; g != 0 && (g < 512 || g > 64<<20) {
		return nil, nil, Errorf("Parameter 'granularity' expects a value in range [512B, 64MB]")
	}
	if g := a.Granularity; g&(g-1) != 0 {
		return nil, nil, Errorf("Parameter 'granularity' expects a power of 2")
	}
	if a.BufSize < 0 {
		return nil, nil, Errorf("Invalid parameter 'buf-size'")
	}
	if err := d.checkNoJob(nil, src, tgt); err != nil {
		return nil, nil, err
	}
	if err := d.checkNotExported(tgt); err != nil {
		return nil, nil, err
	}
	o, err := a.options(a.Device)
	if err != nil {
		return nil, nil, err
	}
	if err := d.checkJobID(o.ID); err != nil {
		return nil, nil, err
	}
	o.AfterEnd = a.release
	mo := job.MirrorOptions{Options: o, Source: src, Target: tgt, Granularity: a.Granularity, TargetZeroed: a.targetZeroed}
	if a.BufSize > 0 {
		// buf-size bounds the bytes the copy has in flight (QEMU's
		// buf_size): requests of at most 1 MiB, as many as fit, at
		// least one (job.NewMirror rounds a request to the granularity).
		mo.MaxRequest = min(a.BufSize, 1<<20)
		mo.Parallel = int(min(max(a.BufSize/mo.MaxRequest, 1), 64))
	}
	switch a.Sync {
	case "full":
		mo.Sync = job.MirrorFull
	case "top":
		mo.Sync = job.MirrorTop
	case "none":
		mo.Sync = job.MirrorNone
	default:
		return nil, nil, Errorf("Invalid parameter 'sync': '%s' (full, top, none)", a.Sync)
	}
	switch a.CopyMode {
	case "", "background":
	case "write-blocking":
		mo.CopyMode = job.WriteBlocking
	default:
		return nil, nil, Errorf("Invalid parameter 'copy-mode': '%s'", a.CopyMode)
	}
	if tgt.ReadOnly() {
		// QEMU reopens nothing for a mirror: its permission check refuses
		// a read-only target.
		return nil, nil, Errorf("Block node is read-only")
	}
	j, drv, err := job.NewMirror(d.jobs, mo)
	if err != nil {
		return nil, nil, Errorf("%v", err)
	}
	return j, drv, nil
}

func backupOptions(d *Daemon, a *BackupArgs) (job.BackupOptions, error) {
	src, qerr := d.rootOf(a.Device)
	if qerr != nil {
		return job.BackupOptions{}, qerr
	}
	if n := d.h.Graph().NodeByName(a.Device); n != nil && a.Sync == "none" {
		// Image fleecing: the target took the source as its backing
		// node, so the device name would lead to the target; the node
		// named is the source, as in qemu-storage-daemon.
		src = n
	}
	tgt, qerr := d.graphNode(a.Target)
	if qerr != nil {
		return job.BackupOptions{}, qerr
	}
	if a.Compress || a.FilterNode != "" {
		return job.BackupOptions{}, Errorf("Parameters 'compress' and 'filter-node-name' are not supported")
	}
	if err := d.checkNoJob(backupSource, src); err != nil {
		return job.BackupOptions{}, err
	}
	if err := d.checkNoJob(nil, tgt); err != nil {
		return job.BackupOptions{}, err
	}
	if err := d.checkNotExported(tgt); err != nil {
		return job.BackupOptions{}, err
	}
	o, err := a.options(a.Device)
	if err != nil {
		return job.BackupOptions{}, err
	}
	o.AfterEnd = a.release
	bo := job.BackupOptions{Options: o, Source: src, Target: tgt, Bitmap: a.Bitmap}
	switch a.Sync {
	case "full":
		bo.Sync = job.BackupFull
	case "top":
		bo.Sync = job.BackupTop
	case "incremental":
		bo.Sync = job.BackupIncremental
	case "bitmap":
		bo.Sync = job.BackupBitmap
	case "none":
		// Image fleecing: the target, an overlay of the source, is read
		// (exported) while guest writes copy the old data into it.
		bo.Sync, bo.UntilCancelled = job.BackupNone, true
	default:
		return bo, Errorf("Invalid parameter 'sync': '%s' (full, top, incremental, bitmap, none)", a.Sync)
	}
	switch a.BitmapMode {
	case "", "on-success":
	case "always":
		bo.BitmapMode = job.Always
	case "never":
		bo.BitmapMode = job.Never
	default:
		return bo, Errorf("Invalid parameter 'bitmap-mode': '%s'", a.BitmapMode)
	}
	// QEMU's rules for the pair: incremental is bitmap with on-success
	// and nothing else; any other sync with a bitmap must say what
	// becomes of it; a mode needs a bitmap, and 'never' only makes sense
	// when the bitmap chooses what to copy. (Defaulting the mode to
	// on-success, as before, cleared the user's bitmap after a full
	// backup that named it, where QEMU refuses the command.)
	if bo.Sync == job.BackupIncremental && a.BitmapMode != "" && a.BitmapMode != "on-success" {
		return bo, Errorf("Bitmap sync mode must be 'on-success' when using sync mode 'incremental'")
	}
	if (bo.Sync == job.BackupIncremental || bo.Sync == job.BackupBitmap) && a.Bitmap == "" {
		return bo, Errorf("must provide a valid bitmap name for '%s' sync mode", a.Sync)
	}
	if a.Bitmap != "" && src.Bitmap(a.Bitmap) == nil {
		return bo, Errorf("Bitmap '%s' could not be found", a.Bitmap)
	}
	switch {
	case a.Bitmap != "" && a.BitmapMode == "" && bo.Sync != job.BackupIncremental:
		return bo, Errorf("Bitmap sync mode must be given when providing a bitmap")
	case a.Bitmap != "" && bo.BitmapMode == job.Never && bo.Sync != job.BackupBitmap:
		return bo, Errorf("Bitmap sync mode 'never' has no meaningful effect when combined with sync mode '%s'", a.Sync)
	case a.Bitmap == "" && a.BitmapMode != "":
		return bo, Errorf("Cannot specify bitmap sync mode without a bitmap")
	}
	if tgt.ReadOnly() {
		// QEMU reopens nothing for a backup: its copy-before-write
		// filter cannot take a read-only target.
		return bo, Errorf("Could not create node: Block node is read-only")
	}
	return bo, d.checkJobID(o.ID)
}

func (d *Daemon) newStream(a *StreamArgs) (*job.Job, error) {
	top, qerr := d.rootOf(a.Device)
	if qerr != nil {
		return nil, qerr
	}
	if a.Bottom != "" || a.FilterNode != "" {
		return nil, Errorf("Parameters 'bottom' and 'filter-node-name' are not supported")
	}
	var base *block.Node
	switch {
	case a.Base != "" && a.BaseNode != "":
		return nil, Errorf("'base' and 'base-node' cannot be specified at the same time")
	case a.BaseNode != "":
		if base, qerr = d.graphNode(a.BaseNode); qerr != nil {
			return nil, qerr
		}
	case a.Base != "":
		if base = d.nodeByFile(top, a.Base); base == nil {
			return nil, Errorf("Can't find '%s' in the backing chain", a.Base)
		}
	}
	if err := d.checkNoJob(nil, top, base); err != nil {
		return nil, err
	}
	ja := a.JobArgs
	ja.OnSourceError = a.OnError
	o, err := ja.options(a.Device)
	if err != nil {
		return nil, err
	}
	if err := d.checkJobID(o.ID); err != nil {
		return nil, err
	}
	// Streaming into a read-only node (an intermediate one of a chain
	// opened from the headers) reopens it read-write for the job, and
	// read-only after (QEMU's stream_start and stream_clean).
	if d.userReadOnly(top) {
		return nil, Errorf("Block node is read-only")
	}
	restore, err := makeWritable(top)
	if err != nil {
		return nil, Errorf("%v", err)
	}
	o.AfterEnd = restore
	// The job keeps the nodes it copies from unchanged: a writable
	// export of one of them is refused once the job exists (QEMU reports
	// created, then null, then this error).
	admit := func(layers []*block.Node) error {
		for _, n := range layers {
			if d.writableExport(n) != "" {
				return permConflict(n.Name(), "write", exportBlk, "root", fmt.Sprintf("stream job '%s'", o.ID), "intermediate node")
			}
		}
		return nil
	}
	j, _, err := job.NewStream(d.jobs, job.StreamOptions{Options: o, Top: top, Base: base, BackingFile: a.BackingFile, Admit: admit})
	if err != nil {
		var qe *Error
		if !errors.As(err, &qe) {
			qe = Errorf("%v", err)
		}
		return nil, errors.Join(qe, runRestore(restore))
	}
	return j, nil
}

// nodeByFile finds the node of top's backing chain whose file is name.
func (d *Daemon) nodeByFile(top *block.Node, name string) (found *block.Node) {
	d.h.Graph().Control(func() {
		for n := top; n != nil; {
			if _, f := driverName(n); f == name {
				found = n
				return
			}
			c := n.Child(block.RoleBacking)
			if c == nil {
				return
			}
			n = c.Node()
		}
	})
	return found
}

func (d *Daemon) newCommit(a *CommitArgs) (*job.Job, error) {
	root, qerr := d.rootOf(a.Device)
	if qerr != nil {
		return nil, qerr
	}
	if a.FilterNode != "" {
		return nil, Errorf("Parameter 'filter-node-name' is not supported")
	}
	top := root
	switch {
	case a.Top != "" && a.TopNode != "":
		return nil, Errorf("'top-node' and 'top' are mutually exclusive")
	case a.TopNode != "":
		if top, qerr = d.graphNode(a.TopNode); qerr != nil {
			return nil, qerr
		}
	case a.Top != "":
		if top = d.nodeByFile(root, a.Top); top == nil {
			return nil, Errorf("Top image file %s not found", a.Top)
		}
	}
	var base *block.Node
	switch {
	case a.Base != "" && a.BaseNode != "":
		return nil, Errorf("'base-node' and 'base' are mutually exclusive")
	case a.BaseNode != "":
		if base, qerr = d.graphNode(a.BaseNode); qerr != nil {
			return nil, qerr
		}
	case a.Base != "":
		if base = d.nodeByFile(top, a.Base); base == nil {
			return nil, Errorf("Can't find '%s' in the backing chain", a.Base)
		}
	default:
		// The bottom of the chain.
		d.h.Graph().Control(func() {
			for n := top; n != nil; {
				c := n.Child(block.RoleBacking)
				if c == nil || c.Node() == nil {
					base = n
					return
				}
				n = c.Node()
			}
		})
		if base == top {
			// QEMU's words: with no backing file the base is the top.
			return nil, Errorf("cannot commit an image into itself")
		}
	}
	if err := d.checkNoJob(nil, root, top, base); err != nil {
		return nil, err
	}
	ja := a.JobArgs
	ja.OnSourceError = a.OnError
	o, err := ja.options(a.Device)
	if err != nil {
		return nil, err
	}
	if err := d.checkJobID(o.ID); err != nil {
		return nil, err
	}
	// The base may be read-only (opened from the overlay's header) or
	// inactive (an external snapshot's old top): it is made writable for
	// the commit, as QEMU's commit_start reopens it, and read-only again
	// when the job ends (QEMU's commit_clean).
	if d.userReadOnly(base) {
		return nil, Errorf("Block node is read-only")
	}
	restore, err := makeWritable(base)
	if err != nil {
		return nil, Errorf("%v", err)
	}
	// An intermediate commit rewrites the backing file name in the
	// header of top's overlay, which may be read-only too (a chain of
	// four opened from the headers): it is writable for the job as well,
	// as qemu-storage-daemon rewrites it and leaves it read-only.
	var overlay *block.Node
	d.h.Graph().Control(func() {
		for _, p := range top.Parents() {
			if p.Parent() != nil && p.Role()&block.RoleBacking != 0 {
				overlay = p.Parent()
			}
		}
	})
	var restoreOverlay func() error
	if overlay != nil && overlay.ReadOnly() {
		if restoreOverlay, err = makeWritable(overlay); err != nil {
			return nil, errors.Join(Errorf("%v", err), runRestore(restore))
		}
	}
	var active *job.Mirror
	if restore != nil || restoreOverlay != nil {
		o.AfterEnd = func() error {
			err := runRestore(restoreOverlay)
			if active != nil {
				// An active commit leaves the base read-write however
				// it ends, as QEMU 7.2 does: its mirror-based job has no
				// step that reopens the base read-only (commit_clean is
				// the intermediate commit's). Pivoted, the base took
				// the top's place; cancelled before or after
				// BLOCK_JOB_READY, or completed without a pivot, it
				// stays as the job left it.
				return err
			}
			return errors.Join(err, runRestore(restore))
		}
	}
	j, drv, err := job.NewCommit(d.jobs, job.CommitOptions{Options: o, Top: top, Base: base, BackingFile: a.BackingFile})
	if err != nil {
		return nil, errors.Join(Errorf("%v", err), runRestore(restoreOverlay), runRestore(restore))
	}
	active, _ = drv.(*job.Mirror)
	return j, nil
}

// runRestore runs a makeWritable restore of a job that was never created.
func runRestore(restore func() error) error {
	if restore == nil {
		return nil
	}
	return restore()
}

// makeWritable makes n writable for a job that writes into it, and
// returns what puts it back when the job ends (nil: nothing to put back).
//
// A node opened read-only — a backing node opened from its overlay's
// header — is reopened read-write (block.Node.SetReadOnly, QEMU's
// bdrv_reopen_set_read_only): its file takes a writer's locks, which
// another process reading the image without sharing writes refuses
// (QEMU's `Failed to get "write" lock`), and a qcow2 node brings up its
// metadata write paths. The restore reopens it read-only, so other
// readers may open it again. A node an external snapshot demoted is
// activated and its file, reopened read-only by the snapshot, reopened
// read-write; it stays so (nothing to restore: QEMU never made it
// read-only either).
func makeWritable(n *block.Node) (restore func() error, err error) {
	if err := n.Activate(); err != nil {
		return nil, err
	}
	if n.ReadOnly() {
		if err := n.SetReadOnly(false); err != nil {
			return nil, reopenErr(err)
		}
		return func() error { return n.SetReadOnly(true) }, nil
	}
	var file *raw.Driver
	n.Graph().Control(func() {
		if r, ok := n.Driver().(*raw.Driver); ok {
			file = r
			return
		}
		for _, c := range n.Children() {
			if c.Role()&block.RoleBacking == 0 && c.Node() != nil {
				if r, ok := c.Node().Driver().(*raw.Driver); ok {
					file = r
				}
			}
		}
	})
	if file == nil || !file.Options().ReadOnly {
		return nil, nil
	}
	n.DrainedBegin()
	defer n.DrainedEnd()
	n.Graph().Control(func() { err = file.ReopenReadWrite() })
	return nil, reopenErr(err)
}

// reopenErr words a refused reopen as QEMU does: a lock conflict is its
// `Failed to get "write" lock`, without the hint its command-line tools
// add.
func reopenErr(err error) error {
	var le *raw.LockError
	if errors.As(err, &le) {
		return errors.New(le.Sentence())
	}
	return err
}

func (d *Daemon) startJob(j *job.Job, err error) error {
	if err != nil {
		return err
	}
	if err := j.Start(); err != nil {
		return errors.Join(Errorf("%v", err), j.Discard())
	}
	return nil
}

type jobIDArg struct {
	ID string `json:"id"`
}

type blockJobArg struct {
	Device string `json:"device"`
	Force  bool   `json:"force" qmp:"optional"`
}

type setSpeedArg struct {
	Device string `json:"device"`
	Speed  int64  `json:"speed"`
}

func (d *Daemon) job(id string) (*job.Job, error) {
	if j := d.jobs.Get(id); j != nil {
		return j, nil
	}
	return nil, &Error{Class: DeviceNotActive, Desc: fmt.Sprintf("Block job '%s' not found", id)}
}

// findJob is job-*'s lookup: QEMU's job commands say "Job not found"
// (GenericError), its block-job-* commands DeviceNotActive (d.job).
func (d *Daemon) findJob(id string) (*job.Job, error) {
	if j := d.jobs.Get(id); j != nil {
		return j, nil
	}
	return nil, Errorf("Job not found")
}

// verbErr words a refused verb as QEMU does; clients match these.
func verbErr(err error) error {
	var ve *job.VerbError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ve):
		return Errorf("Job '%s' in state '%s' cannot accept command verb '%s'", ve.ID, ve.Status, ve.Verb)
	case errors.Is(err, job.ErrAlreadyPaused):
		return Errorf("Job is already paused")
	case errors.Is(err, job.ErrNotPaused):
		return Errorf("Can't resume a job that was not paused")
	}
	return Errorf("%v", err)
}

// jobError is a concluded job's error as QEMU reports it: a cancelled
// job's is strerror(ECANCELED).
func jobError(in job.Info) string {
	if in.Error == job.ErrCancelled.Error() {
		return "Operation canceled"
	}
	return in.Error
}

func (d *Daemon) queryJobs() []map[string]any {
	out := []map[string]any{}
	for _, in := range d.jobs.List() {
		m := map[string]any{"id": in.ID, "type": in.Type, "status": in.Status.String(),
			"current-progress": in.Current, "total-progress": in.Total}
		if e := jobError(in); e != "" {
			m["error"] = e
		}
		out = append(out, m)
	}
	return out
}

func (d *Daemon) queryBlockJobs() []map[string]any {
	out := []map[string]any{}
	for _, in := range d.jobs.List() {
		// As QEMU, every block job until it is dismissed: a concluded job
		// of auto-dismiss false is listed with its error.
		if in.Status == job.Null || in.Type == "create" {
			continue
		}
		m := map[string]any{"type": in.Type, "device": in.ID, "len": in.Total, "offset": in.Current,
			"busy": in.Busy, "paused": in.Paused, "speed": in.Speed, "io-status": in.IOStatus, "ready": in.Ready,
			"status": in.Status.String(), "auto-finalize": in.AutoFinalize, "auto-dismiss": in.AutoDismiss}
		if e := jobError(in); e != "" {
			m["error"] = e
		}
		out = append(out, m)
	}
	return out
}

// ---- dirty bitmaps ----

// BitmapArgs names a bitmap (QAPI's BlockDirtyBitmap).
type BitmapArgs struct {
	Node string `json:"node"`
	Name string `json:"name"`
}

// BitmapAddArgs is block-dirty-bitmap-add's argument.
type BitmapAddArgs struct {
	Node        string `json:"node"`
	Name        string `json:"name"`
	Granularity uint32 `json:"granularity" qmp:"optional"`
	Persistent  bool   `json:"persistent" qmp:"optional"`
	Disabled    bool   `json:"disabled" qmp:"optional"`
}

// BitmapMergeArgs is block-dirty-bitmap-merge's argument; a source is a
// bitmap name on node or a {node, name} object.
type BitmapMergeArgs struct {
	Node    string      `json:"node"`
	Target  string      `json:"target"`
	Bitmaps []BitmapRef `json:"bitmaps"`
}

// BitmapRef is QAPI's BlockDirtyBitmapOrStr.
type BitmapRef struct {
	Node, Name string
}

// UnmarshalJSON accepts a name or {node, name}.
func (r *BitmapRef) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		return jsonUnmarshal(b, &r.Name)
	}
	var o BitmapArgs
	if err := strictUnmarshal(b, &o); err != nil {
		return Errorf("Invalid parameter type for 'bitmaps', expected: BlockDirtyBitmapOrStr")
	}
	r.Node, r.Name = o.Node, o.Name
	return nil
}

// bitmapNode finds the node of a bitmap command by device or node name,
// with QEMU's message for a name that is neither (block-dirty-bitmap-add
// words it differently: bitmapAction.Prepare).
func (d *Daemon) bitmapNode(node string) (*block.Node, error) {
	// A node name names that node, as in qemu-storage-daemon (which has
	// no devices): a backing node's bitmaps are its own, not its
	// overlay's. Before, the name was taken as a device's and a
	// persistent bitmap added to libvirt's "libvirt-2-format" was stored
	// in the overlay's image.
	if n := d.h.Graph().NodeByName(node); n != nil {
		return n, nil
	}
	n, qerr := d.rootOf(node)
	if qerr != nil {
		return nil, Errorf("Node '%s' not found", node)
	}
	return n, nil
}

func (d *Daemon) findBitmap(node, name string) (*block.Node, *bitmap.Bitmap, error) {
	n, err := d.bitmapNode(node)
	if err != nil {
		return nil, nil, err
	}
	if name == "" {
		return nil, nil, Errorf("Bitmap name cannot be empty")
	}
	b := n.Bitmap(name)
	if b == nil {
		return nil, nil, Errorf("Dirty bitmap '%s' not found", name)
	}
	return n, b, nil
}

func busyErr(b *bitmap.Bitmap) error {
	return Errorf("Bitmap '%s' is currently in use by another operation and cannot be used", b.Name())
}

// bitmapAction is one dirty-bitmap transaction action; each also runs
// alone as its command. The node is drained from prepare to clean, so no
// write marks a bitmap between the check and the change.
type bitmapAction struct {
	d    *Daemon
	kind string
	add  BitmapAddArgs
	ref  BitmapArgs
	mrg  BitmapMergeArgs

	dr     txn.Drained
	n      *block.Node
	b      *bitmap.Bitmap
	saved  *bitmap.Bitmap // content before the change (clear, merge)
	wasOn  bool
	done   bool // prepare made its change
	detach bool
	// stale: the qcow2 driver whose in-use (inconsistent) persistent
	// bitmap ref.Name a remove drops at commit.
	stale *qcow2.Driver
}

// nodeArg is the node the action changes a bitmap of.
func (a *bitmapAction) nodeArg() string {
	switch a.kind {
	case "block-dirty-bitmap-add":
		return a.add.Node
	case "block-dirty-bitmap-merge":
		return a.mrg.Node
	}
	return a.ref.Node
}

func (a *bitmapAction) Prepare() error {
	node := a.nodeArg()
	n, err := a.d.bitmapNode(node)
	if err != nil {
		if a.kind == "block-dirty-bitmap-add" {
			return Errorf("Cannot find device='%s' nor node-name='%s'", node, node)
		}
		return err
	}
	a.n = n
	a.dr.Begin(n)
	switch a.kind {
	case "block-dirty-bitmap-add":
		if a.add.Name == "" {
			return Errorf("Bitmap name cannot be empty")
		}
		if len(a.add.Name) > maxBitmapName {
			return Errorf("Bitmap name too long: %s", a.add.Name)
		}
		g := int64(a.add.Granularity)
		if g != 0 && (g < 512 || g&(g-1) != 0) {
			return Errorf("Granularity must be power of 2 and at least 512")
		}
		if n.Bitmap(a.add.Name) != nil {
			return Errorf("Bitmap already exists: %s", a.add.Name)
		}
		if a.add.Persistent {
			// Stored in the image at close (drivers/qcow2/bitmaps.go):
			// the bitmap lives on the qcow2 node under any filters.
			qn, d := qcow2Below(n)
			if d == nil {
				return Errorf("Can't store persistent bitmaps to %s: Operation not supported", n.Name())
			}
			if g == 0 {
				h := d.Header()
				g = max(4096, h.ClusterSize())
			}
			if err := d.CheckNewPersistentBitmap(a.add.Name, g); err != nil {
				return Errorf("Can't make bitmap '%s' persistent in '%s': %v", a.add.Name, n.Name(), err)
			}
			if qn != n && qn.Bitmap(a.add.Name) != nil {
				return Errorf("Bitmap already exists: %s", a.add.Name)
			}
			n, a.n = qn, qn
		}
		b, err := n.AddBitmap(a.add.Name, g)
		if err != nil {
			return Errorf("%v", err)
		}
		b.Persistent = a.add.Persistent
		b.SetEnabled(!a.add.Disabled)
		a.b, a.done = b, true
		return nil
	case "block-dirty-bitmap-merge":
		tgt := n.Bitmap(a.mrg.Target)
		if tgt == nil {
			return Errorf("Dirty bitmap '%s' not found", a.mrg.Target)
		}
		if tgt.Busy() {
			return busyErr(tgt)
		}
		var srcs []*bitmap.Bitmap
		for _, r := range a.mrg.Bitmaps {
			sn := n
			if r.Node != "" {
				if sn, err = a.d.bitmapNode(r.Node); err != nil {
					return err
				}
			}
			s := sn.Bitmap(r.Name)
			if s == nil {
				return Errorf("Dirty bitmap '%s' not found", r.Name)
			}
			srcs = append(srcs, s)
		}
		a.b, a.saved = tgt, tgt.Copy(tgt.Name(), tgt.Enabled())
		for _, s := range srcs {
			if err := tgt.Merge(s); err != nil {
				a.done = true
				return Errorf("%v", err)
			}
		}
		a.done = true
		return nil
	}
	b := n.Bitmap(a.ref.Name)
	if b == nil {
		// A persistent bitmap found in use at open is not on the node:
		// it may only be removed (QEMU's rule).
		if _, d := qcow2Below(n); d != nil && d.InconsistentBitmap(a.ref.Name) {
			if a.kind != "block-dirty-bitmap-remove" {
				return Errorf("Bitmap '%s' is inconsistent and cannot be used", a.ref.Name)
			}
			a.stale = d
			return nil
		}
		return Errorf("Dirty bitmap '%s' not found", a.ref.Name)
	}
	if b.Busy() {
		return busyErr(b)
	}
	a.b, a.wasOn = b, b.Enabled()
	switch a.kind {
	case "block-dirty-bitmap-remove":
		n.Graph().Control(func() { n.DetachBitmap(b) }) // a main-Context call
		a.detach = true
	case "block-dirty-bitmap-clear":
		a.saved = b.Copy(b.Name(), b.Enabled())
		b.Clear()
	case "block-dirty-bitmap-enable":
		b.SetEnabled(true)
	case "block-dirty-bitmap-disable":
		b.SetEnabled(false)
	}
	a.done = true
	return nil
}

func (a *bitmapAction) Commit() error {
	if a.stale != nil {
		if err := a.stale.RemovePersistentBitmap(a.ref.Name); err != nil {
			return Errorf("%v", err)
		}
	}
	return nil
}

func (a *bitmapAction) Abort() {
	if !a.done {
		return
	}
	switch a.kind {
	case "block-dirty-bitmap-add":
		_ = a.n.RemoveBitmap(a.b.Name())
	case "block-dirty-bitmap-remove":
		_ = a.n.AttachBitmap(a.b)
	case "block-dirty-bitmap-clear", "block-dirty-bitmap-merge":
		a.b.Clear()
		_ = a.b.Merge(a.saved)
	case "block-dirty-bitmap-enable", "block-dirty-bitmap-disable":
		a.b.SetEnabled(a.wasOn)
	}
}

func (a *bitmapAction) Clean() { _ = a.dr.End() }

// backupAction is blockdev-backup as a transaction action: the job is
// created in prepare inside the source's drained section (so its point
// in time is the same for every action), started in commit, discarded on
// abort.
type backupAction struct {
	d     *Daemon
	a     BackupArgs
	group *job.Txn // completion-mode grouped: the transaction's jobs complete together
	jobStart
}

// jobStart is the part the job-starting actions share: the job is made in
// prepare inside the source's drained section (dr), started in commit; an
// abort drops the job that never ran: the driver's Clean first (it removes
// the job's filter and gives a bitmap back; Abandon alone leaves them),
// then Abandon (QEMU's cancel of a job not started: aborting, concluded,
// null).
type jobStart struct {
	dr  txn.Drained
	j   *job.Job
	drv job.Cleaner
}

func (s *jobStart) Commit() error {
	if err := s.j.Start(); err != nil {
		return Errorf("%v", err)
	}
	return nil
}

func (s *jobStart) Abort() {
	if s.j != nil {
		s.drv.Clean(s.j)
		_ = s.j.Abandon()
	}
}

func (s *jobStart) Clean() { _ = s.dr.End() }

func (b *backupAction) Prepare() error {
	bo, err := backupOptions(b.d, &b.a)
	if err != nil {
		return err
	}
	b.dr.Begin(bo.Source)
	bo.Drained = true
	j, drv, err := job.NewBackup(b.d.jobs, bo)
	if err != nil {
		return Errorf("%v", err)
	}
	b.j, b.drv = j, drv
	if b.group != nil {
		b.group.Add(j)
	}
	return nil
}

// mirrorAction is blockdev-mirror as a transaction action (a ringblk
// extension: QEMU has none): the job is created in prepare, inside the
// source's drained section, and started in commit; abort cleans the
// driver (its filter) and discards the job.
type mirrorAction struct {
	d *Daemon
	a MirrorArgs
	jobStart
}

func (m *mirrorAction) Prepare() error {
	src, qerr := m.d.rootOf(m.a.Device)
	if qerr != nil {
		return qerr
	}
	m.dr.Begin(src)
	j, drv, err := m.d.newMirrorDriver(&m.a)
	if err != nil {
		return err
	}
	m.j, m.drv = j, drv
	return nil
}

// CheckpointArgs is x-ringblk-checkpoint's argument: take the next
// checkpoint of a node's chain (package job's Chain).
type CheckpointArgs struct {
	Node        string `json:"node"`
	Chain       string `json:"chain"`
	Granularity int64  `json:"granularity" qmp:"optional"`
}

// checkpointAction freezes the bitmap that tracked writes since the
// previous checkpoint of the chain and starts a new one, inside the
// node's drained section, so that other actions of the transaction (a
// backup of the same node) start at exactly that boundary. Abort deletes
// the checkpoint again (its changes merge back into the active bitmap;
// a chain's first checkpoint takes its bitmap away with it).
type checkpointAction struct {
	d     *Daemon
	a     CheckpointArgs
	dr    txn.Drained
	chain *job.Chain
	n     *block.Node
	cp    *job.Checkpoint
	fresh bool // the chain was made by this action
}

func (c *checkpointAction) Prepare() error {
	if c.a.Chain == "" || strings.ContainsRune(c.a.Chain, '@') {
		return Errorf("Invalid parameter 'chain': a non-empty name without '@'")
	}
	n, err := c.d.bitmapNode(c.a.Node)
	if err != nil {
		return err
	}
	c.n = n
	c.dr.Begin(n)
	key := n.Name() + "/" + c.a.Chain
	c.d.mu.Lock()
	ch := c.d.chains[key]
	c.d.mu.Unlock()
	if ch != nil && ch.Node() != n {
		// The node of that name was deleted (or lost) and added again:
		// the chain belongs to the closed node, whose bitmaps went with
		// it. This node starts a chain of its own.
		ch = nil
	}
	if ch == nil {
		if n.Bitmap(c.a.Chain) != nil {
			return Errorf("Bitmap already exists: %s", c.a.Chain)
		}
		if ch, err = job.NewChain(n, c.a.Chain, c.a.Granularity); err != nil {
			return Errorf("%v", err)
		}
		c.fresh = true
	}
	cp, err := ch.Checkpoint(nil)
	if err != nil {
		return Errorf("%v", err)
	}
	c.chain, c.cp = ch, cp
	c.d.mu.Lock()
	c.d.chains[key] = ch
	c.d.mu.Unlock()
	return nil
}

func (c *checkpointAction) Commit() error { return nil }

func (c *checkpointAction) Abort() {
	if c.cp == nil {
		return
	}
	_ = c.chain.Delete(c.cp.Seq)
	if c.cp.Changes == nil { // the chain's first: its bitmap is new
		_ = c.n.RemoveBitmap(c.a.Chain)
	}
	if c.fresh {
		c.d.mu.Lock()
		delete(c.d.chains, c.n.Name()+"/"+c.a.Chain)
		c.d.mu.Unlock()
	}
}

func (c *checkpointAction) Clean() { _ = c.dr.End() }

func (d *Daemon) registerJobs(r *Registry) {
	r.Register("query-jobs", nil, func(*Client, any) (any, error) { return d.queryJobs(), nil })
	r.Register("query-block-jobs", nil, func(*Client, any) (any, error) { return d.queryBlockJobs(), nil })
	verb := func(f func(j *job.Job) error) Handler {
		return func(_ *Client, a any) (any, error) {
			j, err := d.findJob(a.(*jobIDArg).ID)
			if err != nil {
				return nil, err
			}
			return nil, verbErr(f(j))
		}
	}
	r.Register("job-pause", &jobIDArg{}, verb((*job.Job).Pause))
	r.Register("job-resume", &jobIDArg{}, verb((*job.Job).Resume))
	r.Register("job-cancel", &jobIDArg{}, verb(func(j *job.Job) error { return j.Cancel(true) }))
	r.Register("job-complete", &jobIDArg{}, verb((*job.Job).Complete))
	r.Register("job-finalize", &jobIDArg{}, verb((*job.Job).Finalize))
	r.Register("job-dismiss", &jobIDArg{}, verb((*job.Job).Dismiss))
	bverb := func(f func(j *job.Job, a *blockJobArg) error) Handler {
		return func(_ *Client, a any) (any, error) {
			x := a.(*blockJobArg)
			j, err := d.job(x.Device)
			if err != nil {
				return nil, err
			}
			return nil, verbErr(f(j, x))
		}
	}
	r.Register("block-job-pause", &blockJobArg{}, bverb(func(j *job.Job, _ *blockJobArg) error { return j.Pause() }))
	r.Register("block-job-resume", &blockJobArg{}, bverb(func(j *job.Job, _ *blockJobArg) error { return j.Resume() }))
	r.Register("block-job-cancel", &blockJobArg{}, bverb(func(j *job.Job, a *blockJobArg) error { return j.Cancel(a.Force) }))
	r.Register("block-job-complete", &blockJobArg{}, bverb(func(j *job.Job, _ *blockJobArg) error { return j.Complete() }))
	// block-job-finalize and block-job-dismiss take the job's id (not a
	// device) and look it up as the other block-job-* commands do.
	idverb := func(f func(j *job.Job) error) Handler {
		return func(_ *Client, a any) (any, error) {
			j, err := d.job(a.(*jobIDArg).ID)
			if err != nil {
				return nil, err
			}
			return nil, verbErr(f(j))
		}
	}
	r.Register("block-job-finalize", &jobIDArg{}, idverb((*job.Job).Finalize))
	r.Register("block-job-dismiss", &jobIDArg{}, idverb((*job.Job).Dismiss))
	r.Register("block-job-set-speed", &setSpeedArg{}, func(_ *Client, a any) (any, error) {
		x := a.(*setSpeedArg)
		j, err := d.job(x.Device)
		if err != nil {
			return nil, err
		}
		return nil, verbErr(j.SetSpeed(x.Speed))
	})
	r.Register("blockdev-mirror", &MirrorArgs{}, func(_ *Client, a any) (any, error) {
		return nil, d.startJob(d.newMirror(a.(*MirrorArgs)))
	})
	r.Register("block-stream", &StreamArgs{}, func(_ *Client, a any) (any, error) {
		return nil, d.startJob(d.newStream(a.(*StreamArgs)))
	})
	r.Register("block-commit", &CommitArgs{}, func(_ *Client, a any) (any, error) {
		return nil, d.startJob(d.newCommit(a.(*CommitArgs)))
	})
	single := d.single
	r.Register("blockdev-backup", &BackupArgs{}, single("blockdev-backup"))
	r.Register("drive-backup", &DriveBackupArgs{}, single("drive-backup"))
	r.Register("drive-mirror", &DriveMirrorArgs{}, func(_ *Client, a any) (any, error) {
		return nil, d.startJob(d.newDriveMirror(a.(*DriveMirrorArgs)))
	})
	r.Register("block-dirty-bitmap-add", &BitmapAddArgs{}, single("block-dirty-bitmap-add"))
	for _, k := range []string{"remove", "clear", "enable", "disable"} {
		r.Register("block-dirty-bitmap-"+k, &BitmapArgs{}, single("block-dirty-bitmap-"+k))
	}
	r.Register("block-dirty-bitmap-merge", &BitmapMergeArgs{}, single("block-dirty-bitmap-merge"))
	r.Register("x-debug-block-dirty-bitmap-sha256", &BitmapArgs{}, func(_ *Client, a any) (any, error) {
		x := a.(*BitmapArgs)
		_, b, err := d.findBitmap(x.Node, x.Name)
		if err != nil {
			return nil, err
		}
		return map[string]any{"sha256": bitmapSHA256(b)}, nil
	})
	r.Register("x-ringblk-checkpoint", &CheckpointArgs{}, func(_ *Client, a any) (any, error) {
		act := &checkpointAction{d: d, a: *a.(*CheckpointArgs)}
		if err := d.Transaction(&TransactionArgs{}, act); err != nil {
			return nil, err
		}
		return map[string]any{"seq": act.cp.Seq, "bitmap": act.cp.Name}, nil
	})
}

// jobAction makes the transaction actions of this file.
func (d *Daemon) jobAction(st *txnState, i int, a TransactionAction) (txn.Action, bool, error) {
	switch a.Type {
	case "blockdev-backup":
		args, err := decodeAs[BackupArgs](i, a)
		if err != nil {
			return nil, true, err
		}
		return &backupAction{d: d, a: *args, group: st.group}, true, nil
	case "drive-backup":
		args, err := decodeAs[DriveBackupArgs](i, a)
		if err != nil {
			return nil, true, err
		}
		return &driveBackupAction{d: d, a: *args, group: st.group}, true, nil
	case "x-ringblk-checkpoint":
		args, err := decodeAs[CheckpointArgs](i, a)
		if err != nil {
			return nil, true, err
		}
		return &checkpointAction{d: d, a: *args}, true, nil
	case "blockdev-mirror":
		args, err := decodeAs[MirrorArgs](i, a)
		if err != nil {
			return nil, true, err
		}
		return &mirrorAction{d: d, a: *args}, true, nil
	case "block-dirty-bitmap-add":
		args, err := decodeAs[BitmapAddArgs](i, a)
		if err != nil {
			return nil, true, err
		}
		return &bitmapAction{d: d, kind: a.Type, add: *args}, true, nil
	case "block-dirty-bitmap-merge":
		args, err := decodeAs[BitmapMergeArgs](i, a)
		if err != nil {
			return nil, true, err
		}
		return &bitmapAction{d: d, kind: a.Type, mrg: *args}, true, nil
	case "block-dirty-bitmap-remove", "block-dirty-bitmap-clear", "block-dirty-bitmap-enable", "block-dirty-bitmap-disable":
		args, err := decodeAs[BitmapArgs](i, a)
		if err != nil {
			return nil, true, err
		}
		return &bitmapAction{d: d, kind: a.Type, ref: *args}, true, nil
	}
	return nil, false, nil
}

// refreshAllExports makes every export re-read its chain (after a job
// pivoted nodes, which the daemon learns from the job's event).
func (d *Daemon) refreshAllExports() {
	d.mu.Lock()
	exps := make([]*export, 0, len(d.exports))
	for _, e := range d.exports {
		exps = append(exps, e)
	}
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return
	}
	for _, e := range exps {
		_ = e.exp.Refresh()
	}
}

// qcow2Below finds the qcow2 node at n or under its filters.
func qcow2Below(n *block.Node) (*block.Node, *qcow2.Driver) {
	for x := n; x != nil; {
		if d, ok := x.Driver().(*qcow2.Driver); ok {
			return x, d
		}
		c := x.Child(block.RoleFiltered)
		if c == nil {
			return nil, nil
		}
		x = c.Node()
	}
	return nil, nil
}
