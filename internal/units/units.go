// Package units parses the byte counts operators type: fio's and qemu-img's
// sizes (4k, 1G, 512m, 0x1000), all in powers of 1024.
package units

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ParseSize reads a byte count the way fio does with kb_base=1024: an
// integer (decimal or 0x hex) with an optional suffix k, m, g, t, p (any
// case, optionally followed by "i" and/or "b"), all powers of 1024.
func ParseSize(s string) (int64, error) {
	orig := s
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, errors.New("empty size")
	}
	if strings.HasSuffix(s, "%") {
		return 0, fmt.Errorf("percentage sizes (%q) are not implemented", orig)
	}
	if strings.HasPrefix(s, "0x") || strings.HasPrefix(s, "0X") {
		n, err := strconv.ParseInt(s[2:], 16, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("bad size %q", orig)
		}
		return n, nil
	}
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("bad size %q", orig)
	}
	n, err := strconv.ParseInt(s[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("bad size %q", orig)
	}
	suf := strings.ToLower(s[i:])
	shift := 0
	if suf != "" {
		switch suf[0] {
		case 'k':
			shift = 10
		case 'm':
			shift = 20
		case 'g':
			shift = 30
		case 't':
			shift = 40
		case 'p':
			shift = 50
		case 'b':
		default:
			return 0, fmt.Errorf("bad size suffix in %q (want k, m, g, t, p)", orig)
		}
		rest := suf
		if shift != 0 {
			rest = suf[1:]
		}
		if rest != "" && rest != "b" && rest != "i" && rest != "ib" {
			return 0, fmt.Errorf("bad size suffix in %q (want k, m, g, t, p)", orig)
		}
	}
	if n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("size %q overflows", orig)
	}
	return n << shift, nil
}
