package main

import (
	"debug/buildinfo"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// TestBuiltByReadsTheFile: the toolchain the manifest reports comes from
// the build information of the file holding this package's code (in a
// test, the test binary; in a host, the .so), not from the runtime,
// which a loaded plugin shares with its host.
func TestBuiltByReadsTheFile(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Skip(err)
	}
	exe, _ = filepath.EvalSymlinks(exe)
	got := mappedFile(reflect.ValueOf(probe).Pointer())
	if g, _ := filepath.EvalSymlinks(got); g != exe {
		t.Fatalf("code of probe mapped from %q, want %q", got, exe)
	}
	bi, err := buildinfo.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if v := builtBy(); v != bi.GoVersion {
		t.Fatalf("builtBy() = %q, the file says %q", v, bi.GoVersion)
	}
	if mappedFile(1) != "" {
		t.Fatal("address 1 is mapped from a file")
	}
}
