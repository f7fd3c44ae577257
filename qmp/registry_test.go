package qmp

import (
	"strings"
	"testing"
)

type embeddedBase struct {
	ID    string `json:"id"`
	Speed int64  `json:"speed" qmp:"optional"`
}

type withBase struct {
	embeddedBase
	Device string `json:"device"`
}

// TestEmbeddedArguments: the members of an embedded struct (a QAPI base
// type) are the command's own: required, optional and typed alike.
func TestEmbeddedArguments(t *testing.T) {
	r := NewRegistry()
	r.Register("x", &withBase{}, nil)
	c := r.lookup("x")
	v, qerr := c.decode([]byte(`{"id":"j","device":"d","speed":5}`))
	if qerr != nil {
		t.Fatal(qerr)
	}
	if a := v.(*withBase); a.ID != "j" || a.Speed != 5 || a.Device != "d" {
		t.Fatalf("decoded %+v", a)
	}
	if _, qerr := c.decode([]byte(`{"device":"d"}`)); qerr == nil || qerr.Desc != "Parameter 'id' is missing" {
		t.Fatalf("missing embedded member: %v", qerr)
	}
	if _, qerr := c.decode([]byte(`{"id":"j","device":"d","speed":"fast"}`)); qerr == nil || qerr.Desc != "Invalid parameter type for 'speed', expected: integer" {
		t.Fatalf("mistyped embedded member: %v", qerr)
	}
}

// TestNullArgumentOverTheWire: a JSON null reaches a type that accepts it
// (blockdev-add's backing: null, a StrOrNull) and is refused for any other
// (QEMU: a null is not a string). encoding/json sets a pointer field to nil
// on null without calling its UnmarshalJSON, so "backing": null used to
// decode as if the member were absent: the overlay then opened its backing
// file from the header (and failed on the lock of the node already open).
func TestNullArgumentOverTheWire(t *testing.T) {
	d, _ := testDaemon(t, 1)
	reg := NewRegistry()
	d.register(reg)
	v, qerr := reg.lookup("blockdev-add").decode([]byte(`{"driver":"qcow2","node-name":"ov","file":"f","backing":null}`))
	if qerr != nil {
		t.Fatal(qerr)
	}
	if b := v.(*AddOptions).Backing; b == nil || !b.Null {
		t.Fatalf("backing: null decoded as %+v, want a null StrOrNull", b)
	}
	// Commands that run as a one-action transaction hand their decoded
	// arguments over as they are: re-encoded, an absent auto-finalize
	// (a nil *bool) came back as null.
	d.blockdevAdd(&AddOptions{Driver: "null-co", NodeName: "src", Size: 1 << 20})
	d.blockdevAdd(&AddOptions{Driver: "null-co", NodeName: "tgt", Size: 1 << 20})
	cmd := reg.lookup("blockdev-backup")
	args, qerr := cmd.decode([]byte(`{"job-id":"b0","device":"src","target":"tgt","sync":"full"}`))
	if qerr != nil {
		t.Fatal(qerr)
	}
	if _, err := cmd.fn(nil, args); err != nil {
		t.Fatalf("blockdev-backup: %v", err)
	}
	if j := d.jobs.Get("b0"); j != nil {
		j.Wait()
	}
	for cmd, args := range map[string]string{
		"blockdev-del":           `{"node-name":null}`,
		"blockdev-mirror":        `{"device":"a","target":"b","sync":"full","auto-finalize":null}`,
		"block-dirty-bitmap-add": `{"node":"a","name":null}`,
	} {
		_, qerr := reg.lookup(cmd).decode([]byte(args))
		if qerr == nil || !strings.HasPrefix(qerr.Desc, "Invalid parameter type for '") {
			t.Errorf("%s %s: %v, want an invalid parameter type", cmd, args, qerr)
		}
	}
}

// TestNestedMembersMatchExactly: members of nested objects must match
// their names exactly, as QEMU's are: encoding/json alone took
// "FILENAME" for "filename" (and with both given, the last one), and
// reported an unknown member in its own words. Each is now "Parameter
// 'x.y' is unexpected".
func TestNestedMembersMatchExactly(t *testing.T) {
	d, _ := testDaemon(t, 1)
	reg := NewRegistry()
	d.register(reg)
	for _, tc := range []struct{ cmd, args, want string }{
		{"blockdev-add", `{"driver":"qcow2","node-name":"a","file":{"driver":"file","FILENAME":"/x"}}`, "Parameter 'file.FILENAME' is unexpected"},
		{"blockdev-add", `{"driver":"qcow2","node-name":"a","file":{"driver":"file","filename":"/x","Filename":"/y"}}`, "Parameter 'file.Filename' is unexpected"},
		{"blockdev-add", `{"driver":"qcow2","node-name":"a","file":{"driver":"file","filename":"/x","bogus":1}}`, "Parameter 'file.bogus' is unexpected"},
		{"blockdev-add", `{"driver":"qcow2","node-name":"a","file":{"driver":"file","filename":"/x","Ref":"b"}}`, "Parameter 'file.Ref' is unexpected"},
		{"blockdev-add", `{"driver":"file","node-name":"a","filename":"/x","cache":{"Direct":true}}`, "Parameter 'cache.Direct' is unexpected"},
		{"nbd-server-start", `{"addr":{"type":"unix","PATH":"/s"}}`, "Parameter 'addr.PATH' is unexpected"},
	} {
		_, qerr := reg.lookup(tc.cmd).decode([]byte(tc.args))
		if qerr == nil || qerr.Desc != tc.want {
			t.Errorf("%s %s: %v, want %q", tc.cmd, tc.args, qerr, tc.want)
		}
	}
	if _, qerr := reg.lookup("blockdev-add").decode([]byte(`{"driver":"file","node-name":"a","filename":"/x","cache":{"direct":true,"no-flush":false}}`)); qerr != nil {
		t.Fatalf("exact members refused: %v", qerr)
	}
}

// TestDuplicateKeysRefused: a message with two members of one name, at
// any depth, is refused as QEMU's parser refuses it; encoding/json kept
// the last one, so {"node-name":"a","node-name":"b"} deleted b. Equal
// names in different objects are fine.
func TestDuplicateKeysRefused(t *testing.T) {
	for _, msg := range []string{
		`{"execute":"blockdev-del","arguments":{"node-name":"a","node-name":"b"}}`,
		`{"execute":"x","id":1,"id":2}`,
		`{"execute":"transaction","arguments":{"actions":[{"type":"abort","data":{"a":[1,{"k":1,"k":2}]}}]}}`,
	} {
		if _, qerr := parseRequest([]byte(msg)); qerr == nil || qerr.Desc != "JSON parse error, duplicate key" {
			t.Errorf("%s: %v, want a duplicate key error", msg, qerr)
		}
	}
	for _, msg := range []string{
		`{"execute":"transaction","arguments":{"actions":[{"type":"abort","data":{}},{"type":"abort","data":{"x":{"type":1}}}]}}`,
		`{"execute":"x","arguments":{"a":{"k":[{"k":1},{"k":2}]},"b":{"k":{"a":1}}},"id":"k"}`,
	} {
		if _, qerr := parseRequest([]byte(msg)); qerr != nil {
			t.Errorf("%s: %v", msg, qerr)
		}
	}
}
