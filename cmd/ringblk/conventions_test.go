package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
	"github.com/ringblk/ringblk/internal/imgcmd"
)

// Conventions every subcommand follows, checked on the real program (the
// test binary re-executed as ringblk, so exit codes, panics and os.Exit are
// the ones a user sees):
//
//   - --help exits 0 with the usage on stdout and nothing on stderr;
//   - a command-line mistake (unknown option, missing file, bad size
//     suffix, wrong -f format) prints exactly one line on stderr, starting
//     "ringblk:", and exits 1 — compare exits 2 for files it cannot open,
//     as qemu-img compare does, because its 1 means "the images differ";
//   - never a Go stack trace.
//
// TestConventionsExitCodesVsQemu runs the same mistakes through qemu-img
// and qemu-io and checks that their exit codes agree with ours, except
// where a case names the difference and why we differ.

func TestMain(m *testing.M) { clitest.Main(m, run, stopRBDCluster) }

// mistake is one wrong command line.
type mistake struct {
	// "unknown option", "missing file", "bad size", "unknown format",
	// "format mismatch", or "-U not taken" (-U on a command where qemu-img
	// has no -U either: create, resize, amend)
	kind string
	args []string // after the command name
	code int      // our exit code (0 means 1)
	// qemu is the tool that takes the same command line ("" when none
	// does); qemuDiffers says why our exit code is not qemu's, when not.
	qemu        string
	qemuDiffers string
}

