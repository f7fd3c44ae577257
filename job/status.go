package job

import (
	"errors"
	"fmt"
	"strconv"
	"syscall"
)

// Status is a job's state (QEMU's JobStatus; the names are the QMP ones).
type Status uint8

const (
	Undefined Status = iota // never seen by users: before Create returns
	Created                 // created, not started
	Running                 // working
	Paused                  // parked at a pause point (drain or user pause) while running
	Ready                   // source and target in sync; waiting for complete (mirror)
	Standby                 // parked at a pause point while ready
	Waiting                 // run finished, waiting for its group (Txn); immediate for a job alone
	Pending                 // waiting for finalize (ManualFinalize)
	Aborting                // failing or cancelled: abort callbacks run
	Concluded               // finished; result kept for query until dismissed
	Null                    // dismissed: gone from the manager
	numStatus
)

var statusNames = [numStatus]string{
	"undefined", "created", "running", "paused", "ready", "standby",
	"waiting", "pending", "aborting", "concluded", "null",
}

func (s Status) String() string {
	if s < numStatus {
		return statusNames[s]
	}
	return "status(" + strconv.Itoa(int(s)) + ")"
}

// transitions[from] has bit to set when from → to is legal. The set is
// QEMU's job state machine (job.c), including ready → running, which a
// mirror whose copy mode changes needs.
var transitions = [numStatus]uint16{
	Undefined: bits(Created),
	Created:   bits(Running, Aborting, Null),
	Running:   bits(Paused, Ready, Waiting, Aborting),
	Paused:    bits(Running),
	Ready:     bits(Running, Standby, Waiting, Aborting),
	Standby:   bits(Ready),
	Waiting:   bits(Pending, Aborting),
	Pending:   bits(Aborting, Concluded),
	Aborting:  bits(Aborting, Concluded),
	Concluded: bits(Null),
	Null:      0,
}

func bits(ss ...Status) uint16 {
	var b uint16
	for _, s := range ss {
		b |= 1 << s
	}
	return b
}

// CanTransition reports whether from → to is a legal status change.
func CanTransition(from, to Status) bool {
	return from < numStatus && to < numStatus && transitions[from]&(1<<to) != 0
}

// Verb is an operation a user asks of a job.
type Verb uint8

const (
	VerbCancel Verb = iota
	VerbPause
	VerbResume
	VerbSetSpeed
	VerbComplete
	VerbFinalize
	VerbDismiss
	numVerbs
)

var verbNames = [numVerbs]string{"cancel", "pause", "resume", "set-speed", "complete", "finalize", "dismiss"}

func (v Verb) String() string {
	if v < numVerbs {
		return verbNames[v]
	}
	return "verb(" + strconv.Itoa(int(v)) + ")"
}

// verbs[v] has bit s set when v is allowed in status s.
var verbs = [numVerbs]uint16{
	VerbCancel:   bits(Created, Running, Paused, Ready, Standby, Waiting, Pending),
	VerbPause:    bits(Created, Running, Paused, Ready, Standby),
	VerbResume:   bits(Created, Running, Paused, Ready, Standby),
	VerbSetSpeed: bits(Created, Running, Paused, Ready, Standby),
	VerbComplete: bits(Ready, Standby),
	VerbFinalize: bits(Pending),
	VerbDismiss:  bits(Concluded),
}

// Allowed reports whether verb v may be applied in status s.
func Allowed(v Verb, s Status) bool {
	return v < numVerbs && s < numStatus && verbs[v]&(1<<s) != 0
}

// VerbError is returned when a verb is not allowed in the job's status.
type VerbError struct {
	ID     string
	Verb   Verb
	Status Status
}

func (e *VerbError) Error() string {
	return fmt.Sprintf("job %q: %s is not allowed in status %s", e.ID, e.Verb, e.Status)
}

// ErrCancelled is the result of a cancelled job.
var ErrCancelled = errors.New("job cancelled")

// ErrorPolicy says what an I/O error of a job does (QEMU's
// on-source-error / on-target-error, BlockdevOnError).
type ErrorPolicy uint8

const (
	PolicyReport ErrorPolicy = iota // fail the job (default)
	PolicyIgnore                    // record it and go on (the work is retried)
	PolicyStop                      // record it and pause the job until resumed
	PolicyEnospc                    // stop on ENOSPC, report anything else
)

var policyNames = [...]string{"report", "ignore", "stop", "enospc"}

func (p ErrorPolicy) String() string {
	if int(p) < len(policyNames) {
		return policyNames[p]
	}
	return "policy(" + strconv.Itoa(int(p)) + ")"
}

// ParsePolicy parses a QMP policy name.
func ParsePolicy(s string) (ErrorPolicy, error) {
	for i, n := range policyNames {
		if n == s {
			return ErrorPolicy(i), nil
		}
	}
	return 0, fmt.Errorf("job: unknown error policy %q (want report, ignore, stop or enospc)", s)
}

// Action is what a policy decided for one error (BLOCK_JOB_ERROR's action).
type Action uint8

const (
	ActionReport Action = iota
	ActionIgnore
	ActionStop
)

var actionNames = [...]string{"report", "ignore", "stop"}

func (a Action) String() string {
	if int(a) < len(actionNames) {
		return actionNames[a]
	}
	return "action(" + strconv.Itoa(int(a)) + ")"
}

func (p ErrorPolicy) decide(err error) Action {
	switch p {
	case PolicyIgnore:
		return ActionIgnore
	case PolicyStop:
		return ActionStop
	case PolicyEnospc:
		if errors.Is(err, syscall.ENOSPC) {
			return ActionStop
		}
	}
	return ActionReport
}

// IOError is an I/O error of a job's copy: on its source (reads) or its
// target (writes). Drivers return it from Iterate after they have put the
// failed range back on their to-do list, so that ignore and stop retry it.
type IOError struct {
	Target bool   // the target (else the source)
	Op     string // "read", "write", …
	Off    int64
	Err    error
}

func (e *IOError) Error() string {
	side := "source"
	if e.Target {
		side = "target"
	}
	return fmt.Sprintf("%s %s at %d: %v", side, e.Op, e.Off, e.Err)
}

func (e *IOError) Unwrap() error { return e.Err }
