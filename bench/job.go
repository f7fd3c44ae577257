package bench

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// RW is a job's I/O pattern (fio's rw=).
type RW uint8

const (
	RWRead RW = iota
	RWWrite
	RWRandRead
	RWRandWrite
	RWMixed     // rw, readwrite: sequential mix
	RWRandMixed // randrw
)

var rwNames = [...]string{"read", "write", "randread", "randwrite", "rw", "randrw"}

func (r RW) String() string { return rwNames[r] }

// Random reports whether offsets are random.
func (r RW) Random() bool { return r == RWRandRead || r == RWRandWrite || r == RWRandMixed }

// Reads and Writes report which directions the pattern issues.
func (r RW) Reads() bool { return r == RWRead || r == RWRandRead || r == RWMixed || r == RWRandMixed }
func (r RW) Writes() bool {
	return r == RWWrite || r == RWRandWrite || r == RWMixed || r == RWRandMixed
}

// Direction indexes (fio's ddir): read, write.
const (
	DirRead  = 0
	DirWrite = 1
	// DirSync is a unit carrying an fsync/fdatasync (fio's DDIR_SYNC).
	DirSync = 2
)

// BSSplit is one bssplit entry: blocks of Size bytes for Percent of the I/Os.
type BSSplit struct {
	Size    int
	Percent int
}

// Distribution is random_distribution.
type Distribution uint8

const (
	DistRandom Distribution = iota
	DistZipf
	DistPareto
	DistNormal // DistParam: deviation in percent of the region
	DistZoned  // Zones
)

// Zone is one zone of random_distribution=zoned (Range in percent of the
// region) or zoned_abs (Range in bytes): Access percent of the I/Os.
type Zone struct {
	Access int
	Range  int64
}

// VerifyKind is verify=.
type VerifyKind uint8

const (
	VerifyNone VerifyKind = iota
	VerifyCRC32C
	VerifyMD5
	VerifyPattern
	VerifyCRC64
	VerifySHA256
	VerifyMeta // fio's header alone (its VERIFY_HDR_ONLY), with verify_pattern the pattern after it
)

var verifyNames = [...]string{"0", "crc32c", "md5", "pattern", "crc64", "sha256", "meta"}

func (v VerifyKind) String() string { return verifyNames[v] }

// Loc is where an option was set: a job file and line, or the command line.
type Loc struct {
	File string // "" for the command line
	Line int
}

func (l Loc) String() string {
	if l.File == "" {
		return "command line"
	}
	return fmt.Sprintf("%s:%d", l.File, l.Line)
}

// Option is one key=value as written, for error messages and fio's
// "job options" JSON map.
type Option struct {
	Key, Value string
	Bare       bool // written without "=": a boolean switched on
	Loc        Loc
}

