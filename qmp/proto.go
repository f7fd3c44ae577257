package qmp

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Error classes QEMU's QMP uses (qapi/error.json). Clients switch on
// these, so they are QEMU's exact spellings.
const (
	GenericError        = "GenericError"
	CommandNotFound     = "CommandNotFound"
	DeviceNotActive     = "DeviceNotActive"
	DeviceNotFound      = "DeviceNotFound"
	KVMMissingCap       = "KVMMissingCap"
	defaultMaxMessage   = 1 << 20 // bytes in one request, by default
	maxNesting          = 1024    // QEMU's JSON parser's nesting limit
	eventQueueLength    = 256     // events buffered per client before it is dropped
	greetingQEMUVersion = 9       // major version reported in the greeting
)

// Error is a QMP error reply: a class and a human-readable description.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return e.Class + ": " + e.Desc }

// Errorf makes a GenericError.
func Errorf(format string, args ...any) *Error {
	return &Error{Class: GenericError, Desc: fmt.Sprintf(format, args...)}
}

// asError turns any error into a QMP error (GenericError unless it is
// one already).
func asError(err error) *Error {
	var qe *Error
	if errors.As(err, &qe) {
		return qe
	}
	return &Error{Class: GenericError, Desc: err.Error()}
}

// Timestamp is an event's time, as QMP writes it.
type Timestamp struct {
	Seconds      int64 `json:"seconds"`
	Microseconds int64 `json:"microseconds"`
}

func stamp(t time.Time) Timestamp {
	return Timestamp{Seconds: t.Unix(), Microseconds: int64(t.Nanosecond() / 1000)}
}

// Event is an asynchronous message to every client that negotiated
// capabilities.
type Event struct {
	Event     string    `json:"event"`
	Data      any       `json:"data,omitempty"`
	Timestamp Timestamp `json:"timestamp"`
}

type response struct {
	Return any             `json:"return,omitempty"`
	Error  *Error          `json:"error,omitempty"`
	ID     json.RawMessage `json:"id,omitempty"`
}

// MarshalJSON writes "return" even when it is empty ({}), and never both.
func (r response) MarshalJSON() ([]byte, error) {
	type withReturn struct {
		Return any             `json:"return"`
		ID     json.RawMessage `json:"id,omitempty"`
	}
	type withError struct {
		Error *Error          `json:"error"`
		ID    json.RawMessage `json:"id,omitempty"`
	}
	if r.Error != nil {
		return json.Marshal(withError{r.Error, r.ID})
	}
	ret := r.Return
	if ret == nil {
		ret = struct{}{}
	}
	return json.Marshal(withReturn{ret, r.ID})
}

// request is one parsed client message.
type request struct {
	Execute   string
	Arguments json.RawMessage
	ID        json.RawMessage
	OOB       bool
}

// parseRequest checks one JSON text as QMP input: an object with a string
// member "execute" (or "exec-oob"), an optional object "arguments" and an
// optional "id" of any type, and nothing else. The id is returned even
// when the request is refused, so the error reply can carry it.
func parseRequest(msg []byte) (request, *Error) {
	var r request
	var top map[string]json.RawMessage
	if err := json.Unmarshal(msg, &top); err != nil {
		var v any
		if json.Unmarshal(msg, &v) == nil {
			return r, Errorf("QMP input must be a JSON object")
		}
		return r, Errorf("JSON parse error, %s", jsonReason(err))
	}
	if top == nil {
		return r, Errorf("QMP input must be a JSON object")
	}
	if duplicateKey(msg) {
		// encoding/json keeps the last of two equal members; QEMU's
		// parser refuses the message (and so never sees its id).
		return request{}, Errorf("JSON parse error, duplicate key")
	}
	if id, ok := top["id"]; ok {
		r.ID = id
	}
	exec, hasExec := top["execute"]
	oob, hasOOB := top["exec-oob"]
	switch {
	case hasExec && hasOOB:
		return r, Errorf("QMP input must not have both 'execute' and 'exec-oob'")
	case hasOOB:
		exec, r.OOB = oob, true
	case !hasExec:
		return r, Errorf("QMP input lacks member 'execute'")
	}
	if err := json.Unmarshal(exec, &r.Execute); err != nil {
		return r, Errorf("QMP input member 'execute' must be a string")
	}
	for k, v := range top {
		switch k {
		case "execute", "exec-oob", "id":
		case "arguments":
			if len(v) == 0 || v[0] != '{' {
				return r, Errorf("QMP input member 'arguments' must be an object")
			}
			r.Arguments = v
		default:
			return r, Errorf("QMP input member '%s' is unexpected", k)
		}
	}
	return r, nil
}

