package bench

import (
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/ringblk/ringblk/drivers/nbd"
	"github.com/ringblk/ringblk/drivers/rbd"
	"github.com/ringblk/ringblk/internal/units"
	"math"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// optionSpec is one implemented option.
type optionSpec struct {
	bool      bool // may be written bare
	bareEmpty bool // bare: set gets "" (not "1")
	help      string
	set       func(j *Job, v string) error
}

var optionAliases = map[string]string{
	"readwrite":              "rw",
	"blocksize":              "bs",
	"blocksize_range":        "bsrange",
	"iodepth_batch":          "iodepth_batch_submit",
	"timeout":                "runtime",
	"threads":                "thread",
	"io_limit":               "io_size",
	"blockalign":             "ba",
	"ratemin":                "rate_min",
	"ss":                     "steadystate",
	"iodepth_batch_complete": "iodepth_batch_complete_min",
	"ss_dur":                 "steadystate_duration",
	"ss_ramp":                "steadystate_ramp_time",
}

// optionTable holds every option bench implements. Help texts feed
// --help and docs.
var optionTable map[string]optionSpec

func init() {
	optionTable = map[string]optionSpec{
		"name": {help: "job name (starts a new job on the command line)", set: func(j *Job, v string) error { j.Name = v; return nil }},
		"description": {help: "free text, reported only", set: func(j *Job, v string) error {
			j.Description = v
			return nil
		}},
		"filename": {help: "file or block device (image, nbd:// URI or rbd:pool/image for ioengine=ringblk); '\\:' is a colon in the name", set: func(j *Job, v string) error {
			// fio: unescaped colons separate several files; "\:" is a colon.
			// An NBD URI (ioengine=ringblk) is one name, colons and all.
			if nbd.IsURI(v) || rbd.IsName(v) {
				j.Filename = v
				return nil
			}
			var b strings.Builder
			var names []string
			for i := 0; i < len(v); i++ {
				switch {
				case v[i] == '\\' && i+1 < len(v) && v[i+1] == ':':
					b.WriteByte(':')
					i++
				case v[i] == ':':
					names = append(names, b.String()) // several files (files.go)
					b.Reset()
				default:
					b.WriteByte(v[i])
				}
			}
			names = append(names, b.String())
			for _, n := range names {
				if n == "" {
					return fmt.Errorf("an empty file name in %q", v)
				}
			}
			j.Filename, j.Files = names[0], nil
			if len(names) > 1 {
				j.Files = names
			}
			return nil
		}},
		"directory": {help: "directory prefixed to a relative filename", set: func(j *Job, v string) error { j.Directory = v; return nil }},
		"size": {help: "bytes of I/O per job and size of the region (k/m/g/t suffixes, base 1024; N% of an existing file or device)", set: pctOrSize(func(j *Job, n int64, pct float64) {
			j.Size, j.SizePct = n, pct
		})},
		"offset": {help: "start of the region in bytes (N%: of an existing file or device)", set: pctOrSize(func(j *Job, n int64, pct float64) {
			j.Offset, j.OffsetPct = n, pct
		})},
		"rw": {help: "read, write, randread, randwrite, rw/readwrite, randrw", set: func(j *Job, v string) error {
			j.SeqAdd, j.SeqNr = 0, 0
			v, suffix, hasSuffix := strings.Cut(v, ":")
			defer func() {
				if !hasSuffix {
					return
				}
				// fio: a count of I/Os per random offset for random
				// patterns, a byte skip (negative: backwards) for
				// sequential ones.
				if j.RW.Random() {
					n, err := strconv.Atoi(suffix)
					if err == nil && n >= 1 {
						j.SeqNr = n
					}
					return
				}
				neg := strings.HasPrefix(suffix, "-")
				n, err := units.ParseSize(strings.TrimPrefix(suffix, "-"))
				if err == nil {
					if neg {
						n = -n
					}
					j.SeqAdd = n
				}
			}()
			if hasSuffix {
				if err := checkRWSuffix(v, suffix); err != nil {
					return err
				}
			}
			for i, n := range rwNames {
				if v == n {
					j.RW = RW(i)
					return nil
				}
			}
			if v == "readwrite" {
				j.RW = RWMixed
				return nil
			}
			if strings.Contains(v, "trim") {
				return errors.New("trim workloads are not implemented")
			}
			return errors.New("want read, write, randread, randwrite, rw, readwrite or randrw")
		}},
		"io_size": {help: "bytes of I/O per loop (io_limit; default: size)", set: sizeSetter(func(j *Job, n int64) { j.IOSize = n })},
		"loops":   {help: "repeat the job's I/O this many times", set: intSetter(1, 1<<30, func(j *Job, n int) { j.Loops = n })},
		"gtod_reduce": {bool: true, help: "disable_lat, disable_clat, disable_slat and disable_bw_measurement at once (clat percentiles off)", set: boolSetter(func(j *Job, b bool) {
			j.DisableLat, j.DisableClat, j.DisableSlat, j.DisableBW = b, b, b, b
			j.ClatPercentiles = !b
		})},
		"disable_lat":            {bool: true, help: "do not measure total latency (lat)", set: boolSetter(func(j *Job, b bool) { j.DisableLat = b })},
		"disable_clat":           {bool: true, help: "do not measure completion latency (clat)", set: boolSetter(func(j *Job, b bool) { j.DisableClat = b })},
		"disable_slat":           {bool: true, help: "do not measure submission latency (slat)", set: boolSetter(func(j *Job, b bool) { j.DisableSlat = b })},
		"disable_bw_measurement": {bool: true, help: "take no bandwidth/IOPS samples (disable_bw)", set: boolSetter(func(j *Job, b bool) { j.DisableBW = b })},
		"clat_percentiles":       {bool: true, help: "report completion latency percentiles (default 1)", set: boolSetter(func(j *Job, b bool) { j.ClatPercentiles = b })},
		"lat_percentiles":        {bool: true, help: "report total latency percentiles (default 0)", set: boolSetter(func(j *Job, b bool) { j.LatPercentiles = b })},
		"percentile_list": {help: "percentiles reported, colon-separated (default fio's 17)", set: func(j *Job, v string) error {
			var l []float64
			for _, f := range strings.Split(v, ":") {
				p, err := strconv.ParseFloat(f, 64)
				if err != nil || p < 0 || p > 100 {
					return fmt.Errorf("bad percentile %q (0..100)", f)
				}
				l = append(l, p)
			}
			if len(l) > 20 {
				return errors.New("at most 20 percentiles")
			}
			j.PercentileList = l
			return nil
		}},
		"write_bw_log":     {bool: true, bareEmpty: true, help: "bandwidth log PREFIX_bw.N.log in fio's format (bare: the job's name)", set: logSetter(func(j *Job) **string { return &j.BWLog })},
		"write_iops_log":   {bool: true, bareEmpty: true, help: "IOPS log PREFIX_iops.N.log in fio's format", set: logSetter(func(j *Job) **string { return &j.IOPSLog })},
		"write_lat_log":    {bool: true, bareEmpty: true, help: "latency logs PREFIX_{lat,clat,slat}.N.log in fio's format (ns)", set: logSetter(func(j *Job) **string { return &j.LatLog })},
		"log_avg_msec":     {help: "average log entries over windows of N ms (0: an entry per I/O)", set: intSetter(0, 1<<30, func(j *Job, n int) { j.LogAvgMsec = n })},
		"log_offset":       {bool: true, help: "log each I/O's offset (per-I/O logs)", set: boolSetter(func(j *Job, b bool) { j.LogOffset = b })},
		"per_job_logs":     {bool: true, help: "one log per clone, PREFIX_bw.N.log (default 1); 0: PREFIX_bw.log", set: boolSetter(func(j *Job, b bool) { j.PerJobLogs = b })},
		"offset_increment": {help: "clone k's region starts k*N bytes further", set: sizeSetter(func(j *Job, n int64) { j.OffsetIncrement = n })},
		"ba": {help: "align random offsets to N bytes (blockalign; default: the smallest block)", set: func(j *Job, v string) error {
			return perDir(v, func(d int, s string) error {
				n, err := units.ParseSize(s)
				if err != nil {
					return err
				}
				if n <= 0 || n > 1<<30 {
					return fmt.Errorf("alignment %d out of range", n)
				}
				if d == DirRead || j.BlockAlign == 0 {
					j.BlockAlign = n
				} else if n != j.BlockAlign {
					return errors.New("different read and write alignments are not implemented")
				}
				return nil
			})
		}},
		"unlink": {bool: true, help: "remove the job's file after the job", set: boolSetter(func(j *Job, b bool) { j.Unlink = b })},
		"cpus_allowed": {help: "CPUs the clones may run on: 0-3,6", set: func(j *Job, v string) error {
			cpus, err := parseCPUList(v)
			if err != nil {
				return err
			}
			j.CPUsAllowed = cpus
			return nil
		}},
		"cpus_allowed_policy": {help: "shared (every clone on the whole set) or split (clone k on the k-th CPU)", set: func(j *Job, v string) error {
			if v != "shared" && v != "split" {
				return errors.New("want shared or split")
			}
			j.CPUsPolicy = v
			return nil
		}},
		"thinktime":        {help: "pause this long (bare number: microseconds) after every thinktime_blocks I/Os have completed", set: usecSetter(func(j *Job, d time.Duration) { j.ThinkTime = d })},
		"thinktime_blocks": {help: "I/Os between thinktime pauses (default 1)", set: intSetter(1, 1<<30, func(j *Job, n int) { j.ThinkBlocks = n })},
		"rate":             {help: "bandwidth cap per clone in bytes/s, read[,write] (0 or empty: none)", set: rateSetter(func(j *Job) *[2]int64 { return &j.Rate })},
		"rate_iops":        {help: "IOPS cap per clone, read[,write]", set: rateSetter(func(j *Job) *[2]int64 { return &j.RateIOPS })},
		"rate_process": {help: "linear (even spacing, default) or poisson (exponential gaps)", set: func(j *Job, v string) error {
			if v != "linear" && v != "poisson" {
				return errors.New("want linear or poisson")
			}
			j.RateProcess = v
			return nil
		}},
		"startdelay": {help: "wait this long before starting (a-b: a random time in that range)", set: func(j *Job, v string) error {
			lo, hi, isRange := strings.Cut(v, "-")
			a, err := parseTime(lo)
			if err != nil {
				return err
			}
			b := a
			if isRange {
				if b, err = parseTime(hi); err != nil {
					return err
				}
				if b < a {
					return errors.New("range end before its start")
				}
			}
			j.StartDelay = [2]time.Duration{a, b}
			return nil
		}},
		"rate_min":      {help: "fail the job when a rate_cycle's bandwidth is below this (bytes/s, read[,write]; ratemin)", set: rateSetter(func(j *Job) *[2]int64 { return &j.RateMin })},
		"rate_iops_min": {help: "fail the job when a rate_cycle's IOPS are below this", set: rateSetter(func(j *Job) *[2]int64 { return &j.RateIOPSMin })},
		"rate_cycle": {help: "window of rate_min checks (bare number: ms; default 1000)", set: func(j *Job, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return errors.New("want a positive number of milliseconds")
			}
			j.RateCycle = time.Duration(n) * time.Millisecond
			return nil
		}},
		"flow":       {help: "weight of the job in its flow_id group: clones issue I/O in the ratio of their weights", set: intSetter(0, 1<<20, func(j *Job, n int) { j.Flow = n })},
		"flow_id":    {help: "flow group of the job (default 0)", set: intSetter(0, 1<<30, func(j *Job, n int) { j.FlowID = n })},
		"flow_sleep": {help: "wait before retrying when ahead of the flow share (bare number: microseconds)", set: usecSetter(func(j *Job, d time.Duration) { j.FlowSleep = d })},
		"fsync":      {help: "fsync after every N writes (0: none)", set: intSetter(0, 1<<30, func(j *Job, n int) { j.Fsync = n })},
		"fdatasync":  {help: "fdatasync after every N writes (0: none)", set: intSetter(0, 1<<30, func(j *Job, n int) { j.Fdatasync = n })},
		"end_fsync":  {bool: true, help: "fsync once the job's writes are done", set: boolSetter(func(j *Job, b bool) { j.EndFsync = b })},
		"filesize": {help: "size of the job's file (size= is then the bytes of I/O)", set: func(j *Job, v string) error {
			if strings.Contains(v, "-") {
				return errors.New("a filesize range is not implemented")
			}
			n, err := units.ParseSize(v)
			if err != nil {
				return err
			}
			j.FileSize = n
			return nil
		}},
		"wait_for": {help: "start after the named job (defined earlier) finished", set: func(j *Job, v string) error {
			if v == "" {
				return errors.New("needs a job name")
			}
			j.WaitFor = v
			return nil
		}},
		"number_ios": {help: "stop each clone after this many I/Os", set: func(j *Job, v string) error {
			n, err := units.ParseSize(v)
			if err != nil || n < 0 {
				return errors.New("want a count of I/Os")
			}
			j.NumberIOs = n
			return nil
		}},
		"sync": {bool: true, help: "synchronous writes: 0/none, 1/sync (O_SYNC), dsync (O_DSYNC); ringblk: FUA writes", set: func(j *Job, v string) error {
			switch v {
			case "0", "none", "false":
				j.SyncIO = ""
			case "1", "sync", "true":
				j.SyncIO = "sync"
			case "dsync":
				j.SyncIO = "dsync"
			default:
				return errors.New("want 0, none, 1, sync or dsync")
			}
			return nil
		}},
		"zonemode": {help: "none or strided (zonesize bytes of I/O, then skip zoneskip)", set: func(j *Job, v string) error {
			switch v {
			case "none", "strided":
				j.ZoneMode = v
				return nil
			case "zbd":
				return errors.New("zonemode=zbd (zoned block devices) is not implemented (none, strided)")
			}
			return errors.New("want none or strided")
		}},
		"zonesize":   {help: "zonemode=strided: bytes of I/O per zone", set: sizeSetter(func(j *Job, n int64) { j.ZoneSize = n })},
		"zoneskip":   {help: "zonemode=strided: bytes skipped after each zone", set: sizeSetter(func(j *Job, n int64) { j.ZoneSkip = n })},
		"rwmixread":  {help: "percent of reads in rw/randrw", set: pctSetter(func(j *Job, p int) { j.RWMixRead = p })},
		"rwmixwrite": {help: "percent of writes in rw/randrw", set: pctSetter(func(j *Job, p int) { j.RWMixRead = 100 - p })},
		"bs": {help: "block size, or read,write sizes (bs=4k or bs=4k,64k)", set: func(j *Job, v string) error {
			return perDir(v, func(d int, s string) error {
				n, err := units.ParseSize(s)
				if err != nil {
					return err
				}
				if n <= 0 || n > 1<<30 {
					return fmt.Errorf("block size %d out of range", n)
				}
				j.BS[d] = int(n)
				j.BSRange[d] = [2]int{}
				return nil
			})
		}},
		"bsrange": {help: "block size range min-max[,min-max]; sizes are multiples of min", set: func(j *Job, v string) error {
			return perDir(v, func(d int, s string) error {
				lo, hi, ok := strings.Cut(s, "-")
				if !ok {
					return fmt.Errorf("want min-max, got %q", s)
				}
				a, err := units.ParseSize(lo)
				if err != nil {
					return err
				}
				b, err := units.ParseSize(hi)
				if err != nil {
					return err
				}
				if a <= 0 || b < a || b > 1<<30 {
					return fmt.Errorf("bad range %d-%d", a, b)
				}
				j.BSRange[d] = [2]int{int(a), int(b)}
				return nil
			})
		}},
		"bssplit": {help: "weighted sizes: 4k/50:64k/50[,read-split:…]", set: func(j *Job, v string) error {
			return perDir(v, func(d int, s string) error {
				var split []BSSplit
				total := 0
				for _, e := range strings.Split(s, ":") {
					sz, pct, hasPct := strings.Cut(e, "/")
					n, err := units.ParseSize(sz)
					if err != nil {
						return err
					}
					if n <= 0 || n > 1<<30 {
						return fmt.Errorf("block size %d out of range", n)
					}
					p := -1
					if hasPct && pct != "" {
						if p, err = strconv.Atoi(pct); err != nil || p < 0 || p > 100 {
							return fmt.Errorf("bad percentage %q", pct)
						}
						total += p
					}
					split = append(split, BSSplit{Size: int(n), Percent: p})
				}
				// Entries without a percentage share what is left equally.
				var open int
				for _, e := range split {
					if e.Percent < 0 {
						open++
					}
				}
				if total > 100 || (open == 0 && total != 100) {
					return fmt.Errorf("percentages add up to %d, want 100", total)
				}
				for i := range split {
					if split[i].Percent < 0 {
						split[i].Percent = (100 - total) / open
					}
				}
				j.BSSplit[d] = split
				return nil
			})
		}},
		"iodepth":                    {help: "I/Os in flight per job", set: intSetter(1, 4096, func(j *Job, n int) { j.IODepth = n })},
		"iodepth_batch_submit":       {help: "I/Os submitted per io_uring_enter (iodepth_batch)", set: intSetter(0, 4096, func(j *Job, n int) { j.IODepthBatch = max(n, 1) })},
		"iodepth_batch_complete_max": {help: "completions a clone takes before it issues again (default and at least iodepth_batch_complete_min)", set: intSetter(0, 4096, func(j *Job, n int) { j.IODepthBatchCompleteMax = n })},
		"iodepth_batch_complete_min": {help: "completions a clone waits for before it issues again (iodepth_batch_complete; all in flight if fewer)", set: intSetter(0, 4096, func(j *Job, n int) { j.IODepthBatchCompleteMin = max(n, 1) })},
		"filename_format": {help: "a clone's file name without filename=: $jobname, $jobnum (the clone), $filenum (0)", set: func(j *Job, v string) error {
			if v == "" {
				return errors.New("want a name pattern")
			}
			if strings.Contains(v, "$clientuid") {
				return errors.New("$clientuid is not implemented (no client/server mode)")
			}
			j.FilenameFormat = v
			return nil
		}},
		"numjobs":    {help: "clones of the job, each on its own thread (one per core)", set: intSetter(1, 1024, func(j *Job, n int) { j.NumJobs = n })},
		"runtime":    {help: "run time cap (bare number: seconds)", set: timeSetter(func(j *Job, d time.Duration) { j.Runtime = d })},
		"time_based": {bool: true, help: "run for runtime even when size is done", set: boolSetter(func(j *Job, b bool) { j.TimeBased = b })},
		"ramp_time":  {help: "run this long before measuring", set: timeSetter(func(j *Job, d time.Duration) { j.RampTime = d })},
		"direct":     {bool: true, help: "O_DIRECT", set: boolSetter(func(j *Job, b bool) { j.Direct = b })},
		"buffered":   {bool: true, help: "the opposite of direct", set: boolSetter(func(j *Job, b bool) { j.Direct = !b })},
		"ioengine": {help: "ringblk (block layer), io_uring (direct ring, no block layer), libaio (Linux native AIO), psync, sync, pvsync, pvsync2 (one system call per I/O)", set: func(j *Job, v string) error {
			// Checked in validate, so that an override can replace an
			// engine bench does not have.
			if v == "" {
				return errors.New("empty engine name")
			}
			j.IOEngine = v
			return nil
		}},
		"fixedbufs":     {bool: true, help: "io_uring engine: registered buffers (READ_FIXED/WRITE_FIXED)", set: boolSetter(func(j *Job, b bool) { j.FixedBufs = b })},
		"registerfiles": {bool: true, help: "io_uring engine: the file as a registered-file slot", set: boolSetter(func(j *Job, b bool) { j.RegisterFiles = b })},
		"format": {help: "ringblk engine image format: raw, qcow2, null (default: probe the image)", set: func(j *Job, v string) error {
			switch v {
			case "raw", "qcow2", "null":
				j.Format = v
				return nil
			}
			return errors.New("want raw, qcow2 or null")
		}},
		"aio_poll": {help: "ringblk and io_uring engines: each clone busy-polls its completions up to this long before it sleeps (adaptive, as aio Options.PollTime; bare number: microseconds; 0: never); auto (default): 20us at iodepth 2 to 16 without sqthread_poll, else 0", set: func(j *Job, v string) error {
			if strings.TrimSpace(v) == "auto" {
				j.AIOPoll = AIOPollAuto
				return nil
			}
			return usecSetter(func(j *Job, d time.Duration) { j.AIOPoll = d })(j, v)
		}},
		"iowq_workers": {help: "ringblk and io_uring engines: where a pinned clone's io-wq workers (the kernel threads that run I/O it cannot issue without blocking, e.g. on zram) run: auto (default: other at iodepth > 1, same at iodepth 1), same (the clone's CPU, the kernel's default), other (the process's other CPUs)", set: func(j *Job, v string) error {
			switch v {
			case "auto":
				j.IOWQWorkers = ""
			case "same", "other":
				j.IOWQWorkers = v
			default:
				return errors.New("want auto, same or other")
			}
			return nil
		}},
		"readonly": {bool: true, help: "safety guard: refuse a job that writes and never extend a file (fio's --readonly)", set: boolSetter(func(j *Job, b bool) { j.ReadOnly = b })},
		"share_rw": {bool: true, help: "ringblk engine: let other processes write the image during the job (QEMU's share-rw=on; default 0: refuse an image in use, as ringblk io does)", set: boolSetter(func(j *Job, b bool) { j.ShareRW = b })},
		"locking": {help: "ringblk engine: QEMU-compatible image locks: auto (default), on, off", set: func(j *Job, v string) error {
			switch v {
			case "auto", "on", "off":
				j.Locking = v
				return nil
			}
			return errors.New("want auto, on or off")
		}},
		"fadvise_hint": {help: "posix_fadvise hint on each file opened: 1 (default: random or sequential after rw), 0, random, sequential", set: func(j *Job, v string) error {
			switch v {
			case "1", "true", "0", "false", "random", "sequential":
				j.FadviseHint = map[string]string{"true": "1", "false": "0"}[v]
				if j.FadviseHint == "" {
					j.FadviseHint = v
				}
				return nil
			}
			return errors.New("want 0, 1, random or sequential")
		}},
		"steadystate": {help: "ss: end the job once iops|bw[_slope]:LIMIT[%] holds over the last ss_dur seconds", set: func(j *Job, v string) error {
			c, err := parseSteadyState(v)
			if err != nil {
				return err
			}
			if j.SS != nil {
				c.Dur, c.Ramp = j.SS.Dur, j.SS.Ramp
			}
			j.SS = &c
			return nil
		}},
		"steadystate_duration":  {help: "ss_dur: the steady-state window (bare number: seconds)", set: timeSetter(func(j *Job, d time.Duration) { j.ssCfg().Dur = d })},
		"steadystate_ramp_time": {help: "ss_ramp: time before steady-state sampling starts (bare number: seconds)", set: timeSetter(func(j *Job, d time.Duration) { j.ssCfg().Ramp = d })},
		"random_generator": {help: "tausworthe (default) or lfsr: random offsets visit every block once per pass, even with norandommap", set: func(j *Job, v string) error {
			switch v {
			case "tausworthe", "lfsr":
				j.RandomGen = v
				return nil
			case "tausworthe64":
				return errors.New("tausworthe64 is not implemented (the verify seeds are the 32-bit generator's): use tausworthe or lfsr")
			}
			return errors.New("want tausworthe or lfsr")
		}},
		"latency_target": {help: "search the deepest queue (up to iodepth) at which latency_percentile of a window's I/Os finish within this (bare number: microseconds); the job ends when found", set: usecSetter(func(j *Job, d time.Duration) { j.LatencyTarget = d })},
		"latency_window": {help: "latency_target: the window each queue depth is judged over (bare number: microseconds)", set: usecSetter(func(j *Job, d time.Duration) { j.LatencyWindow = d })},
		"latency_percentile": {help: "latency_target: percent of a window's I/Os that must meet the target (default 100)", set: func(j *Job, v string) error {
			f, err := strconv.ParseFloat(strings.TrimSuffix(v, "%"), 64)
			if err != nil || f <= 0 || f > 100 {
				return errors.New("want a percentage in (0, 100]")
			}
			j.LatencyPercentile = f
			return nil
		}},
		"norandommap": {bool: true, help: "random offsets may repeat (no coverage map)", set: boolSetter(func(j *Job, b bool) { j.NoRandomMap = b })},
		"randrepeat":  {bool: true, help: "seed the generators reproducibly (default 1)", set: boolSetter(func(j *Job, b bool) { j.RandRepeat = b })},
		"randseed": {help: "seed of the generators", set: func(j *Job, v string) error {
			n, err := strconv.ParseUint(v, 0, 64)
			if err != nil {
				return errors.New("want an unsigned integer")
			}
			j.RandSeed = n
			j.RandRepeat = true
			return nil
		}},
		"random_distribution": {help: "random, zipf:theta, pareto:h, normal:dev%, zoned:access%/range%:…, zoned_abs:access%/size:…", set: func(j *Job, v string) error {
			kind, param, hasParam := strings.Cut(v, ":")
			if kind == "random" {
				j.Dist, j.DistParam = DistRandom, 0
				return nil
			}
			if kind == "zoned" || kind == "zoned_abs" {
				zones, err := parseZones(param, kind == "zoned_abs")
				if err != nil {
					return err
				}
				j.Dist, j.Zones, j.ZonesAbs = DistZoned, zones, kind == "zoned_abs"
				return nil
			}
			if kind == "normal" {
				f, err := strconv.ParseFloat(param, 64)
				if !hasParam || err != nil || f <= 0 || f > 100 {
					return errors.New("normal needs a deviation in percent of the region (normal:10)")
				}
				j.Dist, j.DistParam = DistNormal, f
				return nil
			}
			if kind != "zipf" && kind != "pareto" {
				return errors.New("want random, zipf:theta, pareto:h, normal:dev, zoned:a/r:… or zoned_abs:a/size:…")
			}
			if !hasParam {
				return fmt.Errorf("%s needs a parameter (%s:0.5)", kind, kind)
			}
			if c := strings.IndexByte(param, ':'); c >= 0 {
				return errors.New("a distribution seed offset is not implemented")
			}
			f, err := strconv.ParseFloat(param, 64)
			if err != nil || math.IsNaN(f) {
				return fmt.Errorf("bad parameter %q", param)
			}
			if kind == "zipf" {
				if f <= 0 || f == 1 {
					return errors.New("zipf theta must be > 0 and != 1")
				}
				j.Dist = DistZipf
			} else {
				if f <= 0 || f >= 1 {
					return errors.New("pareto h must be in (0, 1)")
				}
				j.Dist = DistPareto
			}
			j.DistParam = f
			return nil
		}},
		"verify": {help: "crc32c, crc64, md5, sha256, meta (the header alone), pattern (0: off); fio's header", set: func(j *Job, v string) error {
			switch v {
			case "0", "", "none":
				j.Verify = VerifyNone
			case "crc32c", "crc32c-intel":
				j.Verify = VerifyCRC32C
			case "md5":
				j.Verify = VerifyMD5
			case "crc64":
				j.Verify = VerifyCRC64
			case "sha256":
				j.Verify = VerifySHA256
			case "pattern":
				j.Verify = VerifyPattern
			case "meta":
				j.Verify = VerifyMeta
			case "crc32", "crc16", "crc7", "xxhash", "sha1", "sha512", "sha3-224", "sha3-256", "sha3-384", "sha3-512", "null":
				return fmt.Errorf("verify=%s is a fio method that ringblk bench does not implement (crc32c, crc32c-intel, crc64, md5, sha256, meta, pattern)", v)
			default:
				return errors.New("want crc32c, crc32c-intel, crc64, md5, sha256, meta or pattern")
			}
			return nil
		}},
		"verify_pattern": {help: "the data of verified writes (verify=pattern: compared whole; meta: after the header; checksums: covered by them): 0xHEX, \"text\" or a decimal byte", set: func(j *Job, v string) error {
			p, err := parsePattern(v)
			if err != nil {
				return err
			}
			j.VerifyPattern = p
			return nil
		}},
		"verify_interval": {help: "bytes per verify header (default: the smallest write block)", set: sizeSetter(func(j *Job, n int64) {
			j.VerifyIntervalSet = int(min(n, 1<<30))
		})},
		"fill_device": {bool: true, help: "write until the file system or device is full (ENOSPC ends the job, not an error); without size= the free space", set: boolSetter(func(j *Job, b bool) {
			j.FillDevice = b
		})},
		"fill_fs":                    {bool: true, help: "alias of fill_device", set: boolSetter(func(j *Job, b bool) { j.FillDevice = b })},
		"create_serialize":           {bool: true, help: "accepted: bench lays files out one after another before the run either way", set: boolSetter(func(j *Job, b bool) {})},
		"verify_fatal":               {bool: true, help: "stop the job at the first mismatch", set: boolSetter(func(j *Job, b bool) { j.VerifyFatal = b })},
		"dedupe_percentage":          {help: "percent of writes whose contents repeat an earlier block's", set: pctSetter(func(j *Job, n int) { j.DedupePercentage = n })},
		"buffer_compress_percentage": {help: "percent of every buffer_compress_chunk that is zeros (compressible)", set: pctSetter(func(j *Job, n int) { j.CompressPercentage = n })},
		"buffer_compress_chunk":      {help: "granularity of buffer_compress_percentage (default 512)", set: sizeSetter(func(j *Job, n int64) { j.CompressChunk = int(min(n, 1<<30)) })},
		"dedupe_mode": {help: "repeat (copies of earlier writes, default) or working_set (copies from a set of dedupe_working_set_percentage of the blocks)", set: func(j *Job, v string) error {
			if v != "repeat" && v != "working_set" {
				return errors.New("want repeat or working_set")
			}
			j.DedupeMode = v
			return nil
		}},
		"dedupe_working_set_percentage": {help: "dedupe_mode=working_set: the set's share of the region's blocks (default 5)", set: pctSetter(func(j *Job, n int) { j.DedupeWorkingSet = n })},
		"dedupe_global":                 {bool: true, help: "dedupe copies may come from any clone's blocks (one seed space for the run)", set: boolSetter(func(j *Job, b bool) { j.DedupeGlobal = b })},
		"sqthread_poll":                 {bool: true, help: "io_uring/ringblk engines: a kernel thread polls the clone's submission queue (IORING_SETUP_SQPOLL)", set: boolSetter(func(j *Job, b bool) { j.SQThreadPoll = b })},
		"sqthread_poll_cpu":             {help: "sqthread_poll: the CPU of the polling thread", set: intSetter(0, 1<<16, func(j *Job, n int) { j.SQThreadPollCPU = n })},
		"nonvectored": {help: "io_uring: 1 or -1 (bench always issues IORING_OP_READ/WRITE, non-vectored); 0 (READV/WRITEV) is not implemented", set: func(j *Job, v string) error {
			if v == "1" || v == "-1" {
				return nil
			}
			return errors.New("nonvectored=0 (IORING_OP_READV/WRITEV) is not implemented: bench issues non-vectored READ/WRITE")
		}},
		"cmd_type": {help: "io_uring_cmd's command set; fio's io_uring engine ignores it, so does bench (nvme only)", set: func(j *Job, v string) error {
			if v != "nvme" {
				return errors.New("want nvme")
			}
			return nil
		}},
		"exitall": {bool: true, help: "when a clone of this job finishes, stop every clone still running", set: boolSetter(func(j *Job, b bool) { j.ExitAll = b })},
		"exit_what": {help: "exitall: group (default), stonewall or all; bench runs one group at a time, so each stops the clones running", set: func(j *Job, v string) error {
			if v != "group" && v != "stonewall" && v != "all" {
				return errors.New("want group, stonewall or all")
			}
			j.ExitWhat = v
			return nil
		}},
		"verify_backlog":    {help: "read written blocks back (verify) every N writes, during the run", set: intSetter(0, 1<<20, func(j *Job, n int) { j.VerifyBacklog = n })},
		"verify_dump":       {bool: true, help: "save a block that fails verification as FILE.OFFSET.received", set: boolSetter(func(j *Job, b bool) { j.VerifyDump = b })},
		"verify_only":       {bool: true, help: "do not write: replay the write workload's blocks and verify them (data of an earlier run)", set: boolSetter(func(j *Job, b bool) { j.VerifyOnly = b })},
		"do_verify":         {bool: true, help: "after writing, read back and verify (default 1)", set: boolSetter(func(j *Job, b bool) { j.DoVerify = b })},
		"group_reporting":   {bool: true, help: "report each group as one", set: boolSetter(func(j *Job, b bool) { j.GroupReporting = b })},
		"thread":            {bool: true, help: "accepted: clones are always threads", set: boolSetter(func(j *Job, b bool) { j.Thread = b })},
		"stonewall":         {bool: true, help: "wait for earlier jobs; starts a new group", set: boolSetter(func(j *Job, b bool) { j.Stonewall = b })},
		"wait_for_previous": {bool: true, help: "alias of stonewall", set: boolSetter(func(j *Job, b bool) { j.Stonewall = b })},
		"new_group":         {bool: true, help: "start a new reporting group", set: boolSetter(func(j *Job, b bool) { j.NewGroup = b })},
		"invalidate":        {bool: true, help: "drop the file's page cache before the job (default 1)", set: boolSetter(func(j *Job, b bool) { j.Invalidate = b })},
	}
	registerPrioOptions()
	registerFileOptions()
	registerNumaOptions()
}

