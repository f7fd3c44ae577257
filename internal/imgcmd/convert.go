package imgcmd

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/drivers/nbd"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/internal/cli"
	"github.com/ringblk/ringblk/internal/units"
)

const convertHelp = `usage: ringblk convert [--object objectdef] [--image-opts] [--target-image-opts]
                     [--target-is-zero] [--bitmaps [--skip-broken-bitmaps]] [-U] [-C] [-c]
                     [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O fmt]
                     [-B backing -F backing_fmt] [-o opts] [-l snapshot] [-S sparse_size]
                     [-r rate_limit] [-m num] [-W] [--salvage]
                     SRC [SRC2...] DST

Copy the guest contents of SRC (with its backing chain) into DST, as
qemu-img convert does. DST is created (replaced) with SRC's size unless -n.
Ranges that read as zeroes are not written (sparse output).

  -f fmt          SRC's format: raw, qcow2 or null (probed when absent)
  -O fmt          DST's format: raw (default) or qcow2
  -o options      creation options of DST, as for 'ringblk create'
                  (cluster_size, compat, refcount_bits, preallocation…)
  -l snapshot     copy SRC's internal snapshot (ID or name, or
                  snapshot.id=ID,snapshot.name=NAME), not its active disk
  -c              write compressed qcow2 clusters (deflate, readable by QEMU)
  -p              show progress
  -q              quiet
  -S size         sparse detection granularity (default 4k, multiple of 512,
                  at most 16M); 0 writes every byte (fully allocated output)
  -n              DST exists already: do not create it (it must be at least
                  SRC's size); zero ranges are then written as zeroes
  --target-is-zero
                  (with -n) DST reads as zeroes already: zero ranges are
                  not written (not with a backing file)
  -B backing      DST gets this backing file; only what SRC's top image
                  allocates is copied
  -F backing_fmt  format of the backing file (required with -B)
  -U              read SRC even if another process has it open for
                  writing (no locks taken)
  -t cache        DST's cache mode: none, writeback (default: flushed at
                  the end), writethrough, unsafe (writeback, no final flush;
                  qemu-img's default)
  -T src_cache    SRC's cache mode (none, writeback, writethrough)
  -m num          requests in flight (1..16, default 8)
  -W              allow out-of-order writes (faster; default keeps the
                  writes in guest order)
  -C              copy offloading: data ranges between raw files are copied
                  by the kernel (copy_file_range), not sparsified; other
                  formats are copied as without -C (not with -c, -S or
                  --salvage)
  -r rate_limit   write at most this many bytes per second to DST (k, M,
                  G… suffixes; 0: no limit); offloaded copies are not limited
  --salvage       read errors do not stop the copy: unreadable 512-byte
                  sectors are written as zeroes, with a warning each
  --bitmaps       also copy the persistent dirty bitmaps of SRC's top image
                  (qcow2 to qcow2): names, granularity, enabled state, bits
  --skip-broken-bitmaps
                  (with --bitmaps) skip inconsistent bitmaps with a warning
                  instead of refusing them
  --image-opts    SRC is an option list (driver=qcow2,file.filename=…)
  --target-image-opts
                  DST is an option list; requires -n, excludes -O
  --object def    define a secret (encrypted images)
  -h, --help      this help
`

// convertSpec is qemu-img 7.2's convert command line: its getopt letters
// "hf:O:B:Cco:l:S:pt:T:qnm:WUr:" and long options.
var convertSpec = cli.WithObjects(cli.OptSpec{
	Short: map[byte]bool{'f': true, 'O': true, 'o': true, 'l': true, 'c': false, 'p': false, 'q': false, 'S': true,
		'n': false, 'B': true, 'F': true, 'U': false, 't': true, 'T': true, 'm': true, 'W': false, 'h': false,
		'C': false, 'r': true},
	Long: map[string]bool{"force-share": false, "target-is-zero": false, "help": false, "target-image-opts": false,
		"salvage": false, "bitmaps": false, "skip-broken-bitmaps": false},
})

