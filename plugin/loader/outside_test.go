package loader_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// TestOutsideHost builds examples/host — a module of its own that depends
// on ringblk through a replace — and, from that module, the plugin
// several ways: as the host is built, and with -race, -trimpath, other
// tags, and another version of golang.org/x/sys (a module both link).
// The host refuses every wrong one (and a C shared library and a missing
// file) with the loader's error naming the difference, then loads the
// right one in the same process and runs its checks through the host API:
// raw and qcow2 images, writes from several goroutines with eventfd
// completions, data read back, a drained section with I/O running, stats,
// the data read again in polled mode (RunLoop) and close. Each .so is built once.
func TestOutsideHost(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the outside host module and five plugins with the go tool (minutes); skipped with -short")
	}
	gotool := goTool(t)
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	ex := filepath.Join(root, "examples", "host")
	tmp := t.TempDir()
	env := append(os.Environ(), "CGO_ENABLED=1")
	goIn := func(dir string, args ...string) error {
		cmd := exec.Command(gotool, args...)
		cmd.Dir, cmd.Env = dir, env
		if out, err := cmd.CombinedOutput(); err != nil {
			return &buildError{args: args, err: err, out: string(out)}
		}
		return nil
	}
	hostBin := filepath.Join(tmp, "ringblkhost")
	if err := goIn(ex, "build", "-o", hostBin, "."); err != nil {
		t.Fatal(err)
	}
	plugin := func(dir, name string, flags ...string) (string, error) {
		so := filepath.Join(tmp, name+".so")
		args := append([]string{"build", "-buildmode=plugin"}, flags...)
		return so, goIn(dir, append(args, "-o", so, "github.com/ringblk/ringblk/plugin")...)
	}

	// Another version of x/sys: a copy of the module, its replace made
	// absolute, x/sys replaced by the release before (from the module
	// cache, or the module proxy). MVS cannot go below ringblk's own
	// requirement, so it takes a replace.
	other := filepath.Join(tmp, "other")
	os.Mkdir(other, 0o755)
	for _, f := range []string{"go.mod", "go.sum", "main.go"} {
		b, err := os.ReadFile(filepath.Join(ex, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(other, f), b, 0o644)
	}
	if err := goIn(other, "mod", "edit", "-replace", "github.com/ringblk/ringblk="+root, "-replace", "golang.org/x/sys=golang.org/x/sys@v0.48.0"); err != nil {
		t.Fatal(err)
	}
	sysErr := goIn(other, "mod", "download", "golang.org/x/sys@v0.48.0")

	type variant struct {
		name, dir string
		flags     []string
		want      string // the refusal must name this
		so        string
		err       error
	}
	vs := []*variant{
		{name: "good", dir: ex},
		{name: "race", dir: ex, flags: []string{"-race"}, want: "-race: plugin true, host false"},
		{name: "trimpath", dir: ex, flags: []string{"-trimpath"}, want: "-trimpath: plugin true, host false"},
		{name: "tags", dir: ex, flags: []string{"-tags=ringblk_other"}, want: "-tags: plugin ringblk_other, host (unset)"},
		{name: "xsys", dir: other, flags: []string{"-mod=mod"}, want: "module golang.org/x/sys: plugin v0.49.0 => golang.org/x/sys v0.48.0"},
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2)
	for _, v := range vs {
		if v.name == "xsys" && sysErr != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			v.so, v.err = plugin(v.dir, v.name, v.flags...)
		}()
	}
	wg.Wait()
	args := []string{"-dir", tmp}
	for _, v := range vs[1:] {
		if v.so == "" {
			continue
		}
		if v.err != nil {
			t.Fatalf("%s plugin: %v", v.name, v.err)
		}
		args = append(args, "-try", v.so)
	}
	if vs[0].err != nil {
		t.Fatalf("plugin: %v", vs[0].err)
	}
	libc := cLibrary(t)
	missing := filepath.Join(tmp, "missing.so")
	args = append(args, "-try", libc, "-try", missing, "-plugin", vs[0].so)
	out, err := exec.Command(hostBin, args...).CombinedOutput()
	t.Logf("ringblkhost %s:\n%s", strings.Join(args, " "), out)
	if err != nil {
		t.Fatalf("ringblkhost: %v", err)
	}
	refusals := map[string]string{}
	for _, part := range strings.Split(string(out), "refused ")[1:] {
		path, msg, _ := strings.Cut(part, ": ")
		refusals[path] = msg
	}
	for _, v := range vs[1:] {
		if v.so == "" {
			continue
		}
		if !strings.Contains(refusals[v.so], v.want) {
			t.Errorf("%s plugin: refusal does not name %q", v.name, v.want)
		}
	}
	if !strings.Contains(refusals[libc], "not a Go binary") {
		t.Errorf("C library: refusal %q", refusals[libc])
	}
	if !strings.Contains(refusals[missing], "cannot read it") {
		t.Errorf("missing file: refusal %q", refusals[missing])
	}
	for _, want := range []string{"raw: 1024 blocks written", "qcow2: 1024 blocks written", "drained section with I/O running", "qcow2: stats:",
		"raw: polled mode (RunLoop): 1024 blocks read", "qcow2: polled mode (RunLoop): 1024 blocks read", "PASS"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("host output lacks %q", want)
		}
	}
	// The recipe of docs/plugin.md in a fresh module: require, replace,
	// tool, tidy, build. Without the tool line tidy drops go.sum entries
	// the plugin needs.
	fresh := filepath.Join(tmp, "fresh")
	os.Mkdir(fresh, 0o755)
	os.WriteFile(filepath.Join(fresh, "main.go"), []byte("package main\n\nimport _ \"github.com/ringblk/ringblk/plugin/loader\"\n\nfunc main() {}\n"), 0o644)
	for _, args := range [][]string{
		{"mod", "init", "example.com/fresh"},
		{"mod", "edit", "-require", "github.com/ringblk/ringblk@v0.0.0-00010101000000-000000000000", "-replace", "github.com/ringblk/ringblk=" + root, "-tool", "github.com/ringblk/ringblk/plugin"},
		{"mod", "tidy"},
		{"build", "-buildmode=plugin", "-o", filepath.Join(tmp, "fresh.so"), "github.com/ringblk/ringblk/plugin"},
	} {
		if err := goIn(fresh, args...); err != nil {
			if args[1] == "tidy" {
				t.Skipf("all else passed; go mod tidy in a fresh module needs the module proxy (or a warm module cache), which failed: %v", err)
			}
			t.Fatalf("fresh module: %v", err)
		}
	}
	if sysErr != nil {
		t.Skipf("all else passed; the x/sys version case needs the module proxy, which failed: %v", sysErr)
	}
}

type buildError struct {
	args []string
	err  error
	out  string
}

func (e *buildError) Error() string {
	return "go " + strings.Join(e.args, " ") + ": " + e.err.Error() + "\n" + e.out
}
