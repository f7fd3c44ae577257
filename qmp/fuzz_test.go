package qmp

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
)

// FuzzSplitter feeds arbitrary bytes through the splitter and the request
// parser: no panic, no text over the cap, every text it returns is one
// balanced JSON value that parseRequest answers, and it always reaches
// the end of the input.
func FuzzSplitter(f *testing.F) {
	for _, s := range []string{
		`{"execute":"qmp_capabilities"}`,
		`{"execute":"x","arguments":{"a":"}\"{"},"id":[1,{"b":2}]}`,
		`[[[[`, `}}}`, `"unterminated`, `123 {"execute":"y"}`, `{"a":"\\\""}`,
		"\x00\xff{\"execute\"\x00}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		const max = 256
		sp := NewSplitter(bytes.NewReader(in), max)
		for i := 0; i <= len(in)+1; i++ {
			msg, err := sp.Next()
			if err != nil {
				var se *splitError
				if errors.As(err, &se) {
					continue
				}
				if err != io.EOF && err != io.ErrUnexpectedEOF {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if len(msg) > max {
				t.Fatalf("text of %d bytes over the cap", len(msg))
			}
			if msg[0] != '{' && msg[0] != '[' {
				t.Fatalf("text %q does not start a JSON container", msg)
			}
			if _, qerr := parseRequest(msg); qerr == nil && !json.Valid(msg) {
				t.Fatalf("invalid JSON %q accepted", msg)
			}
		}
		t.Fatal("splitter made no progress")
	})
}
