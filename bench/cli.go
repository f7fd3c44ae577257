package bench

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Config is a parsed command line.
type Config struct {
	Spec         *Spec
	Output       string // --output: write the report there instead of stdout
	Format       string // normal, json
	ETA          string // auto, always, never
	Compare      bool
	Repeats      int
	CompareWith  []string // compare rows to run (default: all available)
	JobFiles     []string
	CommandLine  []Option // job options given as flags
	KeepFiles    bool
	ShowCommands bool
	CPUProfile   string   // --cpuprofile: write a pprof CPU profile of the run there
	Sections     []string // --section (repeatable): run only the jobs of these names, as fio
	// StatusInterval: --status-interval, the full report of the run so far
	// every interval (0: none; SIGUSR1 asks for one at any time).
	StatusInterval time.Duration
}

var commandFlags = map[string]bool{ // flag → takes a value
	"output": true, "output-format": true, "eta": true, "compare": false, "repeats": true,
	"compare-with": true, "help": false, "h": false, "version": false, "show-commands": false,
	"cpuprofile": true, "minimal": false, "section": true, "status-interval": true,
}

// fioOnlyFlags are fio's command flags (not job options) that bench does
// not implement: named as such, instead of "unknown option".
var fioOnlyFlags = map[string]bool{
	"eta-newline": true, "eta-interval": true,
	"parse-only": true, "warnings-fatal": true, "max-jobs": true,
	"alloc-size": true, "server": true, "client": true, "daemonize": true, "debug": true,
	"bandwidth-log": true, "append-terse": true, "terse-version": true, "idle-prof": true,
	"inflate-log": true, "trigger-file": true, "trigger-timeout": true, "trigger": true,
	"trigger-remote": true, "aux-path": true, "crctest": true, "cpuclock-test": true,
	"showcmd": true, "enghelp": true, "cmdhelp": true, "merge-blktrace-only": true,
}

// ParseArgs reads ringblk bench's command line: command flags, fio job
// options as --opt=value (--name=… starts a job) and job files.
func ParseArgs(args []string) (*Config, error) {
	cfg := &Config{Format: "normal", ETA: "auto", Repeats: 3}
	src := &jobSource{}
	var pre []Option
	var cur *section
	var cmdSecs []*section
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") || a == "-" {
			cfg.JobFiles = append(cfg.JobFiles, a)
			continue
		}
		key, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if fioOnlyFlags[key] {
			return nil, fmt.Errorf("--%s is a fio command flag that ringblk bench does not implement", key)
		}
		if takes, ok := commandFlags[key]; ok {
			if takes && !hasVal {
				if i+1 >= len(args) {
					return nil, fmt.Errorf("--%s needs a value", key)
				}
				i++
				val = args[i]
			}
			if err := cfg.setFlag(key, val, hasVal); err != nil {
				return nil, err
			}
			continue
		}
		o := Option{Key: key, Value: val, Bare: !hasVal, Loc: Loc{}}
		if key == "name" {
			if !hasVal || val == "" {
				return nil, errors.New("command line: --name needs a value")
			}
			cur = &section{name: val, loc: Loc{}}
			cmdSecs = append(cmdSecs, cur)
			if val != "global" {
				cur.opts = append(cur.opts, o)
			}
			continue
		}
		if cur == nil {
			pre = append(pre, o)
		} else {
			cur.opts = append(cur.opts, o)
		}
		cfg.CommandLine = append(cfg.CommandLine, o)
	}
	if len(cfg.Sections) > 0 {
		src.sections = map[string]bool{}
		for _, n := range cfg.Sections {
			src.sections[n] = true
		}
	}
	for _, f := range cfg.JobFiles {
		if err := readJobFile(f, src); err != nil {
			return nil, err
		}
	}
	overrides := pre
	if len(cfg.JobFiles) == 0 && len(pre) > 0 {
		src.addSection(&section{name: "global", opts: pre})
		overrides = nil
	}
	for _, s := range cmdSecs {
		src.addSection(s)
	}
	spec, err := src.build(overrides)
	if err != nil {
		return nil, err
	}
	cfg.Spec = spec
	return cfg, nil
}

