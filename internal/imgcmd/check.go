package imgcmd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"syscall"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/nbd"
	"github.com/ringblk/ringblk/drivers/qcow2"
	qcow2fmt "github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/internal/cli"
)

const checkHelp = `usage: ringblk check [-f fmt] [--output=human|json] [-p] [-q] [-r leaks|all] [-T cache] [-U] FILE

Check a qcow2 image's metadata for consistency, with qemu-img check's
counts, output and exit codes:

  0   no errors (consistent)
  1   the check could not be done (bad arguments, unreadable image)
  2   corruptions found
  3   leaked clusters only (wasted space, no harm to data)
  63  the format does not support checks (raw)

  -f fmt           image format (raw, qcow2); without it the file is probed
  --output=FMT     human (default) or json
  -p               show progress on stderr (qemu-img check has no -p; the
                   check of a large image reads every L2 table); quiet
                   with -q
  -q, --quiet      print nothing on stdout; the exit code tells the result
  -r leaks|all     repair (opens the image read-write): 'leaks' lowers the
                   refcounts of leaked clusters; 'all' also fixes refcounts
                   that are too low (rebuilding the refcount structure when
                   needed) and wrong COPIED flags. The image is then
                   checked again and that result is reported.
  -T cache         cache mode for the image file (none, writeback,
                   writethrough, …); it matters with -r
  -U, --force-share
                   check an image another process has open for writing
                   (no locks taken; the result may be stale); refused
                   with -r
  -h, --help       this help

The problems found are listed on stderr, one per line, in qemu-img's words.
`

var checkSpec = cli.WithObjects(cli.OptSpec{
	Short: map[byte]bool{'f': true, 'p': false, 'q': false, 'r': true, 'T': true, 'U': false, 'h': false},
	Long:  map[string]bool{"output": true, "quiet": false, "repair": true, "force-share": false, "help": false},
})

// checkReport is what check prints, in qemu-img check's fields.
type checkReport struct {
	Corruptions, Leaks, CheckErrors                                  int64
	CorruptionsFixed, LeaksFixed                                     int64
	ImageEndOffset                                                   int64
	TotalClusters, AllocatedClusters, FragmentedClusters, Compressed int64
}

func reportOf(r block.CheckResult) checkReport {
	return checkReport{
		Corruptions: int64(r.Corruptions), Leaks: int64(r.Leaks), CheckErrors: int64(r.CheckErrors),
		CorruptionsFixed: int64(r.CorruptionsFixed), LeaksFixed: int64(r.LeaksFixed),
		ImageEndOffset: r.ImageEndOffset, TotalClusters: r.TotalClusters, AllocatedClusters: r.AllocatedClusters,
		FragmentedClusters: r.FragmentedClusters, Compressed: r.CompressedClusters,
	}
}

// exitCode is qemu-img check's: 1 when the check had errors, else 2 for
// corruptions, 3 for leaks only, 0 for a clean image.
func (r *checkReport) exitCode() int {
	switch {
	case r.CheckErrors > 0:
		return 1
	case r.Corruptions > 0:
		return 2
	case r.Leaks > 0:
		return 3
	}
	return 0
}

