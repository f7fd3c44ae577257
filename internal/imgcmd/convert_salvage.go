package imgcmd

import (
	"fmt"
	"io"
	"sync"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/internal/cli"
)

// convert --salvage, as qemu-img 7.2 does it: a read that fails is
// retried sector by sector (512 bytes), and each sector that still fails
// reads as zeroes, with one warning naming its offset in its source; a
// block-status query that fails is retried on a quarter of its range
// until one sector is left, which is warned about and copied as data
// (its read may then fail and be salvaged too). The exit status is 0
// when every failure was salvaged. -q silences the warnings.

const salvageSector = 512

// warnings prints qemu-img's "PROG: warning: …" lines, one at a time,
// for the workers of every copy (nothing with -q).
type warnings struct {
	mu    sync.Mutex
	w     io.Writer
	quiet bool
}

func (w *warnings) printf(format string, a ...any) {
	if w.quiet {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	fmt.Fprintf(w.w, "%s: warning: %s\n", cli.Prog, fmt.Sprintf(format, a...))
}

// sourceOffset is where byte off of the copy lies in its own source (the
// offset qemu-img's warnings name).
func (c *converter) sourceOffset(off int64) int64 {
	if c.parts == nil {
		return off
	}
	_, base := c.part(off)
	return off - base
}

// readSalvaging reads len(buf) bytes at off; with --salvage, a failed
// read is retried per sector and the sectors that fail read as zeroes.
func (c *converter) readSalvaging(buf []byte, off int64) error {
	err := c.readSource(buf, off)
	if err == nil || !c.r.salvage {
		return err
	}
	for p := 0; p < len(buf); p += salvageSector {
		sec := buf[p:min(p+salvageSector, len(buf))]
		if err := c.readSource(sec, off+int64(p)); err != nil {
			c.warn.printf("error while reading offset %d: %v", c.sourceOffset(off+int64(p)), cli.PlainErr(err))
			clear(sec)
		}
	}
	return nil
}

// statusSalvaging is the status of [off, off+n) after a query failed
// with err under --salvage: the range shrinks to a quarter (in sectors,
// rounded up) until a query succeeds; when one sector fails too it is
// warned about and taken as data.
func (c *converter) statusSalvaging(off, n int64, err error) (chainStatus, error) {
	for sectors := (n + salvageSector - 1) / salvageSector; sectors > 1; {
		sectors = (sectors + 3) / 4
		var s chainStatus
		if s, err = c.statusAbove(off, min(n, sectors*salvageSector)); err == nil {
			return s, nil
		}
	}
	c.warn.printf("error while reading block status at offset %d: %v", c.sourceOffset(off), cli.PlainErr(err))
	var s chainStatus
	s.Status, s.Pnum = block.StatusData, min(n, salvageSector)
	return s, nil
}
