package imgcmd

import (
	"math"
	"regexp"
	"strings"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/internal/cli"
	"github.com/ringblk/ringblk/internal/units"
)

// convert -r: a limit on the bytes per second written to the target, as
// qemu-img 7.2 sets it (a throttle group with only a write bandwidth
// limit on the target). Every write counts: data, compressed clusters
// and write-zeroes alike; offloaded copies (-C) bypass it, as
// blk_co_copy_range bypasses QEMU's throttling.

// qemuSizeSyntax is what qemu_strtosz reads as a number, whatever its
// size: digits, a fraction, a suffix.
var qemuSizeSyntax = regexp.MustCompile(`^[0-9]+(\.[0-9]*)?[bBkKmMgGtTpPeE]?$`)

// parseRateLimit reads -r as qemu-img's cvtnum("rate limit", …, true):
// a size with an optional suffix, or a hex number, from 0 to INT64_MAX.
// A value that is no number is the two-line suffix message; a number out
// of range the "Must be between" one.
func parseRateLimit(v string) (int64, error) {
	if n, err := chain.ParseQemuSize(v); err == nil {
		return n, nil
	}
	if h, ok := strings.CutPrefix(strings.ToLower(v), "0x"); ok && h != "" && strings.Trim(h, "0123456789abcdef") == "" {
		if n, err := units.ParseSize(v); err == nil && n >= 0 {
			return n, nil
		}
		return 0, cli.Usagef("Invalid rate limit specified. Must be between 0 and %d.", int64(math.MaxInt64))
	}
	whole, frac, _ := strings.Cut(strings.TrimRight(v, "bBkKmMgGtTpPeE"), ".")
	suffixed := strings.TrimRight(v, "bB") != strings.TrimRight(v, "bBkKmMgGtTpPeE")
	if qemuSizeSyntax.MatchString(v) && whole != "" && (suffixed || strings.Trim(frac, "0") == "") {
		// A well-formed number ParseQemuSize refused: too big.
		return 0, cli.Usagef("Invalid rate limit specified. Must be between 0 and %d.", int64(math.MaxInt64))
	}
	if cli.Prog == "ringblk" {
		return 0, cli.Usagef("Invalid rate limit specified: '%s' (bytes per second; k, M, G, T, P or E suffixes)", v)
	}
	return 0, &cli.HintError{
		Err:  cli.Usagef("Invalid rate limit specified. You may use k, M, G, T, P or E suffixes for"),
		Hint: cli.Prog + ": kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.\n",
	}
}

// newRateLimit is the throttle group of -r (nil: no limit). Its burst is
// QEMU's default, a tenth of a second's worth; an empty bucket takes any
// one request, so a 2 MiB write goes at once and the next waits until
// the first has drained, as QEMU's leaky bucket does.
func newRateLimit(bps int64) *block.ThrottleGroup {
	if bps <= 0 {
		return nil
	}
	return block.NewThrottleGroup("img_convert", block.ThrottleLimits{BPSWrite: float64(bps)}, nil)
}

// throttle waits until the -r limit admits a write of n bytes.
func (c *converter) throttle(n int64) {
	if c.rate == nil {
		return
	}
	for d := c.rate.Admit(true, n); d > 0; d = c.rate.Admit(true, n) {
		time.Sleep(d)
	}
}
