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
		// QEMU's older pseudo-protocol (qemu-iotests 058).
		{"nbd:unix:/run/x.sock", "unix", "/run/x.sock", "", "nbd+unix://?socket=/run/x.sock"},
		{"nbd:unix:/run/x.sock:exportname=snap:1", "unix", "/run/x.sock", "snap:1", "nbd+unix:///snap:1?socket=/run/x.sock"},
		{"nbd:localhost:10810", "tcp", "localhost:10810", "", "nbd://localhost:10810"},
		{"nbd:[::1]:7:exportname=vm", "tcp", "[::1]:7", "vm", "nbd://[::1]:7/vm"},
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
		{"nbd:unix:", "no socket path"},
		{"nbd:localhost", "want nbd:HOST:PORT"},
		{"nbd:localhost:99999", "bad port"},
	} {
		if _, err := nbdc.ParseURI(c.in); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.in, err, c.want)
		}
	}
	if nbdc.IsURI("/var/tmp/nbd://x") || !nbdc.IsURI("nbd+unix:///?socket=/s") {
		t.Error("IsURI")
	}
}

// FuzzParseURI: a name from the command line or from an image's backing
// file field (untrusted) never panics, and what parses has an address.
func FuzzParseURI(f *testing.F) {
	for _, s := range []string{"nbd://h:1/x", "nbd+unix:///e?socket=/s", "nbd:unix:/s:exportname=e", "nbd:[::1]:7", "nbd:", "nbds://h/?tls-certificates=/c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := nbdc.ParseURI(s)
		if err != nil {
			return
		}
		if u.Addr == "" || (u.Network != "tcp" && u.Network != "unix") {
			t.Fatalf("%q parsed to %+v", s, u)
		}
		_ = u.Canonical()
	})
}
