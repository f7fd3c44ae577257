package qmp

import (
	"errors"
	"fmt"
	"github.com/ringblk/ringblk/job"
	"maps"
	"math"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/blkdebug"
	nbdclient "github.com/ringblk/ringblk/drivers/nbd"
	"github.com/ringblk/ringblk/drivers/null"
	"github.com/ringblk/ringblk/drivers/qcow2"
	qcow2fmt "github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/host"
	"github.com/ringblk/ringblk/nbd"
)

// Missing lists the block-layer commands of qemu-storage-daemon 7.2 this
// daemon does not have (its query-commands compared with ours); they
// answer CommandNotFound like any unknown command.
var Missing = []string{"blockdev-snapshot-delete-internal-sync", "change-backing-file",
	"x-blockdev-amend", "x-blockdev-change", "x-debug-query-block-graph"}

type nodeNameArg struct {
	NodeName string `json:"node-name"`
}

type objectAddArgs struct {
	QOMType     string `json:"qom-type"`
	ID          string `json:"id"`
	PollMaxNS   int64  `json:"poll-max-ns" qmp:"optional"`
	PollGrow    int64  `json:"poll-grow" qmp:"optional"`
	PollShrink  int64  `json:"poll-shrink" qmp:"optional"`
	AIOMaxBatch int64  `json:"aio-max-batch" qmp:"optional"`
}

type idArg struct {
	ID string `json:"id"`
}

type setIOThreadArgs struct {
	NodeName string     `json:"node-name"`
	IOThread NullString `json:"iothread"`
	Force    bool       `json:"force" qmp:"optional"`
}

type resizeArgs struct {
	Device   string `json:"device" qmp:"optional"`
	NodeName string `json:"node-name" qmp:"optional"`
	Size     int64  `json:"size"`
}

// throttleArgs are BlockIOThrottle's members: QAPI integers (a fraction
// or an out-of-range number is a type error, as in QEMU), the optional
// ones pointers so that an explicit 0 is told from an absent member.
type throttleArgs struct {
	Device       string `json:"device" qmp:"optional"`
	ID           string `json:"id" qmp:"optional"`
	BPS          int64  `json:"bps"`
	BPSRd        int64  `json:"bps_rd"`
	BPSWr        int64  `json:"bps_wr"`
	IOPS         int64  `json:"iops"`
	IOPSRd       int64  `json:"iops_rd"`
	IOPSWr       int64  `json:"iops_wr"`
	BPSMax       *int64 `json:"bps_max" qmp:"optional"`
	BPSRdMax     *int64 `json:"bps_rd_max" qmp:"optional"`
	BPSWrMax     *int64 `json:"bps_wr_max" qmp:"optional"`
	IOPSMax      *int64 `json:"iops_max" qmp:"optional"`
	IOPSRdMax    *int64 `json:"iops_rd_max" qmp:"optional"`
	IOPSWrMax    *int64 `json:"iops_wr_max" qmp:"optional"`
	IOPSSize     *int64 `json:"iops_size" qmp:"optional"`
	Group        string `json:"group" qmp:"optional"`
	BPSMaxLen    *int64 `json:"bps_max_length" qmp:"optional"`
	BPSRdMaxLen  *int64 `json:"bps_rd_max_length" qmp:"optional"`
	BPSWrMaxLen  *int64 `json:"bps_wr_max_length" qmp:"optional"`
	IOPSMaxLen   *int64 `json:"iops_max_length" qmp:"optional"`
	IOPSRdMaxLen *int64 `json:"iops_rd_max_length" qmp:"optional"`
	IOPSWrMaxLen *int64 `json:"iops_wr_max_length" qmp:"optional"`
}

type createArgs struct {
	JobID   string        `json:"job-id"`
	Options createOptions `json:"options"`
}

type createOptions struct {
	Driver        string   `json:"driver"`
	Filename      string   `json:"filename"`
	File          *FileRef `json:"file"`
	Size          int64    `json:"size"`
	BackingFile   string   `json:"backing-file"`
	BackingFmt    string   `json:"backing-fmt"`
	ClusterSize   int64    `json:"cluster-size"`
	Preallocation string   `json:"preallocation"`
	Version       string   `json:"version"`
	LazyRefcounts bool     `json:"lazy-refcounts"`
}

type nbdStartArgs struct {
	Addr       SocketAddress `json:"addr"`
	TLSCreds   string        `json:"tls-creds" qmp:"optional"`
	MaxConns   int           `json:"max-connections" qmp:"optional"`
	HandshakeT int           `json:"handshake-max-seconds" qmp:"optional"`
}

