package imgcmd

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/internal/cli"
	"golang.org/x/sys/unix"
)

const compareHelp = `usage: ringblk compare [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] FILE1 FILE2

Compare the guest-visible contents of two images, as qemu-img compare does.
Images of different sizes are equal when the larger one reads as zeroes
beyond the smaller one's end (unless -s).

Exit status: 0 identical, 1 different, 2 an image could not be opened,
3 block status failed, 4 a read failed. Command-line mistakes exit 1.

  -f fmt            format of FILE1 (raw, qcow2 or null; probed when absent)
  -F fmt            format of FILE2
  -T src_cache      cache mode of both images (none, writeback, writethrough)
  -p                show progress
  -q                quiet: print nothing, the exit status says it all
  -s                strict: images of different sizes or with a different
                    allocation status differ
  -U, --force-share read images another process has open for writing
                    (no locks taken)
  -h, --help        this help
`

var compareSpec = cli.WithObjects(cli.OptSpec{
	Short: map[byte]bool{'f': true, 'F': true, 'T': true, 'p': false, 'q': false, 's': false, 'U': false, 'h': false},
	Long:  map[string]bool{"force-share": false, "help": false},
})

// compareBufSize is how much of each image one comparison step reads.
const compareBufSize = 2 << 20

// Compare is "ringblk compare" (qemu-img compare): args are what follows the
// command name; the result is the exit status.
func Compare(args []string, stdout, stderr io.Writer) int {
	// qemu-img's stdout is fully buffered when it is not a terminal and
	// its error line unbuffered: a failure's message comes before what
	// was printed to stdout (iotest 074). The same here; the buffer is
	// written after cli.Run printed the error.
	if f, ok := stdout.(*os.File); !ok || !isTerminal(f) {
		bw := bufio.NewWriter(stdout)
		defer bw.Flush()
		stdout = bw
	}
	return cli.Run(compareHelp, stdout, stderr, func() (int, error) {
		args, imageOpts, err := cli.TakeGlobalOpts(args)
		if err != nil {
			return 1, err
		}
		opts, operands, err := cli.ParseOpts(args, compareSpec)
		if err != nil {
			return 1, err
		}
		c := &comparer{out: stdout}
		var fmt1, fmt2, cache string
		var showProgress, forceShare bool
		ia := cli.ImageArgs{ImageOpts: imageOpts}
		for _, o := range opts {
			if took, err := ia.Take(o); took {
				if err != nil {
					return 1, err
				}
				continue
			}
			switch o.Name {
			case "f":
				fmt1 = o.Val
			case "F":
				fmt2 = o.Val
			case "T":
				cache = o.Val
			case "p":
				showProgress = true
			case "q":
				c.quiet = true
			case "s":
				c.strict = true
			case "U", "force-share":
				forceShare = true
			}
		}
		// qemu-img compare finds an unknown format when it opens the image,
		// and every open failure exits 2 (its 1 means "images differ").
		if err := checkSourceFormat(fmt1); err != nil {
			return 2, err
		}
		if err := checkSourceFormat(fmt2); err != nil {
			return 2, err
		}
		if len(operands) != 2 {
			return 1, cli.Usagef("Expecting two image file names (see 'ringblk compare --help')")
		}
		if cache != "" {
			if _, ok := raw.ParseCache(cache); !ok {
				return 2, fmt.Errorf("Invalid source cache option: %s", cache)
			}
		}
		c.name1, c.name2 = operands[0], operands[1]
		c.progress = cli.NewProgress(stdout, showProgress && !c.quiet, 2)
		defer c.progress.End()

		bo := cli.BlkOptions{ReadOnly: true, ForceShare: forceShare, Cache: cache}
		bo.Format = fmt1
		img1, err := ia.Open(c.name1, bo)
		if err != nil {
			return 2, err
		}
		defer img1.Close()
		bo.Format = fmt2
		img2, err := ia.OpenIn(img1.Ctx, img1.Graph, c.name2, bo)
		if err != nil {
			return 2, err
		}
		defer img2.Close()
		// Strict mode compares allocation status, which includes whether
		// QEMU would know a host offset: that needs the qcow2 mappings.
		if c.ch1, err = newImageChain(img1, c.strict); err != nil {
			return 2, err
		}
		defer c.ch1.Close()
		if c.ch2, err = newImageChain(img2, c.strict); err != nil {
			return 2, err
		}
		defer c.ch2.Close()
		return c.run()
	})
}

// comparer is one compare run.
type comparer struct {
	out           io.Writer
	quiet, strict bool
	name1, name2  string
	ch1, ch2      *imageChain
	progress      *cli.Progress
	buf1, buf2    []byte
	progressBase  float64
}

func (c *comparer) say(format string, a ...any) {
	if !c.quiet {
		fmt.Fprintf(c.out, format, a...)
	}
}

