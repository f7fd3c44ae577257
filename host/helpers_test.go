package host_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/host"
)

// newHost starts a host or skips where io_uring is unavailable.
func newHost(t testing.TB, o host.Options) *host.Host {
	t.Helper()
	h, err := host.New(o)
	if err != nil {
		if strings.Contains(err.Error(), "ring setup") {
			t.Skipf("io_uring unavailable: %v", err)
		}
		t.Fatalf("host.New: %v", err)
	}
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("host close: %v", err)
		}
	})
	return h
}

// image creates an image of the format in a temporary directory.
func image(t testing.TB, h *host.Host, format string, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk."+format)
	if err := h.Create(p, host.CreateOptions{Format: format, Size: size}); err != nil {
		t.Fatalf("create %s: %v", format, err)
	}
	return p
}

func pattern(b []byte, seed int) []byte {
	for i := range b {
		b[i] = byte(seed*31 + i*7)
	}
	return b
}

func mustEqual(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s: data differs at byte %d", what, i)
	}
}

func isClosed(err error) bool { return errors.Is(err, host.ErrClosed) }