// Job is one fio job after parsing: every option applied, defaults filled
// in. Sizes are bytes, times durations. A job with NumJobs > 1 runs as that
// many clones, each on its own thread.
type Job struct {
	Name      string
	Loc       Loc // the section (or --name) that started the job
	Filename  string
	Directory string
	Size      int64 // bytes of I/O per clone and the region size; 0: the file's size
	Offset    int64
	// SizePct and OffsetPct are size= and offset= given as a percentage
	// of the file or device (0: not); prepareFile turns them into bytes.
	SizePct, OffsetPct float64

	RW           RW
	RWMixRead    int       // percent of reads in mixed patterns
	BS           [2]int    // per direction, when no range or split
	BSRange      [2][2]int // per direction min, max (0: unset)
	BSSplit      [2][]BSSplit
	IODepth      int
	IODepthBatch int // iodepth_batch_submit
	// IODepthBatchCompleteMin (iodepth_batch_complete_min): completions a
	// clone waits for before it issues again (or all in flight, if fewer).
	IODepthBatchCompleteMin int
	// IODepthBatchCompleteMax (iodepth_batch_complete_max): completions a
	// clone takes before it issues again; fio's default, 0 here until
	// validation, is IODepthBatchCompleteMin. With 1 the clone refills
	// each completion at once, so every issue happens at the full depth.
	IODepthBatchCompleteMax int
	// AIOPoll (aio_poll, ringblk and io_uring engines): the clone's
	// busy-poll bound before a sleep (the ringblk engine's Context: aio
	// Options.PollTime; the io_uring engine's loop: threadClone.spin);
	// AIOPollAuto (the default) picks it from the depth (aioPollTime).
	AIOPoll time.Duration
	// IOWQWorkers (iowq_workers, ringblk and io_uring engines): where a
	// pinned clone's io-wq workers run: "same" CPU as the clone (the
	// kernel's default), "other" CPUs, or "auto" ("" here): other when
	// iodepth > 1, same at iodepth 1. See workerCPUs.
	IOWQWorkers string
	// FilenameFormat is filename_format: the name of a clone's file when
	// no filename= is given ($jobname, $jobnum, $filenum).
	FilenameFormat string
	NumJobs        int
	Runtime        time.Duration
	TimeBased      bool
	RampTime       time.Duration
	Direct         bool
	IOEngine       string // ringblk, io_uring, psync
	// FixedBufs and RegisterFiles are fio's io_uring engine options:
	// READ_FIXED/WRITE_FIXED on registered buffers, and the file named by
	// a registered-file slot.
	FixedBufs     bool
	RegisterFiles bool
	// SQThreadPoll (sqthread_poll) gives the clone's ring a kernel SQ
	// polling thread (IORING_SETUP_SQPOLL), on CPU SQThreadPollCPU
	// (sqthread_poll_cpu; -1: anywhere); both ring engines.
	SQThreadPoll    bool
	SQThreadPollCPU int
	Format          string // ringblk engine: raw, qcow2, null ("" = probe)
	// ShareRW and Locking are the ringblk engine's image locking: by
	// default the job takes the locks "ringblk io" takes (QEMU's) and
	// refuses an image another process writes; ShareRW lets others write
	// (QEMU's share-rw=on), Locking "off" takes no lock at all.
	ShareRW bool
	Locking string // "auto" (default), "on", "off"
	// ReadOnly is fio's readonly guard (--readonly before the first
	// --name applies it to every job): a job that writes is refused, and
	// a file shorter than the job's region is not laid out.
	ReadOnly bool
	// FadviseHint is fio's fadvise_hint: "1" (default: random for random
	// patterns, sequential otherwise), "0", "random" or "sequential",
	// given for each file a job opens.
	FadviseHint string
	NoRandomMap bool
	// RandomGen is random_generator: "tausworthe" (default) or "lfsr"
	// (every block once per pass even with norandommap).
	RandomGen string
	// SS is steadystate= (with ss_dur, ss_ramp); nil: none.
	SS *SteadyState
	// LatencyTarget, LatencyWindow and LatencyPercentile are fio's
	// latency target: the depth is searched for the deepest queue at which
	// LatencyPercentile percent of a window's I/Os finish within the
	// target (0: off).
	LatencyTarget     time.Duration
	LatencyWindow     time.Duration
	LatencyPercentile float64
	RandRepeat        bool
	RandSeed          uint64
	Dist              Distribution
	DistParam         float64
	Zones             []Zone
	ZonesAbs          bool
	Verify            VerifyKind
	VerifyPattern     []byte
	VerifyFatal       bool
	VerifyOnly        bool
	// DedupePercentage, CompressPercentage (buffer_compress_percentage),
	// CompressChunk, DedupeMode, DedupeWorkingSet, DedupeGlobal: write
	// contents (payload.go).
	DedupePercentage, CompressPercentage, CompressChunk int
	DedupeMode                                          string
	DedupeWorkingSet                                    int
	DedupeGlobal                                        bool
	// ExitAll (exitall): when a clone of this job finishes, the clones
	// still running stop; ExitWhat (exit_what) names which: "group"
	// (default), "stonewall" or "all" (bench runs one group at a time, so
	// all three stop the clones running with it).
	ExitAll        bool
	ExitWhat       string
	VerifyBacklog  int  // verify_backlog: read back every N written blocks during the run
	VerifyDump     bool // verify_dump: a mismatching block is saved to a file
	DoVerify       bool
	GroupReporting bool
	Thread         bool
	Stonewall      bool
	NewGroup       bool
	Invalidate     bool
	Description    string

	// IOSize is fio's io_size (io_limit): bytes of I/O per loop, 0: the
	// region's size. Loops repeats that many times (loops=).
	IOSize int64
	Loops  int
	// SeqAdd is rw=…:N on a sequential pattern: N bytes skipped (a
	// negative N goes backwards) after each I/O. SeqNr is rw=…:N on a
	// random pattern: N I/Os (sequential after the first) per new random
	// offset.
	SeqAdd int64
	SeqNr  int
	// Latency switches (disable_lat, disable_clat, disable_slat,
	// disable_bw_measurement; gtod_reduce sets all four and turns
	// clat_percentiles off) and the percentiles reported.
	DisableLat, DisableClat, DisableSlat, DisableBW bool
	ClatPercentiles, LatPercentiles                 bool
	PercentileList                                  []float64
	// Log files in fio's format (logs.go): the prefixes of
	// write_bw_log, write_iops_log and write_lat_log (nil: no log; a bare
	// option: the job's name), log_avg_msec, log_offset, per_job_logs.
	BWLog, IOPSLog, LatLog *string
	LogAvgMsec             int
	LogOffset              bool
	PerJobLogs             bool
	// OffsetIncrement moves clone k's region k*OffsetIncrement further
	// (offset_increment). BlockAlign (ba, blockalign) aligns random
	// offsets, 0: the smallest block. Unlink removes the job's file after
	// the job.
	OffsetIncrement int64
	BlockAlign      int64
	Unlink          bool
	// CPUsAllowed (cpus_allowed; nil: every CPU) and CPUsPolicy
	// (cpus_allowed_policy): "split" pins clone k to the k-th CPU of the
	// set, "shared" lets every clone run on the whole set. Neither set:
	// clones are pinned one per CPU (ringblk's default).
	CPUsAllowed []int
	CPUsPolicy  string
	// Pacing (pace.go): thinktime after every ThinkBlocks I/Os (they
	// complete first), rate and rate_iops per direction (0: none),
	// RateProcess "linear" or "poisson", StartDelay before a clone starts
	// (a range: a random delay in it).
	ThinkTime   time.Duration
	ThinkBlocks int
	Rate        [2]int64
	RateIOPS    [2]int64
	RateProcess string
	StartDelay  [2]time.Duration
	// RateMin and RateIOPSMin (rate_min, rate_iops_min) fail the job when
	// a rate_cycle window falls below them.
	RateMin     [2]int64
	RateIOPSMin [2]int64
	RateCycle   time.Duration
	// Flow (flow, flow_id, flow_sleep): clones of the jobs of a group that
	// share a flow_id issue I/O in the ratio of their flow weights; a
	// clone ahead of its share waits FlowSleep (or a short while) and
	// tries again.
	Flow      int
	FlowID    int
	FlowSleep time.Duration
	// ZoneMode "strided" (zonemode): sequential I/O covers ZoneSize bytes,
	// then skips ZoneSkip bytes (zonesize, zoneskip).
	ZoneMode           string
	ZoneSize, ZoneSkip int64
	// Fsync (fsync=N) or Fdatasync (fdatasync=N): a sync after every N
	// writes; EndFsync: one after the job's last write (end_fsync).
	Fsync, Fdatasync int
	EndFsync         bool
	// FileSize (filesize) is the size of the job's file when it differs
	// from the bytes of I/O (size); WaitFor (wait_for) names a job this
	// one starts after.
	FileSize int64
	WaitFor  string
	// NumberIOs (number_ios) stops a clone after that many I/Os; 0: none.
	NumberIOs int64
	// SyncIO (sync=): "" none, "sync" (O_SYNC) or "dsync" (O_DSYNC); the
	// ringblk engine writes with FUA (durable at completion).
	SyncIO string

	// IOPrio holds prio, prioclass, the cmdprio options and log_prio
	// (prio.go).
	IOPrio jobPrio
	// NumaCPUs are numa_cpu_nodes' CPUs (cpus_allowed when that is not
	// set); NumaMem and NumaMemNodes numa_mem_policy's mode and nodes
	// (numa.go). ScrambleBuffers is scramble_buffers (default on).
	// VerifyIntervalSet is verify_interval (0: fio's default), FillDevice
	// fill_device (write until ENOSPC, which then ends the job cleanly).
	VerifyIntervalSet int
	FillDevice        bool
	NumaCPUs          []int
	NumaMem           int
	NumaMemNodes      []int
	ScrambleBuffers   bool

	// Options are this job's own options in the order given (fio's "job
	// options"); globals are the [global] options in effect for it.
	Options []Option
	globals []Option

	set map[string]Loc // canonical option name → where it was set last

	// perCloneFile: no filename= and numjobs > 1, so each clone has its
	// own file, fio's jobname.K.0 (cloneJobs holds clone K's copy of the
	// job with that file name).
	perCloneFile bool
	cloneJobs    []*Job

	// Several files per clone (files.go): Files are filename=a:b's names
	// (or, with nrfiles, the clone's generated names), NrFiles nrfiles,
	// FileService file_service_type with its :N, fileSize each file's
	// size (the region is len(Files) of them, one after another).
	Files         []string
	NrFiles       int
	FileService   string
	FileServiceNr int
	fileSize      int64
}

