package qmp

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/host"
	"github.com/ringblk/ringblk/job"
)

// drive-mirror and drive-backup: the older job commands that name the
// target by file name. The daemon creates the image (or opens the one
// there, mode=existing), opens it as a node of its own that the job
// owns, and runs the blockdev-mirror or blockdev-backup job onto it.
// When the job ends its hold on the target node is dropped: a backup's
// target goes away with it; a completed mirror's target stays in the
// graph under the parents the pivot moved onto it (the source's device,
// its exports), as QEMU's does.

// DriveMirrorArgs is drive-mirror's argument (QAPI DriveMirror).
type DriveMirrorArgs struct {
	JobArgs
	Device      string `json:"device"`
	Target      string `json:"target"`
	Format      string `json:"format" qmp:"optional"`
	NodeName    string `json:"node-name" qmp:"optional"`
	Replaces    string `json:"replaces" qmp:"optional"`
	Sync        string `json:"sync"`
	Mode        string `json:"mode" qmp:"optional"`
	Granularity int64  `json:"granularity" qmp:"optional"`
	BufSize     int64  `json:"buf-size" qmp:"optional"`
	Unmap       *bool  `json:"unmap" qmp:"optional"`
	CopyMode    string `json:"copy-mode" qmp:"optional"`
}

// DriveBackupArgs is drive-backup's argument (QAPI DriveBackup).
type DriveBackupArgs struct {
	JobArgs
	Device     string `json:"device"`
	Target     string `json:"target"`
	Format     string `json:"format" qmp:"optional"`
	Sync       string `json:"sync"`
	Mode       string `json:"mode" qmp:"optional"`
	Bitmap     string `json:"bitmap" qmp:"optional"`
	BitmapMode string `json:"bitmap-mode" qmp:"optional"`
	Compress   bool   `json:"compress" qmp:"optional"`
	FilterNode string `json:"filter-node-name" qmp:"optional"`
}

// enumErr is QAPI's message for a value outside an enum.
func enumErr(member, v string) error {
	return Errorf("Parameter '%s' does not accept value '%s'", member, v)
}

// checkEnum refuses v unless it is one of ok (or absent).
func checkEnum(member, v string, ok ...string) error {
	if v == "" {
		return nil
	}
	for _, o := range ok {
		if v == o {
			return nil
		}
	}
	return enumErr(member, v)
}

// checkJobEnums checks the enum members of the job options as the QAPI
// visitor does, before anything else runs.
func checkJobEnums(a JobArgs) error {
	if err := checkEnum("on-source-error", a.OnSourceError, "report", "ignore", "enospc", "stop", "auto"); err != nil {
		return err
	}
	return checkEnum("on-target-error", a.OnTargetError, "report", "ignore", "enospc", "stop", "auto")
}

// qemuFormats are image formats QEMU 7.2 knows that this daemon cannot
// create or open as a job target: refused by name rather than as unknown.
var qemuFormats = map[string]bool{"vmdk": true, "vdi": true, "vpc": true, "vhdx": true, "qed": true, "qcow": true,
	"luks": true, "parallels": true, "bochs": true, "cloop": true, "dmg": true, "vvfat": true}

// checkFormat refuses a target format other than raw and qcow2.
func checkFormat(f string) error {
	switch {
	case f == "" || f == "raw" || f == "qcow2":
		return nil
	case qemuFormats[f]:
		return Errorf("Format '%s' is not supported for a drive-mirror or drive-backup target here (raw, qcow2)", f)
	}
	return Errorf("Unknown file format '%s'", f)
}

// targetModeFormat is a drive-* command's mode (absolute-paths when
// absent) and target format (the source's when absent and the image is
// to be created; probed from an existing one), checked.
func targetModeFormat(mode, format string, src *block.Node) (string, string, error) {
	if mode == "" {
		mode = "absolute-paths"
	}
	if format == "" && mode != "existing" {
		format = sourceFormat(src)
	}
	return mode, format, checkFormat(format)
}