// checkEngine says whether bench implements engine.
func checkEngine(v string) error {
	switch v {
	case "ringblk", "io_uring", "psync", "io_uring_cmd", // io_uring_cmd: uringcmd.go
		"libaio", "sync", "pvsync", "pvsync2": // engine_aio.go, engine_direct.go
		return nil
	case "posixaio", "mmap", "null", "nbd", "splice", "net", "rbd",
		"windowsaio", "solarisaio", "vsync", "xnvme", "dev-dax", "libpmem", "http", "rdma", "e4defrag",
		"falloc", "filecreate", "filestat", "ftruncate", "cpuio", "sg", "exec", "netsplice", "rados", "gfapi", "gfapi_async":
		return fmt.Errorf("ioengine %s is a fio engine that ringblk bench does not implement (use ringblk, io_uring, libaio, psync, sync, pvsync or pvsync2)", v)
	}
	if strings.HasPrefix(v, "external:") {
		return errors.New("external engines are not implemented")
	}
	return fmt.Errorf("unknown ioengine %q (ringblk, io_uring, libaio, psync, sync, pvsync, pvsync2)", v)
}

// fioOnlyOptions are options fio accepts that bench does not implement: a
// job naming one fails with that said, instead of running something else.
var fioOnlyOptions = func() map[string]struct{} {
	m := map[string]struct{}{}
	for _, n := range strings.Fields(`fsync fdatasync end_fsync fsync_on_close sync write_barrier
		iodepth_low
		write_bw_log write_iops_log write_lat_log write_hist_log log_avg_msec log_hist_msec per_job_logs
		rate rate_iops rate_min rate_iops_min ratemin rate_process rate_cycle thinktime thinktime_spin
		thinktime_blocks nrfiles openfiles file_service_type fallocate zero_buffers
		refill_buffers scramble_buffers   buffer_pattern
		 overwrite loops startdelay cpus_allowed cpus_allowed_policy cpumask nice prio
		prioclass iomem mem iomem_align mem_align hugepage-size lockmem create_serialize create_fsync
		create_on_open create_only pre_read unlink unlink_each_loop zonesize zonerange zoneskip zonemode
		percentage_random percentage_sequential random_generator allrandrepeat bs_unaligned ba blockalign
		bs_is_seq_rand verify_interval verify_offset verify_backlog_batch verify_async
		verify_async_cpus verify_state_save verify_state_load trim_percentage
		trim_verify_zero trim_backlog experimental_verify lat_percentiles clat_percentiles
		slat_percentiles percentile_list disable_lat disable_clat disable_slat disable_bw_measurement
		gtod_reduce gtod_cpu clocksource  exitall_on_error wait_for kb_base unit_base filesize
		file_append io_size io_limit number_ios continue_on_error ignore_error error_dump hipri
		  uncached nowait force_async cmdprio_percentage
		cmdprio_class cmdprio cmdprio_bssplit unique_filename lockfile
		latency_run max_latency
		serialize_overlap io_submit_mode numa_cpu_nodes numa_mem_policy stats flow flow_id flow_watermark
		flow_sleep offset_increment offset_align uri allow_file_create allow_mounted_write fill_device
		fill_fs replay_no_stall replay_redirect replay_align replay_scale read_iolog write_iolog
		iolog exec_prerun exec_postrun ioscheduler disk_util bwavgtime iopsavgtime log_offset log_compression
		log_store_compressed log_unix_epoch log_alternate_epoch log_max_value block_error_percentiles
		significant_figures thread_cpu per_job_logs skip_bad zone_reset_threshold zone_reset_frequency
		max_open_zones job_max_open_zones ignore_zone_limits  
		  inplace atomic userspace_reap 
		cgroup cgroup_weight cgroup_nodelete uid gid rate_ignore_thinktime trim_verify_zero
		continue_on_error pre_read size_increment io_submit_mode verifysort verifysort_nr
		ioengine_options hugepage-size clat_percentiles
		bwavgtime exitall_on_error create_serialize kb_base unified_rw_reporting`) {
		m[n] = struct{}{}
	}
	return m
}()

