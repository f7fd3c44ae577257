package bench

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/internal/pagecache"
)

// residentPages counts the pages of path's first n bytes in the page cache.
func residentPages(t *testing.T, path string, n int) int {
	t.Helper()
	c, err := pagecache.Resident(path, 0, int64(n))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestFadviseHint: fadvise_hint works as fio's, default on. A cold random
// read of the first block of a file brings that page alone into the page
// cache on every engine (POSIX_FADV_RANDOM: no readahead), as under fio;
// with fadvise_hint=0 the kernel reads ahead (issue 14, item 9).
func TestFadviseHint(t *testing.T) {
	dir := benchDir(t)
	file := filepath.Join(dir, "ra")
	if err := os.WriteFile(file, make([]byte, 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	unix.Sync() // written back, so invalidate can drop every page
	for _, engine := range []string{"ringblk", "io_uring", "psync"} {
		for _, hint := range []string{"", "0"} {
			// invalidate=1 (the default) drops the file's cached pages
			// first; the job reads one 4 KiB block at offset 0 once.
			args := []string{"--name=r", "--ioengine=" + engine, "--filename=" + file, "--rw=randread", "--bs=4k", "--size=4k"}
			if hint != "" {
				args = append(args, "--fadvise_hint="+hint)
			}
			if engine == "ringblk" {
				args = append(args, "--format=raw")
			}
			mustRun(t, mustParse(t, args...))
			got := residentPages(t, file, 1<<20)
			switch {
			case hint == "" && got != 1:
				t.Errorf("%s, default fadvise_hint: one cold 4 KiB random read cached %d pages, want 1 (POSIX_FADV_RANDOM, as fio)", engine, got)
			case hint == "0" && got <= 1:
				t.Errorf("%s, fadvise_hint=0: one cold 4 KiB read cached %d pages, want readahead", engine, got)
			}
		}
	}
}