// sourceFormat is the format QEMU would name for n: its driver's
// format name (a file node is the raw format here).
func sourceFormat(n *block.Node) string {
	drv, _ := driverName(n)
	if drv == "file" {
		return "raw"
	}
	return drv
}

// backingOf returns n's backing node (nil: none).
func backingOf(n *block.Node) (b *block.Node) {
	n.Graph().Control(func() {
		if c := n.Child(block.RoleBacking); c != nil {
			b = c.Node()
		}
	})
	return b
}

// driveSource resolves a drive-* command's device: a device or node name
// (QEMU's bdrv_lookup_bs, which names both in its error).
func (d *Daemon) driveSource(device string) (*block.Node, error) {
	if device != "" {
		if b, qerr := d.lookup(device, ""); qerr == nil {
			if r := b.dev.Root(); r != nil {
				return belowFilters(r), nil
			}
		}
		if n := d.h.Graph().NodeByName(device); n != nil {
			return n, nil
		}
	}
	return nil, Errorf("Cannot find device='%s' nor node-name='%s'", device, device)
}

// driveTarget is a target a drive-* command opened: its device holds
// the node until release drops that hold.
type driveTarget struct {
	d    *Daemon
	dev  *host.Device
	node string
	once bool
}

// release drops the target device's hold on its node: the node goes
// away unless another parent uses it (a mirror's pivot moved the
// source's parents onto it). It may run on the main Context (a job's
// AfterEnd), where a device cannot be closed: the front end lets go of
// the node there and then, and the device's close runs on its own.
func (t *driveTarget) release() error {
	if t == nil || t.once {
		return nil
	}
	t.once = true
	err := t.dev.FrontEnd().Remove()
	t.d.bg.Add(1)
	go func() {
		defer t.d.bg.Done()
		_ = t.dev.Close()
	}()
	return err
}

// createErr words a failed image creation: a lock conflict as QEMU's
// `Failed to get "write" lock`.
func createErr(path string, err error) error {
	var le *raw.LockError
	if errors.As(err, &le) {
		return Errorf("%s", le.Sentence())
	}
	return Errorf("Could not create '%s': %s", path, openErrText(err))
}

// formatting prints QEMU's "Formatting" line for an image the daemon is
// about to make (qemu-storage-daemon prints it on its standard output,
// where a stdio monitor's replies go too), if the daemon has an output.
func (d *Daemon) formatting(path string, co host.CreateOptions) {
	if d.out == nil {
		return
	}
	var line string
	switch co.Format {
	case "raw":
		line = fmt.Sprintf("Formatting '%s', fmt=raw size=%d", path, co.Size)
	case "qcow2":
		line = format.FormattingLine(path, co.Size, &format.ImageOptions{Create: format.CreateOptions{
			ClusterSize: co.ClusterSize, BackingFile: co.BackingFile, BackingFormat: co.BackingFormat}}, nil)
	default:
		return
	}
	d.out(line)
}

// openDriveTarget makes (mode absolute-paths) or finds (existing) the
// target image and opens it as a node. backing, with absolute-paths, is
// the node whose file the new image names as its backing file; over
// (mirror) opens the new image over that node instead of opening the
// chain again from the header.
func (d *Daemon) openDriveTarget(path, format, mode, nodeName string, size int64, backing *block.Node, over bool) (*driveTarget, error) {
	if nodeName != "" {
		if err := checkNodeName(nodeName); err != nil {
			return nil, err
		}
		if d.nodes[nodeName] != nil || d.h.Graph().NodeByName(nodeName) != nil {
			return nil, Errorf("Duplicate nodes with node-name='%s'", nodeName)
		}
	}
	if mode != "existing" {
		co := host.CreateOptions{Format: format, Size: size}
		if backing != nil {
			if format == "raw" {
				return nil, Errorf("Backing file not supported for file format 'raw'")
			}
			_, co.BackingFile = driverName(backing)
			co.BackingFormat = sourceFormat(backing)
			if co.BackingFile == path {
				return nil, Errorf("Error: Trying to create an image with the same filename as the backing file")
			}
		}
		d.formatting(path, co)
		if err := d.h.Create(path, co); err != nil {
			return nil, createErr(path, err)
		}
	}
	if nodeName == "" {
		d.anon++
		nodeName = fmt.Sprintf("#block%03d", d.anon)
	}
	oo := host.OpenOptions{Name: nodeName, Format: format, Callbacks: d.callbacks(nodeName)}
	var dev *host.Device
	var err error
	switch {
	case mode != "existing" && backing != nil && over:
		dev, err = d.h.OpenDeviceOver(path, oo, backing)
		if err == nil {
			dev.FrontEnd().AllowContextChange(true)
		}
	case mode != "existing":
		oo.NoBacking = true // a full copy needs no backing; a backup's target is only written
		dev, err = d.open(path, oo)
	default:
		dev, err = d.open(path, oo)
	}
	if err != nil {
		return nil, Errorf("Could not open '%s': %v", path, openErrText(err))
	}
	return &driveTarget{d: d, dev: dev, node: nodeName}, nil
}