// checkRWSuffix checks rw=PATTERN:N: an I/O count for random patterns, a
// byte offset (k/m/g suffixes, may be negative) for sequential ones.
func checkRWSuffix(pattern, suffix string) error {
	switch pattern {
	case "randread", "randwrite", "randrw":
		if n, err := strconv.Atoi(suffix); err != nil || n < 1 {
			return fmt.Errorf("rw=%s:%s: want a count of I/Os per random offset (1 or more)", pattern, suffix)
		}
	default:
		if _, err := units.ParseSize(strings.TrimPrefix(suffix, "-")); err != nil {
			return fmt.Errorf("rw=%s:%s: want a byte offset: %v", pattern, suffix, err)
		}
	}
	return nil
}

// logSetter sets a log prefix; "" (a bare option) is the job's name.
func logSetter(field func(*Job) **string) func(*Job, string) error {
	return func(j *Job, v string) error {
		p := v
		if p == "" {
			p = j.Name
		}
		*field(j) = &p
		return nil
	}
}

// parseCPUList reads fio's CPU lists: "0-3,6", each CPU present here.
func parseCPUList(v string) ([]int, error) {
	var out []int
	seen := map[int]bool{}
	for _, part := range strings.Split(v, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		a, err := strconv.Atoi(lo)
		b := a
		if err == nil && isRange {
			b, err = strconv.Atoi(hi)
		}
		if err != nil || a < 0 || b < a {
			return nil, fmt.Errorf("bad CPU list entry %q (want N or N-M)", part)
		}
		for c := a; c <= b; c++ {
			if c >= runtime.NumCPU() {
				return nil, fmt.Errorf("CPU %d is not present (this machine has %d)", c, runtime.NumCPU())
			}
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
			}
		}
	}
	return out, nil
}

