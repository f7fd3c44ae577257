package chain

import (
	"maps"
	"strings"
	"testing"
)

func TestParseJSONFilename(t *testing.T) {
	got, err := ParseJSONFilename(`json:{ 'driver': 'qcow2', "file": {"driver": 'file', 'filename': 'a\'b,c'},
		'backing': null, 'n': 65536, 'ro': true, 'list': [{'event': 'x'}, 2] }`)
	if err != nil {
		t.Fatal(err)
	}
	want := Spec{"driver": "qcow2", "file.driver": "file", "file.filename": "a'b,c", "backing": Null, "n": "65536",
		"ro": "on", "list.0.event": "x", "list.1": "2"}
	if !maps.Equal(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
	for _, bad := range []string{"json:", "json:{", "json:{'a' 1}", "json:[1]", "json:{'a': 'b'} x", "json:{'a': tru}",
		"json:" + strings.Repeat("{'a':", 40) + "1" + strings.Repeat("}", 40)} {
		if _, err := ParseJSONFilename(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestParseKeyValues(t *testing.T) {
	s := Spec{}
	if err := ParseKeyValues("path,,x,driver=qcow2,file.filename=a,,b,flag", "file", s); err != nil {
		t.Fatal(err)
	}
	want := Spec{"file": "path,x", "driver": "qcow2", "file.filename": "a,b", "flag": "on"}
	if !maps.Equal(s, want) {
		t.Errorf("got %v, want %v", s, want)
	}
	for _, bad := range []string{"=x", "a=1,,b,,=2,=3"} {
		if err := ParseKeyValues(bad, "", Spec{}); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestParseQemuSize(t *testing.T) {
	for v, want := range map[string]int64{"0": 0, "1024": 1024, "1024.0": 1024, "1.5k": 1536, "1.25M": 1310720,
		"0.25M": 262144, "2G": 2 << 30, "1E": 1 << 60, "7b": 7} {
		if got, err := ParseQemuSize(v); err != nil || got != want {
			t.Errorf("%q: %d, %v; want %d", v, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "1.5", "1..2k", "-1", "8E", "1kb", ".5k"} {
		if n, err := ParseQemuSize(bad); err == nil {
			t.Errorf("%q parsed as %d", bad, n)
		}
	}
}
