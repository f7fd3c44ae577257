package chain

// OpenSpec: opening an image from a block options dictionary (a Spec from
// a json: filename, --image-opts or qemu-io's open -o) instead of a path
// and a format. The dictionary names a node tree the way QEMU's does:
// a format driver ("qcow2", "raw") over a "file" child, itself a protocol
// ("file", "host_device", "host_cdrom") or another format; "null-co";
// and the drivers registered in SpecDrivers (filters such as blkdebug).
//
// The security rule of this package holds: these dictionaries come from
// the operator's command line only. A backing file named inside an image
// is opened as Open opens it (its recorded format, read-only, never a
// json: name); a Spec can only switch the backing file off ("backing":
// null), not name another one.

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/cache"
	"github.com/ringblk/ringblk/drivers/null"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/raw"
)

// SpecDriver opens the node a Spec names with a driver ringblk's chain
// does not know itself. s holds that node's own keys (its children's
// under "image.", "file."…); b opens children (b.Child); prefix names the
// node in messages ("file.") and name is its node name. The returned
// node's reference passes to the caller.
type SpecDriver func(b *SpecBuilder, s Spec, prefix, name string) (*block.Node, error)

// SpecDrivers are the extra drivers OpenSpec knows, by QEMU driver name.
// A filter driver package registers itself here from an init function in
// a file of this package (for example "blkdebug").
var SpecDrivers = map[string]SpecDriver{}

// SpecBuilder opens the nodes of one Spec.
type SpecBuilder struct {
	G    *block.Graph
	O    Options // the top image's options (read-only, cache, …)
	used map[string]bool
	seq  int
	// Path is the file of the outermost image, for messages and for
	// resolving its backing file.
	Path string
}

// OpenSpec opens the image s describes as nodes of g. o supplies what s
// does not say (read-only, cache mode, force-share from the command
// line); s's own keys win. Format "" in o is ignored: s names its
// drivers, and without one the top file's format is probed.
func OpenSpec(g *block.Graph, s Spec, o Options) (*Image, error) {
	s = copySpec(s)
	if err := applyGeneric(s, &o); err != nil {
		return nil, err
	}
	if o.ForceShare {
		o.ReadOnly = true
	}
	if o.Name == "" {
		o.Name = "spec"
	}
	b := &SpecBuilder{G: g, O: o, used: map[string]bool{}}
	n, img, err := b.node(s, "", true)
	if err != nil {
		return nil, err
	}
	img.Node = n
	return img, nil
}

func copySpec(s Spec) Spec {
	c := Spec{}
	for k, v := range s {
		c[k] = v
	}
	return c
}

// Bool reads an on/off option as QEMU does.
func (s Spec) Bool(key string) (val, given bool, err error) {
	v, ok := s[key]
	if !ok {
		return false, false, nil
	}
	switch v {
	case "on", "true", "yes", "y":
		return true, true, nil
	case "off", "false", "no", "n":
		return false, true, nil
	}
	return false, true, fmt.Errorf("Parameter '%s' expects 'on' or 'off'", key)
}

// Size reads a size option ("64k", "1.25M", "4096").
func (s Spec) Size(key string) (val int64, given bool, err error) {
	v, ok := s[key]
	if !ok {
		return 0, false, nil
	}
	n, err := ParseQemuSize(v)
	if err != nil {
		return 0, true, fmt.Errorf("Parameter '%s' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.", key)
	}
	return n, true, nil
}