// usecSetter reads a time whose bare number is microseconds (thinktime).
func usecSetter(f func(*Job, time.Duration)) func(*Job, string) error {
	return func(j *Job, v string) error {
		t := strings.TrimSpace(v)
		if t != "" && strings.IndexFunc(t, func(r rune) bool { return r < '0' || r > '9' }) < 0 {
			t += "us"
		}
		d, err := parseTime(t)
		if err != nil {
			return err
		}
		f(j, d)
		return nil
	}
}

// rateSetter reads read[,write] rates; an empty or 0 value is no cap.
func rateSetter(field func(*Job) *[2]int64) func(*Job, string) error {
	return func(j *Job, v string) error {
		parts := strings.Split(v, ",")
		if len(parts) > 3 {
			return errors.New("at most read,write,trim values")
		}
		var r [2]int64
		for d := 0; d < 2; d++ {
			s := parts[0]
			if d == 1 && len(parts) > 1 {
				s = parts[1]
			}
			if d == 0 && len(parts) > 1 && s == "" {
				continue
			}
			if s == "" {
				continue
			}
			n, err := units.ParseSize(s)
			if err != nil {
				return err
			}
			if n < 0 {
				return fmt.Errorf("negative rate %d", n)
			}
			r[d] = n
		}
		*field(j) = r
		return nil
	}
}

