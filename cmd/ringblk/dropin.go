package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/ringblk/ringblk/internal/cli"
	"github.com/ringblk/ringblk/internal/servecmd"
)

// Drop-in mode (issue #22, docs/design/iotests.md): run through a link
// whose base name is qemu-img, qemu-io or qemu-nbd, ringblk takes that
// tool's command line and prefixes its messages with the tool's name.

// imgSubcommands are the qemu-img subcommands ringblk implements, by
// qemu-img's name; each is the ringblk command of the same name.
var imgSubcommands = []string{"amend", "bitmap", "check", "commit", "compare", "convert", "create", "dd", "info", "map", "measure", "rebase", "resize", "snapshot"}

// dropinVersion is --version in drop-in mode: QEMU's first-line shape
// ("<tool> version X.Y.Z (…)") so scripts that parse it find a 7.2
// release, with ringblk's own version in the parenthesis.
func dropinVersion(tool string) string {
	return fmt.Sprintf("%s version %s (%s)", tool, cli.QEMUVersion, cli.VersionLine())
}

// qemuImg is "qemu-img [standard options] command [command options]".
func qemuImg(args []string) int {
	cli.Commit = commit
	cli.Prog = "qemu-img"
	tryHelp := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "qemu-img: "+format+"\n", a...)
		fmt.Fprintln(os.Stderr, "Try 'qemu-img --help' for more information")
		return 1
	}
	for len(args) > 0 && len(args[0]) > 1 && args[0][0] == '-' {
		switch args[0] {
		case "-h", "--help":
			fmt.Printf("%s\nusage: qemu-img [standard options] command [command options]\n"+
				"ringblk's qemu-img drop-in; commands:\n", dropinVersion("qemu-img"))
			for _, n := range imgSubcommands {
				fmt.Printf("  %-10s %s\n", n, commands[n].summary)
			}
			// The line scripts (and the iotests' _require_drivers)
			// read the image drivers from.
			fmt.Println("\nSupported formats: file null-co qcow2 raw")
			return 0
		case "-V", "--version":
			fmt.Println(dropinVersion("qemu-img"))
			return 0
		case "-q":
			// Quiet: the subcommands take -q themselves too; accepted here.
			args = args[1:]
		default:
			return tryHelp("unrecognized option '%s'", args[0])
		}
	}
	if len(args) == 0 {
		return tryHelp("Not enough arguments")
	}
	i := sort.SearchStrings(imgSubcommands, args[0])
	if i == len(imgSubcommands) || imgSubcommands[i] != args[0] {
		return tryHelp("Command not found: %s", args[0])
	}
	cli.Command = args[0] // qemu-img's getopt words some mistakes with it
	return commands[args[0]].run(args[1:])
}

// qemuIO is "qemu-io [options] [-c command]... [file]": the arguments are
// ringblk io's, which follow qemu-io's.
func qemuIO(args []string) int {
	cli.Commit = commit
	cli.Prog = "qemu-io"
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-V" || a == "--version" {
			fmt.Println(dropinVersion("qemu-io"))
			return 0
		}
	}
	return ioMain(args)
}

// qemuNBD is qemu-nbd's command line: ringblk nbd's, which follows it.
func qemuNBD(args []string) int {
	cli.Commit = commit
	cli.Prog = "qemu-nbd"
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-V" || a == "--version" {
			fmt.Println(dropinVersion("qemu-nbd"))
			return 0
		}
	}
	return commands["nbd"].run(args)
}

// qemuStorageDaemon is ringblk serve under qemu-storage-daemon's name:
// its messages start "qemu-storage-daemon: ", and -V prints the version
// line scripts parse.
func qemuStorageDaemon(args []string) int {
	cli.Commit = commit
	cli.Prog = "qemu-storage-daemon"
	servecmd.Prefix = "qemu-storage-daemon"
	for _, a := range args {
		if a == "-V" || a == "--version" {
			fmt.Println(dropinVersion("qemu-storage-daemon"))
			return 0
		}
	}
	return servecmd.Main(args)
}

// installLinksMain is "ringblk install-links DIR": DIR/qemu-img, qemu-io,
// qemu-nbd and qemu-storage-daemon become symbolic links to this binary.
func installLinksMain(args []string) int {
	if len(args) != 1 || args[0] == "" || args[0][0] == '-' {
		if len(args) == 1 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Println("usage: ringblk install-links DIR\n\n" +
				"Creates DIR/qemu-img, DIR/qemu-io, DIR/qemu-nbd and DIR/qemu-storage-daemon as\n" +
				"symbolic links to this binary; run through them, ringblk takes that tool's\n" +
				"command line and messages.\n" +
				"An existing link is replaced; any other file is left alone and is an error.")
			return 0
		}
		fmt.Fprintln(os.Stderr, "ringblk: install-links needs one directory (usage: ringblk install-links DIR)")
		return 1
	}
	self, err := os.Executable()
	if err == nil {
		self, err = filepath.EvalSymlinks(self)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "ringblk: install-links: cannot find this binary's path: %v\n", err)
		return 1
	}
	if err := installLinks(args[0], self); err != nil {
		fmt.Fprintf(os.Stderr, "ringblk: install-links: %v\n", err)
		return 1
	}
	return 0
}

// installLinks makes dir/<tool> a symbolic link to target for each of
// cli.Tools. A link already there is replaced; a file that is not a link
// is refused before any link is made.
func installLinks(dir, target string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	for _, tool := range cli.Tools {
		p := filepath.Join(dir, tool)
		fi, err := os.Lstat(p)
		if err == nil && fi.Mode()&fs.ModeSymlink == 0 {
			return fmt.Errorf("%s exists and is not a symbolic link; not overwriting it", p)
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	for _, tool := range cli.Tools {
		p := filepath.Join(dir, tool)
		tmp := p + ".ringblk-new"
		os.Remove(tmp)
		if err := os.Symlink(target, tmp); err != nil {
			return err
		}
		if err := os.Rename(tmp, p); err != nil {
			os.Remove(tmp)
			return err
		}
	}
	return nil
}