// Check is "ringblk check" (qemu-img check): args are what follows the
// command name; the result is the exit status.
func Check(args []string, stdout, stderr io.Writer) int {
	return cli.Run(checkHelp, stdout, stderr, func() (int, error) {
		args, imageOpts, err := cli.TakeGlobalOpts(args)
		if err != nil {
			return 1, err
		}
		opts, files, err := cli.ParseOpts(args, checkSpec)
		if err != nil {
			return 1, err
		}
		format, output, quiet, repair, share, cache := "", "human", false, "", false, ""
		progress := false
		ia := cli.ImageArgs{ImageOpts: imageOpts}
		for _, o := range opts {
			if took, err := ia.Take(o); took {
				if err != nil {
					return 1, err
				}
				continue
			}
			switch o.Name {
			case "p":
				progress = true
			case "T":
				cache = o.Val
			case "f":
				format = o.Val
			case "output":
				output = o.Val
			case "q", "quiet":
				quiet = true
			case "r", "repair":
				repair = o.Val
			case "U", "force-share":
				share = true
			}
		}
		if err := checkOutput(output); err != nil {
			return 1, err
		}
		if format == "null" || format == "null-co" {
			// A format without metadata: qemu-img's answer and exit code.
			return 63, fmt.Errorf("This image format does not support checks")
		}
		if err := checkFormat(format); err != nil {
			return 1, err
		}
		if cache != "" {
			if _, ok := raw.ParseCache(cache); !ok {
				return 1, cli.Usagef("Invalid source cache option: %s", cache)
			}
		}
		var mode block.CheckMode
		switch repair {
		case "":
		case "leaks":
			mode = block.CheckFixLeaks
		case "all":
			mode = block.CheckFixLeaks | block.CheckFixErrors
		default:
			return 1, cli.Usagef("Unknown option value for -r (expecting 'leaks' or 'all'): %s", repair)
		}
		if len(files) != 1 {
			return 1, cli.Usagef("check: expecting one image file name (got %d; see 'ringblk check --help')", len(files))
		}
		dataTree := false                 // the data file was given and opened (check_datafile.go)
		name, nameFmt := files[0], format // as given: an encrypted image is opened by it
		{
			bo := cli.BlkOptions{Format: format}
			p, err := ia.Resolve(files[0], &bo)
			if cli.IsWholeTree(err) && mode == 0 {
				p, err = checkDataFileTree(&ia, files[0], &bo)
				dataTree = err == nil
			}
			if err != nil {
				return 1, err
			}
			files[0], format = p, bo.Format
		}
		if mode != 0 {
			if share {
				return 1, fmt.Errorf("Could not open '%s': force-share=on can only be used with read-only images", files[0])
			}
			return checkRepair(&ia, files[0], name, nameFmt, cache, mode, output, quiet, stdout, stderr)
		}
		if nbd.IsURI(files[0]) {
			// An export is read as raw (the server owns the format).
			img, err := cli.OpenBlk(files[0], cli.BlkOptions{Format: format, ReadOnly: true})
			if err != nil {
				return 1, err
			}
			img.Close()
			return 63, fmt.Errorf("This image format does not support checks")
		}
		img, err := openImageOpts(files[0], format, qcow2fmt.Options{CheckMode: true})
		if err != nil {
			return 1, err
		}
		defer img.Close()
		if err := checkDataFilePresent(img, dataTree); err != nil { // check_datafile.go
			return 1, err
		}
		if err := img.lockForRead(share); err != nil {
			return 1, err
		}
		if err := checkKey(img, &ia, name, nameFmt, share); err != nil {
			return 1, err
		}
		if img.qcow == nil {
			return 63, fmt.Errorf("This image format does not support checks")
		}
		prog := cli.NewProgress(stderr, progress && !quiet, 1)
		if progress && !quiet {
			img.qcow.Progress = func(done, total int64) { prog.Set(100 * float64(done) / float64(total)) }
		}
		var res *qcow2fmt.CheckResult
		// Every problem on its own line as it is found, as qemu-img.
		img.qcow.CheckLog = func(m string) { fmt.Fprintf(stderr, "%s\n", m) }
		if _, err = img.qcow.ReadSnapshotsForCheck(false); err == nil {
			res, err = img.qcow.Check()
		}
		prog.End()
		if failed := snapshotTableFailed(stderr, err); failed != nil {
			return 1, failed
		}
		if err != nil {
			return 1, fmt.Errorf("%s: check failed: %v", img.path, err)
		}
		for _, m := range res.Messages {
			fmt.Fprintf(stderr, "%s\n", m)
		}
		rep := checkReport{
			Corruptions: res.Corruptions, Leaks: res.Leaks, CheckErrors: res.CheckErrors,
			ImageEndOffset: res.ImageEndOffset, TotalClusters: res.TotalClusters,
			AllocatedClusters: res.AllocatedClusters, FragmentedClusters: res.FragmentedClusters,
			Compressed: res.CompressedClusters,
		}
		return printCheck(stdout, &rep, name, img.format, output, quiet)
	})
}

