package qmp

import (
	"encoding/json"
	"testing"
)

// TestMarshalQEMU: messages come out as qemu-storage-daemon 7.2 prints
// them (the wanted lines are its output, timestamps aside): QDict member
// order, ", " and ": ", QEMU's string escapes. Before, Go's encoding
// printed sorted or field-ordered members without spaces, and qemu-iotests
// that compare a session's text (qsd-jobs) failed on every line.
func TestMarshalQEMU(t *testing.T) {
	type ev struct {
		Event     string         `json:"event"`
		Data      map[string]any `json:"data"`
		Timestamp map[string]int `json:"timestamp"`
	}
	for _, tc := range []struct {
		v    any
		want string
	}{
		{response{Return: map[string]any{}}, `{"return": {}}`},
		{map[string]any{"error": map[string]string{"class": "GenericError", "desc": "NBD server not running"}},
			`{"error": {"class": "GenericError", "desc": "NBD server not running"}}`},
		{ev{"JOB_STATUS_CHANGE", map[string]any{"id": "job0", "status": "created"}, map[string]int{"seconds": 1, "microseconds": 2}},
			`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "JOB_STATUS_CHANGE", "data": {"status": "created", "id": "job0"}}`},
		{map[string]any{"device": "job0", "len": 0, "offset": 0, "speed": 0, "type": "commit"},
			`{"device": "job0", "len": 0, "offset": 0, "speed": 0, "type": "commit"}`},
		// QAPI inserts major, minor, micro; micro and minor share a
		// bucket, the newer first.
		{json.RawMessage(`{"major": 7, "minor": 2, "micro": 22}`), `{"micro": 22, "minor": 2, "major": 7}`},
		{[]map[string]any{{"auto-finalize": true, "io-status": "ok", "device": "job0", "auto-dismiss": true, "busy": false, "len": 0,
			"offset": 0, "status": "ready", "paused": false, "speed": 0, "ready": true, "type": "commit"}},
			`[{"auto-finalize": true, "io-status": "ok", "device": "job0", "auto-dismiss": true, "busy": false, "len": 0, "offset": 0, "status": "ready", "paused": false, "speed": 0, "ready": true, "type": "commit"}]`},
		{[]any{}, `[]`},
		{nil, `null`},
		{"a\"b\\c\n\x01<&>é😀\x7f", `"a\"b\\c\n\u0001<&>\u00E9\uD83D\uDE00\u007F"`},
		{json.Number("-12"), `-12`},
	} {
		got, err := marshalQEMU(tc.v)
		if err != nil {
			t.Fatalf("%v: %v", tc.v, err)
		}
		if string(got) != tc.want {
			t.Errorf("got  %s\nwant %s", got, tc.want)
		}
		var a, b any
		if err := json.Unmarshal(got, &a); err != nil {
			t.Fatalf("%s is not JSON: %v", got, err)
		}
		want, _ := json.Marshal(tc.v)
		json.Unmarshal(want, &b)
		if ga, _ := json.Marshal(a); string(ga) != func() string { gb, _ := json.Marshal(b); return string(gb) }() {
			t.Errorf("%s does not decode to the value of %s", got, want)
		}
	}
}
