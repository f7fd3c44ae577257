package chain

// QEMU's qcow2 runtime options that decide cache sizes or that ringblk
// accepts without effect, checked as QEMU 7.2 checks them (iotest 137):
//
//   - The cache sizes (qcow2CacheOptions takes them out of the spec): the
//     L2 cache is capped at what covers the whole disk, one 8-byte entry
//     per cluster rounded up to a cluster (QEMU's cap; asking for 1 TiB
//     on a 64 MiB image is fine and costs nothing), the default 32 MiB
//     cap applies likewise; cache-size is split as QEMU splits it; then
//     each cache is counted in entries (L2: of l2-cache-entry-size,
//     refcount: of a cluster), and more than INT_MAX of them is refused.
//     ringblk has no refcount cache of that size: its figure is only
//     checked. The capped L2 size is what the driver gets, which never
//     holds more tables than the image can use.
//   - overlap-check, overlap-check.template and the per-structure
//     overlap-check.* flags: values checked, the choice has no effect
//     (ringblk's overlap check (R5) is always on).
//   - cache-clean-interval: a number of seconds up to UINT_MAX; no effect.
//
// Syntax errors are reported first (QEMU's option parsing), then the
// cache errors, then the others, as qcow2_update_options_prepare orders
// them.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// QEMU's qcow2 defaults and minimums.
const (
	qcow2DefaultL2Max   = 32 << 20 // DEFAULT_L2_CACHE_MAX_SIZE
	qcow2MinL2Tables    = 2        // MIN_L2_CACHE_SIZE, in entries
	qcow2MinRefcountTab = 4        // MIN_REFCOUNT_CACHE_SIZE, in clusters
)

// qcow2OverlapFlags are the overlap-check.* booleans QEMU takes.
var qcow2OverlapFlags = []string{"main-header", "active-l1", "active-l2", "refcount-table",
	"refcount-block", "snapshot-table", "inactive-l1", "inactive-l2", "bitmap-directory"}

// qcow2Runtime is what takeQcow2Runtime read, for checkQcow2Runtime.
type qcow2Runtime struct {
	overlap, template    string
	hasOverlap, hasTempl bool
	interval             uint64
	hasInterval          bool
}

// takeQcow2Runtime takes overlap-check* and cache-clean-interval out of s
// with their syntax checked.
func takeQcow2Runtime(s Spec) (qcow2Runtime, error) {
	var r qcow2Runtime
	r.overlap, r.hasOverlap = s["overlap-check"]
	r.template, r.hasTempl = s["overlap-check.template"]
	delete(s, "overlap-check")
	delete(s, "overlap-check.template")
	for _, f := range qcow2OverlapFlags {
		k := "overlap-check." + f
		if _, _, err := s.Bool(k); err != nil {
			return r, err
		}
		delete(s, k)
	}
	if v, ok := s["cache-clean-interval"]; ok {
		n, err := parseQemuNumber(v)
		if err != nil {
			return r, fmt.Errorf("Parameter 'cache-clean-interval' expects a number")
		}
		r.interval, r.hasInterval = n, true
		delete(s, "cache-clean-interval")
	}
	return r, nil
}

// parseQemuNumber reads a number option as QEMU does: decimal, 0x hex or
// 0 octal, a leading minus wrapping around (so -1 is 2^64-1).
func parseQemuNumber(v string) (uint64, error) {
	neg := strings.HasPrefix(v, "-")
	n, err := strconv.ParseUint(strings.TrimPrefix(v, "-"), 0, 64)
	if err != nil {
		return 0, err
	}
	if neg {
		n = -n
	}
	return n, nil
}

// check makes the checks QEMU makes after the cache sizes.
func (r qcow2Runtime) check() error {
	if r.hasInterval && r.interval > math.MaxUint32 {
		return errors.New("Cache clean interval too big")
	}
	if r.hasOverlap && r.hasTempl && r.overlap != r.template {
		return fmt.Errorf("Conflicting values for qcow2 options 'overlap-check' ('%s') and 'overlap-check.template' ('%s')", r.overlap, r.template)
	}
	v := r.overlap
	if !r.hasOverlap {
		v = r.template
	}
	if r.hasOverlap || r.hasTempl {
		switch v {
		case "none", "constant", "cached", "all":
		default:
			return fmt.Errorf("Unsupported value '%s' for qcow2 option 'overlap-check'. Allowed are any of the following: none, constant, cached, all", v)
		}
	}
	return nil
}

// planCache applies QEMU's cache rules to an image of cluster size cs and
// virtual size vsize: the L2 cache size in bytes for the driver (capped
// at what covers the disk), or QEMU's error.
func (c qcow2Cache) planCache(cs, vsize int64) (int64, error) {
	tables := (uint64(vsize) + uint64(cs) - 1) / uint64(cs)
	maxL2 := (tables*8 + uint64(cs) - 1) / uint64(cs) * uint64(cs)
	l2 := uint64(qcow2DefaultL2Max)
	if c.hasL2 {
		l2 = uint64(c.l2Given)
	}
	l2 = min(l2, maxL2)
	rc := uint64(0)
	if c.hasRC {
		rc = uint64(c.rc)
	}
	if c.hasTotal {
		total, minRC := uint64(c.total), uint64(qcow2MinRefcountTab*cs)
		switch {
		case c.hasL2:
			rc = total - l2
		case c.hasRC:
			l2 = total - rc
		case total >= maxL2+minRC:
			l2, rc = maxL2, total-maxL2
		default:
			rc = min(total, minRC)
			l2 = total - rc
		}
	}
	entry := uint64(cs)
	if c.entry >= 0 {
		entry = uint64(c.entry)
	} else if l2 < maxL2 {
		entry = min(uint64(cs), 4096)
	}
	if entry < 512 || entry > uint64(cs) || entry&(entry-1) != 0 {
		return 0, fmt.Errorf("L2 cache entry size must be a power of two between 512 and the cluster size (%d)", cs)
	}
	if max(l2/entry, qcow2MinL2Tables) > math.MaxInt32 {
		return 0, errors.New("L2 cache size too big")
	}
	if max(rc/uint64(cs), qcow2MinRefcountTab) > math.MaxInt32 {
		return 0, errors.New("Refcount cache size too big")
	}
	return int64(l2), nil
}

// peekQcow2Geometry reads the cluster size and virtual size from the
// header at the start of file; ok is false when it is not a readable
// qcow2 header (the driver's open then says why).
func peekQcow2Geometry(file *block.Node) (cs, vsize int64, ok bool) {
	var b [32]byte
	if _, err := file.ReadAt(b[:], 0); err != nil {
		return 0, 0, false
	}
	cs, err := format.ParsePrefix(b[:])
	if err != nil {
		return 0, 0, false
	}
	v := binary.BigEndian.Uint64(b[24:])
	if v > math.MaxInt64 {
		return 0, 0, false
	}
	return cs, int64(v), true
}

// qcow2OpenOptions is the pre-open part of the qcow2 spec's runtime
// options for the image on file: QEMU's checks in its order, and the L2
// cache size for the driver (-1: the default).
func qcow2OpenOptions(file *block.Node, c qcow2Cache, r qcow2Runtime) (int64, error) {
	l2 := int64(-1)
	if cs, vsize, ok := peekQcow2Geometry(file); ok {
		var err error
		if l2, err = c.planCache(cs, vsize); err != nil {
			return 0, err
		}
		if !c.hasL2 && !c.hasTotal {
			l2 = -1 // the driver's default (the same 32 MiB cap)
		}
	}
	return l2, r.check()
}
