package bench

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringblk/ringblk/drivers/nbd"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/drivers/rbd"

	"github.com/ringblk/ringblk/uring"
	"golang.org/x/sys/unix"
)

// RunOptions configure Run.
type RunOptions struct {
	// Status, if set, receives fio's live status line (rewritten with \r)
	// about once a second.
	Status io.Writer
	// Log receives progress notes such as file lay-out ("" lines); nil
	// discards them.
	Log io.Writer
	// CPUs is how many cores clones are pinned over; 0: runtime.NumCPU().
	CPUs int
	// Interim, if set, receives the report of the run so far (fio's
	// --status-interval and SIGUSR1) every StatusInterval (0: never) and
	// whenever StatusNow receives. It runs on its own goroutine; Run
	// returns after its last call.
	Interim        func(*Result)
	StatusInterval time.Duration
	StatusNow      <-chan struct{}

	in *interim // set by Run when Interim is
}

// Result is a finished run.
type Result struct {
	Spec  *Spec
	Jobs  []*JobResult
	Start time.Time
	End   time.Time

	diskBefore, diskAfter []diskSnap
}

// JobResult is one job: its clones' workers, after they finished.
type JobResult struct {
	Job     *Job
	GroupID int
	Clones  []*worker
	Err     error // the first clone error
	Elapsed time.Duration
	// SetupFailed: the job failed at its start, as fio fails it (an
	// io_uring_cmd job on a file that is no NVMe generic device): no I/O,
	// left out of the normal report, error 0 in JSON, counted in the exit
	// status.
	SetupFailed error
}

// group is jobs that run at the same time and are reported together.
func groups(jobs []*Job) [][]*Job {
	var out [][]*Job
	for i, j := range jobs {
		if i == 0 || j.Stonewall || j.NewGroup {
			out = append(out, nil)
		}
		out[len(out)-1] = append(out[len(out)-1], j)
	}
	return out
}

// Run runs the jobs of spec, group after group (stonewall and new_group
// start a group), and returns their results. Set-up failures (a file that
// cannot be opened, a driver error) are returned; I/O errors end their job
// and are reported in its result.
func Run(spec *Spec, opts RunOptions) (*Result, error) {
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	cpus := opts.CPUs
	if cpus <= 0 {
		cpus = runtime.NumCPU()
	}
	res := &Result{Spec: spec, Start: time.Now()}
	regions := make(map[*Job][2]int64)
	setupFailed := map[*Job]error{}
	for _, j := range spec.Jobs {
		if j.IOEngine == "io_uring_cmd" {
			err := uringCmdSetup(j)
			if !errors.Is(err, errUringCmdFile) {
				return nil, err
			}
			setupFailed[j] = err
			continue
		}
		for k := 0; k < j.NumJobs; k++ {
			cj := j.cloneJob(k)
			if k > 0 && cj == j {
				break
			}
			prep := prepareFile
			if cj.multiFile() {
				prep = prepareFiles
			}
			off, n, err := prep(cj, opts.Log)
			if err != nil {
				return nil, err
			}
			regions[cj] = [2]int64{off, n}
		}
	}
	res.diskBefore = snapDisks(spec.Jobs)
	if opts.Interim != nil {
		opts.in = &interim{grps: groups(spec.Jobs), gid: -1}
		defer startInterim(opts.in, res, opts.StatusInterval, opts.StatusNow, opts.Interim)()
	}
	var env *ringblkEnv
	threads := 0 // clones started so far: fio's thread numbers run across groups
	defer func() {
		if env != nil {
			env.close()
		}
	}()
	for gid, grp := range groups(spec.Jobs) {
		for _, j := range grp {
			if j.IOEngine == "ringblk" && env == nil {
				var err error
				if env, err = newRingblkEnv(spec.Jobs); err != nil {
					return nil, err
				}
			}
		}
		var run []*Job
		for _, j := range grp {
			if setupFailed[j] == nil {
				run = append(run, j)
			}
		}
		jr, err := runGroup(env, run, gid, regions, cpus, &threads, opts)
		if err != nil {
			return nil, err
		}
		// Jobs that failed at their start, in their place: idle clones
		// (nothing measured), fio's message on the log.
		all := make([]*JobResult, 0, len(grp))
		for _, j := range grp {
			if e := setupFailed[j]; e != nil {
				fmt.Fprintf(opts.Log, "%v\n\n", e)
				f := &JobResult{Job: j, GroupID: gid, SetupFailed: e}
				for k := 0; k < j.NumJobs; k++ {
					threads++
					f.Clones = append(f.Clones, newWorker(j, k, 0, int64(max(j.MaxBS(DirRead), j.MaxBS(DirWrite)))))
				}
				all = append(all, f)
				continue
			}
			all = append(all, jr[0])
			jr = jr[1:]
		}
		jr = all
		if opts.in != nil {
			opts.in.endGroup(jr)
		}
		for _, j := range grp {
			if !j.Unlink || j.Filename == "" || (j.IOEngine == "ringblk" && j.Format == "null") {
				continue
			}
			for k := 0; k < j.NumJobs; k++ {
				if cj := j.cloneJob(k); k == 0 || cj != j {
					for _, fj := range cj.fileJobs() {
						if err := os.Remove(fj.Filename); err != nil && !os.IsNotExist(err) {
							return nil, fmt.Errorf("job %q: unlink: %w", j.Name, err)
						}
					}
				}
			}
		}
		res.Jobs = append(res.Jobs, jr...)
	}
	res.End = time.Now()
	for _, b := range res.diskBefore {
		if a, ok := readDiskSnap(b.name); ok {
			res.diskAfter = append(res.diskAfter, a)
		}
	}
	return res, nil
}