type exportAddArgs struct {
	Type          string `json:"type"`
	ID            string `json:"id"`
	NodeName      string `json:"node-name"`
	Name          string `json:"name" qmp:"optional"`
	Writable      bool   `json:"writable" qmp:"optional"`
	Description   string `json:"description" qmp:"optional"`
	WriteThrough  bool   `json:"writethrough" qmp:"optional"`
	IOThread      string `json:"iothread" qmp:"optional"`
	FixedIOThread bool   `json:"fixed-iothread" qmp:"optional"`
	// Bitmaps are dirty bitmaps offered as qemu:dirty-bitmap:NAME, found
	// on the node or below it.
	Bitmaps []BitmapOrStr `json:"bitmaps" qmp:"optional"`
	// QEMU's other export types' members (fuse, vhost-user-blk,
	// vduse-blk), taken so that such an export is refused for its type,
	// not for a member ("Parameter 'mountpoint' is unexpected").
	Mountpoint       string `json:"mountpoint" qmp:"optional"`
	Growable         *bool  `json:"growable" qmp:"optional"`
	AllowOther       string `json:"allow-other" qmp:"optional"`
	Addr             any    `json:"addr" qmp:"optional"`
	LogicalBlockSize *int64 `json:"logical-block-size" qmp:"optional"`
	NumQueues        *int64 `json:"num-queues" qmp:"optional"`
	QueueSize        *int64 `json:"queue-size" qmp:"optional"`
	Serial           string `json:"serial" qmp:"optional"`
}

type nbdServerAddArgs struct {
	Device      string `json:"device"`
	Name        string `json:"name" qmp:"optional"`
	Description string `json:"description" qmp:"optional"`
	Writable    bool   `json:"writable" qmp:"optional"`
	Bitmap      string `json:"bitmap" qmp:"optional"`
}

type nbdServerRemoveArgs struct {
	Name string `json:"name"`
	Mode string `json:"mode" qmp:"optional"`
}

type exportDelArgs struct {
	ID   string `json:"id"`
	Mode string `json:"mode" qmp:"optional"`
}

type flatArg struct {
	Flat bool `json:"flat" qmp:"optional"`
}

