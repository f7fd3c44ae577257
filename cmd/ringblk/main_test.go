package main

import "testing"

// TestImageCommandsRegistered: main dispatches the three commands.
func TestImageCommandsRegistered(t *testing.T) {
	for _, name := range []string{"create", "info", "check"} {
		if c, ok := commands[name]; !ok || c.run == nil || c.summary == "" {
			t.Errorf("command %q not registered", name)
		}
	}
}

// TestImageToolsRegistered: the qemu-img commands are registered under
// their qemu-img names (moved here from imgcmd's TestImageToolsHelp).
func TestImageToolsRegistered(t *testing.T) {
	for _, name := range []string{"map", "compare", "convert", "measure"} {
		if _, ok := commands[name]; !ok {
			t.Errorf("command %q is not registered in main.go", name)
		}
	}
}

// TestSnapshotRegistered: main dispatches snapshot (moved here from
// imgcmd's snapshot test).
func TestSnapshotRegistered(t *testing.T) {
	if c, ok := commands["snapshot"]; !ok || c.run == nil || c.summary == "" {
		t.Error("command snapshot not registered")
	}
}
