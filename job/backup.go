package job

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/bitmap"
	"github.com/ringblk/ringblk/block"
)

// BackupSync says what a backup copies.
type BackupSync uint8

const (
	BackupFull         BackupSync = iota // everything
	BackupTop                            // what the source's own layer holds
	BackupIncremental                    // what Bitmap marks; the bitmap restarts on success
	BackupDifferential                   // what Bitmap marks; the bitmap keeps accumulating
	BackupBitmap                         // what Bitmap marks; BitmapMode decides the bitmap's fate
	// BackupNone copies nothing itself: only guest writes copy the old
	// data first (QEMU's fleecing). With it the job opens a read-only
	// snapshot node (Backup.Snapshot) that reads the source as it was at
	// the point in time, for an export; the job runs until completed.
	BackupNone
)

// BitmapMode is QMP's bitmap-mode of a backup with a bitmap.
type BitmapMode uint8

const (
	OnSuccess BitmapMode = iota // on success the bitmap holds only writes made during the backup
	Always                      // the copied part is taken out of the bitmap even on failure
	Never                       // the bitmap is never reset (differential)
)

// BackupOptions configure a backup (blockdev-backup).
type BackupOptions struct {
	Options
	Source, Target *block.Node
	Sync           BackupSync
	// Bitmap names a bitmap of Source: what incremental, differential
	// and bitmap syncs copy; with full or top it is only synchronised
	// per BitmapMode.
	Bitmap     string
	BitmapMode BitmapMode
	// CopyBitmap, with sync=bitmap and no Bitmap, selects the clusters
	// to copy and is only read (a checkpoint's frozen changes).
	CopyBitmap *bitmap.Bitmap
	// ClusterSize is the copy-before-write unit (default 64 KiB);
	// MaxRequest and Parallel as for a mirror.
	ClusterSize int64
	MaxRequest  int64
	Parallel    int
	// Drained: the caller holds a drained section of Source already (a
	// checkpoint): setup opens none.
	Drained bool
	// UntilCancelled, with sync=none, is QEMU's own sync=none (image
	// fleecing through QMP): no snapshot node (the target, an overlay of
	// Source, is what a client reads), never ready, and the job ends only
	// when cancelled.
	UntilCancelled bool
}

// blockCopy is what the backup job and its copy-before-write filter share
// (QEMU's BlockCopyState): the clusters still to copy, and the locks that
// keep the job and a guest write from copying the same cluster at once.
// Bits are cleared only by a lock holder after the copy, so a clear bit
// means the point-in-time data is already on the target.
type blockCopy struct {
	g       *block.Graph
	cp      *bitmap.Bitmap
	locks   ranges
	size    int64
	cluster int64
	cbw     atomic.Int64 // bytes copied before guest writes
	ended   atomic.Bool  // the job is over: snapshot reads fail
	// progress, when set, is told of each copy before a guest write
	// (a fleecing backup's progress is those copies, as in QEMU).
	progress func(n int64)
}

// needsCopy reports whether a write to [off, off+n) touches a cluster not
// yet copied. No lock: bits only go from set to clear.
func (bc *blockCopy) needsCopy(off, n int64) bool {
	d := bc.cp.NextDirty(off &^ (bc.cluster - 1))
	return d >= 0 && d < off+n
}

// copyBeforeWrite copies the old data of the clusters r touches to the
// target, then lets r through. A failed copy fails the guest write (QEMU's
// on-cbw-error=break-guest-write): the point-in-time image must not lose
// data silently.
func (bc *blockCopy) copyBeforeWrite(co *aio.Co, c, tgt *block.Child, r *block.Request) error {
	lo := r.Off &^ (bc.cluster - 1)
	hi := min((r.Off+r.Len+bc.cluster-1)&^(bc.cluster-1), bc.size)
	id := bc.locks.lock(co, lo, max(hi, lo+1))
	defer bc.locks.unlock(id)
	var buf []byte
	for off := lo; off < hi; {
		s, n, ok := bc.cp.NextExtent(off, hi-off)
		if !ok || s >= hi {
			break
		}
		n = min(n, hi-s)
		if int64(len(buf)) < n {
			buf = make([]byte, n)
		}
		if err := coIO(co, bc.g, c, block.OpRead, s, buf[:n], 0); err != nil {
			return err
		}
		if err := coIO(co, bc.g, tgt, block.OpWrite, s, buf[:n], 0); err != nil {
			return err
		}
		bc.cp.ResetRange(s, n)
		bc.cbw.Add(n)
		if bc.progress != nil {
			bc.progress(n)
		}
		off = s + n
	}
	return coForward(co, c, r)
}

