package servecmd

import (
	"encoding/json"
	"testing"
)

// TestKeyvalLists: numbered groups become lists, as QEMU's keyval parser
// makes them ("file.inject-error.0.event=read_aio" on --blockdev); a group
// with a gap or a name among the numbers stays an object. Before, every
// group was an object, and a blkdebug node's rules given on the command
// line failed to decode.
func TestKeyvalLists(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"driver=blkdebug,inject-error.0.event=read_aio,inject-error.0.errno=5,inject-error.1.event=write_aio",
			`{"driver":"blkdebug","inject-error":[{"errno":"5","event":"read_aio"},{"event":"write_aio"}]}`},
		{"a.0=x,a.2=y", `{"a":{"0":"x","2":"y"}}`},
		{"a.0=x,a.b=y", `{"a":{"0":"x","b":"y"}}`},
		{"a.00=x", `{"a":{"00":"x"}}`},
		{"file.filename=f,x=1", `{"file":{"filename":"f"},"x":"1"}`},
	} {
		m, err := keyval(c.in, "")
		if err != nil {
			t.Fatalf("%s: %v", c.in, err)
		}
		b, _ := json.Marshal(m)
		if string(b) != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.in, b, c.want)
		}
	}
}
