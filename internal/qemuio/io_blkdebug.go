package qemuio

// qemu-io's blkdebug commands: break, remove_break, resume, wait_break.
// They act on the blkdebug filter at or below the image's node
// (blkdebug.Find, as QEMU's bdrv_debug_* walk primary children); without
// one they fail with "Operation not supported". The filter's messages
// ("blkdebug: Suspended request 'A'") are queued by the Context that
// holds or resumes the request and printed by the command goroutine:
// after every command, and while wait_break waits.

import (
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/ringblk/ringblk/drivers/blkdebug"
	"golang.org/x/sys/unix"
)

type debugMsgs struct {
	mu   sync.Mutex
	msgs []string
}

func (m *debugMsgs) add(s string) {
	m.mu.Lock()
	m.msgs = append(m.msgs, s)
	m.mu.Unlock()
}

func (m *debugMsgs) print(w io.Writer) {
	m.mu.Lock()
	msgs := m.msgs
	m.msgs = nil
	m.mu.Unlock()
	for _, s := range msgs {
		fmt.Fprintln(w, s)
	}
}

// debugFilter returns the session's blkdebug driver (its messages go to
// the session) or nil.
func (s *ioSession) debugFilter() *blkdebug.Driver {
	if s.img == nil || s.img.Node == nil {
		return nil
	}
	d := blkdebug.Find(s.img.Node)
	if d != nil {
		d.SetNotify(s.dbgMsgs.add)
	}
	return d
}

var breakCmd = &ioCommand{
	name: "break", argmin: 2, argmax: 2, args: "event tag",
	oneline: "sets a breakpoint on event and tags the stopped request as tag",
	run: func(s *ioSession, argv []string) bool {
		err := error(unix.ENOTSUP)
		if d := s.debugFilter(); d != nil {
			err = d.Break(argv[1], argv[2])
		}
		if err != nil {
			fmt.Fprintf(s.out, "Could not set breakpoint: %s\n", errText(err))
			return false
		}
		return true
	},
}

var removeBreakCmd = &ioCommand{
	name: "remove_break", argmin: 1, argmax: 1, args: "tag",
	oneline: "remove a breakpoint by tag",
	run: func(s *ioSession, argv []string) bool {
		err := error(unix.ENOTSUP)
		if d := s.debugFilter(); d != nil {
			err = d.RemoveBreak(argv[1])
		}
		if err != nil {
			fmt.Fprintf(s.out, "Could not remove breakpoint %s: %s\n", argv[1], errText(err))
			return false
		}
		return true
	},
}

var resumeCmd = &ioCommand{
	name: "resume", argmin: 1, argmax: 1, args: "tag",
	oneline: "resumes the request tagged as tag",
	run: func(s *ioSession, argv []string) bool {
		err := error(unix.ENOTSUP)
		if d := s.debugFilter(); d != nil {
			err = d.Resume(argv[1])
		}
		if err != nil {
			fmt.Fprintf(s.out, "Could not resume request: %s\n", errText(err))
			return false
		}
		return true
	},
}

var waitBreakCmd = &ioCommand{
	name: "wait_break", argmin: 1, argmax: 1, args: "tag",
	oneline: "waits for the suspension of a request",
	run: func(s *ioSession, argv []string) bool {
		d := s.debugFilter()
		if d == nil {
			return true // QEMU finds nothing suspended and would wait forever; we do not
		}
		// QEMU waits for ever; a test that never suspends the request
		// should fail, not hang.
		deadline := time.Now().Add(waitBreakLimit)
		for !d.Suspended(argv[1]) {
			s.dbgMsgs.print(s.out)
			if time.Now().After(deadline) {
				fmt.Fprintf(s.out, "wait_break: no request was suspended as '%s' within %v\n", argv[1], waitBreakLimit)
				return false
			}
			time.Sleep(100 * time.Microsecond)
		}
		return true
	},
}

// waitBreakLimit bounds wait_break.
const waitBreakLimit = 30 * time.Second

func init() {
	ioCommands = append(ioCommands, breakCmd, removeBreakCmd, resumeCmd, waitBreakCmd)
	sort.Slice(ioCommands, func(i, j int) bool { return ioCommands[i].name < ioCommands[j].name })
}
