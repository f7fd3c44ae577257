package format

import (
	"strconv"
	"strings"
)

// parseOptionNumber reads a number option as QEMU does (qemu_strtou64,
// base 0): leading white space, an optional sign, then a decimal, 0x hex
// or 0 octal integer; a minus sign negates modulo 2^64, as strtoull does
// ("-1" is 2^64-1, which a range check then refuses, iotest 112).
func parseOptionNumber(v string) (uint64, error) {
	s := strings.TrimLeft(v, " \t\n\v\f\r")
	neg := false
	if s != "" && (s[0] == '-' || s[0] == '+') {
		neg = s[0] == '-'
		s = s[1:]
	}
	if strings.ContainsRune(s, '_') || strings.HasPrefix(s, "0b") || strings.HasPrefix(s, "0B") ||
		strings.HasPrefix(s, "0o") || strings.HasPrefix(s, "0O") {
		return 0, strconv.ErrSyntax // Go-only spellings strtoull does not read
	}
	n, err := strconv.ParseUint(s, 0, 64)
	if err != nil {
		return 0, err
	}
	if neg {
		n = -n
	}
	return n, nil
}