// Backup is the backup job's driver.
type Backup struct {
	j    *Job
	g    *block.Graph
	o    BackupOptions
	src  *block.Child
	tgt  *block.Child
	fn   *block.Node
	f    *filter
	bc   *blockCopy
	ub   *bitmap.Bitmap // the user's bitmap, frozen while the job runs
	succ *bitmap.Bitmap // new writes while ub is frozen
	ubOn bool           // ub was enabled

	scanOff int64
	scanned bool
	cursor  int64
	bufs    [][]byte
	exts    []extent
	success bool

	// sync=none (fleecing): the snapshot node and completion request.
	snap     *block.Node
	complete atomic.Bool
}

// NewBackup creates a backup job. Its point in time is the moment setup
// inserts the copy-before-write filter, inside a drained section of the
// source (or the caller's, with Drained).
func NewBackup(m *Manager, o BackupOptions) (*Job, *Backup, error) {
	b := &Backup{g: m.g, o: o}
	j, err := b.setup(m)
	return j, b, err
}

func (b *Backup) setup(m *Manager) (*Job, error) {
	o := &b.o
	if o.Source == nil || o.Target == nil || o.Source == o.Target {
		return nil, errors.New("job: backup needs distinct source and target nodes")
	}
	if o.Target.ReadOnly() {
		return nil, fmt.Errorf("job: backup target %s is read-only", o.Target.Name())
	}
	if o.ClusterSize == 0 {
		o.ClusterSize = 64 << 10
	}
	if o.ClusterSize < bitmap.MinGranularity || o.ClusterSize > maxChunk || o.ClusterSize&(o.ClusterSize-1) != 0 {
		return nil, fmt.Errorf("job: backup cluster size %d is not a power of two between %d and %d", o.ClusterSize, bitmap.MinGranularity, maxChunk)
	}
	if err := checkCopyLimits("backup", &o.MaxRequest, &o.Parallel); err != nil {
		return nil, err
	}
	o.MaxRequest = max(o.MaxRequest/o.ClusterSize*o.ClusterSize, o.ClusterSize)
	needBitmap := o.Sync == BackupIncremental || o.Sync == BackupDifferential || o.Sync == BackupBitmap
	if needBitmap && o.Bitmap == "" && (o.CopyBitmap == nil || o.Sync != BackupBitmap) {
		return nil, errors.New("job: incremental, differential and bitmap backups need a bitmap")
	}
	var ss, ts int64
	var err error
	m.g.Control(func() {
		if ss, err = o.Source.Length(); err != nil {
			return
		}
		ts, err = o.Target.Length()
	})
	if err != nil {
		return nil, err
	}
	if ss != ts {
		return nil, fmt.Errorf("job: backup source %s has %d bytes, target %s %d", o.Source.Name(), ss, o.Target.Name(), ts)
	}
	j, err := m.New(o.Options, b)
	if err != nil {
		return nil, err
	}
	b.j = j
	fail := func(err error) (*Job, error) {
		b.Clean(j)
		j.Discard()
		return nil, err
	}
	if b.src, err = j.AddNode(o.Source, "source"); err != nil {
		return fail(err)
	}
	if b.tgt, err = j.AddNode(o.Target, "target"); err != nil {
		return fail(err)
	}
	b.bc = &blockCopy{g: m.g, size: ss, cluster: o.ClusterSize}
	if o.Sync == BackupNone && o.UntilCancelled {
		b.bc.progress = func(n int64) { j.cur.Add(n) }
	}
	if b.bc.cp, err = bitmap.New("#backup-copy-"+o.ID, ss, o.ClusterSize); err != nil {
		return fail(err)
	}
	for i := 0; i < o.Parallel; i++ {
		b.bufs = append(b.bufs, make([]byte, o.MaxRequest))
	}
	// The point in time: nothing in flight on the source while the
	// bitmaps are frozen and the filter goes in.
	if !o.Drained {
		o.Source.DrainedBegin()
	}
	err = b.freeze(m)
	if !o.Drained {
		o.Source.DrainedEnd()
	}
	if err != nil {
		return fail(err)
	}
	cur, _ := j.Progress()
	j.SetTotal(cur + b.bc.cp.Count())
	return j, nil
}