const (
	convertBufSize = 2 << 20  // bytes per request (qemu-img's buffer size)
	maxSparseSize  = 16 << 20 // largest -S
)

// convertReq is a parsed convert command line.
type convertReq struct {
	src, dst            string
	more                []string         // the sources after src (concatenated)
	snap                *cli.SnapshotRef // -l: read this internal snapshot of src
	srcFmt, dstFmt      string
	olist               []string
	backing, backingFmt string
	compress, quiet     bool
	showProgress        bool
	skipCreate          bool
	targetIsZero        bool // --target-is-zero: the existing target reads as zeroes
	forceShare          bool
	outOfOrder          bool
	minSparse           int64
	cache, srcCache     string
	noFlush             bool // -t unsafe
	inFlight            int
	args                cli.ImageArgs // --object (secrets of -o)
	srcKeys             [][]byte      // SRC's key secrets (--image-opts, json:)
	copyRange           bool          // -C: offload data copies (copy_file_range)
	rateLimit           int64         // -r: bytes per second written to DST (0: none)
	salvage             bool          // --salvage: unreadable source areas read as zeroes
	bitmaps             bool          // --bitmaps: copy SRC's persistent bitmaps
	skipBroken          bool          // --skip-broken-bitmaps
	tgtImageOpts        bool          // --target-image-opts: DST is an option list
	dstFmtGiven         bool          // -O was given
	dstOpts             string        // --target-image-opts: DST as given (dst is its file)
}

// Convert is "ringblk convert" (qemu-img convert): args are what follows the
// command name; the result is the exit status.
func Convert(args []string, stdout, stderr io.Writer) int {
	return cli.Run(convertHelp, stdout, stderr, func() (int, error) {
		r, err := parseConvert(args)
		if err != nil {
			return 1, err
		}
		return 0, runConvert(r, stdout, stderr)
	})
}

