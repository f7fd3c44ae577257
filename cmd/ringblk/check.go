package main

import (
	"fmt"
	"io"
	"os"
	"strings"
)

const checkHelp = `usage: ringblk check [-f fmt] [--output=human|json] [-q] FILE

Check a qcow2 image's metadata for consistency, with qemu-img check's
counts, output and exit codes:

  0   no errors (consistent)
  1   the check could not be done (bad arguments, unreadable image)
  2   corruptions found
  3   leaked clusters only (wasted space, no harm to data)
  63  the format does not support checks (raw)

  -f fmt           image format (raw, qcow2); without it the file is probed
  --output=FMT     human (default) or json
  -q, --quiet      print nothing; the exit code tells the result
  -r leaks|all     repair: not supported yet
  -U, --force-share
                   accepted for compatibility (the image is only read)
  -h, --help       this help
`

var checkSpec = optSpec{
	short: map[byte]bool{'f': true, 'q': false, 'r': true, 'U': false, 'h': false},
	long:  map[string]bool{"output": true, "quiet": false, "repair": true, "force-share": false, "help": false},
}

func checkMain(args []string) int { return checkCmd(args, os.Stdout, os.Stderr) }

func checkCmd(args []string, stdout, stderr io.Writer) int {
	return runImg(checkHelp, stdout, stderr, func() (int, error) {
		opts, files, err := parseOpts(args, checkSpec)
		if err != nil {
			return 1, err
		}
		format, output, quiet, repair := "", "human", false, ""
		for _, o := range opts {
			switch o.name {
			case "f":
				format = o.val
			case "output":
				output = o.val
			case "q", "quiet":
				quiet = true
			case "r", "repair":
				repair = o.val
			}
		}
		if err := checkOutput(output); err != nil {
			return 1, err
		}
		if err := checkFormat(format); err != nil {
			return 1, err
		}
		if len(files) != 1 {
			return 1, usagef("check: expecting one image file name (got %d; see 'ringblk check --help')", len(files))
		}
		if repair != "" {
			if repair != "leaks" && repair != "all" {
				return 1, usagef("Unknown option value for -r (expecting 'leaks' or 'all'): %s", repair)
			}
			return 1, fmt.Errorf("%s: repair (-r %s) is not supported yet; use qemu-img check -r %s", files[0], repair, repair)
		}
		img, err := openImage(files[0], format)
		if err != nil {
			return 1, err
		}
		defer img.Close()
		if img.qcow == nil {
			return 63, fmt.Errorf("This image format does not support checks")
		}
		res, err := img.qcow.Check()
		if err != nil {
			return 1, fmt.Errorf("%s: check failed: %v", img.path, err)
		}
		code := 0
		switch {
		case res.CheckErrors > 0:
			code = 1
		case res.Corruptions > 0:
			code = 2
		case res.Leaks > 0:
			code = 3
		}
		if quiet {
			return code, nil
		}
		if output == "json" {
			o := newObject()
			setNZ := func(k string, v int64) {
				if v != 0 {
					o.set(k, v)
				}
			}
			setNZ("image-end-offset", res.ImageEndOffset)
			setNZ("total-clusters", res.TotalClusters)
			o.set("check-errors", res.CheckErrors)
			setNZ("corruptions", res.Corruptions)
			setNZ("leaks", res.Leaks)
			setNZ("allocated-clusters", res.AllocatedClusters)
			setNZ("fragmented-clusters", res.FragmentedClusters)
			setNZ("compressed-clusters", res.CompressedClusters)
			o.set("filename", img.path)
			o.set("format", img.format)
			return code, writeJSON(stdout, o)
		}
		var b strings.Builder
		for _, m := range res.Messages {
			fmt.Fprintf(stderr, "%s\n", m)
		}
		if res.CheckErrors == 0 && res.Corruptions == 0 && res.Leaks == 0 {
			b.WriteString("No errors were found on the image.\n")
		} else {
			if res.Corruptions > 0 {
				fmt.Fprintf(&b, "\n%d errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n", res.Corruptions)
			}
			if res.Leaks > 0 {
				fmt.Fprintf(&b, "\n%d leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n", res.Leaks)
			}
			if res.CheckErrors > 0 {
				fmt.Fprintf(&b, "\n%d internal errors have occurred during the check.\n", res.CheckErrors)
			}
		}
		if res.TotalClusters != 0 && res.AllocatedClusters != 0 {
			t := float64(res.TotalClusters)
			a := float64(res.AllocatedClusters)
			fmt.Fprintf(&b, "%d/%d = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
				res.AllocatedClusters, res.TotalClusters, a*100/t,
				float64(res.FragmentedClusters)*100/a, float64(res.CompressedClusters)*100/a)
		}
		if res.ImageEndOffset > 0 {
			fmt.Fprintf(&b, "Image end offset: %d\n", res.ImageEndOffset)
		}
		_, err = io.WriteString(stdout, b.String())
		return code, err
	})
}