// parseZones reads zoned (access%/range%) or zoned_abs (access%/size)
// zones: the accesses add up to 100; a zoned entry without a range takes
// what the others leave.
func parseZones(v string, abs bool) ([]Zone, error) {
	var zones []Zone
	acc, rng := 0, 0
	for _, e := range strings.Split(v, ":") {
		a, r, _ := strings.Cut(e, "/")
		p, err := strconv.Atoi(a)
		if err != nil || p < 0 || p > 100 {
			return nil, fmt.Errorf("bad zone %q (want access%%/range)", e)
		}
		z := Zone{Access: p, Range: -1}
		switch {
		case r == "" && !abs:
		case abs:
			n, err := units.ParseSize(r)
			if err != nil || n <= 0 {
				return nil, fmt.Errorf("bad zone size in %q", e)
			}
			z.Range = n
		default:
			n, err := strconv.Atoi(r)
			if err != nil || n < 0 || n > 100 {
				return nil, fmt.Errorf("bad zone range in %q", e)
			}
			z.Range = int64(n)
			rng += n
		}
		acc += p
		zones = append(zones, z)
	}
	if acc != 100 {
		return nil, fmt.Errorf("zone accesses add up to %d%%, want 100", acc)
	}
	if !abs && rng > 100 {
		return nil, fmt.Errorf("zone ranges add up to %d%%, more than 100", rng)
	}
	for i := range zones {
		if zones[i].Range < 0 {
			zones[i].Range = int64(100 - rng)
			rng = 100
		}
	}
	return zones, nil
}