func parseConvert(args []string) (*convertReq, error) {
	args, imageOpts, err := cli.TakeGlobalOpts(args)
	if err != nil {
		return nil, err
	}
	opts, operands, err := cli.ParseOpts(args, convertSpec)
	if err != nil {
		return nil, err
	}
	r := &convertReq{dstFmt: "raw", minSparse: 4096, inFlight: 8}
	sparseGiven := false
	for _, o := range opts {
		if took, err := r.args.Take(o); took {
			if err != nil {
				return nil, err
			}
			continue
		}
		switch o.Name {
		case "f":
			r.srcFmt = o.Val
		case "O":
			r.dstFmt, r.dstFmtGiven = o.Val, true
		case "o":
			r.olist = append(r.olist, o.Val)
		case "c":
			r.compress = true
		case "p":
			r.showProgress = true
		case "q":
			r.quiet = true
		case "S":
			n, err := units.ParseSize(o.Val)
			if err != nil || n < 0 || n%512 != 0 || n > maxSparseSize {
				return nil, cli.Usagef("Invalid buffer size for sparse output specified: '%s' (multiples of 512 up to %d; 0 disables sparse detection)", o.Val, maxSparseSize)
			}
			r.minSparse, sparseGiven = n, true
		case "n":
			r.skipCreate = true
		case "target-is-zero":
			r.targetIsZero = true
		case "l":
			if r.snap, err = cli.ParseSnapshotRef(o.Val); err != nil {
				return nil, err
			}
		case "B":
			r.backing = o.Val
		case "F":
			r.backingFmt = o.Val
		case "U", "force-share":
			r.forceShare = true
		case "t":
			r.cache = o.Val
		case "T":
			r.srcCache = o.Val
		case "m":
			n, err := strconv.Atoi(o.Val)
			if err != nil || n < 1 || n > 16 {
				return nil, cli.Usagef("Invalid number of coroutines '%s' (1 to 16)", o.Val)
			}
			r.inFlight = n
		case "W":
			r.outOfOrder = true
		case "C":
			r.copyRange = true
		case "r":
			if r.rateLimit, err = parseRateLimit(o.Val); err != nil {
				return nil, err
			}
		case "salvage":
			r.salvage = true
		case "bitmaps":
			r.bitmaps = true
		case "skip-broken-bitmaps":
			r.skipBroken = true
		case "target-image-opts":
			r.tgtImageOpts = true
		}
	}
	// qemu-img's refusals of option combinations, in its order, before
	// anything is opened.
	switch {
	case r.skipBroken && !r.bitmaps:
		return nil, cli.Usagef("Use of --skip-broken-bitmaps requires --bitmaps")
	case r.compress && r.copyRange:
		return nil, cli.Usagef("Cannot enable copy offloading when -c is used")
	case sparseGiven && r.copyRange:
		return nil, cli.Usagef("Cannot enable copy offloading when -S is used")
	case r.copyRange && r.salvage:
		return nil, cli.Usagef("Cannot use copy offloading in salvaging mode")
	case r.tgtImageOpts && !r.skipCreate:
		return nil, cli.Usagef("--target-image-opts requires use of -n flag")
	}
	if err := checkSourceFormat(r.srcFmt); err != nil {
		return nil, err
	}
	if r.tgtImageOpts && !r.dstFmtGiven {
		r.dstFmt = "" // the target's options name its driver
	} else if err := checkOutputFormat(r.dstFmt); err != nil {
		return nil, err
	}
	switch {
	case len(operands) < 2:
		return nil, cli.Usagef("Expecting a source and a target image file name (see 'ringblk convert --help')")
	}
	// Several sources are concatenated into the one target.
	r.src, r.more, r.dst = operands[0], operands[1:len(operands)-1], operands[len(operands)-1]
	srcFmt := r.srcFmt
	if r.srcKeys, err = cli.KeySecretsOf(r.src, imageOpts); err != nil {
		return nil, err
	}
	if r.src, r.srcFmt, err = cli.ImageFile(r.src, srcFmt, imageOpts); err != nil {
		return nil, err
	}
	for i := range r.more {
		var f string
		if r.more[i], f, err = cli.ImageFile(r.more[i], srcFmt, imageOpts); err != nil {
			return nil, err
		}
		if f != r.srcFmt {
			return nil, cli.Usagef("ringblk converts several sources of one format only (-f)")
		}
	}
	if r.tgtImageOpts && !r.dstFmtGiven {
		// DST is an option list (-n is required): opened by its options
		// (runConvert), dst is its file for the checks before.
		r.dstOpts = r.dst
		if f, _, err := cli.ImageFile(r.dst, "", true); err == nil {
			r.dst = f
		} else if !cli.IsWholeTree(err) {
			return nil, err
		}
	}
	if r.compress && r.dstFmt != "qcow2" && !r.tgtImageOpts {
		return nil, errNoCompression(r.dstFmt)
	}
	if r.backing != "" && r.dstFmt == "raw" {
		return nil, cli.Usagef("Backing file not supported for file format 'raw'")
	}
	if len(r.olist) > 0 {
		// -o backing_file= and backing_fmt= are -B and -F's other
		// spelling (the last one given wins, as in an -o list).
		if pairs, _, err := format.SplitOptionList(r.olist); err == nil {
			for _, p := range pairs {
				switch p.Key {
				case "backing_file":
					r.backing = p.Value
				case "backing_fmt":
					r.backingFmt = p.Value
				}
			}
		}
	}
	if r.backing != "" && len(r.more) > 0 {
		return nil, cli.Usagef("Having a backing file for the target makes no sense when concatenating multiple input images")
	}
	if r.backing != "" && r.backingFmt == "" && !r.skipCreate {
		return nil, cli.Usagef("Use of backing file requires explicit backing format")
	}
	// With -n, -B only says that the existing target has a backing file
	// (so what the source's top image does not allocate is left alone).
	if r.skipCreate && len(r.olist) > 0 {
		return nil, cli.Usagef("-o has no effect when skipping image creation")
	}
	// A target convert creates is known to read as zeroes; only an
	// existing one needs the user's word for it (qemu-img's rule).
	if r.targetIsZero && !r.skipCreate {
		return nil, cli.Usagef("--target-is-zero requires use of -n flag")
	}
	// "unsafe" (qemu-img convert's default) is writeback without the
	// final flush; ours defaults to writeback with it.
	if r.cache == "unsafe" {
		r.cache, r.noFlush = "writeback", true
	}
	if r.srcCache == "unsafe" {
		r.srcCache = "writeback"
	}
	for _, c := range []struct{ v, what string }{{r.cache, "cache"}, {r.srcCache, "source cache"}} {
		if c.v != "" {
			if _, ok := raw.ParseCache(c.v); !ok {
				return nil, cli.Usagef("Invalid %s option: %s (none, writeback, writethrough, unsafe)", c.what, c.v)
			}
		}
	}
	return r, nil
}