func (b *Backup) freeze(m *Manager) error {
	o := &b.o
	cp := b.bc.cp
	if o.Bitmap != "" {
		ub := o.Source.Bitmap(o.Bitmap)
		if ub == nil {
			return fmt.Errorf("job: node %s has no bitmap %q", o.Source.Name(), o.Bitmap)
		}
		if ub.Busy() {
			return &block.BitmapError{Node: o.Source.Name(), Bitmap: o.Bitmap, Err: bitmap.ErrBusy}
		}
		succ, err := bitmap.New("#backup-successor-"+o.ID, ub.Size(), ub.Granularity())
		if err != nil {
			return err
		}
		if err := o.Source.AttachBitmap(succ); err != nil {
			return err
		}
		b.ub, b.succ, b.ubOn = ub, succ, ub.Enabled()
		ub.SetEnabled(false)
		ub.SetBusy(true)
	}
	switch o.Sync {
	case BackupFull:
		cp.Fill()
		b.scanned = true
	case BackupTop:
		cp.Fill()
	case BackupNone:
		cp.Fill()
		b.scanned = true
	default:
		src := b.ub
		if src == nil {
			src = o.CopyBitmap
		}
		if err := cp.Merge(src); err != nil {
			return err
		}
		b.scanned = true
	}
	b.f = &filter{cbw: b.bc, drv: "copy-before-write"}
	var err error
	if b.fn, err = insertFilter(m.g, o.Source, b.f, "#backup-cbw-"+o.ID, o.Target); err != nil {
		return err
	}
	if o.Sync == BackupNone && !o.UntilCancelled {
		err = b.openSnapshot(m)
	}
	return err
}

func (b *Backup) Type() string { return "backup" }

// Fleecing reports whether b is a QMP sync=none backup, whose target a
// client may read while it runs (BackupOptions.UntilCancelled).
func (b *Backup) Fleecing() bool { return b.o.Sync == BackupNone && b.o.UntilCancelled }

// CopiedBeforeWrite returns how many bytes the filter copied to the
// target ahead of guest writes.
func (b *Backup) CopiedBeforeWrite() int64 { return b.bc.cbw.Load() }