// ParseQemuSize reads a size as QEMU's option parser does: a decimal
// number, with a fraction only when a suffix (k, M, G, T, P, E: powers of
// 1024; b or B: bytes) follows or the fraction is zero.
func ParseQemuSize(v string) (int64, error) {
	i := 0
	for i < len(v) && (v[i] >= '0' && v[i] <= '9' || v[i] == '.') {
		i++
	}
	num, suf := v[:i], v[i:]
	if num == "" || strings.Count(num, ".") > 1 {
		return 0, fmt.Errorf("bad size '%s'", v)
	}
	shift := 0
	switch suf {
	case "", "b", "B":
	case "k", "K":
		shift = 10
	case "m", "M":
		shift = 20
	case "g", "G":
		shift = 30
	case "t", "T":
		shift = 40
	case "p", "P":
		shift = 50
	case "e", "E":
		shift = 60
	default:
		return 0, fmt.Errorf("bad size '%s'", v)
	}
	whole, frac, hasFrac := strings.Cut(num, ".")
	if whole == "" {
		return 0, fmt.Errorf("bad size '%s'", v)
	}
	w, err := strconv.ParseUint(whole, 10, 64)
	if err != nil || w > math.MaxInt64>>shift {
		return 0, fmt.Errorf("bad size '%s'", v)
	}
	n := int64(w) << shift
	if hasFrac && frac != "" {
		f, err := strconv.ParseFloat("0."+frac, 64)
		if err != nil {
			return 0, fmt.Errorf("bad size '%s'", v)
		}
		if shift == 0 && f != 0 {
			return 0, fmt.Errorf("bad size '%s'", v)
		}
		add := int64(f * float64(int64(1)<<shift))
		if n > math.MaxInt64-add {
			return 0, fmt.Errorf("bad size '%s'", v)
		}
		n += add
	}
	return n, nil
}

// applyGeneric takes the options every node of QEMU accepts at the top
// (read-only, cache.*, force-share, node-name, discard, detect-zeroes)
// out of s into o.
func applyGeneric(s Spec, o *Options) error {
	if v, ok, err := s.Bool("read-only"); err != nil {
		return err
	} else if ok {
		o.ReadOnly = v
	}
	delete(s, "read-only")
	if v, _, err := s.Bool("auto-read-only"); err != nil {
		return err
	} else if v {
		o.AutoReadOnly = true
	}
	delete(s, "auto-read-only")
	if v, ok, err := s.Bool("force-share"); err != nil {
		return err
	} else if ok {
		o.ForceShare = v
	}
	delete(s, "force-share")
	if v, ok, err := s.Bool("cache.direct"); err != nil {
		return err
	} else if ok && v {
		o.Cache = raw.CacheNone
	} else if ok && o.Cache == raw.CacheNone {
		o.Cache = raw.CacheWriteback
	}
	delete(s, "cache.direct")
	if _, _, err := s.Bool("cache.no-flush"); err != nil {
		return err
	}
	delete(s, "cache.no-flush")
	if v, ok := s["node-name"]; ok {
		if v == "" || v == Null {
			return fmt.Errorf("Invalid node-name: ''")
		}
		o.Name = v
		delete(s, "node-name")
	}
	if v, ok := s["discard"]; ok {
		switch v {
		case "ignore", "off":
			o.Discard = raw.DiscardIgnore
		case "unmap", "on":
			o.Discard = raw.DiscardUnmap
		default:
			return fmt.Errorf("Invalid discard option")
		}
		delete(s, "discard")
	}
	if v, ok := s["detect-zeroes"]; ok {
		switch v {
		case "off":
			o.DetectZeroes = raw.DetectZeroesOff
		case "on", "unmap":
			o.DetectZeroes = raw.DetectZeroesOn
		default:
			return fmt.Errorf("Parameter 'detect-zeroes' does not accept value '%s'", v)
		}
		delete(s, "detect-zeroes")
	}
	return nil
}

// isProtocol reports whether driver is a file protocol of this package.
func isProtocol(driver string) bool {
	return driver == "file" || driver == "host_device" || driver == "host_cdrom"
}