func (c *comparer) run() (int, error) {
	size1, size2 := c.ch1.size(), c.ch2.size()
	total := min(size1, size2)
	c.progressBase = float64(max(size1, size2))
	c.buf1 = make([]byte, compareBufSize)
	c.buf2 = make([]byte, compareBufSize)
	c.progress.Set(0)

	if c.strict && size1 != size2 {
		c.say("Strict mode: Image size mismatch!\n")
		return 1, nil
	}
	for off := int64(0); off < total; {
		s1, err := c.ch1.statusAbove(off, size1-off, false)
		if err != nil {
			return 3, fmt.Errorf("Sector allocation test failed for %s: %v", c.name1, cli.PlainErr(err))
		}
		s2, err := c.ch2.statusAbove(off, size2-off, false)
		if err != nil {
			return 3, fmt.Errorf("Sector allocation test failed for %s: %v", c.name2, cli.PlainErr(err))
		}
		chunk := min(s1.Pnum, s2.Pnum)
		if c.strict && (s1.Status != s2.Status || s1.hasOff != s2.hasOff) {
			c.say("Strict mode: Offset %d block status mismatch!\n", off)
			return 1, nil
		}
		alloc1, alloc2 := s1.Status&block.StatusAllocated != 0, s2.Status&block.StatusAllocated != 0
		switch {
		case s1.Status&block.StatusZero != 0 && s2.Status&block.StatusZero != 0:
			// Both read as zeroes.
		case alloc1 == alloc2:
			if alloc1 {
				chunk = min(chunk, compareBufSize)
				b1, b2 := c.buf1[:chunk], c.buf2[:chunk]
				if code, err := c.read(c.ch1, c.name1, b1, off); err != nil {
					return code, err
				}
				if code, err := c.read(c.ch2, c.name2, b2, off); err != nil {
					return code, err
				}
				if i := firstDiff(b1, b2); i >= 0 {
					c.say("Content mismatch at offset %d!\n", off+sectorDown(i))
					return 1, nil
				}
			}
		default:
			chunk = min(chunk, compareBufSize)
			ch, name := c.ch1, c.name1
			if !alloc1 {
				ch, name = c.ch2, c.name2
			}
			if code, err := c.checkZero(ch, name, off, chunk); code != 0 || err != nil {
				return code, err
			}
		}
		off += chunk
		c.progress.Add(float64(chunk) / c.progressBase * 100)
	}

	if size1 != size2 {
		c.say("Warning: Image size mismatch!\n")
		over, name := c.ch1, c.name1
		if size2 > size1 {
			over, name = c.ch2, c.name2
		}
		end := over.size()
		for off := total; off < end; {
			s, err := over.statusAbove(off, end-off, false)
			if err != nil {
				return 3, fmt.Errorf("Sector allocation test failed for %s: %v", name, cli.PlainErr(err))
			}
			chunk := s.Pnum
			if s.Status&block.StatusAllocated != 0 && s.Status&block.StatusZero == 0 {
				chunk = min(chunk, compareBufSize)
				if code, err := c.checkZero(over, name, off, chunk); code != 0 || err != nil {
					return code, err
				}
			}
			off += chunk
			c.progress.Add(float64(chunk) / c.progressBase * 100)
		}
	}
	c.say("Images are identical.\n")
	return 0, nil
}

func (c *comparer) read(ch *imageChain, name string, p []byte, off int64) (int, error) {
	if _, err := ch.levels[0].node.ReadAt(p, off); err != nil {
		return 4, fmt.Errorf("Error while reading offset %d of %s: %v", off, name, cli.PlainErr(err))
	}
	return 0, nil
}

// checkZero reports a mismatch (exit 1) unless [off, off+n) of ch reads
// as zeroes.
func (c *comparer) checkZero(ch *imageChain, name string, off, n int64) (int, error) {
	b := c.buf1[:n]
	if code, err := c.read(ch, name, b, off); err != nil {
		return code, err
	}
	if i := firstNonZero(b); i >= 0 {
		c.say("Content mismatch at offset %d!\n", off+sectorDown(i))
		return 1, nil
	}
	return 0, nil
}

// sectorDown rounds a byte index down to its 512-byte sector: qemu-img
// compares sector by sector and reports the first differing sector.
func sectorDown(i int64) int64 { return i &^ 511 }

// firstDiff returns the index of the first differing byte, or -1.
func firstDiff(a, b []byte) int64 {
	const step = 4096
	for i := 0; i < len(a); i += step {
		j := min(i+step, len(a))
		if !bytes.Equal(a[i:j], b[i:j]) {
			for k := i; k < j; k++ {
				if a[k] != b[k] {
					return int64(k)
				}
			}
		}
	}
	return -1
}

// firstNonZero returns the index of the first nonzero byte, or -1.
func firstNonZero(p []byte) int64 {
	for i := 0; i < len(p); i += len(zeroBuf) {
		j := min(i+len(zeroBuf), len(p))
		if !bytes.Equal(p[i:j], zeroBuf[:j-i]) {
			for k := i; k < j; k++ {
				if p[k] != 0 {
					return int64(k)
				}
			}
		}
	}
	return -1
}

// isZero reports whether p holds only zero bytes.
func isZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeroBuf))
		if !bytes.Equal(p[:n], zeroBuf[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

// zeroBuf is compared against (bytes.Equal is vectorised).
var zeroBuf = make([]byte, 64<<10)

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
