// Package benchcmd is "ringblk bench": the fio-compatible benchmark of
// package bench, with ringblk's error-line prefix. Its ioengine=io_uring
// is the bare-ring benchmark (uring below aio and block, as fio's io_uring
// engine; fixedbufs and registerfiles as fio's).
package benchcmd

import (
	"bytes"
	"io"
	"os"

	"github.com/ringblk/ringblk/bench"
	"github.com/ringblk/ringblk/internal/cli"
)

// Main is "ringblk bench": fio-style jobs through the block layer
// (package bench does the work). Its error lines are given the prefix
// every other command's have ("ringblk: bench: …").
func Main(args []string) int {
	bench.BuildVersion = cli.VersionLine()
	return bench.Main(args, os.Stdout, &prefixWriter{w: os.Stderr, from: "ringblk bench: ", to: "ringblk: bench: "})
}

// prefixWriter replaces the prefix from with to at the start of each line
// written through it; everything else passes unchanged.
type prefixWriter struct {
	w        io.Writer
	from, to string
	mid      bool   // inside a line
	pending  []byte // start of a line that may still become from
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	n := len(b)
	for len(b) > 0 {
		if p.mid {
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				_, err := p.w.Write(b)
				return n, err
			}
			if _, err := p.w.Write(b[:i+1]); err != nil {
				return n, err
			}
			b, p.mid = b[i+1:], false
			continue
		}
		// At a line start: gather bytes until they match or rule out from.
		for len(b) > 0 && len(p.pending) < len(p.from) && b[0] != '\n' {
			p.pending, b = append(p.pending, b[0]), b[1:]
			if !bytes.HasPrefix([]byte(p.from), p.pending) {
				break
			}
		}
		switch {
		case string(p.pending) == p.from:
			if _, err := io.WriteString(p.w, p.to); err != nil {
				return n, err
			}
		case bytes.HasPrefix([]byte(p.from), p.pending) && len(b) == 0:
			return n, nil // undecided: wait for more
		default:
			if _, err := p.w.Write(p.pending); err != nil {
				return n, err
			}
		}
		p.pending, p.mid = p.pending[:0], true
	}
	return n, nil
}