var errHelp = errors.New("help requested")
var errVersion = errors.New("version requested")

// BuildVersion is the embedding tool's version line (release and commit),
// printed by --version after Version; ringblk sets it.
var BuildVersion string

func (cfg *Config) setFlag(key, val string, hasVal bool) error {
	switch key {
	case "help", "h":
		return errHelp
	case "version":
		return errVersion
	case "output":
		cfg.Output = val
	case "section":
		if val == "global" {
			return errors.New("--section=global: [global] is not a job")
		}
		if val == "" {
			return errors.New("--section needs a job name")
		}
		cfg.Sections = append(cfg.Sections, val)
	case "minimal":
		cfg.Format = "terse" // fio's --minimal: the terse format
	case "output-format":
		switch val {
		case "normal", "json", "json+", "terse":
			cfg.Format = val
		default:
			return fmt.Errorf("--output-format=%s: want normal, json, json+ or terse", val)
		}
	case "eta":
		switch val {
		case "auto", "always", "never":
			cfg.ETA = val
		default:
			return fmt.Errorf("--eta=%s: want auto, always or never", val)
		}
	case "compare":
		cfg.Compare = !hasVal || val == "1" || val == "true"
	case "repeats":
		n, err := strconv.Atoi(val)
		if err != nil || n < 1 || n > 100 {
			return fmt.Errorf("--repeats=%s: want 1..100", val)
		}
		cfg.Repeats = n
	case "compare-with":
		for _, r := range strings.Split(val, ",") {
			if _, ok := compareRows[r]; !ok {
				return fmt.Errorf("--compare-with: unknown row %q (%s)", r, strings.Join(compareRowNames(), ", "))
			}
			cfg.CompareWith = append(cfg.CompareWith, r)
		}
	case "show-commands":
		cfg.ShowCommands = true
	case "status-interval":
		d, err := parseTime(val)
		if err != nil {
			return fmt.Errorf("--status-interval=%s: %w", val, err)
		}
		if d < time.Millisecond {
			return fmt.Errorf("--status-interval=%s: status interval too small (at least 1ms)", val)
		}
		cfg.StatusInterval = d
	case "cpuprofile":
		if val == "" {
			return errors.New("--cpuprofile needs a file name")
		}
		cfg.CPUProfile = val
	}
	return nil
}