// node opens the node s describes; prefix names it in messages
// ("file."), top says whether it is the outermost node. img carries what
// the caller reports (path, format, the qcow2 driver of the top).
func (b *SpecBuilder) node(s Spec, prefix string, top bool) (*block.Node, *Image, error) {
	driver := s["driver"]
	delete(s, "driver")
	name := b.O.Name
	if !top {
		b.seq++
		name = fmt.Sprintf("%s-%s%d", b.O.Name, strings.TrimSuffix(prefix, "."), b.seq)
		if v, ok := s["node-name"]; ok && v != Null && v != "" {
			name = v
		}
		delete(s, "node-name")
	}
	if fn := s["filename"]; driver == "" && top && ProtocolPrefix(fn) == "blkdebug" {
		// The image a user names as "blkdebug:CONFIG:IMAGE" gets a
		// format over the filter, probed from IMAGE, as QEMU probes a
		// protocol node's format: a raw image's format then raises
		// read_aio and write_aio, a qcow2 image's its own events.
		format, err := Probe(LocalPath(fn))
		if err != nil {
			return nil, nil, fmt.Errorf("Could not open '%s': %w", fn, unwrapPath(err))
		}
		under := Spec{"file.driver": "blkdebug"}
		for k, v := range s {
			under["file."+k] = v
		}
		s = under
		driver = format
	}
	if fn := s["filename"]; driver == "" && ProtocolPrefix(fn) != "" {
		// "blkdebug:…": the protocol driver the name starts with.
		driver = ProtocolPrefix(fn)
	}
	if driver == "" {
		// No driver: the format of the named file is probed (the
		// operator named it; backing files are never probed).
		fn := specFilename(s)
		if fn == "" {
			return nil, nil, errors.New("A block device must be specified for \"" + strings.TrimSuffix(prefix+"file", ".") + "\"")
		}
		if _, sub := s.Sub("file"); sub {
			// A file child given as options: its driver decides.
			driver = "raw"
			if f, err := Probe(fn); err == nil && f == "qcow2" {
				driver = "qcow2"
			}
		} else {
			f, err := Probe(fn)
			if err != nil {
				return nil, nil, fmt.Errorf("Could not open '%s': %w", fn, unwrapPath(err))
			}
			driver = f
		}
	}
	switch {
	case isProtocol(driver):
		fn := s["filename"]
		delete(s, "filename")
		if driver == "file" {
			fn = strings.TrimPrefix(fn, "file:")
		}
		if fn == "" || fn == Null {
			return nil, nil, fmt.Errorf("The '%s' block driver requires a file name", driver)
		}
		fo := fileOptions(b.O, top)
		if !top {
			// A file child of the top image carries the top's file
			// options (cache, discard, read-only).
			fo = fileOptions(b.O, true)
		}
		if v, ok := s["locking"]; ok {
			switch v {
			case "on":
				fo.Locking = raw.LockingOn
			case "off":
				fo.Locking = raw.LockingOff
			case "auto":
				fo.Locking = raw.LockingAuto
			default:
				return nil, nil, fmt.Errorf("Parameter 'locking' does not accept value '%s'", v)
			}
			delete(s, "locking")
		}
		for _, k := range []string{"aio", "aio-max-batch", "pr-manager", "x-check-cache-dropped", "drop-cache"} {
			delete(s, k)
		}
		if err := leftover(s, "protocol", driver); err != nil {
			return nil, nil, err
		}
		if err := checkProtocolFile(driver, fn, b.O.ReadOnly); err != nil {
			return nil, nil, err
		}
		if b.Path == "" {
			b.Path = fn
		}
		n, err := raw.NewNode(b.G, fn, fo, block.Options{Name: name, ReadOnly: b.O.ReadOnly})
		if err != nil {
			return nil, nil, fmt.Errorf("Could not open '%s': %w", fn, unwrapPath(err))
		}
		return n, &Image{Path: fn, Format: driver}, nil
	case driver == "null-co" || driver == "null-aio":
		size := int64(1 << 30)
		if v, ok, err := s.Size("size"); err != nil {
			return nil, nil, err
		} else if ok {
			size = v
		}
		rz, _, err := s.Bool("read-zeroes")
		if err != nil {
			return nil, nil, err
		}
		delete(s, "size")
		delete(s, "read-zeroes")
		delete(s, "filename")
		delete(s, "latency-ns")
		if err := leftover(s, "protocol", driver); err != nil {
			return nil, nil, err
		}
		n, err := b.G.Open(null.New(size, null.Options{ReadZeroes: rz}), block.Options{Name: name, ReadOnly: b.O.ReadOnly})
		if err != nil {
			return nil, nil, err
		}
		return n, &Image{Path: driver + "://", Format: "null"}, nil
	case driver == "raw":
		off, _, err := s.Size("offset")
		if err != nil {
			return nil, nil, err
		}
		size, hasSize, err := s.Size("size")
		if err != nil {
			return nil, nil, err
		}
		delete(s, "offset")
		delete(s, "size")
		child, cimg, err := b.Child(s, "file", prefix+"file.")
		if err != nil {
			return nil, nil, err
		}
		if err := leftover(s, "format", driver); err != nil {
			child.Unref()
			return nil, nil, err
		}
		if off != 0 || hasSize {
			if !hasSize {
				size = -1
			}
			n, err := openWindow(b, child, name, off, size)
			if err != nil {
				return nil, nil, err
			}
			return n, &Image{Path: cimg.Path, Format: "raw"}, nil
		}
		// ringblk's raw format is its file: the child node serves
		// the guest's view directly, except over a blkdebug filter,
		// which needs the raw format's debug events.
		n, err := rawOver(b.G, child, name, b.O.ReadOnly)
		if err != nil {
			return nil, nil, err
		}
		return n, &Image{Path: cimg.Path, Format: "raw"}, nil
	case driver == "qcow2":
		return b.qcow2(s, prefix, name, top)
	case driver == "luks":
		return b.luks(s, prefix, name)
	}
	if d, ok := SpecDrivers[driver]; ok {
		n, err := d(b, s, prefix, name)
		if err != nil {
			return nil, nil, err
		}
		return n, &Image{Path: b.Path, Format: driver}, nil
	}
	if qemuProtocols[driver] {
		return nil, nil, fmt.Errorf("Unknown protocol '%s'", driver)
	}
	return nil, nil, fmt.Errorf("Unknown driver '%s'", driver)
}