func runConvert(r *convertReq, stdout, stderr io.Writer) (err error) {
	src, err := cli.OpenBlk(r.src, cli.BlkOptions{Format: r.srcFmt, ReadOnly: true, ForceShare: r.forceShare, Cache: r.srcCache, KeySecrets: r.srcKeys})
	if err != nil {
		return err
	}
	defer src.Close()
	if r.snap != nil {
		if len(r.more) > 0 {
			return cli.Usagef("No support for concatenating multiple snapshot")
		}
		if err := r.snap.Load(src.Qcow2, src.Format); err != nil {
			return err
		}
	}
	sch, err := newImageChain(src, false)
	if err != nil {
		return err
	}
	defer sch.Close()
	chains := []*imageChain{sch}
	for _, name := range r.more {
		img, err := cli.OpenBlkIn(src.Ctx, src.Graph, name, cli.BlkOptions{Format: r.srcFmt, ReadOnly: true, ForceShare: r.forceShare, Cache: r.srcCache})
		if err != nil {
			return err
		}
		defer img.Close()
		ch, err := newImageChain(img, false)
		if err != nil {
			return err
		}
		defer ch.Close()
		chains = append(chains, ch)
	}
	var size int64
	for _, ch := range chains {
		size += ch.size()
	}
	// Creating DST truncates it: never when it is an image SRC reads.
	dstID := chain.FileID(r.dst)
	for _, ch := range chains {
		for _, l := range ch.levels {
			if l.format != "null" && chain.FileID(l.path) == dstID {
				return fmt.Errorf("%s: is an image of the source chain (%s); refusing to write to it", r.dst, l.path)
			}
		}
	}

	if r.bitmaps {
		if len(r.more) > 0 {
			return errors.New("Copying bitmaps only possible with single source")
		}
		if err := checkSourceBitmaps(src, r.skipBroken); err != nil { // convert_bitmaps.go
			return err
		}
	}
	if r.targetIsZero && r.backing != "" {
		// Zero ranges left alone would show the backing file's bytes.
		return errors.New("Cannot use --target-is-zero when the destination image has a backing file")
	}
	if r.compress && !r.skipCreate && convertEncrypts(r.olist) { // aes.go
		return errCompressEncrypt
	}
	if !r.skipCreate {
		if err := createTarget(r, size); err != nil {
			return err
		}
	}
	dbo := cli.BlkOptions{Format: r.dstFmt, Cache: r.cache}
	encrypted, err := targetSecret(r, &dbo)
	if err != nil {
		return err
	}
	var dst *cli.BlkImage
	switch {
	case r.tgtImageOpts && r.dstFmtGiven:
		return errors.New("--image-opts and --format are mutually exclusive")
	case r.tgtImageOpts:
		dst, err = openTargetOpts(src, r.dstOpts, r.cache)
	default:
		dst, err = cli.OpenBlkIn(src.Ctx, src.Graph, r.dst, dbo)
	}
	if err != nil {
		return err
	}
	defer func() {
		if cerr := dst.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("%s: %v", r.dst, cli.PlainErr(cerr))
		}
	}()
	if r.bitmaps && dst.Qcow2 == nil {
		return fmt.Errorf("Format driver '%s' does not support bitmaps", dst.Format)
	}
	if r.compress && dst.Qcow2 == nil {
		return errNoCompression(dst.Format)
	}
	if r.skipCreate {
		dsize, err := dst.Node.Length()
		if err != nil {
			return fmt.Errorf("Could not get the size of '%s': %v", r.dst, cli.PlainErr(err))
		}
		if dsize < size {
			return fmt.Errorf("output file '%s' is smaller than input file '%s' (%d < %d bytes)", r.dst, r.src, dsize, size)
		}
	}

	// Each source is copied on its own, at its place in the target; with
	// -c, when a source ends inside a target cluster, the sources are
	// copied as one (convert_concat.go): a compressed cluster may hold
	// bytes of two of them, as in qemu-img.
	var concat []*imageChain
	if r.compress && len(chains) > 1 {
		cs := int64(1) << dst.Qcow2.Header().ClusterBits
		var end int64
		for _, ch := range chains[:len(chains)-1] {
			if end += ch.size(); end%cs != 0 {
				concat, chains = chains, chains[:1]
				break
			}
		}
	}
	progress := cli.NewProgress(stdout, r.showProgress && !r.quiet, 1)
	progress.Set(0)
	defer progress.End()
	rate := newRateLimit(r.rateLimit) // convert_rate.go
	warn := &warnings{w: stderr, quiet: r.quiet}
	offload := r.copyRange && copyRangeFiles(chains, dst.Node) // convert_copy.go
	var base int64
	for _, ch := range chains {
		// One copy per source, each at its place in the target.
		c := &converter{
			r: r, src: ch, dst: dst.Node, size: ch.size(), dstBase: base,
			topOnly: r.backing != "",
			// A created file reads as zeroes; an NBD export keeps its old data.
			// An encrypted target reads as zeroes only where nothing is
			// allocated (qcow2 without preallocation). --target-is-zero
			// is the user's word for an existing target. -S 0 writes
			// every byte anyway.
			zeroInit: r.minSparse > 0 && (r.targetIsZero ||
				!r.skipCreate && r.backing == "" && !nbd.IsURI(r.dst) && encrypted != encryptedNoZeroInit),
			progress: progress,
			rate:     rate,
			warn:     warn,
		}
		c.offload.Store(offload)
		if len(chains) > 1 {
			// Progress over the sources is not proportioned: no per-copy
			// percentages for a concatenation.
			c.progress = cli.NewProgress(stdout, false, 1)
		}
		if r.compress {
			c.clusterSize = int64(1) << dst.Qcow2.Header().ClusterBits
		}
		if concat != nil {
			c.setConcat(concat)
		}
		if err := c.run(); err != nil {
			return err
		}
		base += ch.size()
	}
	if r.bitmaps {
		if err := copyBitmaps(src, dst, r.skipBroken, warn); err != nil { // convert_bitmaps.go
			return err
		}
	}
	progress.Set(100)
	if r.noFlush {
		return nil
	}
	if err := dst.Node.Flush(); err != nil {
		return fmt.Errorf("error while flushing '%s': %v", r.dst, cli.PlainErr(err))
	}
	return nil
}

