package nbd_test

import (
	"strings"
	"testing"

	nbdc "github.com/ringblk/ringblk/drivers/nbd"
)

func TestParseURI(t *testing.T) {
	for _, c := range []struct {
		in, network, addr, export, canon string
	}{
		{"nbd://example.org/disk", "tcp", "example.org:10809", "disk", "nbd://example.org:10809/disk"},
		{"nbd://127.0.0.1:10999", "tcp", "127.0.0.1:10999", "", "nbd://127.0.0.1:10999"},
		{"nbd+tcp://[::1]:7/a/b", "tcp", "[::1]:7", "a/b", "nbd://[::1]:7/a/b"},
		{"nbd+unix:///?socket=/run/x.sock", "unix", "/run/x.sock", "", "nbd+unix://?socket=/run/x.sock"},
		{"nbd+unix:///vm?socket=rel.sock", "unix", "rel.sock", "vm", "nbd+unix:///vm?socket=rel.sock"},
		{"nbds+unix:///?socket=/s&tls-certificates=/c", "unix", "/s", "", "nbds+unix://?socket=/s"},
	} {
		u, err := nbdc.ParseURI(c.in)
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if u.Network != c.network || u.Addr != c.addr || u.Export != c.export || u.Canonical() != c.canon {
			t.Errorf("%s: %+v (canonical %s)", c.in, u, u.Canonical())
		}
	}
	for _, c := range []struct{ in, want string }{
		{"nbd:///disk", "names no host"},
		{"nbd://h:99999/", "bad port"},
		{"nbd://h/x?socket=/s", "unexpected query"},
		{"nbd+unix://h/?socket=/s", "takes no host"},
		{"nbd+unix:///x", "exactly one ?socket"},
		{"nbd+unix:///x?socket=/a&socket=/b", "exactly one ?socket"},
		{"nbds://h/x", "tls-certificates"},
		{"nbdx://h/x", "unknown scheme"},
	} {
		if _, err := nbdc.ParseURI(c.in); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.in, err, c.want)
		}
	}
	if nbdc.IsURI("/var/tmp/nbd://x") || !nbdc.IsURI("nbd+unix:///?socket=/s") {
		t.Error("IsURI")
	}
}