// Usage is ringblk bench's --help text.
func Usage() string {
	var b strings.Builder
	b.WriteString(`usage: ringblk bench [flags] [--opt=value ...] [--name=job --opt=value ...] [jobfile ...]

A fio-compatible benchmark. Jobs come from fio job files (INI: [global] and
[job] sections, ${VAR}, $ncpus, ((arithmetic)), include) and from fio-style
flags: options before the first --name apply to every job (with job files,
they override the files' values); --name=NAME starts a job whose options
follow. Each clone of a job (numjobs) runs on its own thread, pinned to a
core; with ioengine=ringblk each clone is an aio.Context (IOThread) that
drives the block layer.

Command flags:
  --output=FILE           write the report to FILE instead of stdout
  --output-format=FMT     normal (fio's human report), json (fio 3.33's JSON)
                          json+ (the JSON with latency histogram bins) or
                          terse (fio's semicolon-separated version 3 lines)
  --minimal               --output-format=terse
  --section=NAME          run only the job NAME (repeatable), as fio
  --eta=WHEN              live status line: auto (when stdout is a terminal),
                          always (on stderr when stdout is not a terminal), never
  --compare               run the job with ringblk and, where installed, fio
                          (io_uring, libaio) and qemu-img bench (io_uring,
                          native), interleaved; print each row's median with
                          min/max and the ratios to ringblk
  --repeats=N             compare: repeats per row (default 3)
  --compare-with=ROWS     compare: rows to run, comma-separated (default: all)
  --show-commands         compare: print the command line of every run
  --status-interval=TIME  print the full report of the run so far every TIME
                          (bare numbers are seconds; at least 1ms), as fio;
                          SIGUSR1 prints one at any time
  --cpuprofile=FILE       write a Go CPU profile (pprof) of the run to FILE
  --version               print the version
  --help                  this text

Job options (fio's names and units: sizes take k/m/g/t, base 1024; times
take us/ms/s/m/h, bare numbers are seconds):
`)
	names := make([]string, 0, len(optionTable))
	for n := range optionTable {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		sw := ""
		if optionTable[n].bool {
			sw = " (switch)"
		}
		fmt.Fprintf(&b, "  %-22s %s%s\n", n, optionTable[n].help, sw)
	}
	b.WriteString(`
Aliases: readwrite=rw, blocksize=bs, blocksize_range=bsrange,
iodepth_batch=iodepth_batch_submit. Any other fio option is an error that
names it. ioengine=ringblk needs format=null with a size, or an image:
raw or qcow2 (format=, or probed from the file; a qcow2 job's region is the
image's virtual disk, which must exist — the file is never laid out; a
backing chain is opened with the formats the images record, never probed). ioengine=io_uring is ringblk's own ring
without the block layer; psync is pread/pwrite.

Examples:
  ringblk bench --name=rr --filename=/var/tmp/f --size=1g --rw=randread \
      --bs=4k --iodepth=32 --ioengine=ringblk --runtime=10 --time_based
  ringblk bench --output-format=json --output=r.json job.fio
  ringblk bench --compare --repeats=3 job.fio
`)
	return b.String()
}

// Main runs ringblk bench with args (without the command name) and returns
// the exit status: 0, or 1 with a one-line error on stderr.
func Main(args []string, stdout, stderr io.Writer) int {
	fail := func(err error) int {
		msg := strings.ReplaceAll(err.Error(), "\n", " ")
		fmt.Fprintf(stderr, "ringblk bench: %s\n", msg)
		return 1
	}
	cfg, err := ParseArgs(args)
	switch {
	case errors.Is(err, errHelp):
		fmt.Fprint(stdout, Usage())
		return 0
	case errors.Is(err, errVersion):
		fmt.Fprintln(stdout, Version)
		if BuildVersion != "" {
			fmt.Fprintln(stdout, BuildVersion)
		}
		return 0
	case err != nil:
		return fail(err)
	}
	out := stdout
	var outFile *os.File
	if cfg.Output != "" {
		if outFile, err = os.Create(cfg.Output); err != nil {
			return fail(err)
		}
		defer outFile.Close()
		out = outFile
	}
	if cfg.Compare {
		if err := RunCompare(cfg, out, stderr); err != nil {
			return fail(err)
		}
		return 0
	}
	var status io.Writer
	stdoutTTY := isTTY(stdout)
	switch cfg.ETA {
	case "auto":
		if stdoutTTY && outFile == nil {
			status = stdout
		}
	case "always":
		status = stderr
		if stdoutTTY && outFile == nil {
			status = stdout
		}
	}
	var buf bytes.Buffer
	if cfg.Format == "normal" {
		WriteHeader(&buf, cfg.Spec)
		out.Write(buf.Bytes())
		buf.Reset()
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	stopWatch, watched := make(chan struct{}), make(chan struct{})
	// The watcher and the run both write stderr: one lock between them.
	logw := &lockedWriter{w: stderr}
	go func() {
		defer close(watched)
		select {
		case <-sigs:
			fmt.Fprintln(logw, "ringblk bench: terminate signal received")
			interrupted.Store(true)
		case <-stopWatch:
		}
	}()
	var prof *os.File
	if cfg.CPUProfile != "" {
		if prof, err = os.Create(cfg.CPUProfile); err != nil {
			return fail(err)
		}
		if err = pprof.StartCPUProfile(prof); err != nil {
			prof.Close()
			return fail(fmt.Errorf("--cpuprofile: %w", err))
		}
	}
	// Interim reports (--status-interval, SIGUSR1) go where the report goes.
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	statusNow := make(chan struct{}, 1)
	stopUsr1, usr1Done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(usr1Done)
		for {
			select {
			case <-usr1:
				select {
				case statusNow <- struct{}{}:
				default:
				}
			case <-stopUsr1:
				return
			}
		}
	}()
	interimReport := func(r *Result) {
		var err error
		switch cfg.Format {
		case "json":
			err = WriteJSON(out, r)
		case "json+":
			err = WriteJSONPlus(out, r)
		case "terse":
			WriteTerse(out, r)
		default:
			WriteNormal(out, r)
		}
		if err != nil {
			fmt.Fprintf(logw, "ringblk bench: status report: %v\n", err)
		}
	}
	res, err := Run(cfg.Spec, RunOptions{Status: status, Log: logw, Interim: interimReport,
		StatusInterval: cfg.StatusInterval, StatusNow: statusNow})
	signal.Stop(usr1)
	close(stopUsr1)
	<-usr1Done
	if prof != nil {
		pprof.StopCPUProfile()
		if cerr := prof.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("--cpuprofile: %w", cerr)
		}
	}
	signal.Stop(sigs)
	close(stopWatch)
	<-watched // a signal taken just before the stop must not set interrupted after the reset
	interrupted.Store(false)
	if err != nil {
		return fail(err)
	}
	if cfg.Format == "json" || cfg.Format == "json+" {
		if cfg.Format == "json+" {
			err = WriteJSONPlus(out, res)
		} else {
			err = WriteJSON(out, res)
		}
		writeMismatches(stderr, res)
	} else if cfg.Format == "terse" {
		WriteTerse(out, res)
		writeMismatches(stderr, res)
	} else {
		WriteNormal(out, res)
	}
	if err != nil {
		return fail(err)
	}
	if outFile != nil {
		if err := outFile.Close(); err != nil {
			return fail(err)
		}
	}
	return jobStatus(stderr, res)
}

