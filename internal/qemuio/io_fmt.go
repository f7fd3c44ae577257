package qemuio

// qemu-io's number and report formats, for `ringblk io`: the size parser
// behind every offset and length (qemu_strtosz), the unit strings of its
// reports, its timing string, its result lines and its hexdump. Scripts
// and tests parse these lines, so they follow qemu-io 7.2 character for
// character.

import (
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// ioMaxRequest is the largest byte count one request may carry
// (BDRV_REQUEST_MAX_BYTES: INT_MAX rounded down to 512).
const ioMaxRequest = 2147483136

var (
	errNumSyntax = errors.New("syntax")
	errNumRange  = errors.New("range")
)

// parseIONum reads an offset or a length as qemu-io does: a decimal
// number (with an optional fraction when a unit follows, "1.5k") or a 0x
// hex integer, then an optional one-letter unit b, k, m, g, t, p or e in
// either case (powers of 1024). Values of 2^63 or more are out of range.
// Leading white space is skipped, as strtoull skips it (qemu-io splits
// a command at spaces only, so "read 0\t8k" has an operand "\t8k").
func parseIONum(s string) (int64, error) {
	p := strings.TrimLeft(s, " \t\n\v\f\r")
	if strings.HasPrefix(p, "+") {
		p = p[1:]
	}
	var mant float64
	var whole uint64
	hex, frac := false, false
	i := 0
	if strings.HasPrefix(p, "0x") || strings.HasPrefix(p, "0X") {
		hex = true
		i = 2
		j := i
		for i < len(p) && isHexDigit(p[i]) {
			i++
		}
		if i == j {
			return 0, errNumSyntax
		}
		v, err := strconv.ParseUint(p[j:i], 16, 64)
		if err != nil {
			return 0, errNumRange
		}
		whole = v
	} else {
		for i < len(p) && p[i] >= '0' && p[i] <= '9' {
			i++
		}
		if i == 0 {
			return 0, errNumSyntax
		}
		intEnd := i
		if i < len(p) && p[i] == '.' {
			frac = true
			i++
			for i < len(p) && p[i] >= '0' && p[i] <= '9' {
				i++
			}
		}
		v, err := strconv.ParseUint(p[:intEnd], 10, 64)
		if err != nil {
			return 0, errNumRange
		}
		whole = v
		if frac {
			f, err := strconv.ParseFloat(p[:i], 64)
			if err != nil {
				return 0, errNumSyntax
			}
			mant = f
		}
	}
	shift := uint(0)
	unit := false
	if i < len(p) {
		switch p[i] | 0x20 {
		case 'b':
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
		case 'e':
			shift = 60
		default:
			return 0, errNumSyntax
		}
		unit = shift > 0
		i++
	}
	if i != len(p) {
		return 0, errNumSyntax
	}
	if frac {
		// A fraction needs a unit that makes it whole bytes, as in QEMU.
		if !unit || hex {
			return 0, errNumSyntax
		}
		v := mant * float64(uint64(1)<<shift)
		if v >= math.MaxInt64 {
			return 0, errNumRange
		}
		return int64(v), nil
	}
	if whole > uint64(math.MaxInt64)>>shift {
		return 0, errNumRange
	}
	return int64(whole << shift), nil
}

func isHexDigit(c byte) bool {
	return c >= '0' && c <= '9' || c|0x20 >= 'a' && c|0x20 <= 'f'
}

// numError words a parseIONum failure as qemu-io prints it.
func numError(err error, arg string) string {
	if errors.Is(err, errNumRange) {
		return "Parsing error: argument too large -- " + arg
	}
	return "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- " + arg
}

// cvtstr renders a byte count or rate with a binary unit and three
// decimals, dropping ".000" (qemu-io's "64 KiB", "17.807 MiB", "0 bytes").
func cvtstr(v float64) string {
	units := []struct {
		shift uint
		name  string
	}{{60, " EiB"}, {50, " PiB"}, {40, " TiB"}, {30, " GiB"}, {20, " MiB"}, {10, " KiB"}}
	s, suffix := "", " bytes"
	for _, u := range units {
		if d := float64(uint64(1) << u.shift); v >= d {
			s, suffix = fmtC("%.3f", v/d), u.name
			break
		}
	}
	if s == "" {
		s = fmtC("%f", v)
	}
	if i := strings.Index(s, ".000"); i >= 0 {
		s = s[:i]
	}
	return s + suffix
}

// fmtC formats one float as C's printf would ("inf" rather than "+Inf").
func fmtC(format string, v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "inf"
	case math.IsInf(v, -1):
		return "-inf"
	case math.IsNaN(v):
		return "nan"
	}
	return fmt.Sprintf(format, v)
}