// openTargetOpts opens the target of --target-image-opts: file, driver
// and key secrets from the options. An open failure names the options
// as given, and then the file's own failure, as qemu-img words it.
func openTargetOpts(src *cli.BlkImage, opts, cache string) (*cli.BlkImage, error) {
	args := &cli.ImageArgs{ImageOpts: true}
	bo := cli.BlkOptions{Cache: cache}
	path, err := args.Resolve(opts, &bo)
	if cli.IsWholeTree(err) {
		return args.OpenIn(src.Ctx, src.Graph, opts, bo)
	}
	if err != nil {
		return nil, fmt.Errorf("Could not open '%s': %v", opts, err)
	}
	img, err := cli.OpenBlkIn(src.Ctx, src.Graph, path, bo)
	if err != nil {
		// The options take the place of the file name qemu-img would
		// have named first.
		msg := strings.TrimPrefix(err.Error(), "Could not open '"+path+"': ")
		return nil, &wordsErr{msg: fmt.Sprintf("Could not open '%s': %s", opts, msg), err: err}
	}
	return img, nil
}

// errNoCompression refuses -c for a target of format f: qemu-img's
// words in drop-in mode, with the format named as ringblk.
func errNoCompression(f string) error {
	if cli.Prog != "ringblk" {
		return cli.Usagef("Compression not supported for this file format")
	}
	return cli.Usagef("Compression not supported for this file format ('%s')", f)
}

