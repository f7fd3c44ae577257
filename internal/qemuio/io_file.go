package qemuio

// close and truncate: the commands that act on the open image as a whole.

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/internal/cli"
)

var closeCmd = &ioCommand{
	name: "close", alt: "c", argmin: 0, argmax: 0,
	// Outstanding aio_read/aio_write finish (and print) first; later
	// commands find no file open. No extended help, as in qemu-io.
	oneline: "close the current open file",
	run: func(s *ioSession, argv []string) bool {
		s.aioFlush()
		img := s.img
		s.img = nil
		if err := img.Close(); err != nil {
			if closeWriteBackLines(s.errw, err) {
				return false
			}
			fmt.Fprintf(s.errw, "%s: closing the image: %v\n", cli.Prog, cli.PlainErr(err))
			return false
		}
		return true
	},
}

var truncateCmd = &ioCommand{
	name: "truncate", alt: "t", argmin: 1, argmax: 3, write: true,
	args:    "[-m prealloc_mode] off",
	oneline: "truncates the current file at the given offset",
	help: `
 sets the image's length to off, growing or shrinking it (as the
 format's driver allows); -m names the preallocation of grown space:
 only off (none) is supported

`,
	run: func(s *ioSession, argv []string) bool {
		opts, ops, ok := s.getopt(argv, "m:")
		if !ok || len(ops) != 1 {
			return s.usage()
		}
		for _, o := range opts {
			switch o.Val {
			case "off":
			case "metadata", "falloc", "full":
				fmt.Fprintf(s.errw, "%s: preallocation mode '%s' is not supported by truncate (only off)\n", cli.Prog, o.Val)
				return false
			default:
				fmt.Fprintf(s.errw, "%s: Invalid preallocation mode '%s'\n", cli.Prog, o.Val)
				return false
			}
		}
		size, ok := s.num(ops[0])
		if !ok {
			return false
		}
		if err := s.img.Node.Truncate(size); err != nil {
			msg, hint := cli.SplitLockHint(cli.PlainErr(err).Error(), err)
			fmt.Fprintf(s.errw, "%s: %s\n%s", cli.Prog, msg, hint)
			return false
		}
		return true
	},
}

var reopenCmd = &ioCommand{
	name: "reopen", argmin: 0, argmax: -1,
	args:    "[(-r|-w)] [-c cache] [-o options]",
	oneline: "reopens an image with new options",
	help: `
 closes the image and opens it again, read-only (-r), read-write (-w)
 or with another cache mode (-c); outstanding aio requests finish first.
 -o takes read-only, cache.direct, cache.no-flush and auto-read-only;
 node-name and driver only with their current values

`,
	run: reopenRun,
}

func reopenRun(s *ioSession, argv []string) bool {
	opts, ops, ok := s.getopt(argv, "rwc:o:")
	if !ok || len(ops) != 0 {
		return s.usage()
	}
	bo := s.bo
	rw, hasCache := 0, false
	given := chain.Spec{}
	for _, o := range opts {
		switch o.Name {
		case "r":
			bo.ReadOnly, rw = true, rw+1
		case "w":
			bo.ReadOnly, rw = false, rw+1
		case "c":
			if !validCache(o.Val) {
				fmt.Fprintf(s.errw, "%s: Invalid cache option: %s\n", cli.Prog, o.Val)
				return false
			}
			bo.Cache, hasCache = o.Val, true
		case "o":
			if err := chain.ParseKeyValues(o.Val, "", given); err != nil {
				fmt.Fprintf(s.errw, "%s: %v\n", cli.Prog, err)
				return false
			}
		}
		if rw > 1 {
			fmt.Fprintf(s.errw, "%s: Only one -r/-w option may be given\n", cli.Prog)
			return false
		}
	}
	savedSpec, savedPath := copySpec(s.spec), s.path
	if err := s.reopenOptions(given, &bo, rw > 0, hasCache); err != nil {
		s.spec, s.path = savedSpec, savedPath
		fmt.Fprintf(s.errw, "%s: %v\n", cli.Prog, err)
		return false
	}
	newSpec := copySpec(s.spec)
	s.spec, s.path = savedSpec, savedPath
	if s.snapshot {
		fmt.Fprintf(s.errw, "%s: reopen would drop the temporary overlay of snapshot mode (-s); not supported\n", cli.Prog)
		return false
	}
	s.aioFlush()
	if err := s.img.Close(); err != nil {
		s.img = nil
		fmt.Fprintf(s.errw, "%s: closing the image: %v\n", cli.Prog, cli.PlainErr(err))
		return false
	}
	s.img = nil
	name := s.path
	if s.spec != nil {
		name = "" // the options name the image
	}
	old := openRequest{name: name, spec: copySpec(s.spec), bo: s.bo, cor: s.cor}
	r := openRequest{name: name, spec: newSpec, bo: bo, cor: s.cor}
	if newSpec != nil && s.spec == nil {
		r.name = "" // options given now: they name the image
	}
	if err := s.open(r); err != nil {
		var oe *openError
		if errors.As(err, &oe) {
			err = oe.err
		}
		msg, hint := cli.SplitLockHint(cli.PlainErr(err).Error(), err)
		fmt.Fprintf(s.errw, "%s: %s\n%s", cli.Prog, msg, hint)
		// Back to the options it had, as a failed reopen leaves it.
		if s.open(old) != nil {
			s.img = nil
		}
		return false
	}
	return true
}