// stopper is a started clone that must be torn down.
type stopper interface{ stop() error }

func (c *threadClone) stop() error { c.close(); return nil }

func runGroup(env *ringblkEnv, grp []*Job, gid int, regions map[*Job][2]int64, cpus int, threads *int, opts RunOptions) (out []*JobResult, err error) {
	total := 0
	for _, j := range grp {
		total += j.NumJobs
	}
	done := make(chan *worker, total)
	var procCPUs unix.CPUSet // the CPUs this process may use (iowq_workers=other)
	if unix.SchedGetaffinity(0, &procCPUs) != nil {
		procCPUs.Zero()
	}
	type start struct {
		job *Job
		fn  func()
	}
	var starts []start
	var clones []stopper
	var rjobs []*ringblkJob
	type loggedWorker struct {
		w  *worker
		jr *JobResult
	}
	var logged []loggedWorker
	defer func() {
		// The logs are closed after every clone stopped; a log that could
		// not be written fails its job.
		for _, lw := range logged {
			if e := lw.w.logs.close(); e != nil && lw.jr.Err == nil {
				lw.jr.Err = fmt.Errorf("log: %w", e)
			}
		}
		for _, c := range clones {
			if e := c.stop(); e != nil && err == nil {
				err = e
			}
		}
		// A failed write-back on close (qcow2 metadata, the file's own
		// close) fails the job, as fio fails a job whose file close fails.
		for _, rj := range rjobs {
			if e := rj.close(); e != nil && rj.res != nil && rj.res.Err == nil {
				rj.res.Err = e
			}
		}
		if env != nil {
			env.releaseImages(rjobs)
		}
	}()
	cloneIdx := 0
	for _, j := range grp {
		if j.Invalidate && j.Filename != "" {
			for _, fj := range j.fileJobs() {
				invalidate(fj.Filename)
			}
		}
		jr := &JobResult{Job: j, GroupID: gid}
		out = append(out, jr)
		reg := regions[j]
		// The ringblk engine: an image node and front end per file.
		var rjs []*ringblkJob
		openFiles := func(cj *Job) error {
			rjs = rjs[:0:0]
			for _, fj := range cj.fileJobs() {
				rj, err := env.openJob(fj, fmt.Sprintf("%s#%d", j.Name, len(rjobs)))
				if err != nil {
					return fmt.Errorf("job %q: %w", j.Name, err)
				}
				rj.res = jr
				rjobs = append(rjobs, rj)
				rjs = append(rjs, rj)
			}
			return nil
		}
		if j.IOEngine == "ringblk" {
			if err = openFiles(j); err != nil {
				return nil, err
			}
		}
		for k := 0; k < j.NumJobs; k++ {
			cj := j.cloneJob(k)
			if cj != j {
				// fio's own file per clone: its region and, for the
				// ringblk engine, its own image node and front end.
				reg = regions[cj]
				if cj.Invalidate {
					for _, fj := range cj.fileJobs() {
						invalidate(fj.Filename)
					}
				}
				if rjs != nil {
					if err = openFiles(cj); err != nil {
						return nil, err
					}
				}
			}
			w := newWorker(cj, k, reg[0]+int64(k)*j.OffsetIncrement, reg[1])
			if w.ver != nil {
				w.ver.setThread(cj, cloneIdx+1) // fio's thread number seeds its verify state
			}
			jr.Clones = append(jr.Clones, w)
			*threads++
			if w.logs, err = openLogs(j, *threads); err != nil {
				return nil, fmt.Errorf("job %q: %w", j.Name, err)
			}
			if w.logs != nil {
				logged = append(logged, loggedWorker{w, jr})
			}
			cpu, cpuSet := placement(j, k, cloneIdx, cpus, rjs != nil && libraryThreads(rjs))
			w.cpuSet = cpuSet
			w.workerCPUs = workerCPUs(j, cpu, cpuSet, &procCPUs)
			cloneIdx++
			if rjs != nil {
				c, err := newRingblkClone(rjs, w, cpu, done)
				if err != nil {
					return nil, fmt.Errorf("job %q: %w", j.Name, err)
				}
				clones = append(clones, c)
				starts = append(starts, start{j, c.start})
			} else {
				c, err := newThreadClone(w, cpu, done)
				if err != nil {
					return nil, fmt.Errorf("job %q: %w", j.Name, err)
				}
				clones = append(clones, c)
				starts = append(starts, start{j, c.start})
			}
		}
	}
	flowGroups(out)
	began := time.Now()
	stopSteady := startSteady(out, began) // before the clones start: they read w.ss
	var exitAll *atomic.Bool
	for _, jr := range out {
		if jr.Job.ExitAll {
			exitAll = new(atomic.Bool)
		}
	}
	if exitAll != nil {
		for _, jr := range out {
			for _, w := range jr.Clones {
				w.exitAll = exitAll
			}
		}
	}
	live.Store(&out)
	defer live.Store(nil)
	if opts.in != nil {
		opts.in.setGroup(out, gid, began)
	}
	// wait_for: a job whose named job runs in this group starts when
	// every clone of that job finished.
	clonesOf := map[string]int{}
	for _, j := range grp {
		clonesOf[j.Name] += j.NumJobs
	}
	var held []start
	for _, s := range starts {
		if s.job.WaitFor != "" && clonesOf[s.job.WaitFor] > 0 {
			held = append(held, s)
			continue
		}
		s.fn()
	}
	var stopStatus func()
	if opts.Status != nil {
		stopStatus = startStatus(opts.Status, out, began)
	}
	for i := 0; i < total; i++ {
		w := <-done
		name := w.job.Name
		if w.job.ExitAll {
			exitAll.Store(true)
		}
		if clonesOf[name]--; clonesOf[name] > 0 || len(held) == 0 {
			continue
		}
		rest := held[:0]
		for _, s := range held {
			if s.job.WaitFor == name {
				s.fn()
			} else {
				rest = append(rest, s)
			}
		}
		held = rest
	}
	stopSteady()
	if stopStatus != nil {
		stopStatus()
	}
	elapsed := time.Since(began)
	for _, jr := range out {
		jr.Elapsed = elapsed
		for _, w := range jr.Clones {
			if w.err != nil && jr.Err == nil {
				jr.Err = w.err
			}
		}
	}
	return out, nil
}

