package bench

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// IsTerminal reports whether fd is a terminal (ioctl TCGETS succeeds).
func IsTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}

// statusInterval is how often the status line is rewritten.
const statusInterval = time.Second

// startStatus rewrites fio's status line on out until the returned stop is
// called:
//
//	Jobs: 1 (f=1): [r(1)][45.0%][r=512MiB/s][r=131k IOPS][eta 00m:11s]
func startStatus(out io.Writer, jobs []*JobResult, began time.Time) (stop func()) {
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(statusInterval)
		defer t.Stop()
		var last [2]uint64
		var lastIOs [2]uint64
		lastAt := began
		width := 0
		for {
			select {
			case <-quit:
				if width > 0 {
					fmt.Fprint(out, "\r"+strings.Repeat(" ", width)+"\r")
				}
				return
			case now := <-t.C:
				line, b, n := statusLine(jobs, began, now, last, lastIOs, now.Sub(lastAt))
				last, lastIOs, lastAt = b, n, now
				pad := ""
				if len(line) < width {
					pad = strings.Repeat(" ", width-len(line))
				}
				width = len(line)
				fmt.Fprint(out, "\r"+line+pad)
			}
		}
	}()
	return func() {
		close(quit)
		wg.Wait()
	}
}

// statusLine renders one status line; it returns the byte and I/O
// counters it read, for the next rate.
func statusLine(jobs []*JobResult, began, now time.Time, lastBytes, lastIOs [2]uint64, dt time.Duration) (string, [2]uint64, [2]uint64) {
	var chars []byte
	running := 0
	var bytes, ios [2]uint64
	var total time.Duration
	doneFrac := 0.0
	nclones := 0
	for _, jr := range jobs {
		j := jr.Job
		total = max(total, j.RampTime+j.Runtime)
		for _, w := range jr.Clones {
			c := byte(w.prog.state.Load())
			chars = append(chars, c)
			if c != '_' && c != 'E' {
				running++
			}
			for d := 0; d < 2; d++ {
				bytes[d] += w.prog.bytes[d].Load()
				ios[d] += w.prog.ios[d].Load()
			}
			nclones++
			if !j.TimeBased && j.Size > 0 {
				var b uint64
				for d := 0; d < 2; d++ {
					b += w.prog.bytes[d].Load()
				}
				doneFrac += min(1, float64(b)/float64(j.Size))
			}
		}
	}
	elapsed := now.Sub(began)
	pct := 0.0
	if total > 0 {
		pct = min(100, float64(elapsed)*100/float64(total))
	}
	if nclones > 0 && doneFrac > 0 {
		pct = max(pct, doneFrac*100/float64(nclones))
	}
	eta := time.Duration(0)
	if total > elapsed {
		eta = total - elapsed
	} else if pct > 0 && pct < 100 {
		eta = time.Duration(float64(elapsed) * (100 - pct) / pct)
	}
	secs := dt.Seconds()
	if secs <= 0 {
		secs = 1
	}
	var bw, iops []string
	for d, p := range []string{"r", "w"} {
		if bytes[d] == 0 && lastBytes[d] == 0 {
			continue
		}
		bw = append(bw, p+"="+num2str(float64(bytes[d]-lastBytes[d])/secs, 4, true)+"B/s")
		iops = append(iops, p+"="+num2str(float64(ios[d]-lastIOs[d])/secs, 4, false))
	}
	if bw == nil {
		bw, iops = []string{"r=0KiB/s"}, []string{"r=0"}
	}
	line := fmt.Sprintf("Jobs: %d (f=%d): [%s][%.1f%%][%s][%s IOPS][eta %s]",
		running, running, runLength(chars), pct, strings.Join(bw, ","), strings.Join(iops, ","), etaStr(eta))
	return line, bytes, ios
}

// runLength compresses "rrrW" to "r(3),W(1)".
func runLength(cs []byte) string {
	var parts []string
	for i := 0; i < len(cs); {
		k := i
		for k < len(cs) && cs[k] == cs[i] {
			k++
		}
		parts = append(parts, fmt.Sprintf("%c(%d)", cs[i], k-i))
		i = k
	}
	return strings.Join(parts, ",")
}

func etaStr(d time.Duration) string {
	s := int64(d.Round(time.Second) / time.Second)
	if s >= 3600 {
		return fmt.Sprintf("%02dh:%02dm:%02ds", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%02dm:%02ds", s/60, s%60)
}