// cloneJob is the job clone k runs: j itself, or with per-clone files a
// copy naming clone k's file.
func (j *Job) cloneJob(k int) *Job {
	if !j.perCloneFile || k == 0 {
		return j
	}
	if j.cloneJobs == nil {
		j.cloneJobs = make([]*Job, j.NumJobs)
		for i := 1; i < j.NumJobs; i++ {
			c := *j
			c.cloneJobs = nil
			c.Filename = filepath.Join(filepath.Dir(j.Filename), j.cloneFileName(i, 0))
			if len(j.Files) > 0 {
				c.Files = make([]string, len(j.Files))
				for f := range c.Files {
					c.Files[f] = filepath.Join(filepath.Dir(j.Filename), j.cloneFileName(i, f))
				}
			}
			j.cloneJobs[i] = &c
		}
	}
	return j.cloneJobs[k]
}

func newJob(name string, loc Loc) *Job {
	return &Job{
		Name: name, Loc: loc,
		RW: RWRead, RWMixRead: 50, BS: [2]int{4096, 4096},
		IODepth: 1, IODepthBatch: 1, IODepthBatchCompleteMin: 1, NumJobs: 1, IOEngine: "psync", AIOPoll: AIOPollAuto,
		RandRepeat: true, RandSeed: 0x89, DoVerify: true, Invalidate: true, Locking: "auto", FadviseHint: "1",
		Loops: 1, ClatPercentiles: true, PerJobLogs: true, ThinkBlocks: 1, RateProcess: "linear", RateCycle: time.Second, SQThreadPollCPU: -1, DedupeMode: "repeat", DedupeWorkingSet: 5,
		LatencyPercentile: 100,
		ScrambleBuffers:   true,
		IOPrio:            jobPrio{Prio: -1, PrioClass: -1, Class: [2]int{ioprioClassRT, ioprioClassRT}},
		set:               map[string]Loc{},
	}
}