// createTarget creates DST with create's code: the same options, checks
// and messages as 'ringblk create -f fmt -o … DST size'.
func createTarget(r *convertReq, size int64) error {
	cr := &createReq{file: r.dst, format: r.dstFmt, size: size, hasSize: true, quiet: true}
	olist := r.olist
	if r.backing != "" {
		olist = append(olist[:len(olist):len(olist)], "backing_file="+format.EscapeOptionValue(r.backing), "backing_fmt="+format.EscapeOptionValue(r.backingFmt))
	}
	if len(olist) > 0 {
		pairs, help, err := format.SplitOptionList(olist)
		if err != nil {
			return cli.Usagef("%v", err)
		}
		if help {
			return cli.Usagef("Invalid parameter 'help'")
		}
		cr.pairs = pairs
	}
	n, given, hasSize, err := takeSize(cr)
	if err != nil {
		return err
	}
	if hasSize {
		if n < size {
			return cli.Usagef("%s: size=%s is smaller than the source image (%d bytes)", r.dst, given, size)
		}
		cr.size = n
	}
	switch cr.format {
	case "raw":
		_, err = createRaw(cr)
	case "luks":
		_, err = createLuks(cr, &r.args.Objects)
	default:
		_, err = createQcow2(cr, &r.args.Objects)
	}
	var le *raw.LockError
	if errors.As(err, &le) {
		// qemu-img's words; the target is untouched (create locks first).
		return fmt.Errorf("%s: error while converting %s: %v", r.dst, cr.format, le)
	}
	if err != nil && cli.Prog != "ringblk" {
		return convertCreateWords(r.dst, cr.format, err)
	}
	return err
}

// convertCreateWords is a failed creation of convert's target as
// qemu-img words it: "DST: error while converting FMT: cause" where
// create says "DST: cause"; an unknown -o parameter alone ("Invalid
// parameter 'x'"), since qemu-img convert parses the list itself before
// creating anything.
func convertCreateWords(dst, fmtName string, err error) error {
	var ue *cli.UsageError
	rest, ok := strings.CutPrefix(err.Error(), dst+": ")
	switch {
	case !ok:
		return err
	case strings.HasPrefix(rest, "Invalid parameter '"):
		name, _, _ := strings.Cut(strings.TrimPrefix(rest, "Invalid parameter '"), "'")
		return cli.Usagef("Invalid parameter '%s'", name)
	case errors.As(err, &ue):
		return cli.Usagef("%s: error while converting %s: %s", dst, fmtName, rest)
	}
	return &wordsErr{msg: dst + ": error while converting " + fmtName + ": " + rest, err: err}
}

// converter is one copy from a source chain to a target node.
//
// A producer walks the source's block status in guest order and cuts it
// into items of at most convertBufSize; r.inFlight workers read and write
// the items concurrently with the nodes' synchronous helpers, each
// waiting on its own request (so several are in flight on the ring at
// once). Unless -W, an item is written only after every earlier item:
// reads overlap, writes keep guest order, as qemu-img does.
type converter struct {
	r           *convertReq
	src         *imageChain
	parts       []*imageChain // several sources read as one (convert_concat.go)
	dst         *block.Node
	size        int64
	dstBase     int64 // where this source starts in the target (concatenation)
	topOnly     bool  // -B: copy what the source's top image allocates
	zeroInit    bool  // the target reads as zeroes already: skip zero ranges
	clusterSize int64 // -c: the target's cluster size
	progress    *cli.Progress
	rate        *block.ThrottleGroup // -r (nil: no limit)
	warn        *warnings            // --salvage's warnings
	// offload: -C and both ends are raw files, until a copy_file_range
	// fails (then every later range is read and written, as qemu-img
	// turns copy offloading off at its first failure).
	offload atomic.Bool

	// Progress: bytes of work done out of total (qemu-img counts data,
	// and zeroes when they are written as data).
	mu       sync.Mutex
	total    int64
	done     int64
	err      error
	turn     int64 // sequence number of the item whose write may go next
	turnCond *sync.Cond
}