func (d *Daemon) register(r *Registry) {
	d.registerJobs(r)
	r.Register("query-version", nil, func(*Client, any) (any, error) {
		return map[string]any{"qemu": map[string]int{"major": greetingQEMUVersion, "minor": 0, "micro": 0}, "package": "ringblk"}, nil
	})
	r.Register("query-commands", nil, func(c *Client, _ any) (any, error) {
		var out []map[string]string
		for _, n := range append(r.Names(), "qmp_capabilities") {
			out = append(out, map[string]string{"name": n})
		}
		return out, nil
	})
	r.Register("query-status", nil, func(*Client, any) (any, error) {
		return map[string]any{"running": true, "status": "running", "singlestep": false}, nil
	})
	r.Register("quit", nil, func(*Client, any) (any, error) {
		// The jobs and exports end before the reply, so their events
		// come first, as from qemu-storage-daemon 7.2 (qemu-iotests
		// qsd-jobs: BLOCK_JOB_CANCELLED and BLOCK_EXPORT_DELETED, then
		// quit's return). Shutdown's error is the host's (Quit's
		// receiver calls Shutdown again and gets it).
		_ = d.Shutdown()
		d.quitOnce.Do(func() { close(d.quit) })
		return nil, nil
	})
	r.Register("blockdev-add", &AddOptions{}, func(_ *Client, a any) (any, error) {
		return nil, d.blockdevAdd(a.(*AddOptions))
	})
	r.Register("blockdev-del", &nodeNameArg{}, func(_ *Client, a any) (any, error) {
		return nil, d.blockdevDel(a.(*nodeNameArg).NodeName)
	})
	r.Register("blockdev-reopen", &reopenArgs{}, func(_ *Client, a any) (any, error) {
		return nil, d.blockdevReopen(a.(*reopenArgs))
	})
	r.Register("blockdev-create", &createArgs{}, func(_ *Client, a any) (any, error) {
		return nil, d.blockdevCreateJob(a.(*createArgs))
	})
	r.Register("query-block", nil, func(*Client, any) (any, error) { return d.queryBlock(), nil })
	r.Register("query-named-block-nodes", &flatArg{}, func(*Client, any) (any, error) {
		d.reapImplicit()
		return d.queryNodes(), nil
	})
	r.Register("query-blockstats", &struct {
		QueryNodes bool `json:"query-nodes" qmp:"optional"`
	}{}, func(*Client, any) (any, error) { return d.queryBlockstats(), nil })
	r.Register("query-iothreads", nil, func(*Client, any) (any, error) { return d.queryIOThreads(), nil })
	r.Register("object-add", &objectAddArgs{}, func(_ *Client, a any) (any, error) {
		o := a.(*objectAddArgs)
		if o.QOMType != "iothread" {
			return nil, Errorf("Invalid parameter 'qom-type': object type '%s' is not supported (iothread)", o.QOMType)
		}
		return nil, d.addIOThread(o.ID)
	})
	r.Register("object-del", &idArg{}, func(_ *Client, a any) (any, error) {
		return nil, d.delIOThread(a.(*idArg).ID)
	})
	r.Register("x-blockdev-set-iothread", &setIOThreadArgs{}, func(_ *Client, a any) (any, error) {
		return nil, d.setIOThread(a.(*setIOThreadArgs))
	})
	r.Register("block-set-write-threshold", &writeThresholdArgs{}, func(_ *Client, a any) (any, error) {
		return nil, d.setWriteThreshold(a.(*writeThresholdArgs))
	})
	r.Register("block_resize", &resizeArgs{}, func(_ *Client, a any) (any, error) {
		x := a.(*resizeArgs)
		b, qerr := d.lookup(x.Device, x.NodeName)
		if qerr != nil {
			return nil, qerr
		}
		if err := b.top(); err != nil {
			return nil, err
		}
		if x.Size < 0 {
			return nil, Errorf("Parameter 'size' expects a >0 size")
		}
		if typ := d.jobOn(b); typ != "" {
			// QEMU's op blockers refuse it too: a mirror's target resized
			// under the job would give the device another size at the
			// pivot, a source would outgrow the job's bitmap.
			return nil, Errorf("Node '%s' is busy: block device is in use by block job: %s", b.name, typ)
		}
		if err := b.dev.Resize(x.Size); err != nil {
			return nil, resizeErr(err)
		}
		return nil, nil
	})
	r.Register("block-set-io-throttle", &throttleArgs{}, func(_ *Client, a any) (any, error) {
		return nil, d.setThrottle(a.(*throttleArgs))
	})
	r.Register("transaction", &TransactionArgs{}, func(_ *Client, a any) (any, error) {
		return nil, d.Transaction(a.(*TransactionArgs))
	})
	r.Register("blockdev-snapshot-sync", &SnapshotSyncArgs{}, d.single("blockdev-snapshot-sync"))
	r.Register("blockdev-snapshot", &SnapshotArgs{}, d.single("blockdev-snapshot"))
	r.Register("blockdev-snapshot-internal-sync", &InternalSnapshotArgs{}, d.single("blockdev-snapshot-internal-sync"))
	r.Register("nbd-server-start", &nbdStartArgs{}, func(_ *Client, a any) (any, error) {
		x := a.(*nbdStartArgs)
		if x.TLSCreds != "" {
			return nil, Errorf("TLS is not supported by this daemon")
		}
		return nil, d.NBDServerStart(x.Addr)
	})
	r.Register("nbd-server-stop", nil, func(*Client, any) (any, error) { return nil, d.nbdServerStop() })
	r.Register("block-export-add", &exportAddArgs{}, func(_ *Client, a any) (any, error) {
		x := a.(*exportAddArgs)
		switch x.Type {
		case "nbd":
		case "fuse", "vhost-user-blk", "vduse-blk":
			return nil, Errorf("Export type '%s' is not supported by ringblk (nbd only)", x.Type)
		default:
			return nil, Errorf("Parameter 'type' does not accept value '%s'", x.Type)
		}
		for _, m := range []struct {
			name  string
			given bool
		}{{"mountpoint", x.Mountpoint != ""}, {"growable", x.Growable != nil}, {"allow-other", x.AllowOther != ""},
			{"addr", x.Addr != nil}, {"logical-block-size", x.LogicalBlockSize != nil}, {"num-queues", x.NumQueues != nil},
			{"queue-size", x.QueueSize != nil}, {"serial", x.Serial != ""}} {
			if m.given {
				// Another type's member, as QEMU words it for nbd.
				return nil, Errorf("Parameter '%s' is unexpected", m.name)
			}
		}
		if x.IOThread != "" {
			// As QEMU does: the node moves to the export's IOThread.
			if err := d.setIOThread(&setIOThreadArgs{NodeName: x.NodeName, IOThread: NullString{S: x.IOThread}}); err != nil {
				return nil, err
			}
		}
		var names []string
		for _, b := range x.Bitmaps {
			if b.Node != "" {
				// BlockDirtyBitmap: the bitmap of that node, which the
				// export finds below its own node (a fleecing target's
				// backing is the source that holds it).
				n := d.h.Graph().NodeByName(b.Node)
				if n == nil {
					return nil, Errorf("Node '%s' not found", b.Node)
				}
				if n.Bitmap(b.Name) == nil {
					return nil, Errorf("Bitmap '%s' is not found", b.Name)
				}
			}
			names = append(names, b.Name)
		}
		return nil, d.ExportAdd(x.ID, x.NodeName, x.Name, x.Writable, names...)
	})
	// QEMU's older pair (deprecated there, kept by qemu-storage-daemon
	// 7.2, used by older libvirt): an NBD export whose id is its name.
	r.Register("nbd-server-add", &nbdServerAddArgs{}, func(_ *Client, a any) (any, error) {
		x := a.(*nbdServerAddArgs)
		if d.nbdSrv == nil {
			return nil, Errorf("NBD server not running") // checked first here, unlike block-export-add
		}
		if _, qerr := d.rootOf(x.Device); qerr != nil {
			return nil, Errorf("Cannot find device='%s' nor node-name='%s'", x.Device, x.Device)
		}
		name := x.Name
		if name == "" {
			name = x.Device
		}
		var bitmaps []string
		if x.Bitmap != "" {
			bitmaps = []string{x.Bitmap}
		}
		return nil, d.ExportAdd(name, x.Device, name, x.Writable, bitmaps...)
	})
	r.Register("nbd-server-remove", &nbdServerRemoveArgs{}, func(_ *Client, a any) (any, error) {
		x := a.(*nbdServerRemoveArgs)
		return nil, d.exportDel(x.Name, x.Mode)
	})
	r.Register("block-export-del", &exportDelArgs{}, func(_ *Client, a any) (any, error) {
		x := a.(*exportDelArgs)
		return nil, d.exportDel(x.ID, x.Mode)
	})
	r.Register("query-block-exports", nil, func(*Client, any) (any, error) {
		out := []map[string]any{}
		list := slices.Collect(maps.Values(d.exports))
		slices.SortFunc(list, func(a, b *export) int { return b.seq - a.seq })
		for _, e := range list {
			out = append(out, map[string]any{"id": e.id, "type": "nbd", "node-name": e.node, "shutting-down": false})
		}
		return out, nil
	})
}