// MinBS and MaxBS report the smallest and largest block a direction issues.
func (j *Job) MinBS(dir int) int {
	switch {
	case len(j.BSSplit[dir]) > 0:
		m := j.BSSplit[dir][0].Size
		for _, s := range j.BSSplit[dir] {
			m = min(m, s.Size)
		}
		return m
	case j.BSRange[dir][0] > 0:
		return j.BSRange[dir][0]
	}
	return j.BS[dir]
}

func (j *Job) MaxBS(dir int) int {
	switch {
	case len(j.BSSplit[dir]) > 0:
		m := 0
		for _, s := range j.BSSplit[dir] {
			m = max(m, s.Size)
		}
		return m
	case j.BSRange[dir][0] > 0:
		return j.BSRange[dir][1]
	}
	return j.BS[dir]
}

// SetOption applies key=value to the job as if it were written at loc (an
// override from code, the command line or a test).
func (j *Job) SetOption(key, value string, loc Loc) error {
	return j.apply(Option{Key: key, Value: value, Loc: loc}, true)
}

// apply sets one option; record adds it to the job's "job options".
func (j *Job) apply(o Option, record bool) error {
	name := strings.ToLower(o.Key)
	if alias, ok := optionAliases[name]; ok {
		name = alias
	}
	spec, ok := optionTable[name]
	if !ok {
		if _, known := fioOnlyOptions[name]; known {
			return &unsupportedError{ParseError{Loc: o.Loc, Msg: fmt.Sprintf("option %q is a fio option that ringblk bench does not implement", o.Key)}, o.Key, true}
		}
		return &unsupportedError{ParseError{Loc: o.Loc, Msg: fmt.Sprintf("unknown option %q", o.Key)}, o.Key, false}
	}
	val := o.Value
	if o.Bare {
		if !spec.bool {
			return &ParseError{Loc: o.Loc, Msg: fmt.Sprintf("option %q needs a value (%s=…)", o.Key, o.Key)}
		}
		val = "1"
		if spec.bareEmpty {
			val = ""
		}
	}
	if err := spec.set(j, strings.TrimSpace(val)); err != nil {
		return &ParseError{Loc: o.Loc, Msg: fmt.Sprintf("%s=%s: %v", o.Key, o.Value, err)}
	}
	j.set[name] = o.Loc
	if record {
		j.Options = append(j.Options, o)
	}
	return nil
}