// workerCPUs is where the io-wq workers of a clone placed on cpu (or on
// set, when cpu < 0) run, from iowq_workers; nil keeps the kernel's default,
// which puts them on the clone's own CPUs. The kernel runs a request in a
// worker when it cannot issue it without blocking (zram and other bio
// devices, buffered reads on tmpfs). On the clone's CPU, clone and worker
// take turns: the fastest at iodepth 1 (a switch on one CPU, no cross-CPU
// wake-up: 137k IOPS against 22k on zram here), one CPU's worth at depth
// (zram QD32: 0.4x of other CPUs). "auto" picks by iodepth for that reason.
// "other" is every CPU in procs (the process's) outside the clone's; none
// left (one CPU, or the clone already spans them all) keeps the default.
// See docs/design/fast-devices.md §"Where io-wq workers run".
func workerCPUs(j *Job, cpu int, set []int, procs *unix.CPUSet) []int {
	mode := j.IOWQWorkers
	if mode == "" {
		mode = "same"
		if j.IODepth > 1 && iowqAffinityWorks() {
			mode = "other"
		}
	}
	if mode == "same" || (cpu < 0 && set == nil) {
		return nil // unpinned clone: its workers are not pinned either
	}
	var own unix.CPUSet
	if cpu >= 0 {
		own.Set(cpu)
	}
	for _, c := range set {
		own.Set(c)
	}
	var out []int
	for c := 0; c < len(procs)*64; c++ {
		if procs.IsSet(c) && !own.IsSet(c) {
			out = append(out, c)
		}
	}
	return out
}