// pctOrSize reads a byte count or a percentage (N%, 0 < N <= 100, of the
// file or device, resolved when the job's file is prepared).
func pctOrSize(f func(j *Job, n int64, pct float64)) func(*Job, string) error {
	return func(j *Job, v string) error {
		if p, ok := strings.CutSuffix(strings.TrimSpace(v), "%"); ok {
			x, err := strconv.ParseFloat(p, 64)
			if err != nil || x <= 0 || x > 100 {
				return errors.New("a percentage must be above 0 and at most 100")
			}
			f(j, 0, x)
			return nil
		}
		n, err := units.ParseSize(v)
		if err != nil {
			return err
		}
		f(j, n, 0)
		return nil
	}
}

func sizeSetter(f func(*Job, int64)) func(*Job, string) error {
	return func(j *Job, v string) error {
		n, err := units.ParseSize(v)
		if err != nil {
			return err
		}
		f(j, n)
		return nil
	}
}

func timeSetter(f func(*Job, time.Duration)) func(*Job, string) error {
	return func(j *Job, v string) error {
		d, err := parseTime(v)
		if err != nil {
			return err
		}
		f(j, d)
		return nil
	}
}

func intSetter(lo, hi int, f func(*Job, int)) func(*Job, string) error {
	return func(j *Job, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return errors.New("want an integer")
		}
		if n < lo || n > hi {
			return fmt.Errorf("%d out of range %d..%d", n, lo, hi)
		}
		f(j, n)
		return nil
	}
}

