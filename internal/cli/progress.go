package cli

import (
	"fmt"
	"io"
	"sync"
)

// Progress is qemu-img's -p progress line: "    (12.34/100%)\r",
// rewritten in place, and a newline at the end. It prints only when the
// value moved by more than minSkip percentage points since the last line,
// or reached 0 or 100, so a long copy writes a few hundred lines at most.
// A disabled printer (-q, or no -p) prints nothing. Safe for concurrent
// use: convert's workers report their progress from several goroutines.
type Progress struct {
	mu        sync.Mutex
	w         io.Writer
	enabled   bool
	minSkip   float64
	current   float64
	lastPrint float64
}

// NewProgress returns a printer on w; minSkip is 1 for convert and 2 for
// compare, as in qemu-img.
func NewProgress(w io.Writer, enabled bool, minSkip float64) *Progress {
	return &Progress{w: w, enabled: enabled, minSkip: minSkip}
}

// Add advances the bar by delta percentage points.
func (p *Progress) Add(delta float64) {
	p.mu.Lock()
	p.update(p.current + delta)
	p.mu.Unlock()
}

// Set moves the bar to pct percent.
func (p *Progress) Set(pct float64) {
	p.mu.Lock()
	p.update(pct)
	p.mu.Unlock()
}

func (p *Progress) update(v float64) {
	v = min(max(v, 0), 100)
	p.current = v
	if !p.enabled {
		return
	}
	if v > p.lastPrint+p.minSkip || v < p.lastPrint-p.minSkip || v == 0 || v == 100 {
		p.lastPrint = v
		fmt.Fprintf(p.w, "    (%3.2f/100%%)\r", v)
	}
}

// End finishes the line.
func (p *Progress) End() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.enabled {
		fmt.Fprint(p.w, "\n")
	}
}

// Enabled reports whether the printer prints (-p without -q).
func (p *Progress) Enabled() bool { return p.enabled }