// conventionCommands lists every subcommand with its mistakes. Images:
// q.qcow2 (1 MiB qcow2), r.raw (1 MiB raw); missing.qcow2 does not exist.
// Commands without a size operand or option have no "bad size" case;
// bench takes no image format.
var conventionCommands = []struct {
	name     string
	mistakes []mistake
}{
	{"create", []mistake{
		{kind: "unknown option", args: []string{"--no-such-option", "-f", "qcow2", "new.qcow2", "1M"}, qemu: "qemu-img"},
		{kind: "missing file", args: []string{"-f", "qcow2", "-b", "missing.qcow2", "-F", "qcow2", "new.qcow2"}, qemu: "qemu-img"},
		{kind: "bad size", args: []string{"-f", "qcow2", "new.qcow2", "10X"}, qemu: "qemu-img"},
		{kind: "unknown format", args: []string{"-f", "bogus", "new.img", "1M"}, qemu: "qemu-img"},
		{kind: "-U not taken", args: []string{"-U", "-f", "qcow2", "new.qcow2", "1M"}, qemu: "qemu-img"},
	}},
	{"install-links", []mistake{
		{kind: "unknown option", args: []string{"--no-such-option"}},
		{kind: "missing file", args: []string{"missing.dir"}},
	}},
	{"info", []mistake{
		{kind: "unknown option", args: []string{"--no-such-option", "q.qcow2"}, qemu: "qemu-img"},
		{kind: "missing file", args: []string{"missing.qcow2"}, qemu: "qemu-img"},
		{kind: "unknown format", args: []string{"-f", "bogus", "q.qcow2"}, qemu: "qemu-img"},
		{kind: "format mismatch", args: []string{"-f", "qcow2", "r.raw"}, qemu: "qemu-img"},
	}},
	{"check", []mistake{
		{kind: "unknown option", args: []string{"--no-such-option", "q.qcow2"}, qemu: "qemu-img"},
		{kind: "missing file", args: []string{"missing.qcow2"}, qemu: "qemu-img"},
		{kind: "unknown format", args: []string{"-f", "bogus", "q.qcow2"}, qemu: "qemu-img"},
		{kind: "format mismatch", args: []string{"-f", "qcow2", "r.raw"}, qemu: "qemu-img"},
	}},
	{"map", []mistake{
		{kind: "unknown option", args: []string{"--no-such-option", "q.qcow2"}, qemu: "qemu-img"},
		{kind: "missing file", args: []string{"missing.qcow2"}, qemu: "qemu-img"},
		{kind: "bad size", args: []string{"--start-offset=10X", "q.qcow2"}, qemu: "qemu-img"},
		{kind: "unknown format", args: []string{"-f", "bogus", "q.qcow2"}, qemu: "qemu-img"},
		{kind: "format mismatch", args: []string{"-f", "qcow2", "r.raw"}, qemu: "qemu-img"},
	}},
	{"compare", []mistake{
		{kind: "unknown option", args: []string{"--no-such-option", "q.qcow2", "r.raw"}, qemu: "qemu-img"},
		{kind: "missing file", args: []string{"q.qcow2", "missing.qcow2"}, code: 2, qemu: "qemu-img"},
		{kind: "unknown format", args: []string{"-f", "bogus", "q.qcow2", "r.raw"}, code: 2, qemu: "qemu-img"},
		{kind: "format mismatch", args: []string{"-f", "qcow2", "r.raw", "q.qcow2"}, code: 2, qemu: "qemu-img"},
	}},
	{"convert", []mistake{
		{kind: "unknown option", args: []string{"--no-such-option", "-O", "raw", "q.qcow2", "out.raw"}, qemu: "qemu-img"},
		{kind: "missing file", args: []string{"-O", "raw", "missing.qcow2", "out.raw"}, qemu: "qemu-img"},
		{kind: "bad size", args: []string{"-S", "10X", "-O", "raw", "q.qcow2", "out.raw"}, qemu: "qemu-img"},
		{kind: "unknown format", args: []string{"-O", "bogus", "q.qcow2", "out.raw"}, qemu: "qemu-img"},
		{kind: "format mismatch", args: []string{"-f", "qcow2", "-O", "raw", "r.raw", "out.raw"}, qemu: "qemu-img"},
	}},
	{"dd", []mistake{
		{kind: "unknown option", args: []string{"--no-such-option", "if=q.qcow2", "of=out.raw"}, qemu: "qemu-img"},
		{kind: "missing file", args: []string{"if=missing.qcow2", "of=out.raw"}, qemu: "qemu-img"},
		{kind: "bad size", args: []string{"bs=10X", "if=q.qcow2", "of=out.raw"}, qemu: "qemu-img"},
		{kind: "unknown format", args: []string{"-f", "bogus", "if=q.qcow2", "of=out.raw"}, qemu: "qemu-img"},
		{kind: "format mismatch", args: []string{"-f", "qcow2", "if=r.raw", "of=out.raw"}, qemu: "qemu-img"},
	}},
	{"resize", []mistake{
		{kind: "unknown option", args: []string{"--no-such-option", "q.qcow2", "2M"}, qemu: "qemu-img"},
		{kind: "missing file", args: []string{"missing.qcow2", "2M"}, qemu: "qemu-img"},
		{kind: "bad size", args: []string{"q.qcow2", "10X"}, qemu: "qemu-img"},
		{kind: "unknown format", args: []string{"-f", "bogus", "q.qcow2", "2M"}, qemu: "qemu-img"},
		{kind: "format mismatch", args: []string{"-f", "qcow2", "r.raw", "2M"}, qemu: "qemu-img"},
		{kind: "-U not taken", args: []string{"-U", "q.qcow2", "2M"}, qemu: "qemu-img"},
	}},
	{"snapshot", []mistake{
		{kind: "unknown option", args: []string{"--no-such-option", "-l", "q.qcow2"}, qemu: "qemu-img"},
		{kind: "missing file", args: []string{"-l", "missing.qcow2"}, qemu: "qemu-img"},
		// qemu-img 7.2 snapshot has no -f at all (it exits 1 on the
		// option itself); ringblk takes -f on every command that opens an
		// image, so the same exit code comes from a different check.
		{kind: "unknown format", args: []string{"-f", "bogus", "-l", "q.qcow2"}, qemu: "qemu-img"},
		{kind: "format mismatch", args: []string{"-f", "qcow2", "-l", "r.raw"}, qemu: "qemu-img"},
	}},
	{"bitmap", []mistake{
		{kind: "unknown option", args: []string{"--no-such-option", "--add", "q.qcow2", "b0"}, qemu: "qemu-img"},
		{kind: "missing file", args: []string{"--add", "missing.qcow2", "b0"}, qemu: "qemu-img"},
		{kind: "bad size", args: []string{"--add", "-g", "10X", "q.qcow2", "b0"}, qemu: "qemu-img"},
		{kind: "unknown format", args: []string{"--add", "-f", "bogus", "q.qcow2", "b0"}, qemu: "qemu-img"},
		{kind: "format mismatch", args: []string{"--add", "-f", "qcow2", "r.raw", "b0"}, qemu: "qemu-img"},
	}},
	{"measure", []mistake{
		{kind: "unknown option", args: []string{"--no-such-option", "-O", "qcow2", "q.qcow2"}, qemu: "qemu-img",
			qemuDiffers: "qemu-img 7.2 measure handles an unknown option like -h: the full help and exit 0, " +
				"so a script cannot tell the mistake from success; we report it like every other command"},
		{kind: "missing file", args: []string{"-O", "qcow2", "missing.qcow2"}, qemu: "qemu-img"},
		{kind: "bad size", args: []string{"-O", "qcow2", "--size", "10X"}, qemu: "qemu-img"},
		{kind: "unknown format", args: []string{"-O", "bogus", "q.qcow2"}, qemu: "qemu-img"},
		{kind: "format mismatch", args: []string{"-f", "qcow2", "-O", "qcow2", "r.raw"}, qemu: "qemu-img"},
	}},
	{"amend", []mistake{
		{kind: "unknown option", args: []string{"--no-such-option", "-o", "lazy_refcounts=on", "q.qcow2"}, qemu: "qemu-img"},
		{kind: "missing file", args: []string{"-o", "lazy_refcounts=on", "missing.qcow2"}, qemu: "qemu-img"},
		{kind: "bad size", args: []string{"-o", "size=10X", "q.qcow2"}, qemu: "qemu-img"},
		{kind: "unknown format", args: []string{"-f", "bogus", "-o", "lazy_refcounts=on", "q.qcow2"}, qemu: "qemu-img"},
		{kind: "format mismatch", args: []string{"-f", "qcow2", "-o", "lazy_refcounts=on", "r.raw"}, qemu: "qemu-img"},
		{kind: "-U not taken", args: []string{"-U", "-o", "lazy_refcounts=on", "q.qcow2"}, qemu: "qemu-img"},
	}},
	{"rebase", []mistake{
		{kind: "unknown option", args: []string{"--no-such-option", "-u", "-b", "", "q.qcow2"}, qemu: "qemu-img"},
		{kind: "missing file", args: []string{"-u", "-b", "", "missing.qcow2"}, qemu: "qemu-img"},
		{kind: "unknown format", args: []string{"-f", "bogus", "-u", "-b", "", "q.qcow2"}, qemu: "qemu-img"},
		{kind: "format mismatch", args: []string{"-f", "qcow2", "-u", "-b", "", "r.raw"}, qemu: "qemu-img"},
	}},
	{"commit", []mistake{
		{kind: "unknown option", args: []string{"--no-such-option", "q.qcow2"}, qemu: "qemu-img"},
		{kind: "missing file", args: []string{"missing.qcow2"}, qemu: "qemu-img"},
		{kind: "unknown format", args: []string{"-f", "bogus", "q.qcow2"}, qemu: "qemu-img"},
		{kind: "format mismatch", args: []string{"-f", "qcow2", "r.raw"}, qemu: "qemu-img"},
		{kind: "-U not taken", args: []string{"-U", "q.qcow2"}, qemu: "qemu-img"},
	}},
	{"io", []mistake{
		{kind: "unknown option", args: []string{"--no-such-option", "-c", "read 0 512", "q.qcow2"}, qemu: "qemu-io"},
		{kind: "missing file", args: []string{"-c", "read 0 512", "missing.qcow2"}, qemu: "qemu-io"},
		{kind: "unknown format", args: []string{"-f", "bogus", "-c", "read 0 512", "q.qcow2"}, qemu: "qemu-io"},
		{kind: "format mismatch", args: []string{"-f", "qcow2", "-c", "read 0 512", "r.raw"}, qemu: "qemu-io"},
	}},
	{"nbd", []mistake{
		{kind: "unknown option", args: []string{"--no-such-option", "-k", "n.sock", "q.qcow2"}, qemu: "qemu-nbd"},
		{kind: "missing file", args: []string{"-k", "n.sock", "missing.qcow2"}, qemu: "qemu-nbd"},
		{kind: "unknown format", args: []string{"-f", "bogus", "-k", "n.sock", "q.qcow2"}, qemu: "qemu-nbd"},
		{kind: "format mismatch", args: []string{"-f", "qcow2", "-k", "n.sock", "r.raw"}, qemu: "qemu-nbd"},
	}},
	{"serve", []mistake{
		{kind: "unknown option", args: []string{"--no-such-option"}, qemu: "qemu-storage-daemon"},
		{kind: "missing file", args: []string{"--blockdev", "driver=qcow2,node-name=x,file.driver=file,file.filename=missing.qcow2"}, qemu: "qemu-storage-daemon"},
		{kind: "unknown format", args: []string{"--blockdev", "driver=bogus,node-name=x,file.driver=file,file.filename=q.qcow2"}, qemu: "qemu-storage-daemon"},
		{kind: "format mismatch", args: []string{"--blockdev", "driver=qcow2,node-name=x,file.driver=file,file.filename=r.raw"}, qemu: "qemu-storage-daemon"},
	}},
	{"bench", []mistake{
		{kind: "unknown option", args: []string{"--no-such-option"}},
		{kind: "missing file", args: []string{"missing.fio"}},
		{kind: "bad size", args: []string{"--name=j", "--filename=b.dat", "--rw=read", "--size=10X"}},
	}},
}

