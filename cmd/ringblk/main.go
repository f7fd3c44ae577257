// Command ringblk is the operator's tool for ringblk: benchmarks today, and
// qemu-img/qemu-io style image commands as the drivers land.
package main

import (
	"fmt"
	"os"
	"sort"
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
	"measure":    {"compute the file size an image needs, new or converted (qemu-img measure)", measureMain},
	"ring-bench": {"random reads through ringblk's own io_uring ring (fio-style figures)", ringBenchMain},
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

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	name := os.Args[1]
	switch name {
	case "-h", "--help", "help":
		usage()
		os.Exit(0)
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "ringblk: unknown command %q\n", name)
		usage()
		os.Exit(2)
	}
	os.Exit(cmd.run(os.Args[2:]))
}