func pctSetter(f func(*Job, int)) func(*Job, string) error { return intSetter(0, 100, f) }

func boolSetter(f func(*Job, bool)) func(*Job, string) error {
	return func(j *Job, v string) error {
		switch strings.ToLower(v) {
		case "1", "true", "yes", "on":
			f(j, true)
		case "0", "false", "no", "off":
			f(j, false)
		default:
			return errors.New("want 0 or 1")
		}
		return nil
	}
}

// perDir applies "a" to both directions and "a,b" to read and write (a
// third, trim, value is accepted when empty or equal to the write's).
func perDir(v string, f func(dir int, s string) error) error {
	parts := strings.Split(v, ",")
	if len(parts) > 3 {
		return errors.New("at most read,write,trim values")
	}
	if len(parts) == 3 && parts[2] != "" && parts[2] != parts[1] {
		return errors.New("trim values are not implemented")
	}
	if err := f(DirRead, parts[0]); err != nil {
		return err
	}
	w := parts[0]
	if len(parts) >= 2 && parts[1] != "" {
		w = parts[1]
	}
	return f(DirWrite, w)
}

// parseTime reads a duration: a bare number is seconds; suffixes us/usec,
// ms/msec, s/sec, m/min, h, d.
func parseTime(s string) (time.Duration, error) {
	orig := s
	s = strings.ToLower(strings.TrimSpace(s))
	i := 0
	for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.') {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("bad time %q", orig)
	}
	f, err := strconv.ParseFloat(s[:i], 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("bad time %q", orig)
	}
	var unit time.Duration
	switch s[i:] {
	case "", "s", "sec":
		unit = time.Second
	case "us", "usec":
		unit = time.Microsecond
	case "ms", "msec":
		unit = time.Millisecond
	case "m", "min":
		unit = time.Minute
	case "h":
		unit = time.Hour
	case "d":
		unit = 24 * time.Hour
	default:
		return 0, fmt.Errorf("bad time unit in %q (want us, ms, s, m, h, d)", orig)
	}
	if f*float64(unit) > math.MaxInt64/2 {
		return 0, fmt.Errorf("time %q overflows", orig)
	}
	return time.Duration(f * float64(unit)), nil
}