// checkKey refuses an encrypted image (qcow2 with AES or LUKS, or raw
// LUKS) whose key was not given or does not open it, as qemu-img check
// does: it opens the image with its key before checking. The metadata
// check itself reads no guest data; the open through the block layer
// (by the name as given, which may carry the key secret) only proves
// the key.
func checkKey(img *openedImage, ia *cli.ImageArgs, name, format string, share bool) error {
	if img.luks == nil && (img.qcow == nil || !img.qcow.Header.Encrypted()) {
		return nil
	}
	v, err := ia.Open(name, cli.BlkOptions{Format: format, ReadOnly: true, ForceShare: share, NoBacking: true})
	if err != nil {
		return err
	}
	return v.Close()
}

// checkRepair is check -r: the image is opened read-write for a check
// (problems found at open are left to the repair), repaired through the
// block layer's check operation, and, when something was fixed, checked
// again; qemu-img reports that second check with the fixed counts of the
// first.
func checkRepair(ia *cli.ImageArgs, path, name, format, cache string, mode block.CheckMode, output string, quiet bool, stdout, stderr io.Writer) (int, error) {
	logf := func(m string) { fmt.Fprintf(stderr, "%s\n", m) }
	// Opened by its name as given, so an encrypted image gets its key.
	img, err := ia.Open(name, cli.BlkOptions{
		Format: format, NoBacking: true, Cache: cache,
		QcowOptions: qcow2.DriverOptions{CheckOpen: true, CheckLog: logf},
	})
	if err != nil {
		return 1, err
	}
	defer img.Close()
	if img.Qcow2 == nil {
		return 63, fmt.Errorf("This image format does not support checks")
	}
	first, err := img.Node.Check(mode)
	if failed := snapshotTableFailed(stderr, err); failed != nil {
		return 1, failed
	}
	if err != nil {
		return 1, checkFailed(err)
	}
	rep := reportOf(first)
	held := ""
	if first.LeaksFixed > 0 || first.CorruptionsFixed > 0 {
		if !quiet && output == "human" {
			// qemu-img's stdout is a C stream: on a terminal this shows
			// before the second check's messages (stderr), into a pipe
			// or file only at exit, after them (iotest 271).
			held = fmt.Sprintf("The following inconsistencies were found and repaired:\n\n"+
				"    %d leaked clusters\n    %d corruptions\n\nDouble checking the fixed image now...\n",
				first.LeaksFixed, first.CorruptionsFixed)
			if f, ok := stdout.(*os.File); ok && isTerminal(f) {
				io.WriteString(stdout, held)
				held = ""
			}
		}
		final, err := img.Node.Check(0)
		if failed := snapshotTableFailed(stderr, err); failed != nil {
			return 1, failed
		}
		if err != nil {
			return 1, checkFailed(err)
		}
		rep = reportOf(final)
		rep.LeaksFixed, rep.CorruptionsFixed = int64(first.LeaksFixed), int64(first.CorruptionsFixed)
	}
	io.WriteString(stdout, held)
	code, err := printCheck(stdout, &rep, name, img.Format, output, quiet)
	if cerr := img.Close(); err == nil && cerr != nil {
		return 1, cerr
	}
	return code, err
}

// snapshotTableFailed reports a snapshot table the check could not read
// as qemu-img does ("ERROR " and QEMU's sentence, its hint line) and
// returns the "Check failed" error; nil when err is not one.
func snapshotTableFailed(stderr io.Writer, err error) error {
	var ste *qcow2fmt.SnapshotTableError
	if !errors.As(err, &ste) {
		return nil
	}
	fmt.Fprintf(stderr, "%s: ERROR %s\n", cli.Prog, ste.Text)
	if ste.Hint != "" {
		fmt.Fprintf(stderr, "%s\n", ste.Hint)
	}
	errno := syscall.EINVAL
	if errors.Is(err, qcow2fmt.ErrLimit) {
		errno = syscall.EFBIG
	}
	return checkFailed(errno)
}