func (b *Backup) Iterate(it *Iteration) (bool, error) {
	j := it.Job
	cp := b.bc.cp
	if b.o.Sync == BackupNone {
		if !j.IsReady() && !b.o.UntilCancelled {
			j.SetReady()
		}
		if b.complete.Load() {
			return true, nil
		}
		it.SleepNext(10 * idleWait)
		return false, nil
	}
	if !b.scanned {
		// sync=top: what the source's own layer does not hold is not
		// copied (the target's backing provides it).
		end := min(b.scanOff+64<<20, b.bc.size)
		for b.scanOff < end {
			st, pnum, err := it.BlockStatus(b.src, b.scanOff, end-b.scanOff)
			if err != nil {
				return false, &IOError{Op: "block-status", Off: b.scanOff, Err: err}
			}
			if pnum <= 0 {
				pnum = end - b.scanOff
			}
			if st&block.StatusAllocated == 0 {
				cp.ResetRange(b.scanOff, pnum)
			}
			b.scanOff += pnum
		}
		b.scanned = b.scanOff >= b.bc.size
		cur, _ := j.Progress()
		j.SetTotal(cur + cp.Count())
		return false, nil
	}
	b.exts = b.exts[:0]
	for off := b.cursor; len(b.exts) < b.o.Parallel; {
		s, n, ok := cp.NextExtent(off, b.o.MaxRequest)
		if !ok {
			break
		}
		off = s + n
		id, locked := b.bc.locks.tryLock(s, s+n)
		if !locked {
			continue
		}
		// Under the lock the dirty prefix is stable: a write's copy
		// may have taken part of the extent before we locked it.
		if cp.NextDirty(s) != s {
			b.bc.locks.unlock(id)
			continue
		}
		n = min(n, cp.NextClean(s)-s)
		b.exts = append(b.exts, extent{s, n, id})
	}
	if len(b.exts) == 0 {
		if b.cursor != 0 {
			b.cursor = 0
			return false, nil
		}
		if cp.IsEmpty() {
			return true, nil
		}
		// Everything left is being copied by guest writes right now.
		it.SleepNext(idleWait)
		return false, nil
	}
	last := b.exts[len(b.exts)-1]
	b.cursor = last.off + last.n
	var sum int64
	for i, e := range b.exts {
		it.SubmitRead(b.src, b.bufs[i][:e.n], e.off)
		sum += e.n
	}
	if err, off, _ := it.Wait(); err != nil {
		b.unlockAll()
		return false, &IOError{Op: "read", Off: off, Err: err}
	}
	for i, e := range b.exts {
		it.SubmitWrite(b.tgt, b.bufs[i][:e.n], e.off, 0)
	}
	if err, off, _ := it.Wait(); err != nil {
		b.unlockAll()
		return false, &IOError{Target: true, Op: "write", Off: off, Err: err}
	}
	for _, e := range b.exts {
		cp.ResetRange(e.off, e.n)
	}
	b.unlockAll()
	j.AddProgress(sum)
	return false, nil
}

func (b *Backup) unlockAll() {
	for _, e := range b.exts {
		b.bc.locks.unlock(e.id)
	}
	b.exts = b.exts[:0]
}

func (b *Backup) Prepare(j *Job) error {
	if err := b.tgt.Node().Flush(); err != nil {
		return &IOError{Target: true, Op: "flush", Err: err}
	}
	return nil
}

func (b *Backup) Commit(*Job) { b.success = true }

// Complete ends a sync=none backup (the export of its snapshot is done).
func (b *Backup) Complete(*Job) error {
	if b.o.Sync != BackupNone || b.o.UntilCancelled {
		return fmt.Errorf("job %q: only a sync=none backup is completed by hand", b.o.ID)
	}
	b.complete.Store(true)
	return nil
}

// Snapshot returns the read-only node that reads the source as it was at
// the backup's point in time (sync=none only; nil otherwise). Close what
// reads it before the job ends: afterwards it fails reads with EIO.
func (b *Backup) Snapshot() *block.Node { return b.snap }

// Clean removes the filter and settles the user's bitmap (QEMU's
// successor reclaim/abdicate): see BitmapMode.
func (b *Backup) Clean(j *Job) {
	b.bc.ended.Store(true)
	if b.snap != nil {
		j.NoteError(b.snap.Unref())
		b.snap = nil
	}
	if b.fn != nil {
		j.NoteError(removeFilter(b.g, b.fn, b.o.Source))
		b.fn = nil
	}
	if b.ub == nil {
		return
	}
	mode := b.o.BitmapMode
	switch b.o.Sync {
	case BackupIncremental:
		mode = OnSuccess
	case BackupDifferential:
		mode = Never
	}
	ub, succ := b.ub, b.succ
	switch {
	case b.success && mode != Never:
		ub.Clear()
	case !b.success && mode == Always:
		// The copy bitmap covers the source as it was at the start; a
		// source resized since has resized ub (block.Node.ResizeBitmaps),
		// so cp follows before the merge: the chunks it adds are clean,
		// writes there are in the successor, merged below.
		cp := b.bc.cp
		if cp.Size() != ub.Size() {
			j.NoteError(cp.Resize(ub.Size()))
		}
		ub.Clear()
		j.NoteError(ub.Merge(cp))
	}
	j.NoteError(ub.Merge(succ))
	b.g.Control(func() { b.o.Source.DetachBitmap(succ) })
	ub.SetBusy(false)
	ub.SetEnabled(b.ubOn)
	b.ub = nil
}