// qemuProtocols are QEMU's protocol drivers that a filename can name by
// prefix ("blkdebug:conf:image"). ringblk opens "file" itself and the
// others when SpecDrivers has them; rbd: and nbd: names are Open's (not
// listed here).
var qemuProtocols = map[string]bool{
	"blkdebug": true, "blkverify": true, "file": true, "host_device": true, "host_cdrom": true,
	"null-co": true, "null-aio": true, "http": true, "https": true, "ftp": true, "ftps": true,
	"ssh": true, "iscsi": true, "gluster": true, "vvfat": true,
}

// ProtocolPrefix is the protocol a filename starts with ("blkdebug" for
// "blkdebug:conf:img", "file" for "file:x"), or "" for a plain path (a
// colon after a slash is part of the path, as in QEMU).
func ProtocolPrefix(fn string) string {
	i := strings.IndexByte(fn, ':')
	if i <= 0 || strings.IndexByte(fn[:i], '/') >= 0 {
		return ""
	}
	if p := fn[:i]; qemuProtocols[p] || SpecDrivers[p] != nil {
		return p
	}
	return ""
}

// specFilename is the file a node without a driver names: filename,
// "file" as a string, or file.filename.
func specFilename(s Spec) string {
	if v := s["filename"]; v != "" && v != Null {
		return v
	}
	if v := s["file"]; v != "" && v != Null {
		return v
	}
	if sub, ok := s.Sub("file"); ok {
		return specFilename(sub)
	}
	return ""
}

