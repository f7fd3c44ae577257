package qemuio

import (
	"bytes"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// Tests for `ringblk io` with qemu-io 7.2 as the oracle: the same commands
// run on two identical images, one through qemu-io and one through us;
// the output lines (timings aside), the exit status and the data written
// must agree.

// ioRun runs our io command in-process.
func ioRun(stdin string, args ...string) (stdout, stderr string, code int) {
	var o, e bytes.Buffer
	code = Run(args, strings.NewReader(stdin), &o, &e)
	return o.String(), e.String(), code
}

var (
	rateLine = regexp.MustCompile(`^(.*, \d+ ops); .*$`)
	csvLine  = regexp.MustCompile(`^(\d+,\d+),[0-9:.]+,[0-9.inf]+,[0-9.inf]+$`)
)

// normIO drops what legitimately differs between two runs: timings and
// rates, and the program's name in front of its own messages.
func normIO(s string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		l = rateLine.ReplaceAllString(l, "$1; TIME")
		l = csvLine.ReplaceAllString(l, "$1,TIME")
		l = strings.TrimPrefix(l, "qemu-io: ")
		l = strings.TrimPrefix(l, "ringblk: ")
		out = append(out, l)
	}
	return out
}

type ioCase struct {
	name  string
	fmt   string // raw or qcow2
	size  string
	flags []string // before the commands (-r, -n, …)
	cmds  []string
}

// compareIO runs c with both tools on fresh images a and b and compares
// stdout line by line, stderr as a set of lines, the exit status and the
// images' contents.
func compareIO(t *testing.T, c ioCase, prep func(img string)) {
	t.Helper()
	a, b := c.name+"-qemu."+c.fmt, c.name+"-ours."+c.fmt
	for _, img := range []string{a, b} {
		clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", c.fmt, img, c.size)
		if prep != nil {
			prep(img)
		}
	}
	args := append([]string{"-f", c.fmt}, c.flags...)
	for _, cmd := range c.cmds {
		args = append(args, "-c", cmd)
	}
	qo, qe, qc := clitest.QemuIO(t, append(args, a)...)
	oo, oe, oc := ioRun("", append(args, b)...)
	if qc != oc {
		t.Errorf("%s: exit status %d, qemu-io %d\nours:\n%s%s\nqemu-io:\n%s%s", c.name, oc, qc, oo, oe, qo, qe)
	}
	if w, g := normIO(qo), normIO(oo); !slices.Equal(w, g) {
		t.Errorf("%s: stdout differs\nours:\n%s\nqemu-io:\n%s", c.name, strings.Join(g, "\n"), strings.Join(w, "\n"))
	}
	we, ge := normIO(qe), normIO(oe)
	slices.Sort(we)
	slices.Sort(ge)
	if !slices.Equal(we, ge) {
		t.Errorf("%s: stderr differs\nours:\n%s\nqemu-io:\n%s", c.name, oe, qe)
	}
	if out, code := clitest.Qemu(t, "qemu-img", "compare", "-q", "-f", c.fmt, "-F", c.fmt, a, b); code != 0 {
		t.Errorf("%s: images differ after the commands (qemu-img compare exit %d) %s", c.name, code, out)
	}
	if c.fmt == "qcow2" {
		if out, code := clitest.Qemu(t, "qemu-img", "check", "-q", b); code != 0 {
			t.Errorf("%s: qemu-img check of our image: exit %d\n%s", c.name, code, out)
		}
	}
}