// specPath is the file a spec-opened session's image lives in.
func (s *ioSession) specPath() string {
	if s.img != nil {
		return s.img.Path
	}
	return s.path
}

func copySpec(sp chain.Spec) chain.Spec {
	if sp == nil {
		return nil
	}
	c := chain.Spec{}
	for k, v := range sp {
		c[k] = v
	}
	return c
}

// reopenOptions applies reopen -o's options to bo, in qemu-io's order of
// checks: -r/-w against read-only, -c against cache.*, the values, and
// options that cannot change.
func (s *ioSession) reopenOptions(given chain.Spec, bo *cli.BlkOptions, hasRW, hasCache bool) error {
	if _, ok := given["read-only"]; ok && hasRW {
		return errors.New("Cannot set both -r/-w and 'read-only'")
	}
	_, d := given["cache.direct"]
	_, nf := given["cache.no-flush"]
	if (d || nf) && hasCache {
		return errors.New("Cannot set both -c and the cache options")
	}
	for _, k := range []string{"read-only", "cache.direct", "cache.no-flush", "auto-read-only"} {
		v, ok, err := given.Bool(k)
		if err != nil {
			return err
		}
		switch {
		case !ok:
		case k == "read-only":
			bo.ReadOnly = v
		case k == "cache.direct" && v:
			bo.Cache = "none"
		case k == "cache.direct" && bo.Cache == "none":
			bo.Cache = "writeback"
		}
		delete(given, k)
	}
	cur := chain.Spec{"driver": s.img.Format, "file.driver": "file"}
	if s.img.Format == "null" {
		cur["driver"] = "null-co"
	}
	if s.img.Qcow2 != nil {
		h := s.img.Qcow2.Header()
		if h.BackingFile != "" {
			cur["backing.driver"] = h.BackingFormat
			if cur["backing.driver"] == "" {
				cur["backing.driver"] = "raw"
			}
		}
	}
	for _, k := range []string{"node-name", "file.node-name", "backing.node-name"} {
		if v, ok := s.spec[k]; ok {
			cur[k] = v
		}
	}
	if s.img.Qcow2 != nil {
		joinQcow2Reopen(s.spec, given) // io_reopen_qcow2.go
	}
	for k, v := range given {
		base := k
		if i := strings.LastIndexByte(k, '.'); i >= 0 {
			base = k[i+1:]
		}
		switch base {
		case "node-name", "driver":
			if cv, ok := cur[k]; !ok || cv != v {
				return fmt.Errorf("Cannot change the option '%s'", base)
			}
		default:
			// A driver option (raw's offset and size, qcow2's cache
			// sizes, …): the image is opened again with it, and the
			// opener checks it.
			if s.spec == nil {
				s.spec = chain.Spec{"filename": s.specPath(), "driver": cur["driver"]}
				s.path = ""
			}
			s.spec[k] = v
		}
	}
	return nil
}