// ParseError is an error in a job file or on the command line.
type ParseError struct {
	Loc Loc
	Msg string
}

func (e *ParseError) Error() string { return e.Loc.String() + ": " + e.Msg }

// unsupportedError is an option bench does not have: a fio option it does
// not implement (fio true) or a name neither knows. Parsing goes on past
// these, so that one error names them all (unsupportedList).
type unsupportedError struct {
	ParseError
	key string
	fio bool
}

func (e *unsupportedError) Unwrap() error { return &e.ParseError }

// unsupportedList is every unsupported option of a run, each once (a
// [global] option is applied to every job), in one error that starts at
// the first one's location.
type unsupportedList []*unsupportedError

func (l unsupportedList) add(e *unsupportedError) unsupportedList {
	for _, x := range l {
		if x.Loc == e.Loc && x.key == e.key {
			return l
		}
	}
	return append(l, e)
}

func (l unsupportedList) Error() string {
	if len(l) == 1 {
		return l[0].Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d options that ringblk bench does not implement or know: ", l[0].Loc, len(l))
	for i, e := range l {
		if i > 0 {
			b.WriteString(", ")
		}
		what := "unknown"
		if e.fio {
			what = "fio option"
		}
		fmt.Fprintf(&b, "%q (%s, %s)", e.key, what, e.Loc)
	}
	return b.String()
}

// validate checks what single options cannot: conflicts and requirements.
func (j *Job) validate() error {
	bad := func(loc Loc, format string, a ...any) error {
		return &ParseError{Loc: loc, Msg: fmt.Sprintf("job %q: ", j.Name) + fmt.Sprintf(format, a...)}
	}
	at := func(name string) Loc {
		if l, ok := j.set[name]; ok {
			return l
		}
		return j.Loc
	}
	_, hasRange := j.set["bsrange"]
	_, hasSplit := j.set["bssplit"]
	if hasRange && hasSplit {
		return bad(at("bssplit"), "bssplit conflicts with bsrange (set at %s)", at("bsrange"))
	}
	if j.TimeBased && j.Runtime == 0 {
		return bad(at("time_based"), "time_based needs a runtime")
	}
	if err := checkEngine(j.IOEngine); err != nil {
		return bad(at("ioengine"), "ioengine=%s: %v", j.IOEngine, err)
	}
	if j.IOEngine != "ringblk" {
		if _, ok := j.set["aio_poll"]; ok && j.IOEngine != "io_uring" {
			return bad(at("aio_poll"), "aio_poll= applies to ioengine=ringblk and io_uring only (ioengine=%s)", j.IOEngine)
		}
		for _, o := range []string{"format", "share_rw", "locking"} {
			if _, ok := j.set[o]; ok {
				return bad(at(o), "%s= applies to ioengine=ringblk only (ioengine=%s)", o, j.IOEngine)
			}
		}
	}
	if j.NumaCPUs != nil && j.CPUsAllowed == nil {
		j.CPUsAllowed = j.NumaCPUs // numa_cpu_nodes: run on the nodes' CPUs
	}
	if err := j.validatePrio(bad, at); err != nil {
		return err
	}
	if j.IOEngine != "io_uring" && j.IOEngine != "ringblk" && j.IOEngine != "io_uring_cmd" {
		for _, o := range []string{"sqthread_poll", "sqthread_poll_cpu"} {
			if _, ok := j.set[o]; ok {
				return bad(at(o), "%s applies to the ring engines (io_uring, ringblk), not ioengine=%s", o, j.IOEngine)
			}
		}
	}
	if j.IOEngine != "io_uring" && j.IOEngine != "io_uring_cmd" {
		for _, o := range []string{"fixedbufs", "registerfiles"} {
			if _, ok := j.set[o]; ok && j.IOEngine != "ringblk" {
				// ringblk: the clone's Context registers its files and
				// holds the buffers in its registered arena (engine_ringblk.go).
				return bad(at(o), "%s applies to the ring engines (io_uring, ringblk), not ioengine=%s", o, j.IOEngine)
			}
		}
	}
	if err := j.setupFiles(bad, at); err != nil {
		return err
	}
	if j.Filename == "" && !(j.IOEngine == "ringblk" && j.Format == "null") {
		// fio's default file: jobname.clone.file in directory=, one per
		// clone.
		j.perCloneFile = j.NumJobs > 1
		j.Filename = j.cloneFileName(0, 0)
		if j.Directory != "" {
			j.Filename = filepath.Join(j.Directory, j.Filename)
		}
	}
	if j.FileSize > 0 {
		// fio: filesize is the file, size the I/O (default: the file).
		if j.Size > 0 && j.IOSize == 0 {
			j.IOSize = j.Size
		}
		j.Size = j.FileSize
	}
	if j.Format == "null" && j.Size == 0 {
		return bad(at("format"), "format=null needs a size")
	}
	if j.Verify == VerifyPattern && len(j.VerifyPattern) == 0 {
		return bad(at("verify"), "verify=pattern needs verify_pattern")
	}
	if j.Verify != VerifyNone && j.NoRandomMap && j.RW.Random() && j.RW.Writes() {
		return bad(at("norandommap"), "norandommap conflicts with verify=%s on random writes (a block written twice could not be checked against its last write)", j.Verify)
	}
	if j.Verify != VerifyNone && j.Dist != DistRandom && j.RW.Writes() {
		return bad(at("random_distribution"), "random_distribution conflicts with verify on writes")
	}
	if j.Verify != VerifyNone && j.RW.Writes() && j.RW.Reads() {
		return bad(at("verify"), "verify with a mixed pattern (rw=%s) is not supported: use a write job, then a read job with verify", j.RW)
	}
	if j.ReadOnly && j.RW.Writes() {
		return bad(at("readonly"), "rw=%s writes, but readonly is set", j.RW)
	}
	if j.VerifyOnly && !j.RW.Writes() {
		// As in fio, only a workload that writes has anything to replay: on
		// a read pattern verify_only changes nothing, and the job reads (and
		// checks its blocks where verify= is set) as it would without it.
		j.VerifyOnly = false
	}
	if j.VerifyOnly {
		switch {
		case j.Verify == VerifyNone:
			return bad(at("verify_only"), "verify_only needs verify=")
		case j.TimeBased:
			return bad(at("verify_only"), "verify_only does not support time_based (as in fio)")
		case !j.DoVerify:
			return bad(at("verify_only"), "verify_only conflicts with do_verify=0")
		}
	}
	for d := 0; d < 2; d++ {
		if j.MinBS(d) <= 0 {
			return bad(at("bs"), "block size must be positive")
		}
		if j.Direct && j.MinBS(d)%512 != 0 {
			return bad(at("bs"), "direct=1 needs block sizes that are multiples of 512 (got %d)", j.MinBS(d))
		}
		if j.Verify != VerifyNone && j.Verify != VerifyPattern && j.MinBS(d) < verifyHeaderSize(j.Verify) {
			return bad(at("bs"), "verify=%s needs blocks of at least %d bytes", j.Verify, verifyHeaderSize(j.Verify))
		}
	}
	if j.Verify != VerifyNone && j.Verify != VerifyPattern && verifyInterval(j) < verifyHeaderSize(j.Verify) {
		return bad(at("bs"), "verify=%s: the verify interval (gcd of the block sizes, %d) is smaller than its %d-byte header", j.Verify, verifyInterval(j), verifyHeaderSize(j.Verify))
	}
	if j.Size > 0 && int64(j.MaxBS(DirRead)) > j.Size || j.Size > 0 && int64(j.MaxBS(DirWrite)) > j.Size {
		return bad(at("size"), "size %d is smaller than one block", j.Size)
	}
	if j.IODepth < 1 || j.IODepth > 4096 {
		return bad(at("iodepth"), "iodepth %d out of range 1..4096", j.IODepth)
	}
	if j.IODepthBatch < 1 || j.IODepthBatch > j.IODepth {
		j.IODepthBatch = min(max(j.IODepthBatch, 1), j.IODepth)
	}
	// fio: the maximum defaults to, and is raised to, the minimum.
	j.IODepthBatchCompleteMax = max(j.IODepthBatchCompleteMax, j.IODepthBatchCompleteMin)
	if !j.PerJobLogs && j.NumJobs > 1 && (j.BWLog != nil || j.IOPSLog != nil || j.LatLog != nil) {
		return bad(at("per_job_logs"), "per_job_logs=0 with numjobs=%d (clones sharing one log file) is not implemented", j.NumJobs)
	}
	if j.ZoneMode == "strided" && j.ZoneSize > 0 && j.RW.Random() {
		return bad(at("zonemode"), "zonemode=strided with a random pattern (rw=%s) is not implemented", j.RW)
	}
	if j.NumJobs < 1 || j.NumJobs > 1024 {
		return bad(at("numjobs"), "numjobs %d out of range 1..1024", j.NumJobs)
	}
	return nil
}

// cloneFileName is clone k's file without filename=: filename_format
// expanded (fio's default "$jobname.$jobnum.$filenum"): clone k's file
// number f (0 unless nrfiles gives a clone several).
func (j *Job) cloneFileName(k, f int) string {
	format := j.FilenameFormat
	if format == "" {
		format = "$jobname.$jobnum.$filenum"
	}
	return strings.NewReplacer("$jobname", j.Name, "$jobnum", strconv.Itoa(k), "$filenum", strconv.Itoa(f)).Replace(format)
}
