package qmp

import "testing"

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
