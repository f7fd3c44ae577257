package bench

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/internal/units"
)

// I/O priorities (fio's prio, prioclass and the io_uring engine's cmdprio
// options). A priority is ioprio_set's value: class<<13 | level. prio and
// prioclass give every I/O of a job a priority (the ring engines put it in
// each SQE's ioprio field, psync sets the clone thread's with ioprio_set);
// cmdprio_percentage or cmdprio_bssplit give a share of the I/Os another
// one, per direction. The report then splits completion latency by the
// priority each I/O carried, as fio does (clat prio lines, JSON "prios"),
// and log_prio logs each I/O's priority.

const (
	ioprioClassShift = 13
	ioprioClassRT    = 1
	ioprioClassBE    = 2
)

func ioprioValue(class, level int) uint16 { return uint16(class<<ioprioClassShift | level) }

func ioprioClass(p uint16) int { return int(p >> ioprioClassShift) }

func ioprioLevel(p uint16) int { return int(p & (1<<ioprioClassShift - 1)) }

// cmdprioEntry is one cmdprio_bssplit entry: Percent of the I/Os of block
// size Size get priority (Class, Level); Class 0 takes cmdprio_class and
// cmdprio (the simple format).
type cmdprioEntry struct {
	Size, Percent int
	Class, Level  int
	full          bool // written with its own class and level
}

// jobPrio holds a job's priority options.
type jobPrio struct {
	Prio, PrioClass int    // -1: not set
	Pct             [2]int // cmdprio_percentage per direction
	Class           [2]int // cmdprio_class (default RT)
	Level           [2]int // cmdprio
	Split           [2][]cmdprioEntry
	LogPrio         bool
}

func (p *jobPrio) cmdprio() bool {
	return p.Pct != [2]int{} || len(p.Split[0]) > 0 || len(p.Split[1]) > 0
}

// defaultPrio is the priority of an I/O cmdprio does not pick: prioclass
// and prio (0: the thread's own, ioprio class none).
func (p *jobPrio) defaultPrio() uint16 {
	if p.Prio < 0 && p.PrioClass < 0 {
		return 0
	}
	class, level := p.PrioClass, p.Prio
	if class < 0 {
		class = ioprioClassBE // a level alone is best-effort's, as ioprio_set reads it
	}
	return ioprioValue(class, max(level, 0))
}

// levels lists the priorities a direction's I/Os may carry, the default
// first, then each cmdprio priority once in the order given (fio's order
// of the "clat prio" lines).
func (p *jobPrio) levels(dir int) []uint16 {
	out := []uint16{p.defaultPrio()}
	add := func(v uint16) {
		for _, x := range out {
			if x == v {
				return
			}
		}
		out = append(out, v)
	}
	if p.Pct[dir] > 0 {
		add(ioprioValue(p.Class[dir], p.Level[dir]))
	}
	for _, e := range p.Split[dir] {
		if e.Percent > 0 {
			add(p.entryPrio(dir, e))
		}
	}
	return out
}

func (p *jobPrio) entryPrio(dir int, e cmdprioEntry) uint16 {
	if e.full {
		return ioprioValue(e.Class, e.Level)
	}
	return ioprioValue(p.Class[dir], p.Level[dir])
}

// pairSetter reads fio's "read[,write]" integer pairs (one value: both).
func pairSetter(lo, hi int, f func(j *Job, dir, n int)) func(*Job, string) error {
	return func(j *Job, v string) error {
		parts := strings.Split(v, ",")
		if len(parts) > 2 {
			return errors.New("want N or READ,WRITE")
		}
		for d := 0; d < 2; d++ {
			s := parts[min(d, len(parts)-1)]
			if s == "" && d == 1 {
				s = parts[0]
			}
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil {
				return errors.New("want an integer, or READ,WRITE")
			}
			if n < lo || n > hi {
				return fmt.Errorf("%d out of range %d..%d", n, lo, hi)
			}
			f(j, d, n)
		}
		return nil
	}
}

// parseCmdprioSplit reads cmdprio_bssplit: per direction (comma), entries
// (colon) of BS/PERCENT or BS/PERCENT/CLASS/LEVEL.
func parseCmdprioSplit(v string) ([2][]cmdprioEntry, error) {
	var out [2][]cmdprioEntry
	dirs := strings.Split(v, ",")
	if len(dirs) > 2 {
		return out, errors.New("want READ_SPLIT[,WRITE_SPLIT]")
	}
	for d := 0; d < 2; d++ {
		s := dirs[min(d, len(dirs)-1)]
		total := 0
		for _, item := range strings.Split(s, ":") {
			f := strings.Split(item, "/")
			if len(f) != 2 && len(f) != 4 {
				return out, fmt.Errorf("entry %q: want BS/PERCENT or BS/PERCENT/CLASS/LEVEL", item)
			}
			bs, err := units.ParseSize(f[0])
			if err != nil || bs <= 0 {
				return out, fmt.Errorf("entry %q: bad block size", item)
			}
			pct, err := strconv.Atoi(f[1])
			if err != nil || pct < 0 || pct > 100 {
				return out, fmt.Errorf("entry %q: percentage must be 0..100", item)
			}
			e := cmdprioEntry{Size: int(bs), Percent: pct}
			if len(f) == 4 {
				c, err1 := strconv.Atoi(f[2])
				l, err2 := strconv.Atoi(f[3])
				if err1 != nil || err2 != nil || c < 0 || c > 3 || l < 0 || l > 7 {
					return out, fmt.Errorf("entry %q: class must be 0..3 and level 0..7", item)
				}
				e.Class, e.Level, e.full = c, l, true
			}
			total += pct
			out[d] = append(out[d], e)
		}
		_ = total
	}
	return out, nil
}

