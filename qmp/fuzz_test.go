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

// FuzzRequest checks whole requests against the real command table: the
// envelope, then each command's argument decoding (and, for transaction,
// each action's), never panic and always give a QMP error or a value.
func FuzzRequest(f *testing.F) {
	for _, s := range []string{
		`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"a","file":{"driver":"file","filename":"/x"},"cache":{"direct":true,"no-flush":false}}}`,
		`{"execute":"blockdev-add","arguments":{"driver":"raw","file":"f","backing":null}}`,
		`{"execute":"transaction","arguments":{"actions":[{"type":"blockdev-snapshot-sync","data":{"device":"d","snapshot-file":"/s"}},{"type":"abort"}]}}`,
		`{"execute":"x-blockdev-set-iothread","arguments":{"node-name":"n","iothread":null}}`,
		`{"execute":"block-set-io-throttle","arguments":{"device":"d","bps":1,"bps_rd":0,"bps_wr":0,"iops":0,"iops_rd":0,"iops_wr":0}}`,
		`{"execute":"blockdev-create","arguments":{"job-id":"j","options":{"driver":"qcow2","file":"f","size":1}}}`,
		`{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","path":"/p"}}}`,
	} {
		f.Add([]byte(s))
	}
	reg := NewRegistry()
	d := &Daemon{}
	d.register(reg)
	f.Fuzz(func(t *testing.T, msg []byte) {
		req, qerr := parseRequest(msg)
		if qerr != nil {
			if qerr.Class == "" || qerr.Desc == "" {
				t.Fatalf("empty error %+v", qerr)
			}
			return
		}
		cmd := reg.lookup(req.Execute)
		if cmd == nil {
			return
		}
		args, qerr := cmd.decode(req.Arguments)
		if qerr != nil {
			if qerr.Class != GenericError || qerr.Desc == "" {
				t.Fatalf("argument error %+v", qerr)
			}
			return
		}
		if ta, ok := args.(*TransactionArgs); ok {
			st := &txnState{claimed: map[string]int{}}
			for i, a := range ta.Actions {
				if _, err := d.makeAction(st, i, a); err != nil && err.Error() == "" {
					t.Fatal("empty action error")
				}
			}
		}
	})
}