// iowqAffinityWorks reports whether the kernel places io-wq workers
// (IORING_REGISTER_IOWQ_AFF, Linux 5.14+), probed once on a scratch ring:
// iowq_workers=auto falls back to the kernel's default without it, where an
// explicit "other" fails the job with the kernel's error.
var iowqAffinityWorks = sync.OnceValue(func() bool {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r, err := uring.New(4)
	if err != nil {
		return false
	}
	defer r.Close()
	var set unix.CPUSet
	if unix.SchedGetaffinity(0, &set) != nil {
		return false
	}
	return r.SetWorkerAffinity(&set) == nil
})

// placement is where clone k of j runs: one CPU (and no set), or no CPU
// (-1) and the set its thread may use (nil: anywhere). unpinned says the
// clone's I/O is carried by a library's own threads (libraryThreads): with
// neither cpus_allowed nor a policy the clone is then left to the
// scheduler, as fio leaves every thread, instead of one clone per CPU.
func placement(j *Job, k, cloneIdx, cpus int, unpinned bool) (int, []int) {
	switch {
	case j.CPUsAllowed == nil && j.CPUsPolicy == "" && unpinned:
		return -1, nil
	case j.CPUsAllowed == nil && j.CPUsPolicy == "":
		return cloneIdx % cpus, nil // ringblk's default: one clone per CPU
	case j.CPUsAllowed == nil && j.CPUsPolicy == "shared":
		return -1, nil
	case j.CPUsAllowed == nil: // split over every CPU
		return k % cpus, nil
	case j.CPUsPolicy == "split":
		return j.CPUsAllowed[k%len(j.CPUsAllowed)], nil
	}
	return -1, j.CPUsAllowed
}

// pinSet restricts the calling thread to cpus (cpus_allowed, shared).
func pinSet(cpus []int) {
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	_ = unix.SchedSetaffinity(0, &set) // best effort, like fio's
}

// live is the group running now, for tests that watch progress.
var live atomic.Pointer[[]*JobResult]

// liveIOs counts the I/Os completed so far by the running group.
func liveIOs() uint64 {
	p := live.Load()
	if p == nil {
		return 0
	}
	var n uint64
	for _, jr := range *p {
		for _, w := range jr.Clones {
			n += w.prog.ios[0].Load() + w.prog.ios[1].Load()
		}
	}
	return n
}

