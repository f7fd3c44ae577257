package host_test

import (
	"path/filepath"
	"runtime"
	"testing"
)

func runtime_Gosched() { runtime.Gosched() }

func filepath_(t *testing.T) string { return filepath.Join(t.TempDir(), "disk.qcow2") }
