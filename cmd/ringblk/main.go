// Command ringblk is the operator's tool for ringblk: benchmarks today, and
// qemu-img/qemu-io style image commands as the drivers land.
package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"sort"

	"github.com/ringblk/ringblk/internal/servecmd"
)

type command struct {
	summary string
	run     func(args []string) int
}

var commands = map[string]command{
	"bench":      {"fio-compatible benchmark through the block layer (fio job files, fio JSON, --compare)", benchMain},
	"convert":    {"copy an image into a new raw or qcow2 image, sparse or compressed (qemu-img convert)", convertMain},
	"create":     {"create a raw or qcow2 image (qemu-img create)", createMain},
	"amend":      {"change a qcow2 image's options: compat, lazy_refcounts, size (qemu-img amend)", amendMain},
	"resize":     {"change an image's virtual size (qemu-img resize)", resizeMain},
	"io":         {"run qemu-io's commands (read, write, aio_*, map, …) on an image", ioMain},
	"info":       {"show an image's format, sizes, backing file and snapshots (qemu-img info)", infoMain},
	"check":      {"check a qcow2 image's metadata for leaks and corruptions (qemu-img check)", checkMain},
	"map":        {"show the allocation of an image's ranges over its backing chain (qemu-img map)", mapMain},
	"snapshot":   {"list, create, apply or delete a qcow2 image's internal snapshots (qemu-img snapshot)", snapshotMain},
	"compare":    {"compare the contents of two images (qemu-img compare)", compareMain},
	"nbd":        {"serve an image over NBD (qemu-nbd)", nbdMain},
	"measure":    {"compute the file size an image needs, new or converted (qemu-img measure)", measureMain},
	"ring-bench": {"random reads through ringblk's own io_uring ring (fio-style figures)", ringBenchMain},
	"serve":      {"a storage daemon speaking QMP: block nodes, IOThreads, transactions, NBD exports (qemu-storage-daemon)", servecmd.Main},
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: ringblk <command> [options]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-12s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(os.Stderr, "\nRun 'ringblk <command> --help' for the options of a command.")
}

// version is ringblk's release; the commit comes from the build
// (versionLine). Keep it equal to plugin.Version.
const version = "0.1.0-dev"

// commit may be set at link time (-ldflags "-X main.commit=$(git
// rev-parse --short=12 HEAD)") where the go command does not stamp the
// build with its VCS revision (-buildvcs=false, a worktree it cannot read).
var commit string

// versionLine is what --version prints: the release, the commit the
// binary was built from (with "-dirty" for uncommitted changes), and the
// Go release, from the build information the go command records.
func versionLine() string {
	rev, dirty := commit, ""
	goVersion := runtime.Version()
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if rev == "" {
					rev = s.Value
				}
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "-dirty"
				}
			}
		}
	}
	if rev == "" {
		rev = "unknown"
	}
	if len(rev) > 12 && rev != commit {
		rev = rev[:12] // a full vcs.revision; a stamped commit is used as given
	}
	return fmt.Sprintf("ringblk version %s (commit %s%s, %s)", version, rev, dirty, goVersion)
}

func main() { os.Exit(run(os.Args[1:])) }

// run is the command line: a command and its arguments, --help or
// --version. A mistake is one "ringblk: …" line and exit 1.
func run(args []string) int {
	if len(args) < 1 {
		fmt.Fprintln(os.Stderr, "ringblk: no command given (see 'ringblk --help')")
		return 1
	}
	name := args[0]
	switch name {
	case "-h", "--help", "help":
		usage()
		return 0
	case "-V", "--version", "version":
		fmt.Println(versionLine())
		return 0
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "ringblk: unknown command '%s' (see 'ringblk --help')\n", name)
		return 1
	}
	return cmd.run(args[1:])
}
