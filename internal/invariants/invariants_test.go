package invariants

import (
	"strings"
	"testing"
)

func failMessage(fn func()) (msg string) {
	defer func() {
		if r := recover(); r != nil {
			msg, _ = r.(string)
			if msg == "" {
				msg = "non-string panic"
			}
		}
	}()
	fn()
	return ""
}

// TestFailfFormats shows a failed assertion panicking with the prefix and
// the formatted message, arguments included.
func TestFailfFormats(t *testing.T) {
	n, name := -1, "disk0"
	msg := failMessage(func() {
		if n < 0 {
			Failf("block: in-flight count of %s went negative (%d)", name, n)
		}
	})
	want := "assertion failed: block: in-flight count of disk0 went negative (-1)"
	if msg != want {
		t.Fatalf("panic %q, want %q", msg, want)
	}
	if !strings.HasPrefix(msg, Prefix) {
		t.Fatalf("panic %q lacks %q", msg, Prefix)
	}
}

// TestPassingCheckAllocatesNothing: a check that holds boxes nothing, in
// either build (the arguments are built on the failing branch only).
func TestPassingCheckAllocatesNothing(t *testing.T) {
	n, name := 3, strings.Repeat("x", 3)
	allocs := testing.AllocsPerRun(1000, func() {
		if Enabled && n < 0 {
			Failf("node %s: %d", name, n)
		}
		if n < 0 {
			Failf("node %s: %d", name, n)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per passing check", allocs)
	}
}