// single runs a command as the one action of a transaction, with the
// arguments the command decoded.
func (d *Daemon) single(typ string) Handler {
	return func(_ *Client, a any) (any, error) {
		return nil, d.Transaction(&TransactionArgs{Actions: []TransactionAction{{Type: typ, args: a}}})
	}
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func (d *Daemon) setIOThread(x *setIOThreadArgs) error {
	b, qerr := d.lookup("", x.NodeName)
	if qerr != nil {
		return qerr
	}
	if err := b.top(); err != nil {
		return err
	}
	i := -1
	if !x.IOThread.Null {
		var ok bool
		if i, ok = d.iothreads[x.IOThread.S]; !ok {
			return Errorf("Cannot find iothread %s", x.IOThread.S)
		}
	}
	if err := b.dev.SetContext(i); err != nil {
		return Errorf("%v", err)
	}
	return nil
}

func (d *Daemon) setThrottle(x *throttleArgs) error {
	name := x.Device
	if name == "" {
		name = x.ID
	}
	b := d.nodes[name]
	if b == nil || b.usedBy != "" {
		return notFound(name) // QEMU looks the device up by name: DeviceNotFound
	}
	buckets, err := x.buckets()
	if err != nil {
		return err
	}
	// A bucket holds a burst's worth: max units per second for
	// burst_length seconds (QEMU's bucket_size), at most 1e15 by the
	// check above; without max the block layer's default, a tenth of a
	// second of the rate, is QEMU's too.
	var capacity [6]float64
	for i, b := range buckets {
		capacity[i] = float64(b.max) * float64(b.length)
	}
	l := host.ThrottleLimits{
		BPSTotal: float64(buckets[0].avg), BPSRead: float64(buckets[1].avg), BPSWrite: float64(buckets[2].avg),
		IOPSTotal: float64(buckets[3].avg), IOPSRead: float64(buckets[4].avg), IOPSWrite: float64(buckets[5].avg),
		BPSTotalBurst: capacity[0], BPSReadBurst: capacity[1], BPSWriteBurst: capacity[2],
		IOPSTotalBurst: capacity[3], IOPSReadBurst: capacity[4], IOPSWriteBurst: capacity[5]}
	if x.IOPSSize != nil && *x.IOPSSize > 0 {
		// QEMU's op_size (a negative one is a huge unsigned size: no
		// request is larger, as with none).
		l.IOPSSize = float64(*x.IOPSSize)
	}
	if err := b.dev.SetThrottle(x.Group, l); err != nil {
		return Errorf("%v", err)
	}
	return nil
}

// throttleBucket is one of QEMU's leaky buckets as block-set-io-throttle
// fills it: the QAPI integers converted to unsigned as C converts them,
// so a negative value is a huge one.
type throttleBucket struct{ avg, max, length uint64 }

// throttleValueMax is QEMU's THROTTLE_VALUE_MAX.
const throttleValueMax = 1000000000000000

// buckets checks x as QEMU 7.2's throttle_is_valid does, in its order and
// words, and returns the buckets in QEMU's order: bps total, read, write,
// then iops total, read, write.
func (x *throttleArgs) buckets() ([6]throttleBucket, error) {
	opt := func(p *int64, def uint64) uint64 {
		if p == nil {
			return def
		}
		return uint64(*p)
	}
	b := [6]throttleBucket{
		{uint64(x.BPS), opt(x.BPSMax, 0), opt(x.BPSMaxLen, 1)},
		{uint64(x.BPSRd), opt(x.BPSRdMax, 0), opt(x.BPSRdMaxLen, 1)},
		{uint64(x.BPSWr), opt(x.BPSWrMax, 0), opt(x.BPSWrMaxLen, 1)},
		{uint64(x.IOPS), opt(x.IOPSMax, 0), opt(x.IOPSMaxLen, 1)},
		{uint64(x.IOPSRd), opt(x.IOPSRdMax, 0), opt(x.IOPSRdMaxLen, 1)},
		{uint64(x.IOPSWr), opt(x.IOPSWrMax, 0), opt(x.IOPSWrMaxLen, 1)},
	}
	for _, k := range []int{0, 3} { // total beside read or write: avg, then max
		if (b[k].avg != 0 && (b[k+1].avg != 0 || b[k+2].avg != 0)) ||
			(b[k].max != 0 && (b[k+1].max != 0 || b[k+2].max != 0)) {
			return b, Errorf("bps/iops/max total values and read/write values cannot be used at the same time")
		}
	}
	if opt(x.IOPSSize, 0) != 0 && b[3].avg == 0 && b[4].avg == 0 && b[5].avg == 0 {
		return b, Errorf("iops size requires an iops value to be set")
	}
	for _, k := range b {
		switch {
		case k.avg > throttleValueMax || k.max > throttleValueMax:
			return b, Errorf("bps/iops/max values must be within [0, %d]", throttleValueMax)
		case k.length == 0:
			return b, Errorf("the burst length cannot be 0")
		case k.length > 1 && k.max == 0:
			return b, Errorf("burst length set without burst rate")
		case k.max != 0 && k.length > throttleValueMax/k.max:
			return b, Errorf("burst length too high for this burst rate")
		case k.max != 0 && k.avg == 0:
			return b, Errorf("bps_max/iops_max require corresponding bps/iops values")
		case k.max != 0 && k.max < k.avg:
			return b, Errorf("bps_max/iops_max cannot be lower than bps/iops")
		}
	}
	return b, nil
}

// blockdevCreate creates an image synchronously: the command returns when
// the file is written (QEMU runs it as a job; there is no job package yet,
// so no JOB_STATUS_CHANGE events and no job-dismiss are needed).
// createJob is blockdev-create's job. As in QEMU, creating an image is a
// job of type "create": the command answers at once, the outcome is the
// job's (its error in query-jobs and in the concluded state), and the job
// stays concluded until job-dismiss. Only JOB_STATUS_CHANGE events are
// sent for it: it is not a block job. The creation itself runs before the
// job starts, on the command's goroutine, never on a Context's loop (a
// preallocated image can take long to write).
type createJob struct{ err error }

func (c *createJob) Type() string                         { return "create" }
func (c *createJob) Iterate(*job.Iteration) (bool, error) { return true, c.err }

// blockdevCreateJob checks what QEMU checks before it makes the job (the
// job ID, a driver that can create images), then runs the creation as
// the job's work.
func (d *Daemon) blockdevCreateJob(x *createArgs) error {
	if err := d.checkJobID(x.JobID); err != nil {
		return err
	}
	switch x.Options.Driver {
	case "file", "qcow2":
	default:
		return Errorf("Driver '%s' does not support blockdev-create here (file, qcow2)", x.Options.Driver)
	}
	// Arguments the schema requires are checked before the job exists, as
	// QEMU's argument parser does; the rest is the job's outcome.
	o := x.Options
	switch {
	case o.Driver == "file" && o.Filename == "":
		return Errorf("Parameter 'filename' is missing")
	case o.Driver == "qcow2" && o.File == nil:
		return Errorf("Parameter 'file' is missing")
	case o.Driver == "qcow2" && o.Size <= 0:
		return Errorf("Parameter 'size' is missing")
	}
	cj := &createJob{}
	j, err := d.jobs.New(job.Options{ID: x.JobID, ManualDismiss: true}, cj)
	if err != nil {
		return Errorf("%v", err)
	}
	if qerr := d.blockdevCreate(x); qerr != nil {
		cj.err = errors.New(qerr.Error())
		var e *Error
		if errors.As(qerr, &e) {
			cj.err = errors.New(e.Desc)
		}
	}
	return d.startJob(j, nil)
}

func (d *Daemon) blockdevCreate(x *createArgs) error {
	o := x.Options
	switch o.Driver {
	case "file":
		if o.Filename == "" {
			return Errorf("Parameter 'filename' is missing")
		}
		if o.Size < 0 {
			return Errorf("Invalid size %d", o.Size)
		}
		if o.Size > 0 {
			if err := d.h.Create(o.Filename, host.CreateOptions{Format: "raw", Size: o.Size, Preallocation: o.Preallocation}); err != nil {
				return Errorf("Could not create '%s': %v", o.Filename, err)
			}
			return nil
		}
		if err := os.WriteFile(o.Filename, nil, 0o644); err != nil {
			return Errorf("Could not create '%s': %v", o.Filename, err)
		}
		return nil
	case "qcow2":
		if o.File == nil {
			return Errorf("Parameter 'file' is missing")
		}
		if o.Size <= 0 {
			return Errorf("Parameter 'size' is missing")
		}
		path := o.File.Filename
		var fb *blockdev
		if o.File.Ref != "" {
			fb = d.nodes[o.File.Ref]
			if fb == nil {
				return nodeNotFound(o.File.Ref)
			}
			if fb.driver != "file" || fb.usedBy != "" || d.exportOf(fb.name) != "" {
				return Errorf("Node '%s' is not an unused file node", fb.name)
			}
			if typ := d.jobOn(fb); typ != "" {
				// Its device is closed while the image is written.
				return Errorf("Node '%s' is busy: block device is in use by block job: %s", fb.name, typ)
			}
			path = fb.filename
			if err := fb.dev.Close(); err != nil {
				return Errorf("%v", err)
			}
		}
		err := d.h.Create(path, host.CreateOptions{Format: "qcow2", Size: o.Size, BackingFile: o.BackingFile,
			BackingFormat: o.BackingFmt, ClusterSize: o.ClusterSize, Preallocation: o.Preallocation})
		if fb != nil {
			if dev, rerr := d.open(fb.filename, fb.opts); rerr == nil {
				d.mu.Lock()
				fb.dev = dev
				d.mu.Unlock()
			} else {
				d.lost(fb.name, rerr)
				err = errors.Join(err, fmt.Errorf("reopening '%s' failed: %v", fb.name, rerr))
			}
		}
		if err != nil {
			return Errorf("Could not create '%s': %v", path, err)
		}
		return nil
	}
	return Errorf("Driver '%s' does not support blockdev-create here (file, qcow2)", o.Driver)
}

// ---- queries ----

// primaryFile is the filename of n's file (or filtered) child, "" when
// it has none.
func primaryFile(n *block.Node) string {
	for _, c := range n.Children() {
		if c.Role()&(block.RoleFile|block.RoleFiltered) != 0 && c.Node() != nil {
			_, f := driverName(c.Node())
			return f
		}
	}
	return ""
}

func driverName(n *block.Node) (drv, file string) {
	switch v := n.Driver().(type) {
	case *qcow2.Driver:
		drv, file = "qcow2", primaryFile(n)
	case *raw.Driver:
		drv, file = "file", v.Path()
	case *null.Driver:
		drv, file = "null-co", "null-co://"
	case *nbdclient.Driver:
		drv, file = "nbd", v.Filename()
	case *blkdebug.Driver:
		drv, file = "blkdebug", v.Filename(primaryFile(n))
	case interface{ FormatDriver() string }:
		// The raw format as a node of its own (over blkdebug): its
		// file's name, as QEMU's raw format shows.
		drv, file = v.FormatDriver(), primaryFile(n)
	case interface{ FilterDriver() string }:
		// A job's filter: QEMU names its driver, and its file is the
		// filtered node's.
		drv = v.FilterDriver()
		for _, c := range n.Children() {
			if c.Role()&block.RoleFiltered != 0 && c.Node() != nil {
				_, file = driverName(c.Node())
			}
		}
	default:
		drv = fmt.Sprintf("%T", v)
	}
	return drv, file
}

func depth(n *block.Node) int {
	k := 0
	for c := n.Child(block.RoleBacking); c != nil && c.Node() != nil; c = c.Node().Child(block.RoleBacking) {
		k++
	}
	return k
}

func nodeInfo(n *block.Node) map[string]any {
	drv, file := driverName(n)
	size, _ := n.Length()
	img := map[string]any{"filename": file, "format": drv, "virtual-size": size}
	info := map[string]any{
		"node-name": n.Name(), "drv": drv, "file": file, "ro": n.ReadOnly(),
		"backing_file_depth": depth(n), "encrypted": false, "detect_zeroes": "off",
		"bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0,
		"write_threshold": n.WriteThreshold(), "image": img,
		"cache": map[string]bool{"writeback": true, "direct": false, "no-flush": false},
	}
	if r, ok := n.Driver().(*raw.Driver); ok {
		info["cache"] = map[string]bool{"writeback": r.Options().Cache != raw.CacheWritethrough, "direct": r.Options().Cache == raw.CacheNone, "no-flush": false}
	}
	if bms := n.Bitmaps(); len(bms) > 0 {
		// Newest first, as QEMU lists them (it adds each at the head).
		var list []map[string]any
		for i := len(bms) - 1; i >= 0; i-- {
			b := bms[i]
			list = append(list, map[string]any{"name": b.Name(), "count": b.Count(), "granularity": b.Granularity(),
				"recording": b.Enabled(), "busy": b.Busy(), "persistent": b.Persistent})
		}
		info["dirty-bitmaps"] = list
	}
	if c := n.Child(block.RoleBacking); c != nil && c.Node() != nil {
		_, bf := driverName(c.Node())
		info["backing_file"] = bf
		img["backing-filename"] = bf
	}
	return info
}

func (d *Daemon) queryBlock() []map[string]any {
	out := []map[string]any{}
	for _, name := range sortedKeys(d.nodes) {
		b := d.nodes[name]
		if b.usedBy != "" || b.dev == nil {
			continue
		}
		root := b.dev.Root()
		if root == nil {
			continue
		}
		st, _ := b.dev.IOStatus()
		io := "ok"
		switch st {
		case host.IOStatus(1):
			io = "failed"
		case host.IOStatus(2):
			io = "nospace"
		}
		// A job's filter on top is implicit (no filter-node-name): as in
		// QEMU, "inserted" describes the node under it.
		root = belowFilters(root)
		var info map[string]any
		d.h.Graph().Control(func() { info = nodeInfo(root) })
		d.asQEMU(info)
		out = append(out, map[string]any{"device": name, "qdev": name, "locked": false, "removable": false,
			"io-status": io, "inserted": info, "type": "unknown"})
	}
	return out
}

func (d *Daemon) queryNodes() []map[string]any {
	out := []map[string]any{}
	g := d.h.Graph()
	for _, n := range g.Nodes() {
		var info map[string]any
		g.Control(func() {
			if !n.Closed() {
				info = nodeInfo(n)
			}
		})
		if info != nil {
			out = append(out, info)
			if f := d.asQEMU(info); f != nil {
				out = append(out, f)
			}
		}
	}
	return out
}

// asQEMU corrects a node's entry where ringblk's graph differs from
// QEMU's: the node's detect-zeroes, and a raw format node, which is one
// graph node with its file here (the raw driver reads the file itself)
// and two in QEMU. Its entry then says raw, and the file node's entry,
// which it returns, is made from it under the file node's name, so that
// a client that added "libvirt-1-storage" and "libvirt-1-format" finds
// both. Called with the entry of a graph node.
func (d *Daemon) asQEMU(info map[string]any) map[string]any {
	name, _ := info["node-name"].(string)
	b := d.nodes[name]
	if b == nil {
		// The graph node of a raw node over an inline file with a
		// node-name carries the file's name: the raw node's entry is
		// the one to add.
		for _, x := range d.nodes {
			if x.driver == "raw" && x.spec != nil && x.spec["file.node-name"] == name && info["drv"] == "file" {
				r := maps.Clone(info)
				r["image"] = maps.Clone(info["image"].(map[string]any))
				r["node-name"] = x.name
				d.asQEMU(r)
				return r
			}
		}
		return nil
	}
	info["detect_zeroes"] = [...]string{nbd.DetectZeroesOff: "off", nbd.DetectZeroesOn: "on", nbd.DetectZeroesUnmap: "unmap"}[b.detectZeroes]
	if b.driver != "raw" || info["drv"] != "file" {
		return nil
	}
	var fileName string
	for _, l := range b.lower {
		if f := d.nodes[l]; f != nil && f.role == "file" {
			fileName = f.name
		}
	}
	if b.spec != nil && b.spec["file.node-name"] != "" {
		fileName = "" // the graph node's own entry is the file's
	}
	img, _ := info["image"].(map[string]any)
	file := maps.Clone(info)
	file["image"] = maps.Clone(img)
	file["node-name"], file["detect_zeroes"] = fileName, "off"
	delete(file, "dirty-bitmaps")
	info["drv"] = "raw"
	if img != nil {
		img["format"] = "raw"
	}
	if fileName == "" {
		return nil // an anonymous file: QEMU's "#blockNNN" has no name here
	}
	return file
}

func opStats(s host.Stats) map[string]any {
	ms := func(ns uint64) uint64 { return ns }
	return map[string]any{
		"rd_bytes": s.Read.Bytes, "wr_bytes": s.Write.Bytes, "zone_append_bytes": 0, "unmap_bytes": s.Discard.Bytes,
		"rd_operations": s.Read.Ops, "wr_operations": s.Write.Ops, "flush_operations": s.Flush.Ops,
		"unmap_operations": s.Discard.Ops, "zone_append_operations": 0,
		"rd_total_time_ns": ms(s.Read.TotalNs), "wr_total_time_ns": ms(s.Write.TotalNs),
		"flush_total_time_ns": ms(s.Flush.TotalNs), "unmap_total_time_ns": ms(s.Discard.TotalNs),
		"zone_append_total_time_ns": 0,
		"failed_rd_operations":      s.Read.Errors, "failed_wr_operations": s.Write.Errors,
		"failed_flush_operations": s.Flush.Errors, "failed_unmap_operations": s.Discard.Errors,
		"invalid_rd_operations": 0, "invalid_wr_operations": 0, "invalid_flush_operations": 0,
		"invalid_unmap_operations": 0, "rd_merged": 0, "wr_merged": 0, "unmap_merged": 0,
		"wr_highest_offset": 0, "idle_time_ns": 0, "account_invalid": false, "account_failed": true,
		"timed_stats": []any{},
	}
}

func (d *Daemon) queryBlockstats() []map[string]any {
	out := []map[string]any{}
	for _, name := range sortedKeys(d.nodes) {
		b := d.nodes[name]
		if b.usedBy != "" || b.dev == nil {
			continue
		}
		out = append(out, map[string]any{"device": name, "node-name": name, "qdev": name, "stats": opStats(b.dev.Stats())})
	}
	return out
}

func (d *Daemon) queryIOThreads() []map[string]any {
	out := []map[string]any{}
	for _, id := range sortedKeys(d.iothreads) {
		i := d.iothreads[id]
		out = append(out, map[string]any{"id": id, "thread-id": threadID(d.h.Context(i)),
			"poll-max-ns": 0, "poll-grow": 0, "poll-shrink": 0, "aio-max-batch": 0})
	}
	return out
}

// resizeErr words a failed block_resize. A qcow2 refusal for its bitmaps
// is qemu-storage-daemon's desc: the driver's sentence alone, without
// qemu-img's hint line ("Bitmap 'b0' is inconsistent and cannot be
// used"); anything else keeps ringblk's prefix and cause.
func resizeErr(err error) error {
	var fe *qcow2fmt.FormatError
	if errors.As(err, &fe) && fe.Field == "bitmaps" && fe.Reason != "" {
		msg, _, _ := strings.Cut(fe.Reason, "\n")
		return Errorf("%s", msg)
	}
	return Errorf("Could not resize: %v", err)
}

type writeThresholdArgs struct {
	NodeName       string `json:"node-name"`
	WriteThreshold int64  `json:"write-threshold"` // QAPI uint64: a negative value is read as one past 2^63
}

// setWriteThreshold is block-set-write-threshold: the node named (a file
// node that a raw node reads through is that raw node's graph node here)
// sends BLOCK_WRITE_THRESHOLD once, when a write first ends past the
// threshold, and the threshold is off again, as in QEMU (libvirt's
// virDomainSetBlockThreshold on a thin-provisioned storage node). 0
// turns it off.
func (d *Daemon) setWriteThreshold(a *writeThresholdArgs) error {
	n := d.h.Graph().NodeByName(a.NodeName)
	if n == nil {
		if b := d.nodes[a.NodeName]; b != nil && b.dev != nil {
			n = b.dev.Root()
		}
	}
	if n == nil {
		return Errorf("Device '%s' not found", a.NodeName)
	}
	limit := a.WriteThreshold
	if limit < 0 {
		limit = math.MaxInt64 // beyond any write
	}
	name := a.NodeName
	n.SetWriteThreshold(limit, func(exceeded, limit int64) {
		d.emit("BLOCK_WRITE_THRESHOLD", map[string]any{"node-name": name, "amount-exceeded": exceeded, "write-threshold": limit})
	})
	return nil
}

// BitmapOrStr is QAPI's BlockDirtyBitmapOrStr: a bitmap's name, or the
// node and name of a bitmap ({"node": …, "name": …}).
type BitmapOrStr struct {
	Node, Name string
}

// UnmarshalJSON accepts a string or an object of node and name.
func (b *BitmapOrStr) UnmarshalJSON(p []byte) error {
	if len(p) > 0 && p[0] == '"' {
		return jsonUnmarshal(p, &b.Name)
	}
	var o struct {
		Node string `json:"node"`
		Name string `json:"name"`
	}
	if len(p) == 0 || p[0] != '{' || strictUnmarshal(p, &o) != nil || o.Node == "" || o.Name == "" {
		return Errorf("Invalid parameter type for 'bitmaps', expected: BlockDirtyBitmapOrStr")
	}
	b.Node, b.Name = o.Node, o.Name
	return nil
}