// duplicateKey reports whether an object anywhere in msg (valid JSON)
// has two members of the same name.
func duplicateKey(msg []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(msg))
	type level struct {
		keys    map[string]bool // nil: an array
		wantKey bool
	}
	var stack []level
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		top := len(stack) - 1
		if top >= 0 && stack[top].keys != nil && stack[top].wantKey {
			if k, ok := tok.(string); ok {
				if stack[top].keys[k] {
					return true
				}
				stack[top].keys[k] = true
				stack[top].wantKey = false
				continue
			}
		}
		if top >= 0 && stack[top].keys != nil {
			stack[top].wantKey = true // a value was read: a key comes next
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, level{keys: map[string]bool{}, wantKey: true})
		case json.Delim('['):
			stack = append(stack, level{})
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:top]
			if top > 0 && stack[top-1].keys != nil {
				stack[top-1].wantKey = true
			}
		}
	}
}

func jsonReason(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("%s at byte %d", se.Error(), se.Offset)
	}
	return err.Error()
}

// Splitter cuts a byte stream into top-level JSON texts without parsing
// them: it tracks strings, escapes and the nesting of braces and
// brackets. A text longer than the limit is skipped to its end and
// reported as too large; a text nested deeper than QEMU allows, a stray
// closing bracket or a bare scalar is reported and skipped, so one bad
// message never desynchronises the stream.
type Splitter struct {
	r   *bufio.Reader
	max int
	buf []byte
}

// NewSplitter reads texts of at most max bytes from r (max <= 0: 1 MiB).
func NewSplitter(r io.Reader, max int) *Splitter {
	if max <= 0 {
		max = defaultMaxMessage
	}
	return &Splitter{r: bufio.NewReaderSize(r, 64<<10), max: max}
}

// errTooLarge, errBadText: a message the splitter skipped.
type splitError struct{ desc string }

func (e *splitError) Error() string { return e.desc }

// Next returns the next text. A *splitError means one bad text was
// skipped and the stream can go on; any other error (io.EOF) ends it.
func (s *Splitter) Next() ([]byte, error) {
	s.buf = s.buf[:0]
	depth := 0
	inStr, esc := false, false
	over, tooDeep := false, false
	started := false
	scalar := false // a top-level text that is not an object or array
	for {
		c, err := s.r.ReadByte()
		if err != nil {
			if err == io.EOF && started {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if !started {
			switch c {
			case ' ', '\t', '\r', '\n':
				continue
			case '{', '[':
				started = true
			case '}', ']':
				return nil, &splitError{fmt.Sprintf("JSON parse error, stray '%c'", c)}
			default:
				started, scalar = true, true
			}
		}
		if scalar {
			// A bare number, literal or string: never a valid QMP input.
			// It ends at the closing quote of a string, or else before
			// whitespace or a bracket.
			strText := len(s.buf) > 0 && s.buf[0] == '"'
			if len(s.buf) == 0 {
				s.buf = append(s.buf, c)
				inStr = c == '"'
				continue
			}
			if strText {
				switch {
				case esc:
					esc = false
				case c == '\\':
					esc = true
				case c == '"':
					return nil, &splitError{"QMP input must be a JSON object"}
				}
				continue
			}
			switch c {
			case ' ', '\t', '\r', '\n':
				return nil, &splitError{"QMP input must be a JSON object"}
			case '{', '[', '}', ']', '"':
				_ = s.r.UnreadByte()
				return nil, &splitError{"QMP input must be a JSON object"}
			}
			continue
		}
		if !over {
			if len(s.buf) >= s.max {
				over = true
				s.buf = s.buf[:0]
			} else {
				s.buf = append(s.buf, c)
			}
		}
		if inStr {
			switch {
			case esc:
				esc = false
			case c == '\\':
				esc = true
			case c == '"':
				inStr = false
			}
			continue
		}
		switch c {
		case '"':
			inStr = true
		case '{', '[':
			depth++
			if depth > maxNesting {
				tooDeep = true
			}
		case '}', ']':
			depth--
			if depth == 0 {
				switch {
				case over:
					return nil, &splitError{fmt.Sprintf("JSON message exceeds the limit of %d bytes", s.max)}
				case tooDeep:
					return nil, &splitError{fmt.Sprintf("JSON nesting depth limit (%d) exceeded", maxNesting)}
				}
				return s.buf, nil
			}
		}
	}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
