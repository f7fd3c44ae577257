package block

import (
	"errors"
	"strconv"
	"syscall"
)

// Kind classifies a *Error. The set is small and stable so callers can switch
// on it; the wrapped Err carries the detail (usually a syscall.Errno).
type Kind uint8

const (
	// Io is a failure of the underlying storage or of the request itself
	// (EIO, ENOSPC, EACCES on a read-only node, ENOMEDIUM without a node).
	Io Kind = iota + 1
	// InvalidFormat reports image metadata that does not follow the format.
	InvalidFormat
	// Unsupported reports an operation or feature the driver does not offer.
	Unsupported
	// Corrupt reports metadata that is well-formed but inconsistent: the
	// disk lied, not the caller.
	Corrupt
	// OutOfBounds reports a request outside what the node accepts
	// (negative offset, past a limit).
	OutOfBounds
	// Overflow reports arithmetic that would overflow int64 or a named limit.
	Overflow
)

var kindNames = [...]string{
	Io:            "io",
	InvalidFormat: "invalid format",
	Unsupported:   "unsupported",
	Corrupt:       "corrupt",
	OutOfBounds:   "out of bounds",
	Overflow:      "overflow",
}

func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Error is the one error type at the block boundary: it names the operation,
// the node, the byte offset and the cause. Build it only on failure paths.
type Error struct {
	Kind   Kind
	Op     Op
	Node   string
	Offset int64
	Err    error
}

func (e *Error) Error() string {
	s := "block: " + e.Op.String()
	if e.Node != "" {
		s += " on " + e.Node
	}
	s += " at " + strconv.FormatInt(e.Offset, 10) + ": " + e.Kind.String()
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the cause, so errors.Is(err, syscall.EIO) works.
func (e *Error) Unwrap() error { return e.Err }

// Is matches a *Error target with only Kind set (for example
// errors.Is(err, &block.Error{Kind: block.Unsupported})).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Kind == e.Kind && t.Op == 0 && t.Node == "" && t.Err == nil
}

// IsKind reports whether err is a *Error of kind k.
func IsKind(err error, k Kind) bool {
	var e *Error
	return errors.As(err, &e) && e.Kind == k
}

// Errno returns the syscall.Errno err wraps, or EIO for any other non-nil
// error, or 0 for nil. Front ends that speak errno (NBD, virtio) use it.
func Errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		return en
	}
	return syscall.EIO
}

func newError(k Kind, op Op, n *Node, off int64, err error) *Error {
	e := &Error{Kind: k, Op: op, Offset: off, Err: err}
	if n != nil {
		e.Node = n.name
	}
	return e
}

// ErrClosed reports an operation on a node or front end that was closed.
var ErrClosed = errors.New("block: closed")