// openFailure is QEMU's message for an image blockdev-add could not open:
// "Could not open 'PATH': REASON" in the C library's words where the
// system refused (before, ringblk's chain of causes: "block: open on PATH
// at 0: io: open PATH: no such file or directory"), and QEMU's own
// sentence for a file that is not qcow2.
func openFailure(path string, err error) *Error {
	if errors.Is(err, format.ErrNotQcow2) {
		return Errorf("Image is not in qcow2 format")
	}
	return Errorf("Could not open '%s': %v", path, openErrText(err))
}

// openErrText is the reason part of QEMU's "Could not open" message.
func openErrText(err error) string {
	var le *raw.LockError
	switch {
	case errors.As(err, &le):
		return le.Sentence()
	case errors.Is(err, fs.ErrNotExist):
		return "No such file or directory"
	}
	// The C library's text of the errno, as QEMU words it ("Permission
	// denied", "Is a directory"), where the error carries one.
	var en syscall.Errno
	if errors.As(err, &en) {
		return chain.Strerror{Errno: en}.Error()
	}
	return err.Error()
}

// newDriveMirror is drive-mirror: QEMU's qmp_drive_mirror.
func (d *Daemon) newDriveMirror(a *DriveMirrorArgs) (*job.Job, error) {
	if err := checkEnum("sync", a.Sync, "top", "full", "none"); err != nil {
		return nil, err
	}
	if err := checkEnum("mode", a.Mode, "existing", "absolute-paths"); err != nil {
		return nil, err
	}
	if err := checkEnum("copy-mode", a.CopyMode, "background", "write-blocking"); err != nil {
		return nil, err
	}
	if err := checkJobEnums(a.JobArgs); err != nil {
		return nil, err
	}
	src, err := d.driveSource(a.Device)
	if err != nil {
		return nil, err
	}
	if err := d.checkNoJob(nil, src); err != nil {
		return nil, err
	}
	if a.Replaces != "" {
		if a.NodeName == "" {
			return nil, Errorf("a node-name must be provided when replacing a named node of the graph")
		}
		return nil, Errorf("Parameter 'replaces' is not supported by this daemon")
	}
	if a.Sync == "none" {
		// QEMU's target would take the source itself as its backing
		// node; the daemon's mirror cannot put it there.
		return nil, Errorf("Parameter 'sync': drive-mirror with 'none' is not supported by this daemon (blockdev-mirror is)")
	}
	if a.Unmap != nil && !*a.Unmap {
		return nil, Errorf("Parameter 'unmap': false is not supported by this daemon")
	}
	mode, format, err := targetModeFormat(a.Mode, a.Format, src)
	if err != nil {
		return nil, err
	}
	sync := a.Sync
	backing := backingOf(src)
	if backing == nil && sync == "top" {
		sync = "full"
	}
	var base *block.Node
	if sync == "top" {
		base = backing
	}
	size, err := src.Length()
	if err != nil {
		return nil, Errorf("bdrv_getlength failed: %v", err)
	}
	tgt, err := d.openDriveTarget(a.Target, format, mode, a.NodeName, size, base, true)
	if err != nil {
		return nil, err
	}
	ma := &MirrorArgs{JobArgs: a.JobArgs, Device: a.Device, Target: tgt.node, Sync: sync,
		Granularity: a.Granularity, BufSize: a.BufSize, CopyMode: a.CopyMode, release: tgt.release,
		targetZeroed: mode != "existing"}
	j, _, err := d.newMirrorDriver(ma)
	if err != nil {
		return nil, errors.Join(err, tgt.release())
	}
	return j, nil
}