// prepareFile makes sure the job's file exists and covers its region,
// laying it out with data like fio does, and returns the region.
func prepareFile(j *Job, log io.Writer) (off, n int64, err error) {
	if j.IOEngine == "ringblk" && j.Format == "null" {
		return j.Offset, j.Size, nil
	}
	if j.IOEngine == "ringblk" && nbd.IsURI(j.Filename) {
		// An NBD export: its size is the region; nothing is laid out.
		size, err := nbd.Size(j.Filename)
		if err != nil {
			return 0, 0, fmt.Errorf("job %q: %w", j.Name, err)
		}
		return regionOf(j, size)
	}
	if j.IOEngine == "ringblk" && rbd.IsName(j.Filename) && (j.Format == "" || j.Format == "raw") {
		// An RBD image: its size is the region; nothing is laid out.
		s, err := rbd.ParseName(j.Filename)
		if err != nil {
			return 0, 0, fmt.Errorf("job %q: %w", j.Name, err)
		}
		info, err := rbd.Stat(s)
		if err != nil {
			return 0, 0, fmt.Errorf("job %q: %w", j.Name, err)
		}
		return regionOf(j, info.Size)
	}
	if j.IOEngine == "ringblk" {
		format := j.Format
		if format == "" {
			if f, err := probeFormat(j.Filename); err == nil {
				format = f
			}
		}
		if format == "qcow2" {
			// The job's region is the image's virtual disk; the file is
			// never laid out or extended (that would corrupt the image).
			size, err := qcow2VirtualSize(j.Filename)
			if err != nil {
				return 0, 0, fmt.Errorf("job %q: %w", j.Name, err)
			}
			return regionOf(j, size)
		}
	}
	if j.SizePct > 0 || j.OffsetPct > 0 {
		if err := resolvePercent(j); err != nil {
			return 0, 0, err
		}
	}
	st, err := os.Stat(j.Filename)
	switch {
	case err == nil && st.Mode()&os.ModeDevice != 0:
		f, err := os.Open(j.Filename)
		if err != nil {
			return 0, 0, fmt.Errorf("job %q: %w", j.Name, err)
		}
		size, err := f.Seek(0, io.SeekEnd)
		f.Close()
		if err != nil {
			return 0, 0, fmt.Errorf("job %q: %w", j.Name, err)
		}
		return regionOf(j, size)
	case err == nil && !st.Mode().IsRegular():
		return 0, 0, fmt.Errorf("job %q: %s is neither a regular file nor a block device", j.Name, j.Filename)
	case err != nil && !os.IsNotExist(err):
		return 0, 0, fmt.Errorf("job %q: %w", j.Name, err)
	}
	var size int64
	if err == nil {
		size = st.Size()
	}
	if j.FillDevice && j.Size == 0 {
		// fill_device without size=: the file may take all the free
		// space of its file system (ENOSPC then ends the writing).
		var fs unix.Statfs_t
		if err := unix.Statfs(filepath.Dir(j.Filename), &fs); err != nil {
			return 0, 0, fmt.Errorf("job %q: fill_device: %w", j.Name, err)
		}
		bs := int64(max(j.MaxBS(DirWrite), 1))
		free := int64(fs.Bavail) * int64(fs.Bsize)
		j.Size = max(size-j.Offset, 0) + free
		j.Size -= j.Size % bs
	}
	want := j.Offset + int64(j.NumJobs-1)*j.OffsetIncrement + j.Size
	if j.Size == 0 {
		if size == 0 {
			return 0, 0, fmt.Errorf("job %q: %s does not exist or is empty and no size= is given", j.Name, j.Filename)
		}
		return regionOf(j, size)
	}
	if size < want && j.ReadOnly {
		return 0, 0, fmt.Errorf("job %q: readonly: %s is %d bytes and the job needs %d; refusing to extend it", j.Name, j.Filename, size, want)
	}
	if size < want {
		fmt.Fprintf(log, "%s: Laying out IO file (1 file / %dMiB)\n", j.Name, want>>20)
		if err := layOut(j, size, want); err != nil {
			return 0, 0, fmt.Errorf("job %q: laying out %s: %w", j.Name, j.Filename, err)
		}
	}
	return regionOf(j, want)
}