// Child opens the child key ("file", "image") of the node whose options
// s holds, taking its keys out of s: the child is key.* options, key as
// a filename string, or (for "file" only) the node's own filename.
func (b *SpecBuilder) Child(s Spec, key, prefix string) (*block.Node, *Image, error) {
	sub, has := s.Sub(key)
	for k := range s {
		if strings.HasPrefix(k, key+".") {
			delete(s, k)
		}
	}
	if v, ok := s[key]; ok {
		delete(s, key)
		if has {
			return nil, nil, fmt.Errorf("Cannot reference an existing block device with additional options or a new filename")
		}
		if v == Null || v == "" {
			return nil, nil, fmt.Errorf("A block device must be specified for \"%s\"", key)
		}
		sub = Spec{"filename": v}
		has = true
	}
	if fn, ok := s["filename"]; ok && key == "file" {
		delete(s, "filename")
		if _, dup := sub["filename"]; dup {
			return nil, nil, fmt.Errorf("Cannot specify both 'filename' and '%s.filename'", key)
		}
		sub["filename"] = fn
		has = true
	}
	if !has {
		return nil, nil, fmt.Errorf("A block device must be specified for \"%s\"", key)
	}
	if sub["driver"] == "" {
		// A plain path: the file protocol (no probing below a format),
		// unless the name starts with another protocol's prefix.
		sub["driver"] = "file"
		if p := ProtocolPrefix(sub["filename"]); p != "" {
			sub["driver"] = p
		}
	}
	return b.node(sub, prefix, false)
}

// qcow2 opens a qcow2 node from s.
func (b *SpecBuilder) qcow2(s Spec, prefix, name string, top bool) (*block.Node, *Image, error) {
	o := b.O
	noBacking := false
	if v, ok := s["backing"]; ok {
		if v != Null {
			return nil, nil, fmt.Errorf("ringblk takes the backing file from the image only; 'backing' may only be null")
		}
		noBacking = true
		delete(s, "backing")
	}
	secrets, backingFiles, err := b.keySecrets(s)
	if err != nil {
		return nil, nil, err
	}
	for k := range s {
		if rest, ok := strings.CutPrefix(k, "backing."); ok {
			// The backing node's name and driver as the image records
			// it are accepted; anything else would name another file.
			switch rest {
			case "driver":
				// The backing file's format instead of the image's
				// record (QEMU's override, iotest 114).
				o.QcowOptions.BackingFormat = s[k]
				delete(s, k)
			case "node-name":
				delete(s, k)
			default:
				return nil, nil, fmt.Errorf("ringblk takes the backing file from the image only (option '%s')", k)
			}
		}
	}
	runtimeOpts, err := takeQcow2Runtime(s) // spec_qcow2opts.go
	if err != nil {
		return nil, nil, err
	}
	o.QcowOptions.InactiveL2Check = runtimeOpts.inactiveL2Check()
	cacheOpts, err := qcow2CacheOptions(s)
	if err != nil {
		return nil, nil, err
	}
	switch on, given, err := s.Bool("lazy-refcounts"); {
	case err != nil:
		return nil, nil, err
	case given && on:
		o.QcowOptions.LazyRefcounts = qcow2.LazyOn
	case given:
		o.QcowOptions.LazyRefcounts = qcow2.LazyOff
	}
	for _, k := range []string{"lazy-refcounts", "pass-discard-request", "pass-discard-snapshot", "pass-discard-other", "discard-no-unref"} {
		if _, _, err := s.Bool(k); err != nil {
			return nil, nil, err
		}
		delete(s, k)
	}
	child, cimg, err := b.Child(s, "file", prefix+"file.")
	if err != nil {
		return nil, nil, err
	}
	// QEMU's cache size rules on the image's geometry, then its other
	// runtime option checks (spec_qcow2opts.go).
	if l2, err := qcow2OpenOptions(child, cacheOpts, runtimeOpts); err != nil {
		child.Unref()
		return nil, nil, err
	} else if l2 >= 0 {
		o.QcowOptions.L2CacheBytes = max(l2, 1) // 0: the driver's minimum applies
	}
	// An external data file given by the operator (datafile.go).
	dataNode, err := b.dataFileChild(s, prefix)
	if err != nil {
		child.Unref()
		return nil, nil, err
	}
	if err := leftover(s, "format", "qcow2"); err != nil {
		child.Unref()
		if dataNode != nil {
			dataNode.Unref()
		}
		return nil, nil, err
	}
	o.QcowOptions.DataFileNode = dataNode
	if o.QcowOptions.SharedCache == nil {
		o.QcowOptions.SharedCache = cache.NewLRU(qcow2.DefaultSharedCacheBytes)
	}
	o.NoBacking = o.NoBacking || noBacking
	o.Name = name
	if secrets != nil {
		o.KeySecrets = secrets
	}
	n, drv, err := openQcow2On(b.G, child, cimg.Path, o, name, 0, nil, true)
	if err != nil {
		return nil, nil, err
	}
	if err := checkBackingFiles(cimg.Path, n, backingFiles); err != nil {
		n.Unref()
		return nil, nil, err
	}
	img := &Image{Path: cimg.Path, Format: "qcow2"}
	if top {
		img.Qcow2 = drv
	}
	return n, img, nil
}