// driveBackupTarget checks drive-backup's arguments and makes its target:
// QEMU's drive_backup_prepare up to the job's creation. It returns
// blockdev-backup's arguments for the target it opened.
func (d *Daemon) driveBackupTarget(a *DriveBackupArgs) (*BackupArgs, *driveTarget, error) {
	if err := checkEnum("sync", a.Sync, "top", "full", "none", "incremental", "bitmap"); err != nil {
		return nil, nil, err
	}
	if err := checkEnum("mode", a.Mode, "existing", "absolute-paths"); err != nil {
		return nil, nil, err
	}
	if err := checkEnum("bitmap-mode", a.BitmapMode, "on-success", "never", "always"); err != nil {
		return nil, nil, err
	}
	if err := checkJobEnums(a.JobArgs); err != nil {
		return nil, nil, err
	}
	src, err := d.driveSource(a.Device)
	if err != nil {
		return nil, nil, err
	}
	if err := d.checkNoJob(backupSource, src); err != nil {
		return nil, nil, err
	}
	if a.Sync == "none" {
		// QEMU's target would take the source as its backing node (image
		// fleecing); the daemon's backup has no sync=none.
		return nil, nil, Errorf("Parameter 'sync': 'none' is not supported by this daemon (full, top, incremental, bitmap)")
	}
	if a.Compress || a.FilterNode != "" {
		return nil, nil, Errorf("Parameters 'compress' and 'filter-node-name' are not supported")
	}
	mode, format, err := targetModeFormat(a.Mode, a.Format, src)
	if err != nil {
		return nil, nil, err
	}
	sync := a.Sync
	var base *block.Node
	if sync == "top" {
		if base = backingOf(src); base == nil {
			sync = "full"
		}
	}
	size, err := src.Length()
	if err != nil {
		return nil, nil, Errorf("bdrv_getlength failed: %v", err)
	}
	tgt, err := d.openDriveTarget(a.Target, format, mode, "", size, base, false)
	if err != nil {
		return nil, nil, err
	}
	ba := &BackupArgs{JobArgs: a.JobArgs, Device: a.Device, Target: tgt.node, Sync: sync,
		Bitmap: a.Bitmap, BitmapMode: a.BitmapMode, release: tgt.release}
	return ba, tgt, nil
}

// driveBackupAction is drive-backup, alone or as a transaction action:
// prepare makes the target and the job (blockdev-backup's), commit
// starts the job; an abort drops the job and with it the target node
// (the image file stays, as QEMU leaves it).
type driveBackupAction struct {
	d     *Daemon
	a     DriveBackupArgs
	group *job.Txn
	tgt   *driveTarget
	backupAction
}

func (b *driveBackupAction) Prepare() error {
	ba, tgt, err := b.d.driveBackupTarget(&b.a)
	if err != nil {
		return err
	}
	b.tgt = tgt
	b.backupAction = backupAction{d: b.d, a: *ba, group: b.group}
	if err := b.backupAction.Prepare(); err != nil {
		return errors.Join(err, tgt.release())
	}
	return nil
}

// Abort drops the job that never ran; its end releases the target.
func (b *driveBackupAction) Abort() {
	b.backupAction.Abort()
	_ = b.tgt.release()
}

// Clean ends the drained section of a prepared backup.
func (b *driveBackupAction) Clean() {
	if b.backupAction.d != nil {
		b.backupAction.Clean()
	}
}