// resolvePercent turns size=N% and offset=N% into bytes of the file's or
// device's size, as fio does: the offset aligned down to the smallest
// block, the size cut at the end of the file. fio needs the file to
// exist ("you need to specify size=").
func resolvePercent(j *Job) error {
	var fsz int64
	if f, err := os.Open(j.Filename); err == nil {
		fsz, _ = f.Seek(0, io.SeekEnd)
		f.Close()
	}
	if fsz <= 0 {
		return fmt.Errorf("job %q: size= or offset= as a percentage needs an existing file or device, and %s is missing or empty (fio: you need to specify size=)", j.Name, j.Filename)
	}
	align := int64(max(min(j.MinBS(DirRead), j.MinBS(DirWrite)), 1))
	if j.OffsetPct > 0 {
		j.Offset = int64(float64(fsz) * j.OffsetPct / 100)
		j.Offset -= j.Offset % align
	}
	if j.SizePct > 0 {
		j.Size = min(int64(float64(fsz)*j.SizePct/100), fsz-j.Offset)
	} else if j.Size == 0 || j.Size > fsz-j.Offset {
		j.Size = fsz - j.Offset
	}
	j.SizePct, j.OffsetPct = 0, 0
	return nil
}

func regionOf(j *Job, size int64) (int64, int64, error) {
	n := size - j.Offset
	if j.Size > 0 {
		n = min(n, j.Size)
	}
	// offset_increment: the last clone's region must fit too.
	if last := j.Offset + int64(j.NumJobs-1)*j.OffsetIncrement; j.OffsetIncrement > 0 {
		n = min(n, size-last)
	}
	if n < int64(max(j.MaxBS(DirRead), j.MaxBS(DirWrite))) {
		return 0, 0, fmt.Errorf("job %q: region of %d bytes at offset %d of %s is smaller than one block", j.Name, max(n, 0), j.Offset, j.Filename)
	}
	return j.Offset, n, nil
}

// qcow2VirtualSize reads the virtual disk size from a qcow2 image's header.
func qcow2VirtualSize(path string) (int64, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return 0, fmt.Errorf("%s does not exist: create the qcow2 image first (qemu-img create -f qcow2 %s SIZE)", path, path)
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 4096)
	n, err := f.ReadAt(buf, 0)
	if n == 0 && err != nil {
		return 0, fmt.Errorf("reading the qcow2 header of %s: %w", path, err)
	}
	h, err := format.ParseHeader(buf[:n])
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	if h.Size > math.MaxInt64 {
		return 0, fmt.Errorf("%s: virtual size %d is too large", path, h.Size)
	}
	return int64(h.Size), nil
}

// layOut extends the job's file from have to want bytes: with data when
// the job reads (fio lays reads out with data, so they are not reads of
// holes), sparsely (ftruncate) for a job that only writes, as fio does
// without overwrite=1. A ringblk job takes the image locks first, so a
// file another process holds is refused, not grown.
func layOut(j *Job, have, want int64) error {
	path := j.Filename
	// fio creates the directories a file name leads through.
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if j.IOEngine == "ringblk" {
		if err := raw.LockFile(f, path, raw.Options{Locking: lockingOf(j), ShareRW: j.ShareRW}); err != nil {
			f.Close()
			return err
		}
	}
	if !j.RW.Reads() {
		if err := f.Truncate(want); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	buf := make([]byte, 1<<20)
	x := uint64(0x9e3779b97f4a7c15)
	for i := range buf {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		buf[i] = byte(x)
	}
	for off := have; off < want; {
		n := min(int64(len(buf)), want-off)
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			f.Close()
			return err
		}
		off += n
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// invalidate drops the file's pages from the page cache (fio's
// invalidate=1), best effort.
func invalidate(path string) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}