// itemKind says what to do with a range.
type itemKind uint8

const (
	itemSkip itemKind = iota // leave the target alone (zero-initialised, or the backing file provides it)
	itemData                 // read from the source, write what is not zero
	itemZero                 // the source reads as zeroes here
)

type convItem struct {
	off, n int64
	kind   itemKind
	seq    int64
}

// classify turns a chain status into what the copy does with the range.
func (c *converter) classify(s chainStatus) itemKind {
	switch {
	case s.Status&block.StatusZero != 0:
		if c.zeroInit {
			return itemSkip
		}
		return itemZero
	case s.Status&block.StatusData != 0:
		return itemData
	case c.topOnly:
		return itemSkip // the target's backing file holds it
	}
	return itemData
}

// counts says whether an item is progress work (qemu-img's rule).
func (c *converter) counts(k itemKind) bool {
	return k == itemData || (k == itemZero && c.r.minSparse == 0)
}

// walk calls emit for each range of the source in guest order. With -c
// the ranges are whole target clusters: a cluster that is only partly
// zero or unallocated is copied as data.
func (c *converter) walk(emit func(off, n int64, k itemKind) bool) error {
	for off := int64(0); off < c.size; {
		s, err := c.statusAbove(off, c.size-off)
		if err != nil && c.r.salvage {
			s, err = c.statusSalvaging(off, c.size-off, err) // convert_salvage.go
		}
		if err != nil {
			return fmt.Errorf("error while reading block status at offset %d: %v", off, cli.PlainErr(err))
		}
		n, k := s.Pnum, c.classify(s)
		if cs := c.clusterSize; cs > 0 {
			// off is cluster aligned here.
			if n < cs && off+n < c.size {
				n, k = min(cs, c.size-off), itemData
			} else if off+n < c.size {
				n = n / cs * cs
			}
		}
		if !emit(off, n, k) {
			return nil
		}
		off += n
	}
	return nil
}

func (c *converter) run() error {
	c.turnCond = sync.NewCond(&c.mu)
	if c.progress.Enabled() || c.r.salvage {
		// qemu-img always walks the block status twice (to count, then
		// to copy); with --salvage its warnings show it.
		err := c.walk(func(off, n int64, k itemKind) bool {
			if c.counts(k) {
				c.total += n
			}
			return true
		})
		if err != nil {
			return err
		}
	}
	items := make(chan convItem, c.r.inFlight)
	var wg sync.WaitGroup
	for range c.r.inFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.worker(items)
		}()
	}
	var seq int64
	werr := c.walk(func(off, n int64, k itemKind) bool {
		if k == itemSkip {
			return true
		}
		for n > 0 {
			if c.failed() {
				return false
			}
			m := min(n, convertBufSize)
			items <- convItem{off: off, n: m, kind: k, seq: seq}
			seq++
			off, n = off+m, n-m
		}
		return true
	})
	close(items)
	wg.Wait()
	if werr != nil {
		return werr
	}
	return c.err
}

func (c *converter) failed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err != nil
}

func (c *converter) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.turnCond.Broadcast()
	c.mu.Unlock()
}

