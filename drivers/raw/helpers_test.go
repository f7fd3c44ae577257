package raw_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/uring/uringtest"
)

// env is a started main Context (with a buffer arena) and a graph; with
// a fake ring it also keeps the ring so tests can inject faults and read
// its counters — only on the owner, through e.on.
type env struct {
	t    testing.TB
	main *aio.Context
	io   []*aio.Context
	g    *block.Graph
	ring *uringtest.Ring // main's fake ring, nil for the kernel ring
}

func newEnv(t testing.TB, fake *uringtest.Options, iothreads int) *env {
	t.Helper()
	e := &env{t: t}
	mk := func(name string, main bool, q *uringtest.Ring) *aio.Context {
		opts := aio.Options{Name: name, Main: main, CPU: aio.NoCPU, Entries: 64, ArenaSize: 1 << 20}
		if q != nil {
			opts.Queue = q
		}
		c, err := aio.New(opts)
		if err != nil {
			t.Fatalf("aio.New: %v", err)
		}
		if err := c.Start(); err != nil {
			t.Skipf("cannot start a Context (io_uring unavailable?): %v", err)
		}
		t.Cleanup(func() {
			if _, err := c.Stop(); err != nil {
				t.Errorf("stop %s: %v", name, err)
			}
		})
		return c
	}
	if fake != nil {
		e.ring = uringtest.New(*fake)
		e.main = mk("main", true, e.ring)
	} else {
		e.main = mk("main", true, nil)
	}
	for i := 0; i < iothreads; i++ {
		e.io = append(e.io, mk("io", false, nil))
	}
	e.g = block.NewGraph(e.main)
	return e
}

func (e *env) on(fn func()) { e.main.Run(fn) }

// dataDir returns a directory on a disk filesystem (O_DIRECT needs one;
// tmpfs refuses it).
func dataDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/var/tmp", "rawtest-")
	if err != nil {
		dir = t.TempDir()
	} else {
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	return dir
}

// image creates a file of size bytes filled with a seeded pattern.
func image(t testing.TB, size int64, seed uint64) (string, []byte) {
	t.Helper()
	p := filepath.Join(dataDir(t), "img.raw")
	data := pattern(int(size), seed)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, data
}

func pattern(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func (e *env) node(path string, opts raw.Options) *block.Node {
	e.t.Helper()
	n, err := raw.NewNode(e.g, path, opts, block.Options{})
	if err != nil {
		e.t.Fatalf("raw.NewNode(%s): %v", path, err)
	}
	e.t.Cleanup(func() { n.Unref() })
	return n
}

func fileBytes(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
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
		t.Fatalf("%s: differs at byte %d (len got %d, want %d)", what, i, len(got), len(want))
	}
}

// wantOpError checks that err is the driver's typed error for op at off
// wrapping errno, and that its message names the path.
func wantOpError(t testing.TB, err error, op block.Op, off int64, errno syscall.Errno, path string) {
	t.Helper()
	var be *block.Error
	if !errors.As(err, &be) {
		t.Fatalf("error %v (%T) is not a *block.Error", err, err)
	}
	if be.Op != op || be.Offset != off {
		t.Fatalf("error %v: op %v at %d, want %v at %d", err, be.Op, be.Offset, op, off)
	}
	if !errors.Is(err, errno) {
		t.Fatalf("error %v does not wrap %v", err, errno)
	}
	if !strings.Contains(err.Error(), path) {
		t.Fatalf("error %q does not name the path %s", err, path)
	}
}

// counter counts request completions on the owner and keeps the errors by
// tag.
type counter struct {
	n    int
	errs map[uint64]error
}

func (c *counter) RequestDone(r *block.Request, err error) {
	c.n++
	if err != nil {
		if c.errs == nil {
			c.errs = make(map[uint64]error)
		}
		c.errs[r.Tag] = err
	}
}
