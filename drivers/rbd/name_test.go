package rbd

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestParseName: QEMU's rbd: filename syntax, escapes, our options and
// librados pass-through options; String reads back.
func TestParseName(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Spec
	}{
		{"rbd:rbd/img", Spec{Pool: "rbd", Image: "img"}},
		{"rbd:p/ns/img@snap", Spec{Pool: "p", Namespace: "ns", Image: "img", Snap: "snap"}},
		{"rbd:p/img:conf=/etc/ceph/x.conf:id=client.ringblk:keyring=/k",
			Spec{Pool: "p", Image: "img", Conf: "/etc/ceph/x.conf", User: "ringblk", Keyring: "/k"}},
		{`rbd:p/im\:g\@x@s:mon_host=1.2.3.4\:6789:rbd_cache=false:timeout=2.5`,
			Spec{Pool: "p", Image: "im:g@x", Snap: "s", Timeout: 2500 * time.Millisecond,
				Options: []Option{{"mon_host", "1.2.3.4:6789"}, {"rbd_cache", "false"}}}},
		{"rbd:p/img:timeout=0", Spec{Pool: "p", Image: "img", Timeout: -1}},
		{"rbd:p/img:timeout=1m", Spec{Pool: "p", Image: "img", Timeout: time.Minute}},
	} {
		got, err := ParseName(c.in)
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %+v, want %+v", c.in, got, c.want)
		}
		again, err := ParseName(got.String())
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Errorf("%s: String %q reads back as %+v (%v)", c.in, got.String(), again, err)
		}
	}
}

// TestParseNameErrors: each malformed name is refused, naming the part
// that is wrong.
func TestParseNameErrors(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"rbd:img", "expected pool/image"},
		{"rbd:a/b/c/d", "expected pool/image"},
		{"rbd:/img", "must not be empty"},
		{"rbd:p/", "must not be empty"},
		{"rbd:p/img@", "empty snapshot name"},
		{"rbd:p/img@a@b", "more than one '@'"},
		{"rbd:p/img:novalue", `option "novalue" is not name=value`},
		{"rbd:p/img:timeout=soon", `timeout "soon"`},
		{"nbd:p/img", "does not start with"},
	} {
		_, err := ParseName(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.in, err, c.want)
		}
	}
}

// TestFromOptions: the json:/--image-opts keys QEMU's rbd driver takes.
func TestFromOptions(t *testing.T) {
	got, err := FromOptions(map[string]string{"driver": "rbd", "pool": "p", "namespace": "n", "image": "i",
		"snapshot": "s", "conf": "/c", "user": "u", "key-secret": "KEY", "server.0.host": "10.0.0.1",
		"server.0.port": "6789", "server.1.host": "10.0.0.2"})
	want := Spec{Pool: "p", Namespace: "n", Image: "i", Snap: "s", Conf: "/c", User: "u", Key: "KEY",
		Options: []Option{{"mon_host", "10.0.0.1:6789,10.0.0.2"}}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("%+v %v, want %+v", got, err, want)
	}
	if strings.Contains(got.String(), "KEY") {
		t.Errorf("String shows the key: %s", got.String())
	}
	for _, bad := range []map[string]string{
		{"driver": "rbd", "pool": "p"},
		{"driver": "rbd", "pool": "p", "image": "i", "imgae": "typo"},
		{"driver": "file", "pool": "p", "image": "i"},
		{"driver": "rbd", "pool": "p", "image": "i", "server.0.port": "1"},
	} {
		if _, err := FromOptions(bad); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

// FuzzParseName: never panics; what parses prints as a name that parses
// to the same Spec.
func FuzzParseName(f *testing.F) {
	for _, s := range []string{"rbd:p/i", `rbd:p/n/i@s:conf=/x:a\:b=c`, "rbd:p/i:timeout=1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ParseName(in)
		if err != nil {
			return
		}
		again, err := ParseName(s.String())
		if err != nil {
			t.Fatalf("%q -> %q: %v", in, s.String(), err)
		}
		if s.Key == "" && !reflect.DeepEqual(again, s) {
			t.Fatalf("%q -> %+v -> %q -> %+v", in, s, s.String(), again)
		}
	})
}