// waitTurn blocks until item seq may write (always at once with -W).
// It reports false when the copy failed meanwhile.
func (c *converter) waitTurn(seq int64) bool {
	if c.r.outOfOrder {
		return !c.failed()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.turn != seq && c.err == nil {
		c.turnCond.Wait()
	}
	return c.err == nil
}

func (c *converter) endTurn(it convItem) {
	c.mu.Lock()
	if !c.r.outOfOrder {
		c.turn = it.seq + 1
		c.turnCond.Broadcast()
	}
	if c.counts(it.kind) {
		c.done += it.n
	}
	var pct float64 = 100
	if c.total > 0 {
		pct = 100 * float64(c.done) / float64(c.total)
	}
	c.mu.Unlock()
	if c.progress.Enabled() && c.total > 0 {
		c.progress.Set(pct)
	}
}

func (c *converter) worker(items <-chan convItem) {
	buf := make([]byte, convertBufSize)
	for it := range items {
		if c.failed() {
			continue
		}
		if err := c.copyItem(it, buf[:it.n]); err != nil {
			c.fail(err)
			continue
		}
		c.endTurn(it)
	}
}

func (c *converter) copyItem(it convItem, buf []byte) error {
	if it.kind == itemZero {
		if !c.waitTurn(it.seq) {
			return nil
		}
		if c.r.minSparse == 0 {
			// -S 0: every cluster is written, compressed with -c (as
			// qemu-img, whose target then maps no zero cluster at all).
			clear(buf)
			if c.clusterSize > 0 {
				return c.writeCompressed(buf, it.off)
			}
			return c.write(buf, it.off)
		}
		return c.writeZeroes(it.off, it.n)
	}
	if c.offload.Load() {
		if !c.waitTurn(it.seq) {
			return nil
		}
		if c.copyRange(it.off, it.n) == nil { // convert_copy.go
			return nil
		}
		// qemu-img's fallback: this range and every later one are read
		// and written.
		c.offload.Store(false)
	}
	if err := c.readSalvaging(buf, it.off); err != nil { // convert_salvage.go
		return fmt.Errorf("error while reading at byte %d of '%s': %v", it.off, c.r.src, cli.PlainErr(err))
	}
	if !c.waitTurn(it.seq) {
		return nil
	}
	if c.clusterSize > 0 {
		return c.writeCompressed(buf, it.off)
	}
	if c.r.minSparse == 0 {
		return c.write(buf, it.off)
	}
	// Sparse detection: runs of zero minSparse-sized pieces (aligned in
	// the guest) are skipped, or zeroed when the target is not known to
	// read as zeroes; everything else is written.
	gran := c.r.minSparse
	for p := int64(0); p < it.n; {
		end := min(it.n, (it.off+p)/gran*gran+gran-it.off)
		zero := isZero(buf[p:end])
		q := end
		for q < it.n {
			e := min(it.n, q+gran)
			if isZero(buf[q:e]) != zero {
				break
			}
			q = e
		}
		var err error
		switch {
		case !zero:
			err = c.write(buf[p:q], it.off+p)
		case !c.zeroInit:
			err = c.writeZeroes(it.off+p, q-p)
		}
		if err != nil {
			return err
		}
		p = q
	}
	return nil
}

// writeCompressed writes whole clusters: all-zero ones are skipped (or
// zeroed) unless -S 0 keeps the target fully allocated, the others
// compressed by the target's driver.
func (c *converter) writeCompressed(buf []byte, off int64) error {
	cs := c.clusterSize
	for p := int64(0); p < int64(len(buf)); p += cs {
		cl := buf[p:min(p+cs, int64(len(buf)))]
		if c.r.minSparse > 0 && isZero(cl) {
			if c.zeroInit {
				continue
			}
			if err := c.writeZeroes(off+p, int64(len(cl))); err != nil {
				return err
			}
			continue
		}
		c.throttle(int64(len(cl)))
		if _, err := c.dst.WriteCompressed(cl, c.dstBase+off+p); err != nil {
			return fmt.Errorf("error while compressing sector %d: %v", (off+p)/512, err)
		}
	}
	return nil
}

func (c *converter) write(p []byte, off int64) error {
	c.throttle(int64(len(p)))
	if _, err := c.dst.WriteAt(p, c.dstBase+off); err != nil {
		return fmt.Errorf("error while writing at byte %d of '%s': %v", off, c.r.dst, cli.PlainErr(err))
	}
	return nil
}

func (c *converter) writeZeroes(off, n int64) error {
	c.throttle(n)
	if err := c.dst.WriteZeroes(c.dstBase+off, n, block.MayUnmap); err != nil {
		return fmt.Errorf("error while writing zeroes at byte %d of '%s': %v", off, c.r.dst, cli.PlainErr(err))
	}
	return nil
}