// conventionImages makes q.qcow2 and r.raw in the current directory with
// our own create (the tests that need qemu make nothing with it).
func conventionImages(t *testing.T) {
	t.Helper()
	if _, stderr, code := clitest.Ours(imgcmd.Create, "-q", "-f", "qcow2", "q.qcow2", "1M"); code != 0 {
		t.Fatalf("create q.qcow2: exit %d: %s", code, stderr)
	}
	if err := os.WriteFile("r.raw", make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
}

func noStackTrace(t *testing.T, what, s string) {
	t.Helper()
	for _, mark := range []string{"panic:", "goroutine ", "runtime error", ".go:"} {
		if strings.Contains(s, mark) {
			t.Errorf("%s: looks like a stack trace (%q):\n%s", what, mark, s)
		}
	}
}

func TestConventionsHelp(t *testing.T) {
	t.Chdir(t.TempDir())
	if len(conventionCommands) != len(commands) {
		t.Errorf("conventionCommands has %d commands, main has %d: keep them in step", len(conventionCommands), len(commands))
	}
	for _, c := range conventionCommands {
		if _, ok := commands[c.name]; !ok {
			t.Errorf("%s: not a command of main", c.name)
		}
		for _, flag := range []string{"--help", "-h"} {
			stdout, stderr, code := clitest.RunRingblk(t, nil, c.name, flag)
			what := "ringblk " + c.name + " " + flag
			if code != 0 {
				t.Errorf("%s: exit %d, want 0 (stderr %q)", what, code, stderr)
			}
			if !strings.HasPrefix(stdout, "usage: ringblk "+c.name) {
				t.Errorf("%s: stdout does not start with the usage line:\n%s", what, stdout)
			}
			if stderr != "" {
				t.Errorf("%s: stderr not empty: %q", what, stderr)
			}
			noStackTrace(t, what, stdout+stderr)
		}
	}
}

func TestConventionsMistakes(t *testing.T) {
	t.Chdir(t.TempDir())
	conventionImages(t)
	kinds := map[string]int{}
	for _, c := range conventionCommands {
		for _, m := range c.mistakes {
			kinds[m.kind]++
			args := append([]string{c.name}, m.args...)
			what := fmt.Sprintf("ringblk %s (%s)", strings.Join(args, " "), m.kind)
			_, stderr, code := clitest.RunRingblk(t, strings.NewReader(""), args...)
			want := m.code
			if want == 0 {
				want = 1
			}
			if code != want {
				t.Errorf("%s: exit %d, want %d (stderr %q)", what, code, want, stderr)
			}
			lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
			if len(lines) != 1 || !strings.HasSuffix(stderr, "\n") || !strings.HasPrefix(lines[0], "ringblk: ") {
				t.Errorf("%s: want one line on stderr starting \"ringblk: \", got:\n%s", what, stderr)
			}
			noStackTrace(t, what, stderr)
		}
	}
	// Every command that names an image has the missing-file and
	// unknown-option cases; the table must not lose them.
	for _, c := range conventionCommands {
		have := map[string]bool{}
		for _, m := range c.mistakes {
			have[m.kind] = true
		}
		if !have["unknown option"] || !have["missing file"] {
			t.Errorf("%s: the table lacks an unknown-option or missing-file case", c.name)
		}
	}
	if kinds["bad size"] < 7 || kinds["unknown format"] < 10 || kinds["format mismatch"] < 9 || kinds["-U not taken"] < 3 {
		t.Errorf("mistake table lost cases: %v", kinds)
	}
}

// TestConventionsExitCodesVsQemu: for each mistake qemu-img or qemu-io
// can make too, their exit code is ours unless the case says why not.
func TestConventionsExitCodesVsQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	conventionImages(t)
	for _, c := range conventionCommands {
		for _, m := range c.mistakes {
			if m.qemu == "" {
				continue
			}
			if _, err := exec.LookPath(m.qemu); err != nil {
				t.Logf("%s is not installed (scripts/deps.sh installs it): %s %s not compared", m.qemu, c.name, m.kind)
				continue
			}
			qargs := m.args
			if m.qemu == "qemu-img" {
				qargs = append([]string{c.name}, m.args...)
			}
			what := fmt.Sprintf("%s %s (%s)", m.qemu, strings.Join(qargs, " "), m.kind)
			_, qcode := clitest.Qemu(t, m.qemu, qargs...)
			want := m.code
			if want == 0 {
				want = 1
			}
			switch {
			case qcode != want && m.qemuDiffers == "":
				t.Errorf("%s: exit %d, ours %d, and the case gives no reason", what, qcode, want)
			case qcode == want && m.qemuDiffers != "":
				t.Errorf("%s: exit %d like ours, but the case says they differ: %s", what, qcode, m.qemuDiffers)
			case qcode != want:
				t.Logf("%s: exit %d, ours %d: %s", what, qcode, want, m.qemuDiffers)
			}
			// Clean up what a successful qemu run may have made.
			os.Remove("new.qcow2")
			os.Remove("new.img")
			os.Remove("out.raw")
		}
	}
}