// checkFailed words a check that could not run as qemu-img does ("Check
// failed: " and the errno's text); a repair that needs a refcount rebuild
// is EIO there.
func checkFailed(err error) error {
	var errno syscall.Errno
	switch {
	case errors.Is(err, qcow2.ErrNeedRebuild):
		errno = syscall.EIO
	case errors.As(err, &errno):
	default:
		return fmt.Errorf("Check failed: %v", err)
	}
	s := errno.Error()
	return fmt.Errorf("Check failed: %s", strings.ToUpper(s[:1])+s[1:])
}

// printCheck prints a check's result in the chosen output format and
// returns qemu-img's exit code; a check with internal errors also fails
// with "Check failed" after its output, as qemu-img does.
func printCheck(stdout io.Writer, res *checkReport, path, format, output string, quiet bool) (int, error) {
	code := res.exitCode()
	var failed error
	if res.CheckErrors > 0 {
		failed = errors.New("Check failed")
	}
	if quiet {
		return code, failed
	}
	if output == "json" {
		o := newObject()
		setNZ := func(k string, v int64) {
			if v != 0 {
				o.set(k, v)
			}
		}
		setNZ("image-end-offset", res.ImageEndOffset)
		setNZ("total-clusters", res.TotalClusters)
		o.set("check-errors", res.CheckErrors)
		setNZ("corruptions", res.Corruptions)
		setNZ("leaks", res.Leaks)
		setNZ("corruptions-fixed", res.CorruptionsFixed)
		setNZ("leaks-fixed", res.LeaksFixed)
		setNZ("allocated-clusters", res.AllocatedClusters)
		setNZ("fragmented-clusters", res.FragmentedClusters)
		setNZ("compressed-clusters", res.Compressed)
		o.set("filename", path)
		o.set("format", format)
		qdictOrder(o.keys)
		if err := writeJSON(stdout, o); err != nil {
			return 1, err
		}
		return code, failed
	}
	var b strings.Builder
	if res.CheckErrors == 0 && res.Corruptions == 0 && res.Leaks == 0 {
		b.WriteString("No errors were found on the image.\n")
	} else {
		if res.Corruptions > 0 {
			fmt.Fprintf(&b, "\n%d errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n", res.Corruptions)
		}
		if res.Leaks > 0 {
			fmt.Fprintf(&b, "\n%d leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n", res.Leaks)
		}
		if res.CheckErrors > 0 {
			fmt.Fprintf(&b, "\n%d internal errors have occurred during the check.\n", res.CheckErrors)
		}
	}
	if res.TotalClusters != 0 && res.AllocatedClusters != 0 {
		t := float64(res.TotalClusters)
		a := float64(res.AllocatedClusters)
		fmt.Fprintf(&b, "%d/%d = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
			res.AllocatedClusters, res.TotalClusters, a*100/t,
			float64(res.FragmentedClusters)*100/a, float64(res.Compressed)*100/a)
	}
	if res.ImageEndOffset > 0 {
		fmt.Fprintf(&b, "Image end offset: %d\n", res.ImageEndOffset)
	}
	if _, err := io.WriteString(stdout, b.String()); err != nil {
		return 1, err
	}
	return code, failed
}

// qdictOrder sorts JSON keys into the order qemu-img prints them: its
// QDict iterates hash buckets in order (512 of them, hashed with tdb_hash),
// newest key first within a bucket. The check keys all fall in different
// buckets, so that last rule never applies here.
func qdictOrder(keys []string) {
	bucket := func(k string) uint32 {
		v := uint32(0x238F13AF) * uint32(len(k))
		for i := 0; i < len(k); i++ {
			v += uint32(k[i]) << (uint(i) * 5 % 24)
		}
		return (1103515243*v + 12345) % 512
	}
	slices.SortStableFunc(keys, func(a, b string) int {
		return int(bucket(a)) - int(bucket(b))
	})
}
