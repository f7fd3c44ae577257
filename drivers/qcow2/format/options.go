package format

import (
	"math"
	"math/bits"
	"strconv"
	"strings"
)

// The -o option lists of qemu-img create, convert, measure and amend for
// qcow2, parsed once with qemu-img 7.2's rules: which keys each command
// takes, how each value is read (sizes with k, M, G, T, P, E suffixes and
// fractions, numbers in C syntax, QEMU booleans), and which combinations
// are refused. Messages follow qemu-img's words on one line; where
// qemu-img's own commands word one rule differently (compat, preallocation)
// one clear wording is used for all.

// OptionUse says which command an -o list is for.
type OptionUse uint8

const (
	// ForCreate: qemu-img create and the target of convert.
	ForCreate OptionUse = iota
	// ForMeasure: qemu-img measure -O qcow2 (create's keys; values are
	// checked as far as they change the estimate, as qemu-img does).
	ForMeasure
	// ForAmend: qemu-img amend (compat, lazy_refcounts, size,
	// refcount_bits, backing_file, backing_fmt; create-only keys refused).
	ForAmend
)

// OptionError is a refused -o list or value.
type OptionError struct {
	Key string // the key refused; "" for the list itself
	Msg string // what is wrong, one line
	// SizeSyntax marks a value that is not a size at all (ParseOptionSize),
	// which qemu-img words in its own three lines.
	SizeSyntax bool
}

func (e *OptionError) Error() string { return e.Msg }

func optErr(key, msg string) error { return &OptionError{Key: key, Msg: msg} }

// OptionPair is one key=value item of an -o list.
type OptionPair struct{ Key, Value string }

// ImageOptions is a parsed qcow2 -o list.
type ImageOptions struct {
	// Create holds cluster_size, compat, refcount_bits, backing_file,
	// backing_fmt, preallocation, extended_l2, lazy_refcounts and
	// compression_type; a key not given keeps its zero value (the
	// default). For amend, Version and RefcountBits are 0 unless given.
	Create CreateOptions
	// Size is size= in bytes, when Given has "size".
	Size int64
	// LazyRefcounts is lazy_refcounts, when Given has it (amend needs to
	// know "off" from "not given").
	LazyRefcounts bool
	// Given maps every key of the list to its last value as written (a
	// bare key reads "on", "noKEY" reads KEY=off): qemu-img's
	// "Formatting ..." line echoes these.
	Given map[string]string
}

// Has reports whether key was in the list.
func (o *ImageOptions) Has(key string) bool {
	_, ok := o.Given[key]
	return ok
}

// IsHelpOption reports whether an -o item asks for the list of keys.
func IsHelpOption(s string) bool { return s == "help" || s == "?" }