// qcow2Cache is what qcow2CacheOptions read: the sizes given (hasX
// says which), the entry size (-1: not given); planCache
// (spec_qcow2opts.go) turns them into the L2 cache size.
type qcow2Cache struct {
	l2Given, rc, total, entry int64
	hasL2, hasRC, hasTotal    bool
}

// qcow2CacheOptions checks QEMU's qcow2 cache options (cache-size,
// l2-cache-size, refcount-cache-size, l2-cache-entry-size) that need no
// image, and takes them out of s.
func qcow2CacheOptions(s Spec) (qcow2Cache, error) {
	c := qcow2Cache{entry: -1}
	total, hasTotal, err := s.Size("cache-size")
	if err != nil {
		return c, err
	}
	l2, hasL2, err := s.Size("l2-cache-size")
	if err != nil {
		return c, err
	}
	rc, hasRC, err := s.Size("refcount-cache-size")
	if err != nil {
		return c, err
	}
	es, hasES, err := s.Size("l2-cache-entry-size")
	if err != nil {
		return c, err
	}
	for _, k := range []string{"cache-size", "l2-cache-size", "refcount-cache-size", "l2-cache-entry-size"} {
		delete(s, k)
	}
	switch {
	case hasTotal && hasL2 && hasRC:
		return c, errors.New("cache-size, l2-cache-size and refcount-cache-size may not be set at the same time")
	case hasTotal && hasL2 && l2 > total:
		return c, errors.New("l2-cache-size may not exceed cache-size")
	case hasTotal && hasRC && rc > total:
		return c, errors.New("refcount-cache-size may not exceed cache-size")
	}
	c.l2Given, c.rc, c.total = l2, rc, total
	c.hasL2, c.hasRC, c.hasTotal = hasL2, hasRC, hasTotal
	if hasES {
		c.entry = es
	}
	return c, nil
}

// leftover fails on an option no driver took, in QEMU's words.
func leftover(s Spec, kind, driver string) error {
	for k := range s {
		return fmt.Errorf("Block %s '%s' does not support the option '%s'", kind, driver, k)
	}
	return nil
}

// checkProtocolFile makes QEMU's checks of what a protocol driver may
// open: "file" wants a regular file, host_device and host_cdrom a device.
func checkProtocolFile(driver, fn string, readOnly bool) error {
	st, err := os.Stat(fn)
	if err != nil {
		return fmt.Errorf("Could not open '%s': %w", fn, unwrapPath(err))
	}
	if st.IsDir() && !readOnly {
		return fmt.Errorf("Could not open '%s': Is a directory", fn)
	}
	dev := st.Mode()&(os.ModeDevice|os.ModeCharDevice) != 0
	switch {
	case driver == "file" && !st.Mode().IsRegular():
		return fmt.Errorf("'file' driver requires '%s' to be a regular file", fn)
	case driver != "file" && !dev:
		return fmt.Errorf("'%s' driver requires '%s' to be either a character or block device", driver, fn)
	}
	return nil
}
