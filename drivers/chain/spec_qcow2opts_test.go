package chain

import (
	"strings"
	"testing"
)

// TestQcow2CachePlanLikeQemu: QEMU's qcow2 cache arithmetic on an image's
// geometry: the L2 cache is capped at what covers the disk before it is
// counted in entries, so 1 TiB in 512-byte entries is fine on a 64 MiB
// image and too big (2^31 entries) on a 32 PiB image with 256 KiB
// clusters (iotest 137); a refcount cache of more than INT_MAX clusters
// is refused; cache-size alone goes to the L2 cache up to the cap.
func TestQcow2CachePlanLikeQemu(t *testing.T) {
	const small, big = 64 << 20, 32 << 50
	for _, c := range []struct {
		name      string
		opts      Spec
		cs, vsize int64
		l2        int64
		err       string
	}{
		{"1T in 512-byte entries, 64M image", Spec{"l2-cache-entry-size": "512", "l2-cache-size": "1T"}, 64 << 10, small, 64 << 10, ""},
		{"1T in 512-byte entries, 32P image", Spec{"l2-cache-entry-size": "512", "l2-cache-size": "1T"}, 256 << 10, big, 0, "L2 cache size too big"},
		{"1T, 32P image", Spec{"l2-cache-size": "1T"}, 256 << 10, big, 1 << 40, ""},
		{"2T, 32P image: capped", Spec{"l2-cache-size": "2T"}, 256 << 10, big, 1 << 40, ""},
		{"refcount 256T", Spec{"refcount-cache-size": "256T"}, 64 << 10, small, 64 << 10, "Refcount cache size too big"},
		{"cache-size 2T", Spec{"cache-size": "2T"}, 64 << 10, small, 64 << 10, ""},
		{"cache-size 100k", Spec{"cache-size": "100k"}, 64 << 10, small, 0, ""},
		{"cache-size 1M, refcount 512k", Spec{"cache-size": "1M", "refcount-cache-size": "512k"}, 64 << 10, small, 512 << 10, ""},
		{"entry 33k", Spec{"l2-cache-entry-size": "33k"}, 64 << 10, small, 0, "L2 cache entry size must be a power of two between 512 and the cluster size (65536)"},
	} {
		co, err := qcow2CacheOptions(c.opts)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		l2, err := co.planCache(c.cs, c.vsize)
		if c.err != "" {
			if err == nil || err.Error() != c.err {
				t.Errorf("%s: %d, %v; want %q", c.name, l2, err, c.err)
			}
			continue
		}
		if err != nil || l2 != c.l2 {
			t.Errorf("%s: %d, %v; want %d", c.name, l2, err, c.l2)
		}
	}
}

// TestQcow2RuntimeOptionChecks: overlap-check, its template and flags and
// cache-clean-interval are checked in QEMU's words (they used to be taken
// without a look).
func TestQcow2RuntimeOptionChecks(t *testing.T) {
	for _, c := range []struct {
		opts Spec
		err  string
	}{
		{Spec{"overlap-check": "none", "overlap-check.template": "none", "overlap-check.main-header": "on", "cache-clean-interval": "10"}, ""},
		{Spec{"overlap-check": "blubb"}, "Unsupported value 'blubb' for qcow2 option 'overlap-check'. Allowed are any of the following: none, constant, cached, all"},
		{Spec{"overlap-check.template": "blubb"}, "Unsupported value 'blubb'"},
		{Spec{"overlap-check": "constant", "overlap-check.template": "all"}, "Conflicting values for qcow2 options 'overlap-check' ('constant') and 'overlap-check.template' ('all')"},
		{Spec{"overlap-check.inactive-l2": "maybe"}, "Parameter 'overlap-check.inactive-l2' expects 'on' or 'off'"},
		{Spec{"cache-clean-interval": "-1"}, "Cache clean interval too big"},
		{Spec{"cache-clean-interval": "4294967296"}, "Cache clean interval too big"},
		{Spec{"cache-clean-interval": "4294967295"}, ""},
		{Spec{"cache-clean-interval": "soon"}, "Parameter 'cache-clean-interval' expects a number"},
	} {
		r, err := takeQcow2Runtime(c.opts)
		if err == nil {
			err = r.check()
		}
		if (c.err == "") != (err == nil) || (err != nil && !strings.HasPrefix(err.Error(), c.err)) {
			t.Errorf("%v: %v, want %q", c.opts, err, c.err)
		}
		if err == nil && len(c.opts) != 0 {
			t.Errorf("%v: options left in the spec", c.opts)
		}
	}
}

// TestQcow2InactiveL2Option: overlap-check.inactive-l2 turns the
// driver's inactive-L2 check on or off; without it, only the "all"
// template turns it on (QEMU's default "cached" leaves it off).
func TestQcow2InactiveL2Option(t *testing.T) {
	cases := []struct {
		opts Spec
		want bool
	}{
		{Spec{}, false},
		{Spec{"overlap-check.inactive-l2": "on"}, true},
		{Spec{"overlap-check.inactive-l2": "off"}, false},
		{Spec{"overlap-check": "all"}, true},
		{Spec{"overlap-check.template": "all"}, true},
		{Spec{"overlap-check": "cached"}, false},
		{Spec{"overlap-check": "all", "overlap-check.inactive-l2": "off"}, false},
		{Spec{"overlap-check": "none", "overlap-check.inactive-l2": "on"}, true},
	}
	for _, c := range cases {
		r, err := takeQcow2Runtime(c.opts)
		if err != nil {
			t.Fatalf("%v: %v", c.opts, err)
		}
		if got := r.inactiveL2Check(); got != c.want {
			t.Errorf("%v: inactive-L2 check %v, want %v", c.opts, got, c.want)
		}
	}
}