// SplitOptionList splits -o lists, joined with commas as qemu-img joins a
// repeated -o, into key=value pairs in order. ",," is a comma inside a
// value; a bare KEY means KEY=on and noKEY means KEY=off (QEMU's option
// syntax). help reports whether an item is "help" or "?": the caller then
// prints the keys and does nothing else. An empty list or item is an
// error, as in qemu-img.
func SplitOptionList(lists []string) (pairs []OptionPair, help bool, err error) {
	joined := strings.Join(lists, ",")
	var items []string
	var cur strings.Builder
	for i := 0; i < len(joined); i++ {
		c := joined[i]
		if c == ',' {
			if i+1 < len(joined) && joined[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			items = append(items, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(c)
	}
	items = append(items, cur.String())
	for _, it := range items {
		if IsHelpOption(it) {
			return nil, true, nil
		}
	}
	for _, it := range items {
		if it == "" {
			return nil, false, optErr("", "Invalid option list: "+joined)
		}
		k, v, ok := strings.Cut(it, "=")
		if !ok {
			v = "on"
			if rest, no := strings.CutPrefix(k, "no"); no && rest != "" {
				k, v = rest, "off"
			}
		}
		pairs = append(pairs, OptionPair{k, v})
	}
	return pairs, false, nil
}

// EscapeOptionValue makes v safe inside an -o list (commas doubled), for
// callers that add an item such as backing_file from a -b argument.
func EscapeOptionValue(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// FormattingLine is the line qemu-img create (and QEMU's own image
// creation, e.g. drive-backup's target) prints before it makes a qcow2
// image: the options as the user wrote them, in qemu-img's order, and the
// defaults for the rest. o may be nil (every default); raw replaces the
// printed value of keys the options could not hold (a value the driver
// refuses, printed before its refusal).
func FormattingLine(file string, size int64, o *ImageOptions, raw map[string]string) string {
	if o == nil {
		o = &ImageOptions{}
	}
	co := o.Create
	given := func(k, def string) string {
		if v, ok := raw[k]; ok {
			return v
		}
		if v, ok := o.Given[k]; ok {
			return v
		}
		return def
	}
	rb := strconv.Itoa(co.RefcountBits)
	if co.RefcountBits == 0 {
		rb = "16"
	}
	if v, ok := raw["refcount_bits"]; ok {
		rb = v
	}
	cs := strconv.FormatInt(co.EffectiveClusterSize(), 10)
	if v, ok := raw["cluster_size"]; ok {
		cs = v
	}
	var b strings.Builder
	b.WriteString("Formatting '" + file + "', fmt=qcow2 cluster_size=" + cs + " extended_l2=" + given("extended_l2", "off"))
	if v := given("preallocation", ""); v != "" {
		b.WriteString(" preallocation=" + v)
	}
	b.WriteString(" compression_type=" + given("compression_type", "zlib") + " size=" + strconv.FormatInt(size, 10))
	if v := given("compat", ""); v != "" {
		b.WriteString(" compat=" + v)
	}
	if co.BackingFile != "" {
		// Option values as an -o list would hold them.
		b.WriteString(" backing_file=" + EscapeOptionValue(co.BackingFile) + " backing_fmt=" + EscapeOptionValue(co.BackingFormat))
	}
	if v, ok := o.Given["data_file"]; ok {
		b.WriteString(" data_file=" + EscapeOptionValue(v))
	}
	if v, ok := o.Given["data_file_raw"]; ok {
		b.WriteString(" data_file_raw=" + v)
	}
	b.WriteString(" lazy_refcounts=" + given("lazy_refcounts", "off") + " refcount_bits=" + rb)
	return b.String()
}

// ParseOptions parses qcow2 -o lists for use. With "help" or "?" in the
// lists it returns help true and nothing else.
func ParseOptions(lists []string, use OptionUse) (o *ImageOptions, help bool, err error) {
	pairs, help, err := SplitOptionList(lists)
	if err != nil || help {
		return nil, help, err
	}
	o, err = ParseOptionPairs(pairs, use)
	return o, false, err
}

// createOnly are the keys qemu-img 7.2 takes at create and refuses in
// amend (besides encrypt.*).
var createOnly = [...]string{"cluster_size", "preallocation", "extended_l2", "compression_type", "encryption"}

// AmendKeyError is amend's refusal of key: a create-only key, or one no
// qcow2 command knows.
func AmendKeyError(key string) error {
	if strings.HasPrefix(key, "encrypt.") {
		return optErr(key, "Invalid parameter '"+key+"': This option is only supported for image creation")
	}
	for _, k := range createOnly {
		if key == k {
			return optErr(key, "Invalid parameter '"+key+"': This option is only supported for image creation")
		}
	}
	return optErr(key, "Invalid parameter '"+key+"'")
}

// ParseOptionPairs is ParseOptions on pairs from SplitOptionList. Later
// pairs override earlier ones with the same key.
func ParseOptionPairs(pairs []OptionPair, use OptionUse) (*ImageOptions, error) {
	o := &ImageOptions{Given: make(map[string]string, len(pairs))}
	c := &o.Create
	last := make(map[string]int, len(pairs))
	for i, p := range pairs {
		last[p.Key] = i
	}
	for i, p := range pairs {
		k, v := p.Key, p.Value
		o.Given[k] = v
		if last[k] != i {
			// qemu-img reads every value of a typed key (size, number,
			// boolean) but checks only the last one against its range or
			// list of choices.
			if err := checkOverridden(k, v); err != nil {
				return nil, err
			}
			continue
		}
		if use == ForAmend {
			switch k {
			case "compat", "lazy_refcounts", "size", "refcount_bits", "backing_file", "backing_fmt", "data_file", "data_file_raw":
			default:
				return nil, AmendKeyError(k)
			}
		}
		switch {
		case k == "size":
			n, err := ParseOptionSize(k, v)
			if err != nil {
				return nil, err
			}
			o.Size = n
		case k == "cluster_size":
			n, err := ParseOptionSize(k, v)
			if err != nil {
				return nil, err
			}
			if n < 1<<MinClusterBits || n > 1<<MaxClusterBits || n&(n-1) != 0 {
				return nil, optErr(k, "Cluster size must be a power of two between 512 and 2048k (got '"+v+"')")
			}
			c.ClusterSize = n
		case k == "compat":
			switch v {
			case "0.10", "v2":
				c.Version = 2
			case "1.1", "v3":
				c.Version = 3
			default:
				if use == ForAmend { // qemu-img amend's own words
					return nil, optErr(k, "Unknown compatibility level "+v)
				}
				return nil, optErr(k, "Invalid compatibility level: '"+v+"' (0.10, 1.1, v2, v3)")
			}
		case k == "lazy_refcounts":
			b, err := parseOptionBool(k, v)
			if err != nil {
				return nil, err
			}
			o.LazyRefcounts, c.LazyRefcounts = b, b
		case k == "extended_l2":
			b, err := parseOptionBool(k, v)
			if err != nil {
				return nil, err
			}
			c.ExtendedL2 = b
		case k == "refcount_bits":
			n, err := parseOptionNumber(v)
			if err != nil {
				return nil, optErr(k, "Parameter 'refcount_bits' expects a number")
			}
			if n == 0 || n > 64 || n&(n-1) != 0 {
				return nil, optErr(k, "Refcount width must be a power of two and may not exceed 64 bits (got '"+v+"')")
			}
			c.RefcountBits = int(n)
		case k == "preallocation":
			p, ok := ParsePrealloc(v)
			if !ok {
				return nil, optErr(k, "Parameter 'preallocation' does not accept value '"+v+"' (off, metadata, falloc, full)")
			}
			c.Preallocation = p
		case k == "compression_type":
			switch {
			case v == "zlib":
				c.CompressionType = CompressionZlib
			case v == "zstd":
				c.CompressionType = CompressionZstd
			case use == ForCreate:
				return nil, optErr(k, "Parameter 'compression_type' does not accept value '"+v+"' (zlib, zstd)")
			}
		case k == "backing_file":
			c.BackingFile = v
		case k == "backing_fmt":
			c.BackingFormat = v
		case k == "data_file":
			c.DataFile = v // amend: the driver decides (datafile.go)
		case k == "data_file_raw":
			b, err := parseOptionBool(k, v)
			if err != nil {
				return nil, err
			}
			c.DataFileRaw = b
		case k == "encryption", strings.HasPrefix(k, "encrypt."):
			if k == "encryption" {
				if _, err := parseOptionBool(k, v); err != nil {
					return nil, err
				}
			}
			return nil, optErr(k, "Parameter '"+k+"': encrypted images are not supported")
		default:
			return nil, optErr(k, "Invalid parameter '"+k+"'")
		}
	}
	return o, o.check(use)
}

// checkOverridden is the check of a value a later one of the same key
// overrides: its syntax only, for typed keys; unknown keys as always.
func checkOverridden(k, v string) error {
	var err error
	switch {
	case k == "size" || k == "cluster_size":
		_, err = ParseOptionSize(k, v)
	case k == "refcount_bits":
		if _, perr := parseOptionNumber(v); perr != nil {
			err = optErr(k, "Parameter 'refcount_bits' expects a number")
		}
	case k == "lazy_refcounts" || k == "extended_l2" || k == "data_file_raw" || k == "encryption":
		_, err = parseOptionBool(k, v)
	case k == "compat" || k == "preallocation" || k == "compression_type" || k == "backing_file" ||
		k == "backing_fmt" || k == "data_file" || strings.HasPrefix(k, "encrypt."):
	default:
		err = optErr(k, "Invalid parameter '"+k+"'")
	}
	return err
}

// check refuses the combinations qemu-img refuses for use, in its order.
func (o *ImageOptions) check(use OptionUse) error {
	if use == ForAmend {
		return nil // the driver's Amend checks against the image
	}
	c := &o.Create
	v2 := c.Version == 2
	if v2 && c.RefcountBits != 0 && c.RefcountBits != 16 {
		return optErr("refcount_bits", "Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)")
	}
	if c.ExtendedL2 && c.ClusterSize != 0 && c.ClusterSize < 16384 {
		return optErr("extended_l2", "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes")
	}
	if use == ForMeasure {
		return nil
	}
	if c.LazyRefcounts && v2 {
		return optErr("lazy_refcounts", "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)")
	}
	if c.ExtendedL2 && v2 {
		return optErr("extended_l2", "Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)")
	}
	if c.CompressionType != CompressionZlib && v2 {
		return optErr("compression_type", "Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)")
	}
	if o.Has("backing_file") && c.BackingFile == "" {
		return optErr("backing_file", "Expected backing file name, got empty string")
	}
	if c.BackingFile != "" && c.Preallocation != PreallocOff && !c.ExtendedL2 {
		return optErr("preallocation", "Backing file and preallocation can only be used at the same time if extended_l2 is on")
	}
	if c.BackingFormat != "" && c.BackingFormat != "raw" && c.BackingFormat != "qcow2" {
		return optErr("backing_fmt", "Unsupported backing format '"+c.BackingFormat+"' (raw or qcow2)")
	}
	if c.BackingFile != "" && c.BackingFormat == "" {
		return optErr("backing_fmt", "Backing file specified without backing format (add -F raw or -F qcow2)")
	}
	if c.BackingFile == "" && c.BackingFormat != "" {
		return optErr("backing_fmt", "Backing format cannot be used without backing file")
	}
	return nil
}

// parseOptionBool reads a QEMU boolean: on, yes, true, y or off, no,
// false, n.
func parseOptionBool(key, v string) (bool, error) {
	switch v {
	case "on", "yes", "true", "y":
		return true, nil
	case "off", "no", "false", "n":
		return false, nil
	}
	return false, optErr(key, "Parameter '"+key+"' expects 'on' or 'off'")
}

// ParseOptionSize reads the size value of option key as qemu-img does: a
// decimal number, optionally with a fraction, or a 0x hex integer, then
// an optional unit B, K, M, G, T, P or E (any case; powers of 1024; a
// fraction needs a unit other than B), rounded to the nearest byte.
func ParseOptionSize(key, v string) (int64, error) {
	bad := &OptionError{Key: key, Msg: "Parameter '" + key + "' expects a non-negative number below 2^63 (optional suffix k, M, G, T, P or E)", SizeSyntax: true}
	s := strings.TrimLeft(v, " \t\n\v\f\r")
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, bad
	}
	intPart, err := strconv.ParseUint(s[:i], 10, 64)
	if err != nil {
		return 0, bad
	}
	var frac float64
	rest := s[i:]
	switch {
	case intPart == 0 && (strings.HasPrefix(rest, "x") || strings.HasPrefix(rest, "X")):
		n, err := strconv.ParseUint(rest[1:], 16, 64)
		if err != nil || n > math.MaxInt64 {
			return 0, bad
		}
		return int64(n), nil
	case strings.HasPrefix(rest, "."):
		j := 1
		for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
			j++
		}
		if j == 1 {
			return 0, bad
		}
		frac, _ = strconv.ParseFloat("0"+rest[:j], 64)
		rest = rest[j:]
	}
	shift := -1
	if len(rest) == 1 {
		shift = strings.IndexByte("bkmgtpe", rest[0]|0x20) * 10
	}
	switch {
	case rest == "":
		shift = 0
		if frac != 0 {
			return 0, bad
		}
	case shift < 0:
		return 0, bad
	case shift == 0 && frac != 0:
		return 0, bad
	}
	hi, lo := bits.Mul64(intPart, 1<<shift)
	if hi != 0 || lo > math.MaxInt64 {
		return 0, bad
	}
	n := lo + uint64(frac*float64(uint64(1)<<shift)+0.5)
	if n < lo || n > math.MaxInt64 {
		return 0, bad
	}
	return int64(n), nil
}
