package format_test

import (
	"errors"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// TestQcow2ParseOptions: one table for the -o rules of create, measure and
// amend, with qemu-img 7.2's verdicts (internal/imgcmd's
// TestQcow2OptionListsAgreeWithQemu runs the commands against qemu-img).
func TestQcow2ParseOptions(t *testing.T) {
	const (
		C = format.ForCreate
		M = format.ForMeasure
		A = format.ForAmend
	)
	type want struct {
		err  string // "" : accepted
		test func(o *format.ImageOptions) bool
	}
	cs := func(n int64) func(*format.ImageOptions) bool {
		return func(o *format.ImageOptions) bool { return o.Create.ClusterSize == n }
	}
	rb := func(n int) func(*format.ImageOptions) bool {
		return func(o *format.ImageOptions) bool { return o.Create.RefcountBits == n }
	}
	lazy := func(b bool) func(*format.ImageOptions) bool {
		return func(o *format.ImageOptions) bool { return o.Has("lazy_refcounts") && o.LazyRefcounts == b }
	}
	cases := []struct {
		list string
		use  format.OptionUse
		want want
	}{
		// cluster_size: sizes with units and fractions; power of two in 512..2M.
		{"cluster_size=4k", C, want{"", cs(4096)}},
		{"cluster_size=4K", M, want{"", cs(4096)}},
		{"cluster_size=0.5k", C, want{"", cs(512)}},
		{"cluster_size=0x1000", C, want{"", cs(4096)}},
		{"cluster_size=2M", C, want{"", cs(2 << 20)}},
		{"cluster_size=1000", C, want{"Cluster size must be a power of two between 512 and 2048k (got '1000')", nil}},
		{"cluster_size=256", M, want{"Cluster size must be a power of two between 512 and 2048k (got '256')", nil}},
		{"cluster_size=4M", C, want{"Cluster size must be a power of two between 512 and 2048k (got '4M')", nil}},
		{"cluster_size=1.5k", C, want{"Cluster size must be a power of two between 512 and 2048k (got '1.5k')", nil}},
		{"cluster_size=64kB", C, want{"Parameter 'cluster_size' expects a non-negative number below 2^63 (optional suffix k, M, G, T, P or E)", nil}},
		{"cluster_size=-4k", C, want{"Parameter 'cluster_size' expects a non-negative number below 2^63 (optional suffix k, M, G, T, P or E)", nil}},
		{"cluster_size=", C, want{"Parameter 'cluster_size' expects a non-negative number below 2^63 (optional suffix k, M, G, T, P or E)", nil}},
		{"cluster_size=8b", C, want{"Cluster size must be a power of two between 512 and 2048k (got '8b')", nil}},
		{"cluster_size=4k", A, want{"Invalid parameter 'cluster_size': This option is only supported for image creation", nil}},
		// compat
		{"compat=0.10", C, want{"", func(o *format.ImageOptions) bool { return o.Create.Version == 2 }}},
		{"compat=v2", A, want{"", func(o *format.ImageOptions) bool { return o.Create.Version == 2 }}},
		{"compat=1.1", M, want{"", func(o *format.ImageOptions) bool { return o.Create.Version == 3 }}},
		{"compat=v3", C, want{"", func(o *format.ImageOptions) bool { return o.Create.Version == 3 }}},
		{"compat=1.0", C, want{"Invalid compatibility level: '1.0' (0.10, 1.1, v2, v3)", nil}},
		{"compat=", C, want{"Invalid compatibility level: '' (0.10, 1.1, v2, v3)", nil}},
		{"compat=0.42", A, want{"Unknown compatibility level 0.42", nil}}, // amend's words (iotest 061)
		// lazy_refcounts: QEMU booleans, bare key, noKEY.
		{"lazy_refcounts=on", C, want{"", lazy(true)}},
		{"lazy_refcounts=yes", C, want{"", lazy(true)}},
		{"lazy_refcounts", A, want{"", lazy(true)}},
		{"nolazy_refcounts", A, want{"", lazy(false)}},
		{"lazy_refcounts=n", M, want{"", lazy(false)}},
		{"lazy_refcounts=1", M, want{"Parameter 'lazy_refcounts' expects 'on' or 'off'", nil}},
		{"compat=0.10,lazy_refcounts=on", C, want{"Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)", nil}},
		{"compat=0.10,lazy_refcounts=on", M, want{"", lazy(true)}},
		{"compat=0.10,lazy_refcounts=on", A, want{"", lazy(true)}}, // the driver refuses it against the image
		// extended_l2
		{"extended_l2=true", C, want{"", func(o *format.ImageOptions) bool { return o.Create.ExtendedL2 }}},
		{"extended_l2=maybe", M, want{"Parameter 'extended_l2' expects 'on' or 'off'", nil}},
		{"extended_l2=on,cluster_size=8k", M, want{"Extended L2 entries are only supported with cluster sizes of at least 16384 bytes", nil}},
		{"extended_l2=on,compat=0.10", C, want{"Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)", nil}},
		{"extended_l2=on", A, want{"Invalid parameter 'extended_l2': This option is only supported for image creation", nil}},
		// refcount_bits: C numbers, power of two up to 64.
		{"refcount_bits=16", A, want{"", rb(16)}},
		{"refcount_bits=0x10", C, want{"", rb(16)}},
		{"refcount_bits=010", C, want{"", rb(8)}},
		{"refcount_bits=1k", A, want{"Parameter 'refcount_bits' expects a number", nil}},
		{"refcount_bits=3", C, want{"Refcount width must be a power of two and may not exceed 64 bits (got '3')", nil}},
		{"refcount_bits=128", M, want{"Refcount width must be a power of two and may not exceed 64 bits (got '128')", nil}},
		{"refcount_bits=0", C, want{"Refcount width must be a power of two and may not exceed 64 bits (got '0')", nil}},
		{"refcount_bits=8,compat=0.10", M, want{"Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)", nil}},
		// preallocation
		{"preallocation=falloc", C, want{"", func(o *format.ImageOptions) bool { return o.Create.Preallocation == format.PreallocFalloc }}},
		{"preallocation=bogus", C, want{"Parameter 'preallocation' does not accept value 'bogus' (off, metadata, falloc, full)", nil}},
		{"preallocation=bogus", M, want{"Parameter 'preallocation' does not accept value 'bogus' (off, metadata, falloc, full)", nil}},
		{"preallocation=full", A, want{"Invalid parameter 'preallocation': This option is only supported for image creation", nil}},
		// compression_type
		{"compression_type=zstd", C, want{"", func(o *format.ImageOptions) bool { return o.Create.CompressionType == format.CompressionZstd }}},
		{"compression_type=lz4", C, want{"Parameter 'compression_type' does not accept value 'lz4' (zlib, zstd)", nil}},
		{"compression_type=lz4", M, want{"", nil}}, // qemu-img measure does not read it
		{"compat=0.10,compression_type=zstd", C, want{"Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)", nil}},
		{"compat=0.10,compression_type=zlib", C, want{"", nil}},
		{"compression_type=zlib", A, want{"Invalid parameter 'compression_type': This option is only supported for image creation", nil}},
		// backing_file / backing_fmt
		{"backing_file=a,,b.qcow2,backing_fmt=qcow2", C, want{"", func(o *format.ImageOptions) bool { return o.Create.BackingFile == "a,b.qcow2" }}},
		{"backing_file=b.qcow2", C, want{"Backing file specified without backing format (add -F raw or -F qcow2)", nil}},
		{"backing_fmt=raw", C, want{"Backing format cannot be used without backing file", nil}},
		{"backing_file=,backing_fmt=raw", C, want{"Expected backing file name, got empty string", nil}},
		{"backing_file=b,backing_fmt=vmdk", C, want{"Unsupported backing format 'vmdk' (raw or qcow2)", nil}},
		{"backing_file=b,backing_fmt=raw,preallocation=metadata", C, want{"Backing file and preallocation can only be used at the same time if extended_l2 is on", nil}},
		{"backing_file=b.qcow2", M, want{"", func(o *format.ImageOptions) bool { return o.Has("backing_file") }}},
		{"backing_file=b.qcow2", A, want{"", func(o *format.ImageOptions) bool { return o.Create.BackingFile == "b.qcow2" }}},
		// size
		{"size=1.5M", A, want{"", func(o *format.ImageOptions) bool { return o.Size == 3<<19 }}},
		{"size=1x", A, want{"Parameter 'size' expects a non-negative number below 2^63 (optional suffix k, M, G, T, P or E)", nil}},
		{"size=1M", M, want{"", nil}},
		// data_file, data_file_raw: parsed here; the combinations are
		// Layout's (create) and the driver's (amend) to refuse.
		{"data_file=x.raw", C, want{"", func(o *format.ImageOptions) bool { return o.Create.DataFile == "x.raw" && !o.Create.DataFileRaw }}},
		{"data_file=x.raw", M, want{"", nil}},
		{"data_file=x.raw", A, want{"", func(o *format.ImageOptions) bool { return o.Has("data_file") && o.Create.DataFile == "x.raw" }}},
		{"data_file=x.raw,data_file_raw=on", C, want{"", func(o *format.ImageOptions) bool { return o.Create.DataFileRaw }}},
		{"data_file_raw=maybe", C, want{"Parameter 'data_file_raw' expects 'on' or 'off'", nil}},
		{"encrypt.format=luks", C, want{"Parameter 'encrypt.format': encrypted images are not supported", nil}},
		{"encrypt.format=luks", M, want{"Parameter 'encrypt.format': encrypted images are not supported", nil}},
		{"encryption=on", C, want{"Parameter 'encryption': encrypted images are not supported", nil}},
		{"encrypt.key-secret=s0", A, want{"Invalid parameter 'encrypt.key-secret': This option is only supported for image creation", nil}},
		// unknown keys, the list itself, the last value wins.
		{"bogus=1", C, want{"Invalid parameter 'bogus'", nil}},
		{"bogus=1", A, want{"Invalid parameter 'bogus'", nil}},
		{"cluster_size=4k,", C, want{"Invalid option list: cluster_size=4k,", nil}},
		{",", M, want{"Invalid option list: ,", nil}},
		{"", A, want{"Invalid option list: ", nil}},
		{"cluster_size=64k,cluster_size=4k", C, want{"", cs(4096)}},
		// An overridden value is read (typed keys) but not checked.
		{"compat=1.0,compat=1.1", C, want{"", func(o *format.ImageOptions) bool { return o.Create.Version == 3 }}},
		{"preallocation=bogus,preallocation=off", C, want{"", nil}},
		{"cluster_size=1000,cluster_size=4k", C, want{"", cs(4096)}},
		{"lazy_refcounts=maybe,lazy_refcounts=on", C, want{"Parameter 'lazy_refcounts' expects 'on' or 'off'", nil}},
		{"cluster_size=4x,cluster_size=4k", M, want{"Parameter 'cluster_size' expects a non-negative number below 2^63 (optional suffix k, M, G, T, P or E)", nil}},
		{"bogus=1,bogus=2", A, want{"Invalid parameter 'bogus'", nil}},
	}
	for _, c := range cases {
		o, help, err := format.ParseOptions([]string{c.list}, c.use)
		if help {
			t.Errorf("%q (use %d): help", c.list, c.use)
			continue
		}
		if c.want.err != "" {
			var oe *format.OptionError
			if err == nil || err.Error() != c.want.err || !errors.As(err, &oe) {
				t.Errorf("%q (use %d): err %v, want %q", c.list, c.use, err, c.want.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q (use %d): %v", c.list, c.use, err)
			continue
		}
		if c.want.test != nil && !c.want.test(o) {
			t.Errorf("%q (use %d): parsed %+v", c.list, c.use, o)
		}
	}
	for _, l := range [][]string{{"help"}, {"?"}, {"cluster_size=4k,help"}, {"cluster_size=bad", "?"}} {
		if _, help, err := format.ParseOptions(l, format.ForCreate); !help || err != nil {
			t.Errorf("%q: help %t, err %v; want help", l, help, err)
		}
	}
}

// TestQcow2ParseOptionSize: qemu-img's size syntax.
func TestQcow2ParseOptionSize(t *testing.T) {
	for s, want := range map[string]int64{
		"0": 0, "512": 512, "4k": 4096, "4K": 4096, "1M": 1 << 20, "2g": 2 << 30, "1T": 1 << 40, "1p": 1 << 50, "1E": 1 << 60,
		"7b": 7, "7B": 7, "0.5k": 512, "1.5M": 3 << 19, "0x10": 16, " 8k": 8192, "0.0001k": 0, "1.9999b": -1,
		"64kB": -1, "4KiB": -1, "-1": -1, "": -1, "k": -1, "0x10k": -1, "1.5": -1, "8E": -1, "1.k": -1, "4k ": -1,
	} {
		got, err := format.ParseOptionSize("size", s)
		if want < 0 {
			if err == nil {
				t.Errorf("%q: %d, want an error", s, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%q: %d, %v; want %d", s, got, err, want)
		}
	}
}
