// Command ringblk is the operator's tool for ringblk: the benchmark,
// qemu-img and qemu-io style image commands, an NBD server and a storage
// daemon. It is a dispatcher: each command lives in its own package under
// internal/ (imgcmd, qemuio, nbdcmd, benchcmd, servecmd; shared
// conventions in internal/cli).
package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/ringblk/ringblk/internal/benchcmd"
	"github.com/ringblk/ringblk/internal/cli"
	"github.com/ringblk/ringblk/internal/imgcmd"
	"github.com/ringblk/ringblk/internal/nbdcmd"
	"github.com/ringblk/ringblk/internal/qemuio"
	"github.com/ringblk/ringblk/internal/servecmd"
)

type command struct {
	summary string
	run     func(args []string) int
}

// std runs an image command on the process's stdout and stderr.
func std(f func(args []string, stdout, stderr io.Writer) int) func([]string) int {
	return func(args []string) int { return f(args, os.Stdout, os.Stderr) }
}

var commands = map[string]command{
	"bench":         {"fio-compatible benchmark through the block layer (fio job files, fio JSON, --compare)", benchcmd.Main},
	"convert":       {"copy an image into a new raw or qcow2 image, sparse or compressed (qemu-img convert)", std(imgcmd.Convert)},
	"dd":            {"copy blocks of an image into a new image, dd(1)-style (qemu-img dd)", std(imgcmd.DD)},
	"create":        {"create a raw or qcow2 image (qemu-img create)", std(imgcmd.Create)},
	"amend":         {"change a qcow2 image's options: compat, lazy_refcounts, size (qemu-img amend)", std(imgcmd.Amend)},
	"resize":        {"change an image's virtual size (qemu-img resize)", std(imgcmd.Resize)},
	"io":            {"run qemu-io's commands (read, write, aio_*, map, …) on an image", ioMain},
	"info":          {"show an image's format, sizes, backing file and snapshots (qemu-img info)", std(imgcmd.Info)},
	"check":         {"check a qcow2 image's metadata for leaks and corruptions (qemu-img check)", std(imgcmd.Check)},
	"map":           {"show the allocation of an image's ranges over its backing chain (qemu-img map)", std(imgcmd.Map)},
	"bitmap":        {"add, remove, clear, enable, disable or merge a qcow2 image's persistent dirty bitmaps (qemu-img bitmap)", std(imgcmd.Bitmap)},
	"snapshot":      {"list, create, apply or delete a qcow2 image's internal snapshots (qemu-img snapshot)", std(imgcmd.Snapshot)},
	"compare":       {"compare the contents of two images (qemu-img compare)", std(imgcmd.Compare)},
	"commit":        {"write an image's data into its backing file and empty it unless -d (qemu-img commit)", std(imgcmd.Commit)},
	"rebase":        {"change an image's backing file, keeping its content unless -u (qemu-img rebase)", std(imgcmd.Rebase)},
	"nbd":           {"serve an image over NBD (qemu-nbd)", nbdcmd.Main},
	"measure":       {"compute the file size an image needs, new or converted (qemu-img measure)", std(imgcmd.Measure)},
	"serve":         {"a storage daemon speaking QMP: block nodes, IOThreads, transactions, NBD exports (qemu-storage-daemon)", servecmd.Main},
	"install-links": {"create qemu-img, qemu-io, qemu-nbd and qemu-storage-daemon links to this binary in a directory (drop-in mode)", installLinksMain},
}

func ioMain(args []string) int { return qemuio.Run(args, os.Stdin, os.Stdout, os.Stderr) }

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

// commit may be set at link time (-ldflags "-X main.commit=$(git
// rev-parse --short=12 HEAD)") where the go command does not stamp the
// build with its VCS revision (-buildvcs=false, a worktree it cannot read).
// run hands it to cli.Commit, which --version prints.
var commit string

func main() { os.Exit(runAs(os.Args[0], os.Args[1:])) }

// runAs runs the program under the name it was started as: through a link
// named qemu-img, qemu-io, qemu-nbd or qemu-storage-daemon it is that tool (dropin.go), else it
// is ringblk's own command line.
func runAs(argv0 string, args []string) int {
	switch filepath.Base(argv0) {
	case "qemu-img":
		return qemuImg(args)
	case "qemu-io":
		return qemuIO(args)
	case "qemu-nbd":
		return qemuNBD(args)
	case "qemu-storage-daemon":
		return qemuStorageDaemon(args)
	}
	return run(args)
}

// run is the command line: a command and its arguments, --help or
// --version. A mistake is one "ringblk: …" line and exit 1.
func run(args []string) int {
	cli.Commit = commit
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
		fmt.Println(cli.VersionLine())
		return 0
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "ringblk: unknown command '%s' (see 'ringblk --help')\n", name)
		return 1
	}
	return cmd.run(args[1:])
}
