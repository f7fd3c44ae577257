package blkdebug

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/ringblk/ringblk/block"
)

// A configuration is QEMU 7.2's blkdebug config file: an INI-like list
// of sections, each a rule:
//
//	[inject-error]            [set-state]
//	event = "read_aio"        event = "l2_update"
//	errno = "5"               state = "1"
//	once = "on"               new_state = "2"
//	immediately = "off"
//	sector = "0"
//	state = "2"
//
// Values may be quoted; '#' starts a comment line. inject-error: event
// (required), state (0: any), errno (default 5, EIO), sector (default -1:
// any offset), once, immediately (on/off, default off), iotype (a comma
// list of read, write, write-zeroes, discard, flush, block-status;
// default all but block-status). set-state: event, state, new_state.

// Action is what a rule does when its event fires.
type Action uint8

const (
	ActionInjectError Action = iota
	ActionSetState
	ActionSuspend
)

// IO types an inject-error rule applies to (bits of Rule.IOTypes).
const (
	IORead = 1 << iota
	IOWrite
	IOWriteZeroes
	IODiscard
	IOFlush
	IOBlockStatus

	ioDefault = IORead | IOWrite | IOWriteZeroes | IODiscard | IOFlush
)

var ioTypeNames = map[string]int{"read": IORead, "write": IOWrite, "write-zeroes": IOWriteZeroes,
	"discard": IODiscard, "flush": IOFlush, "block-status": IOBlockStatus}

// Rule is one rule of a configuration (or a breakpoint).
type Rule struct {
	Event  block.DebugEvent
	Action Action
	State  int // the state the rule applies in; 0: any
	// inject-error
	Errno       int
	Once        bool
	Immediately bool
	Offset      int64 // sector*512; -1: any
	IOTypes     int
	// set-state
	NewState int
	// suspend (a breakpoint)
	Tag string
}

// Parse reads a configuration. Errors name the line and what was wrong.
func Parse(r io.Reader) ([]Rule, error) {
	var rules []Rule
	var cur map[string]string
	var group string
	var groupLine int
	flush := func() error {
		if cur == nil {
			return nil
		}
		ru, err := ruleFrom(group, cur)
		if err != nil {
			return fmt.Errorf("line %d: [%s]: %v", groupLine, group, err)
		}
		rules = append(rules, ru)
		return nil
	}
	sc := bufio.NewScanner(r)
	for ln := 1; sc.Scan(); ln++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if line[0] == '[' {
			if err := flush(); err != nil {
				return nil, err
			}
			end := strings.IndexByte(line, ']')
			if end < 0 {
				return nil, fmt.Errorf("line %d: unterminated group name", ln)
			}
			group = strings.Fields(line[1:end] + " ")[0]
			if group != "inject-error" && group != "set-state" {
				return nil, fmt.Errorf("line %d: there is no option group '%s'", ln, group)
			}
			cur, groupLine = map[string]string{}, ln
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || cur == nil {
			return nil, fmt.Errorf("line %d: parse error", ln)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		}
		cur[k] = v
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return rules, nil
}

// RuleFrom makes the rule of one group ("inject-error" or "set-state")
// from its options, as a configuration file's group gives them.
func RuleFrom(group string, kv map[string]string) (Rule, error) {
	if group != "inject-error" && group != "set-state" {
		return Rule{}, fmt.Errorf("there is no option group '%s'", group)
	}
	return ruleFrom(group, kv)
}

func ruleFrom(group string, kv map[string]string) (Rule, error) {
	ru := Rule{Errno: 5, Offset: -1, IOTypes: ioDefault}
	name, ok := kv["event"]
	if !ok {
		return ru, fmt.Errorf("missing event")
	}
	if ru.Event, ok = block.DebugEventByName(name); !ok {
		return ru, fmt.Errorf("invalid event name '%s'", name)
	}
	num := func(k string, dst *int64) error {
		v, ok := kv[k]
		if !ok {
			return nil
		}
		n, err := strconv.ParseInt(v, 0, 64)
		if err != nil {
			return fmt.Errorf("parameter '%s' expects a number, not '%s'", k, v)
		}
		*dst = n
		return nil
	}
	boolean := func(k string, dst *bool) error {
		switch v, ok := kv[k]; {
		case !ok:
		case v == "on" || v == "yes" || v == "true":
			*dst = true
		case v == "off" || v == "no" || v == "false":
			*dst = false
		default:
			return fmt.Errorf("parameter '%s' expects 'on' or 'off', not '%s'", k, v)
		}
		return nil
	}
	allowed := map[string]bool{"event": true, "state": true}
	var state int64
	if err := num("state", &state); err != nil {
		return ru, err
	}
	ru.State = int(state)
	switch group {
	case "inject-error":
		ru.Action = ActionInjectError
		for _, k := range []string{"errno", "sector", "once", "immediately", "iotype"} {
			allowed[k] = true
		}
		e, sector := int64(ru.Errno), int64(-1)
		if err := num("errno", &e); err != nil {
			return ru, err
		}
		if err := num("sector", &sector); err != nil {
			return ru, err
		}
		ru.Errno = int(e)
		if sector >= 0 {
			ru.Offset = sector * 512
		}
		if err := boolean("once", &ru.Once); err != nil {
			return ru, err
		}
		if err := boolean("immediately", &ru.Immediately); err != nil {
			return ru, err
		}
		if v, ok := kv["iotype"]; ok {
			ru.IOTypes = 0
			for _, t := range strings.Split(v, ",") {
				bit, ok := ioTypeNames[strings.TrimSpace(t)]
				if !ok {
					return ru, fmt.Errorf("invalid iotype '%s'", t)
				}
				ru.IOTypes |= bit
			}
		}
	case "set-state":
		ru.Action = ActionSetState
		allowed["new_state"] = true
		var ns int64
		if err := num("new_state", &ns); err != nil {
			return ru, err
		}
		ru.NewState = int(ns)
	}
	for k := range kv {
		if !allowed[k] {
			return ru, fmt.Errorf("invalid parameter '%s'", k)
		}
	}
	return ru, nil
}
