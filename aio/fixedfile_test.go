package aio

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestRegisteredFileIsUsed: once a File is registered on a Context, that
// Context's ops name the table slot (IOSQE_FIXED_FILE), not the
// descriptor. The test proves it by pointing the descriptor number at
// another file (dup2): reads through the slot still see the registered
// file, reads after UnregisterFile see what the number now names.
func TestRegisteredFileIsUsed(t *testing.T) {
	e := newEnv(t, "kernel")
	c := e.start(Options{}, nil)
	dir := t.TempDir()
	a := bytes.Repeat([]byte{'a'}, 4096)
	b := bytes.Repeat([]byte{'b'}, 4096)
	if err := os.WriteFile(filepath.Join(dir, "a"), a, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "b"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	fa, err := os.Open(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	fb, err := os.Open(filepath.Join(dir, "b"))
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	f := NewFile(fa)
	read := func() byte {
		buf := make([]byte, 4096)
		s := newCounter()
		c.Read(f, buf, 0, s, 1)
		for s.n < 1 {
			c.Poll(true)
		}
		if err := s.errs[1]; err != nil {
			t.Errorf("read: %v", err)
		}
		return buf[0]
	}
	var skip error
	onOwner(t, c, time.Minute, func() {
		if skip = c.RegisterFile(f); skip != nil {
			return
		}
		if err := c.RegisterFile(f); err != nil {
			t.Errorf("second RegisterFile: %v, want a no-op", err)
		}
		if err := unix.Dup2(int(fb.Fd()), f.Fd()); err != nil {
			t.Fatal(err)
		}
		if got := read(); got != 'a' {
			t.Errorf("registered read saw %q: the op used the descriptor, not the slot", got)
		}
		if err := c.UnregisterFile(f); err != nil {
			t.Fatal(err)
		}
		if got := read(); got != 'b' {
			t.Errorf("read after UnregisterFile saw %q, want the descriptor's file", got)
		}
	})
	if skip != nil {
		t.Skipf("no registered files here: %v", skip)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestRegisteredFileZeroAlloc: an op on a registered file allocates
// nothing (the slot lookup is a scan of a few atomic words), and a Context
// stopped with a file still registered lets that file close.
func TestRegisteredFileZeroAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates (and drops sync.Pool entries)")
	}
	e := newEnv(t, "kernel")
	c := e.start(Options{}, nil)
	f := e.testFile(8192, nil)
	var allocs float64
	var skip error
	onOwner(t, c, time.Minute, func() {
		if skip = c.RegisterFile(f); skip != nil {
			return
		}
		if f.slotOn(c) < 0 {
			t.Error("registered file has no slot")
			return
		}
		s := &nopSink{}
		buf := make([]byte, 4096)
		read := func() {
			want := s.n + 1
			c.Read(f, buf, 4096, s, 0)
			for s.n < want {
				c.Poll(true)
			}
		}
		for i := 0; i < 100; i++ {
			read()
		}
		allocs = testing.AllocsPerRun(200, read)
	})
	if skip != nil {
		t.Skipf("no registered files here: %v", skip)
	}
	if allocs != 0 {
		t.Errorf("read on a registered file: %v allocs/op, want 0", allocs)
	}
	if _, err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if n := f.nregs.Load(); n != 0 {
		t.Errorf("after Stop the file is still registered on %d Contexts", n)
	}
}

// BenchmarkReadRegisteredFile: 4 KiB reads of a cached file, 32 per
// io_uring_enter, with the descriptor and with a registered-file slot.
func BenchmarkReadRegisteredFile(b *testing.B) {
	for _, fixed := range []bool{false, true} {
		name := "fd"
		if fixed {
			name = "fixed"
		}
		b.Run(name, func(b *testing.B) {
			c := benchCtx(b, "kernel")
			p := filepath.Join(b.TempDir(), "f")
			if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
				b.Fatal(err)
			}
			of, err := os.Open(p)
			if err != nil {
				b.Fatal(err)
			}
			f := NewFile(of)
			var skip error
			runOnOwner(c, func() {
				if fixed {
					if skip = c.RegisterFile(f); skip != nil {
						return
					}
				}
				s := &nopSink{}
				bufs := make([][]byte, 32)
				for i := range bufs {
					bufs[i] = make([]byte, 4096)
				}
				batch := func() {
					want := s.n + 32
					c.Plug()
					for i := range bufs {
						c.Read(f, bufs[i], int64(i*4096), s, 0)
					}
					c.Unplug()
					for s.n < want {
						c.Poll(true)
					}
				}
				for i := 0; i < 100; i++ {
					batch()
				}
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i += 32 {
					batch()
				}
				b.StopTimer()
				if fixed {
					c.UnregisterFile(f)
				}
			})
			f.Close()
			if skip != nil {
				b.Skip(skip)
			}
		})
	}
}