// jobStatus is fio's exit status after a run: the number of clones that
// failed (an I/O error, a verify failure, a failed close, a job that
// failed at its start), as fio counts its failed threads, at most 255; 0
// when none did. Each failed job gets a line on stderr with its errno, as
// fio's "fio: pid=…, err=N/…" line.
func jobStatus(stderr io.Writer, res *Result) int {
	code := 0
	for _, jr := range res.Jobs {
		if jr.SetupFailed != nil {
			code += len(jr.Clones)
			continue
		}
		if jr.Err == nil {
			continue
		}
		failed := 0
		for _, w := range jr.Clones {
			if w.err != nil {
				failed++
			}
		}
		code += max(failed, 1) // a job-level error (its image's close) is one
		fmt.Fprintf(stderr, "ringblk bench: job %q: err=%d (error=%s): %v\n", jr.Job.Name, errnoOf(jr.Err), errnoText(errnoOf(jr.Err)), jr.Err)
	}
	return min(code, 255)
}

// writeMismatches reports verification failures where JSON has no room.
func writeMismatches(w io.Writer, res *Result) {
	for _, jr := range res.Jobs {
		for _, c := range jr.Clones {
			if c.ver == nil || c.ver.mismatches == 0 {
				continue
			}
			fmt.Fprintf(w, "ringblk bench: job %q: verify: %d mismatches of %d blocks checked\n", jr.Job.Name, c.ver.mismatches, c.ver.checked)
			for _, m := range c.ver.first {
				fmt.Fprintf(w, "ringblk bench: job %q: verify: %s\n", jr.Job.Name, m)
			}
		}
	}
}

func isTTY(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && IsTerminal(int(f.Fd()))
}

// lockedWriter serialises writes from several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