// timestr renders an elapsed time: "00.12 sec" under a second,
// "H:MM:SS.ss" from a second on, and always the latter for -C.
func timestr(d time.Duration, fixed bool) string {
	sec := int64(d / time.Second)
	frac := float64(d%time.Second) / float64(time.Second)
	if fixed || sec > 0 {
		return fmt.Sprintf("%d:%02d:%05.2f", sec/3600, sec/60%60, float64(sec%60)+frac)
	}
	return fmt.Sprintf("%05.2f sec", frac)
}

// printReport writes qemu-io's two result lines of one command
// ("read 65536/65536 bytes at offset 0" and the rate line), or with -C
// the one machine-readable line "bytes,ops,time,bytes/sec,ops/sec".
func printReport(w io.Writer, op string, d time.Duration, off, count, total int64, ops int, cflag bool) {
	if d <= 0 {
		d = time.Nanosecond
	}
	secs := d.Seconds()
	if cflag {
		fmt.Fprintf(w, "%d,%d,%s,%.3f,%.3f\n", total, ops, timestr(d, true), float64(total)/secs, float64(ops)/secs)
		return
	}
	fmt.Fprintf(w, "%s %d/%d bytes at offset %d\n", op, total, count, off)
	fmt.Fprintf(w, "%s, %d ops; %s (%s/sec and %.4f ops/sec)\n",
		cvtstr(float64(total)), ops, timestr(d, false), cvtstr(float64(total)/secs), float64(ops)/secs)
}

// dumpBuffer writes buf as qemu-io's -v hexdump: the offset, up to 16
// bytes in hex, then the same bytes as letters and digits (others '.').
func dumpBuffer(w io.Writer, buf []byte, off int64) {
	var b strings.Builder
	for i := 0; i < len(buf); i += 16 {
		line := buf[i:min(i+16, len(buf))]
		fmt.Fprintf(&b, "%08x:  ", off+int64(i))
		for _, c := range line {
			fmt.Fprintf(&b, "%02x ", c)
		}
		b.WriteByte(' ')
		for _, c := range line {
			if c >= '0' && c <= '9' || c|0x20 >= 'a' && c|0x20 <= 'z' {
				b.WriteByte(c)
			} else {
				b.WriteByte('.')
			}
		}
		b.WriteByte('\n')
		if b.Len() > 1<<16 {
			io.WriteString(w, b.String())
			b.Reset()
		}
	}
	io.WriteString(w, b.String())
}

// parsePattern reads a pattern byte as strtol(arg, 0) does: decimal,
// 0x hex or 0 octal, 0..255, nothing after it.
func parsePattern(arg string) (byte, bool) {
	if len(arg) > 1 && arg[0] == '0' && strings.ContainsAny(arg[1:2], "bBoO") || strings.Contains(arg, "_") {
		return 0, false // strtol knows neither 0b, 0o nor digit separators
	}
	v, err := strconv.ParseInt(arg, 0, 64)
	if err != nil || v < 0 || v > 255 {
		return 0, false
	}
	return byte(v), true
}