// parsePattern reads verify_pattern: 0x hex bytes, a quoted string, or a
// decimal byte value.
func parsePattern(v string) ([]byte, error) {
	switch {
	case strings.HasPrefix(v, "0x") || strings.HasPrefix(v, "0X"):
		h := v[2:]
		if len(h)%2 == 1 {
			h = "0" + h
		}
		b, err := hex.DecodeString(h)
		if err != nil || len(b) == 0 {
			return nil, fmt.Errorf("bad hex pattern %q", v)
		}
		return b, nil
	case len(v) >= 2 && (v[0] == '"' && v[len(v)-1] == '"' || v[0] == '\'' && v[len(v)-1] == '\''):
		if len(v) == 2 {
			return nil, errors.New("empty pattern")
		}
		return []byte(v[1 : len(v)-1]), nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 255 {
		return nil, fmt.Errorf("bad pattern %q (0xHEX, \"text\" or 0..255)", v)
	}
	return []byte{byte(n)}, nil
}

// ssCfg is the job's steady-state settings, created on first use (ss_dur
// may come before ss). A copy: a clone job must not share a [global]'s.
func (j *Job) ssCfg() *SteadyState {
	c := SteadyState{}
	if j.SS != nil {
		c = *j.SS
	}
	j.SS = &c
	return j.SS
}