func registerPrioOptions() {
	for k, v := range map[string]optionSpec{
		"prio": {help: "I/O priority level 0..7 of every I/O (with prioclass)", set: intSetter(0, 7, func(j *Job, n int) { j.IOPrio.Prio = n })},
		"prioclass": {help: "I/O priority class of every I/O: 1 realtime, 2 best-effort, 3 idle", set: intSetter(0, 3, func(j *Job, n int) {
			j.IOPrio.PrioClass = n
		})},
		"cmdprio_percentage": {help: "ring engines: percent of the I/Os (READ[,WRITE]) issued with cmdprio_class/cmdprio", set: pairSetter(0, 100, func(j *Job, d, n int) {
			j.IOPrio.Pct[d] = n
		})},
		"cmdprio_class": {help: "ring engines: priority class of cmdprio I/Os (READ[,WRITE]; default 1, realtime)", set: pairSetter(1, 3, func(j *Job, d, n int) {
			j.IOPrio.Class[d] = n
		})},
		"cmdprio": {help: "ring engines: priority level 0..7 of cmdprio I/Os (READ[,WRITE])", set: pairSetter(0, 7, func(j *Job, d, n int) {
			j.IOPrio.Level[d] = n
		})},
		"cmdprio_bssplit": {help: "ring engines: BS/PERCENT[/CLASS/LEVEL]:… per direction, the share of each block size issued with a priority", set: func(j *Job, v string) error {
			s, err := parseCmdprioSplit(v)
			if err != nil {
				return err
			}
			j.IOPrio.Split = s
			return nil
		}},
		"log_prio": {bool: true, help: "log each I/O's priority value (0x%04x) in the last log column, instead of 1 for realtime I/Os", set: boolSetter(func(j *Job, b bool) {
			j.IOPrio.LogPrio = b
		})},
	} {
		optionTable[k] = v
		delete(fioOnlyOptions, k)
	}
}

// validatePrio checks the priority options against the engine: cmdprio_*
// are options of fio's io_uring (and libaio) engine, which bench's two
// ring engines take; fio refuses them on a sync engine.
func (j *Job) validatePrio(bad func(Loc, string, ...any) error, at func(string) Loc) error {
	if syncEngine(j.IOEngine) {
		for _, o := range []string{"cmdprio_percentage", "cmdprio_class", "cmdprio", "cmdprio_bssplit"} {
			if _, ok := j.set[o]; ok {
				return bad(at(o), "%s is an option of the io_uring and libaio engines (and ringblk), not ioengine=%s (fio: Bad option)", o, j.IOEngine)
			}
		}
	}
	_, pct := j.set["cmdprio_percentage"]
	_, split := j.set["cmdprio_bssplit"]
	if pct && split {
		return bad(at("cmdprio_bssplit"), "cmdprio_bssplit conflicts with cmdprio_percentage (set at %s)", at("cmdprio_percentage"))
	}
	return nil
}

// prioPicker draws each I/O's priority; its state is per clone (no
// allocation per I/O).
type prioPicker struct {
	on     bool
	def    uint16
	levels [2][]uint16 // index → priority, per direction (levels())
	x      uint64      // xorshift state
	p      *jobPrio
}

func newPrioPicker(j *Job, clone int) prioPicker {
	p := &j.IOPrio
	pp := prioPicker{on: p.cmdprio(), def: p.defaultPrio(), p: p, x: 0x9e3779b97f4a7c15 ^ uint64(clone+1)*0xbf58476d1ce4e5b9}
	for d := 0; d < 2; d++ {
		pp.levels[d] = p.levels(d)
	}
	return pp
}

func (pp *prioPicker) rand100() int {
	pp.x ^= pp.x << 13
	pp.x ^= pp.x >> 7
	pp.x ^= pp.x << 17
	return int(pp.x % 100)
}

// pick returns the priority of an I/O of n bytes in direction dir and its
// index in levels[dir].
func (pp *prioPicker) pick(dir, n int) (uint16, uint8) {
	if !pp.on || dir > DirWrite {
		return pp.def, 0
	}
	p := pp.p
	var v uint16
	chosen := false
	if p.Pct[dir] > 0 {
		if pp.rand100() < p.Pct[dir] {
			v, chosen = ioprioValue(p.Class[dir], p.Level[dir]), true
		}
	} else if len(p.Split[dir]) > 0 {
		// The entries of this block size share out 100 percent of its
		// I/Os in the order given; the rest keep the default.
		r, acc := -1, 0
		for _, e := range p.Split[dir] {
			if e.Size != n || e.Percent == 0 {
				continue
			}
			if r < 0 {
				r = pp.rand100()
			}
			acc += e.Percent
			if r < acc {
				v, chosen = p.entryPrio(dir, e), true
				break
			}
		}
	}
	if !chosen {
		return pp.def, 0
	}
	for i, x := range pp.levels[dir] {
		if x == v {
			return v, uint8(i)
		}
	}
	return pp.def, 0
}

// setThreadPrio gives the calling thread prio (ioprio_set on itself), as
// fio does for a sync engine's job with prio/prioclass; best effort.
func setThreadPrio(prio uint16) {
	if prio == 0 {
		return
	}
	const ioprioWhoProcess = 1
	_, _, _ = unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, 0, uintptr(prio))
}