// TestIOMatchesQemuIO runs command sequences through both tools.
func TestIOMatchesQemuIO(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	basic := []string{"write -P 0xab 0 64k", "read -P 0xab 0 64k", "read -P 0xac 0 512", "read -v 0 40",
		"write -P 0x41 100 70", "read -v 90 90", "length", "map", "info", "discard 0 64k", "flush", "read -C 0 1k"}
	cases := []ioCase{
		{name: "raw-basic", fmt: "raw", size: "1M", cmds: basic},
		{name: "qcow2-basic", fmt: "qcow2", size: "1M", cmds: append(basic,
			"write -z 64k 64k", "write -z -u 128k 64k", "write -f -P 3 192k 4k", "write -P 7 300k 1000",
			"map", "read -P 0 64k 128k", "read -P 7 300k 1000", "info")},
		{name: "qcow2-unaligned", fmt: "qcow2", size: "3M", cmds: []string{
			"write -P 1 1 511", "write -P 2 65535 2", "write -P 3 1M 1M", "read -P 1 1 511", "read -P 2 65535 2",
			"read -P 3 1M 1M", "read -P 0 0 1", "map", "discard 1M 64k", "map", "write -c 2M 64k", "read -P 0xcd 2M 64k"}},
		{name: "qcow2-big", fmt: "qcow2", size: "5G", cmds: []string{
			"write -P 9 4G 64k", "read -P 9 4G 64k", "length", "map", "info", "write -z 4G 32k", "read -P 0 4G 32k"}},
		{name: "raw-numbers", fmt: "raw", size: "1M", cmds: []string{
			"write -q -P 0x5a 0 4k", "read 0x10 0x10", "read 1.5k 1", "read 1b 1", "read 1K 1", "read 010 1", "r -q 0 1",
			"w -q 0 1", "l", "f", "d -q 0 512", "i", "read -P 0x5a -s 16 -l 16 0 64", "read 1M 0", "read -v 0 0",
			"read 0 16 -v"}},
		{name: "raw-quiet", fmt: "raw", size: "1M", cmds: []string{"write -q 0 1", "read -q 0 1", "discard -q 0 512",
			"discard -C 0 512", "write -C 0 512"}},
		{name: "raw-readonly", fmt: "raw", size: "1M", flags: []string{"-r"}, cmds: []string{"read 0 4k", "length"}},
		{name: "raw-nocache", fmt: "raw", size: "1M", flags: []string{"-n"}, cmds: []string{
			"write -P 4 1 1", "read -P 4 1 1", "write -P 5 4096 4096", "read -P 5 4096 4096"}},
		// The iotests' own command line: --cache MODE --aio MODE -f FMT.
		{name: "iotests-flags", fmt: "qcow2", size: "1M", flags: []string{"--cache", "writeback", "--aio", "threads"}, cmds: []string{
			"write -P 4 0 4k", "read -P 4 0 4k"}},
		{name: "aio-modes", fmt: "raw", size: "1M", flags: []string{"-i", "io_uring", "-k", "--aio=native", "-n"}, cmds: []string{"read 0 4k"}},
		// readv/writev (004 and many more): vectors, a pattern check
		// that fails the command, a range past the end.
		{name: "vector-sync", fmt: "qcow2", size: "1M", cmds: []string{
			"writev -P 0x11 512 1k 3k 512", "readv -P 0x11 512 1k 3k 512", "readv -P 0x12 512 512", "readv -v 500 20 20",
			"writev -q -P 0x22 1M 512", "readv 1023k 512 1k", "writev -C 0 512", "readv -q 0 4k", "read -P 0x11 1k 1k"}},
		// close (032) and truncate (025): outstanding aio reported at
		// close, no file afterwards; growth reads back as zeroes.
		{name: "close", fmt: "qcow2", size: "1M", cmds: []string{"aio_write -P 3 0 64k", "close", "read 0 1", "length", "help close"}},
		{name: "truncate-raw", fmt: "raw", size: "1M", cmds: []string{"write -P 5 0 4k", "truncate 3M", "length",
			"read -P 0 1M 2M", "truncate x", "truncate -m bogus 1", "truncate 1M", "length", "read -P 5 0 4k"}},
		{name: "truncate-qcow2", fmt: "qcow2", size: "1M", cmds: []string{"write -P 6 0 4k", "truncate 3M", "length",
			"read -P 0 1M 2M", "read -P 6 0 4k"}},
		// reopen (187): -r/-w switch writability; bad combinations.
		{name: "reopen-rw", fmt: "qcow2", size: "1M", flags: []string{"-r"}, cmds: []string{"write 0 64k", "reopen -w",
			"write -P 7 0 64k", "reopen -r", "write 0 64k", "read -P 7 0 64k", "reopen -r -w", "reopen -c bogus", "reopen -c none", "read -P 7 0 4k"}},
		{name: "aio-at-flush", fmt: "raw", size: "1M", cmds: []string{
			"aio_write -P 5 0 4k", "length", "aio_flush", "read -P 5 0 4k"}},
		{name: "aio-at-exit", fmt: "qcow2", size: "1M", cmds: []string{"write -q -P 6 0 4k", "aio_read -P 6 0 4k", "length"}},
		{name: "aio-mismatch", fmt: "raw", size: "1M", cmds: []string{"aio_read -P 6 0 4k", "aio_flush"}},
		{name: "aio-vector", fmt: "qcow2", size: "1M", cmds: []string{"aio_write -P 8 0 4k 2k", "aio_flush", "read -P 8 0 6k",
			"aio_read -v 0 20", "aio_flush", "aio_write -z 0 4k", "aio_flush", "read -P 0 0 4k", "aio_read -q 0 1", "aio_flush"}},
		{name: "aio-fail", fmt: "raw", size: "1M", cmds: []string{"aio_read 0 2M", "length"}},
		{name: "aio-invalid", fmt: "raw", size: "1M", cmds: []string{"aio_read -i 0 1", "aio_write -i 0 1"}},
		// sleep (077): waits while aio requests run; bad numbers. The
		// aio_write's line prints when it completes: 500 ms lets it on a
		// loaded machine, on both sides, before the read's line.
		{name: "sleep", fmt: "raw", size: "1M", cmds: []string{"aio_write -P 9 0 4k", "sleep 500", "read -P 9 0 4k",
			"sleep 0x1", "sleep x", "sleep -1", "sleep 1k"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { compareIO(t, c, nil) })
	}
}

// TestIOErrorsMatchQemuIO: one failing (or edge) command per run, so each
// exit status is compared on its own.
func TestIOErrorsMatchQemuIO(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	cmds := []string{
		"read 0 2M", "read 2M 0", "read 1M 1", "write 1M 512", "write 2M 0", "discard 0 2M", "discard 2M 0",
		"bogus", "read", "aio_read", "aio_read 0", "read x 1", "read 0 1x", "read 0.5 1", "read 0 16E", "read 0 8E",
		"read 0 4G", "read 1e 1", "write 0 2147483137", "discard 0 4G", "discard 0 x", "write -u 0 1", "write -n 0 4k",
		"write -z -P 1 0 4k", "write -s nonexist 0 4k", "read -P 300 0 1", "read -P x 0 1", "read -P 0x1g 0 1",
		"read -P 010 0 1", "read -x 0 1", "read 0 1 2", "read 0 16 -P", "write 0 -1", "flush 1", "length 3", "info x",
		"map x", "aio_flush x", "read -s 1 0 4k", "read -P 1 -s 1 -l 4k 0 4k", "read -P 1 -s 1 -l 2 0 4k",
		"read -l x 0 1", "aio_write -z -P 1 0 4k", "aio_write -u 0 4k", "aio_write -z 0 4k 4k", "aio_read 0 x",
		"write -b -z 0 4k", "write -c -f 0 64k", "write -c 1 512", "read -P 1 0 1", "",
		"read --help 0 1", "read -h 0 1", "write -q -- 0 1", "read -Pq 0 1",
	}
	for i, cmd := range cmds {
		c := ioCase{name: "e" + string(rune('a'+i%26)) + string(rune('a'+i/26)), fmt: "raw", size: "1M", cmds: []string{cmd}}
		t.Run(strings.ReplaceAll(cmd, " ", "_"), func(t *testing.T) { compareIO(t, c, nil) })
	}
	// Writes to an image opened read-only fail before any I/O.
	for i, cmd := range []string{"write 0 1", "discard 0 512", "aio_write 0 1"} {
		c := ioCase{name: "ro" + string(rune('a'+i)), fmt: "qcow2", size: "1M", flags: []string{"-r"}, cmds: []string{cmd}}
		t.Run("readonly_"+strings.ReplaceAll(cmd, " ", "_"), func(t *testing.T) { compareIO(t, c, nil) })
	}
}

// TestIOBackingChainMatchesQemuIO: reads fall through to the backing
// file, map shows only what the overlay allocates, and writes copy on
// write, as in qemu-io.
func TestIOBackingChainMatchesQemuIO(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	for _, base := range []string{"raw", "qcow2"} {
		bname := "base-" + base + "." + base
		clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", base, bname, "4M")
		if _, _, code := clitest.QemuIO(t, "-f", base, "-c", "write -P 1 0 1M", "-c", "write -P 2 3M 512k", bname); code != 0 {
			t.Fatalf("qemu-io: cannot fill %s", bname)
		}
		c := ioCase{name: "over-" + base, fmt: "qcow2", size: "4M", cmds: []string{
			"map", "read -P 1 0 1M", "read -P 2 3M 512k", "read -P 0 1M 2M", "write -P 3 512k 4k",
			"read -P 1 0 512k", "read -P 3 512k 4k", "read -P 1 516k 60k", "map", "write -z 3M 64k", "map",
			"read -P 0 3M 64k", "read -P 2 3136k 448k"}}
		t.Run(c.name, func(t *testing.T) {
			compareIO(t, c, func(img string) {
				clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", bname, "-F", base, img, "4M")
			})
		})
	}
}

// TestIOCrossData: what one tool writes, the other reads back, checked by
// the reader's own pattern verification.
func TestIOCrossData(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	writes := []string{"write -P 0x11 0 64k", "write -P 0x22 65537 3000", "write -P 0x33 1M 192k", "write -z 1088k 64k",
		"write -P 0x44 2097151 1"}
	reads := []string{"read -P 0x11 0 64k", "read -P 0x22 65537 3000", "read -P 0x33 1M 64k",
		"read -P 0 1088k 64k", "read -P 0x33 1152k 64k", "read -P 0x44 2097151 1", "read -P 0 68537 1000"}
	for _, f := range []string{"raw", "qcow2"} {
		for _, ringblkWrites := range []bool{true, false} {
			img := "x." + f
			clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", f, img, "2M")
			wargs, rargs := []string{"-f", f}, []string{"-f", f}
			for _, w := range writes {
				wargs = append(wargs, "-c", w)
			}
			for _, r := range reads {
				rargs = append(rargs, "-c", r)
			}
			var out string
			var code int
			if ringblkWrites {
				if o, e, c := ioRun("", append(wargs, img)...); c != 0 {
					t.Fatalf("%s: ringblk io writes failed (%d): %s%s", f, c, o, e)
				}
				out, _, code = clitest.QemuIO(t, append(rargs, img)...)
			} else {
				if o, e, c := clitest.QemuIO(t, append(wargs, img)...); c != 0 {
					t.Fatalf("%s: qemu-io writes failed (%d): %s%s", f, c, o, e)
				}
				out, _, code = ioRun("", append(rargs, img)...)
			}
			if code != 0 || strings.Contains(out, "verification failed") || strings.Count(out, "read ") != len(reads) {
				t.Errorf("%s (ringblk writes: %v): reader exit %d\n%s", f, ringblkWrites, code, out)
			}
			if f == "qcow2" {
				if out, code := clitest.Qemu(t, "qemu-img", "check", "-q", img); code != 0 {
					t.Errorf("qcow2: check after writes: exit %d %s", code, out)
				}
			}
		}
	}
}

// TestIOFormatsMatchQemuIO checks the number parser and the report
// formats against values qemu-io 7.2 prints for the same inputs.
func TestIOFormatsMatchQemuIO(t *testing.T) {
	nums := map[string]int64{"0": 0, "512": 512, "4k": 4096, "4K": 4096, "1.5k": 1536, "1.k": 1024, "1b": 1,
		"0x10": 16, "0x10k": 16384, "010": 10, "+5": 5, "1M": 1 << 20, "1G": 1 << 30, "1T": 1 << 40, "1P": 1 << 50,
		"1E": 1 << 60, "1.5E": 3 << 59, "9223372036854775807": 1<<63 - 1,
		"\t8k": 8192, "\t0x10": 16, "\t+5": 5} // leading white space: iotest 003
	for s, want := range nums {
		if got, err := parseIONum(s); err != nil || got != want {
			t.Errorf("parseIONum(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	bad := map[string]string{"x": "non-numeric", "1x": "non-numeric", "0.5": "non-numeric", "1.5b": "non-numeric",
		"0x": "non-numeric", ".5k": "non-numeric", "1e3": "non-numeric", "1kb": "non-numeric", "1KiB": "non-numeric",
		"0x1.5k": "non-numeric", "": "non-numeric", "-1": "non-numeric", "8k\t": "non-numeric",
		"9223372036854775808": "too large", "8E": "too large", "16E": "too large"}
	for s, kind := range bad {
		_, err := parseIONum(s)
		if err == nil || !strings.Contains(numError(err, s), kind) {
			t.Errorf("parseIONum(%q): error %v, want %q", s, err, kind)
		}
	}
	strs := map[float64]string{0: "0 bytes", 1: "1 bytes", 40: "40 bytes", 1000: "1000 bytes", 65536: "64 KiB",
		1 << 20: "1 MiB", 960 << 10: "960 KiB", 512 << 20: "512 MiB", 1 << 30: "1 GiB", 384 << 10: "384 KiB",
		0.484064: "0.484064 bytes", 308940.8: "301.700 KiB", 18671943.68: "17.807 MiB", 1536: "1.500 KiB"}
	for v, want := range strs {
		if got := cvtstr(v); got != want {
			t.Errorf("cvtstr(%v) = %q, want %q", v, got, want)
		}
	}
	times := []struct {
		d     time.Duration
		fixed bool
		want  string
	}{{0, false, "00.00 sec"}, {150 * time.Millisecond, false, "00.15 sec"}, {1500 * time.Millisecond, false, "0:00:01.50"},
		{61570 * time.Millisecond, false, "0:01:01.57"}, {150 * time.Millisecond, true, "0:00:00.15"},
		{2*time.Hour + 21*time.Minute + 1690*time.Millisecond, false, "2:21:01.69"}}
	for _, c := range times {
		if got := timestr(c.d, c.fixed); got != c.want {
			t.Errorf("timestr(%v, %v) = %q, want %q", c.d, c.fixed, got, c.want)
		}
	}
	var b bytes.Buffer
	dumpBuffer(&b, append(bytes.Repeat([]byte{0x41}, 16), 0, '9', 'z', '.', 0xff), 0x20)
	want := "00000020:  41 41 41 41 41 41 41 41 41 41 41 41 41 41 41 41  AAAAAAAAAAAAAAAA\n" +
		"00000030:  00 39 7a 2e ff  .9z..\n"
	if b.String() != want {
		t.Errorf("dumpBuffer:\n%s\nwant:\n%s", b.String(), want)
	}
	for s, want := range map[string]int{"0": 0, "255": 255, "0xff": 255, "010": 8, "0x41": 0x41, "256": -1, "-1": -1,
		"x": -1, "0x1g": -1, "0b1": -1, "1_0": -1, "": -1} {
		got, ok := parsePattern(s)
		if want < 0 && ok || want >= 0 && (!ok || int(got) != want) {
			t.Errorf("parsePattern(%q) = %d, %v; want %d", s, got, ok, want)
		}
	}
}

// TestIOBadArguments: every mistake on the command line is one line on
// stderr and exit status 1, never a stack trace.
func TestIOBadArguments(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := os.WriteFile("r.raw", make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir("dir", 0o755); err != nil {
		t.Fatal(err)
	}
	cases := map[string][]string{
		"unknown option":      {"-x", "-c", "length", "r.raw"},
		"unknown long option": {"--bogus", "r.raw"},
		"missing file":        {"-f", "raw", "-c", "length", "nonexist.img"},
		"probed missing file": {"-c", "length", "nonexist.img"},
		"directory":           {"-f", "raw", "-c", "length", "dir"},
		"wrong format":        {"-f", "qcow2", "-c", "length", "r.raw"},
		"unknown format":      {"-f", "vmdk", "-c", "length", "r.raw"},
		"extra operand":       {"-f", "raw", "-c", "length", "r.raw", "more"},
		"force-share rw":      {"-U", "-f", "raw", "-c", "length", "r.raw"},
		"bad cache":           {"-f", "raw", "-t", "bogus", "-c", "length", "r.raw"},
		"bad null option":     {"-f", "null", "-o", "bogus=1", "-c", "length", "x"},
		"bad null size":       {"-f", "null", "-o", "size=12Q", "-c", "length", "x"},
		"missing -c value":    {"-f", "raw", "r.raw", "-c"},
		"size without null":   {"-f", "raw", "-o", "size=1M", "-c", "length", "r.raw"},
		"bad discard mode":    {"-f", "raw", "-d", "sometimes", "-c", "length", "r.raw"},
		"bad aio mode":        {"-f", "raw", "--aio", "posix", "-c", "length", "r.raw"},
		"native aio cached":   {"-f", "raw", "-i", "native", "-c", "length", "r.raw"},
	}
	for name, args := range cases {
		out, errs, code := ioRun("", args...)
		lines := strings.Split(strings.TrimRight(errs, "\n"), "\n")
		if code != 1 || len(lines) != 1 || !strings.HasPrefix(lines[0], "ringblk: ") || out != "" {
			t.Errorf("%s: %v: exit %d, stdout %q, stderr %q; want exit 1 and one 'ringblk: ' line", name, args, code, out, errs)
		}
		if strings.Contains(errs, "panic") || strings.Contains(errs, "goroutine") {
			t.Errorf("%s: stack trace: %s", name, errs)
		}
	}
	if _, errs, _ := ioRun("", "-f", "raw", "-k", "-c", "length", "r.raw"); !strings.Contains(errs, "aio=native was specified, but it requires cache.direct=on") {
		t.Errorf("-k without -n: %q, want qemu-io's cache.direct refusal", errs)
	}
	if _, errs, _ := ioRun("", "-f", "raw", "-c", "length", "nonexist.img"); !strings.Contains(errs, "nonexist.img") ||
		!strings.Contains(errs, "No such file or directory") {
		t.Errorf("missing file: %q does not name the file and the cause", errs)
	}
}

// TestIOHelp: --help prints the usage on stdout with exit status 0.
func TestIOHelp(t *testing.T) {
	for _, h := range []string{"--help", "-h"} {
		out, errs, code := ioRun("", h)
		if code != 0 || !strings.HasPrefix(out, "usage: ringblk io ") || errs != "" {
			t.Errorf("io %s: exit %d, stderr %q, stdout starts %q", h, code, errs, out[:min(len(out), 40)])
		}
		for _, c := range []string{"aio_read", "aio_write", "aio_flush", "discard", "map", "info", "length"} {
			if !strings.Contains(out, c) {
				t.Errorf("io %s: no mention of %s", h, c)
			}
		}
	}
}

// TestIOCommandsFromStdin: without -c, commands come from standard input
// until quit; a failed one makes the exit status 1.
func TestIOCommandsFromStdin(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := os.WriteFile("r.raw", make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errs, code := ioRun("write -q -P 7 0 4k\nread -P 7 0 4k\nquit\nread 0 1\n", "-f", "raw", "r.raw")
	if code != 0 || strings.Count(out, "read 4096/4096 bytes at offset 0\n") != 1 || strings.Contains(out, "read 1/1") {
		t.Errorf("stdin commands: exit %d\n%s%s", code, out, errs)
	}
	data, err := os.ReadFile("r.raw")
	if err != nil || !allBytes(data[:4096], 7) || !allBytes(data[4096:], 0) {
		t.Errorf("stdin commands: the write did not land (err %v)", err)
	}
	_, errs, code = ioRun("read -P 8 0 4k\nlength\n", "-f", "raw", "r.raw")
	if code != 1 {
		t.Errorf("stdin with a failing pattern check: exit %d, want 1 (%s)", code, errs)
	}
}

// TestIONullFormat: a null image has the size -o gives it; reads leave
// the buffer as it was (qemu's null-co without read-zeroes) and writes
// succeed, as qemu-io shows on null-co.
func TestIONullFormat(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	cmds := []string{"length", "read -P 0 0 4k", "read -P 0xab 0 4k", "write 1M 64k", "read 4M 1", "read 4M 0",
		"aio_read 0 4k", "aio_flush", "flush"}
	var args []string
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	qo, _, qc := clitest.QemuIO(t, append(args, `json:{"driver":"null-co","size":4194304}`)...)
	oo, oe, oc := ioRun("", append(append([]string{"-f", "null", "-o", "size=4M"}, args...), "null-co://")...)
	if w, g := normIO(qo), normIO(oo); oc != qc || !slices.Equal(w, g) {
		t.Errorf("null: exit %d (qemu-io %d)\n%s\nqemu-io:\n%s\n%s", oc, qc, strings.Join(g, "\n"), strings.Join(w, "\n"), oe)
	}
}
