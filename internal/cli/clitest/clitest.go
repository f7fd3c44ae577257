// Package clitest holds the helpers the command packages' tests share:
// qemu-img/qemu-io as an oracle, running a command in-process, and running
// the test binary again as the ringblk program (RunRingblk, Main).
package clitest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"reflect"
	"testing"
)

// Main is a command package's TestMain: run as the ringblk program when
// RunRingblk started this test binary (AsMainEnv set), the tests otherwise.
// run is the program: a command name and its arguments, the exit status;
// the after functions run once the tests are done (stopping a test
// cluster), and an error of theirs fails the run.
func Main(m *testing.M, run func(args []string) int, after ...func() error) {
	if os.Getenv(AsMainEnv) == "1" {
		os.Args = append([]string{"ringblk"}, os.Args[1:]...)
		os.Exit(run(os.Args[1:]))
	}
	code := m.Run()
	for _, f := range after {
		if err := f(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// Dispatch is a run for Main over a package's own commands.
func Dispatch(cmds map[string]func(args []string) int) func(args []string) int {
	return func(args []string) int {
		if len(args) == 0 {
			fmt.Fprintln(os.Stderr, "ringblk: no command given")
			return 1
		}
		f, ok := cmds[args[0]]
		if !ok {
			fmt.Fprintf(os.Stderr, "ringblk: command '%s' is not in this test binary\n", args[0])
			return 1
		}
		return f(args[1:])
	}
}

// NeedQemu skips the test unless qemu-img and the other tools named are
// installed.
func NeedQemu(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range append([]string{"qemu-img"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
}

// Qemu runs a qemu tool and returns stdout and its exit code.
func Qemu(t *testing.T, tool string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(tool, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("%s %v: %v", tool, args, err)
	}
	return out.String(), 0
}

// MustQemu runs a qemu tool, fails the test unless it exits 0, and returns
// its stdout.
func MustQemu(t *testing.T, tool string, args ...string) string {
	t.Helper()
	out, code := Qemu(t, tool, args...)
	if code != 0 {
		t.Fatalf("%s %v: exit %d", tool, args, code)
	}
	return out
}

// Ours runs one of our commands in-process.
func Ours(f func(args []string, stdout, stderr io.Writer) int, args ...string) (stdout, stderr string, code int) {
	var o, e bytes.Buffer
	code = f(args, &o, &e)
	return o.String(), e.String(), code
}

// ParseJSON parses s, a JSON object printed by what, or fails the test.
func ParseJSON(t *testing.T, what, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("%s: bad JSON: %v\n%s", what, err, s)
	}
	return m
}

// DiffMaps reports every key whose presence or value differs.
func DiffMaps(t *testing.T, what string, want, got map[string]any, skip ...string) {
	t.Helper()
	skipped := map[string]bool{}
	for _, k := range skip {
		skipped[k] = true
	}
	for k, w := range want {
		if skipped[k] {
			continue
		}
		g, ok := got[k]
		if !ok {
			t.Errorf("%s: key %q missing (qemu-img: %v)", what, k, w)
		} else if !reflect.DeepEqual(w, g) {
			t.Errorf("%s: %q = %v, qemu-img says %v", what, k, g, w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok && !skipped[k] {
			t.Errorf("%s: extra key %q = %v (qemu-img omits it)", what, k, g)
		}
	}
}

// AsMainEnv, set to 1, makes a test binary run as the ringblk program
// (Main).
const AsMainEnv = "RINGBLK_TEST_AS_MAIN"

// RunRingblk runs "ringblk args…" as a separate process: this test binary
// again, which Main makes the program (the package's TestMain must call it).
func RunRingblk(t *testing.T, stdin io.Reader, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), AsMainEnv+"=1")
	cmd.Stdin = stdin
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("ringblk %v: %v", args, err)
	}
	return o.String(), e.String(), code
}

// QemuIO runs qemu-io and returns stdout, stderr and the exit status.
func QemuIO(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command("qemu-io", args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("qemu-io %v: %v", args, err)
	}
	return o.String(), e.String(), code
}
