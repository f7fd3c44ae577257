package raw_test

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/internal/pagecache"

	"github.com/ringblk/ringblk/drivers/raw"
)

// resident counts the pages of path's range [off, off+n) in the page cache.
func resident(t *testing.T, path string, off, n int64) int {
	t.Helper()
	c, err := pagecache.Resident(path, off, n)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// dropCache writes path back and drops its clean pages.
func dropCache(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
}

// TestFadviseHintPerOpen: Options.Fadvise is applied to the driver's own
// open file. Two nodes on one cold file, read 4 KiB each: the one opened
// with FadviseRandom brings in that page alone (no readahead, as fio's
// fadvise_hint gives a random job), the one without a hint reads ahead.
func TestFadviseHintPerOpen(t *testing.T) {
	const size, window = 8 << 20, 1 << 20
	path, _ := image(t, size, 3)
	dropCache(t, path)
	if r := resident(t, path, 0, size); r != 0 {
		t.Fatalf("%d pages still cached after FADV_DONTNEED: cannot observe readahead here", r)
	}
	e := newEnv(t, nil, 0)
	rnd := e.node(path, raw.Options{ReadOnly: true, Fadvise: raw.FadviseRandom})
	plain := e.node(path, raw.Options{ReadOnly: true})
	// Offset 0: the kernel reads ahead from the start of a file on a
	// cold miss unless the open file is marked random.
	buf := make([]byte, 4096)
	if _, err := rnd.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if r := resident(t, path, 0, window); r != 1 {
		t.Errorf("FadviseRandom: one 4 KiB read brought %d pages into the cache, want 1 (no readahead)", r)
	}
	dropCache(t, path)
	if _, err := plain.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if r := resident(t, path, 0, window); r <= 1 {
		t.Errorf("no hint: one 4 KiB read brought %d pages into the cache, want readahead (several)", r)
	}

	for _, c := range []struct {
		s  string
		ok bool
	}{{"none", true}, {"normal", true}, {"sequential", true}, {"random", true}, {"1", false}, {"", false}} {
		if _, ok := raw.ParseFadvise(c.s); ok != c.ok {
			t.Errorf("ParseFadvise(%q): ok %v", c.s, ok)
		}
	}
}
