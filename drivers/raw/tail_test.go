package raw_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/ringblk/ringblk/drivers/raw"
)

// TestPartialSectorTail: a file whose size is not a multiple of 512 is,
// as in QEMU, an image rounded up to whole sectors. Its length is 1024
// for 1000 bytes; the tail reads as zeroes (buffered and O_DIRECT); a
// write in the last sector extends the file to it (issue 14, item 10).
func TestPartialSectorTail(t *testing.T) {
	for _, cache := range []raw.Cache{raw.CacheWriteback, raw.CacheNone} {
		t.Run(cache.String(), func(t *testing.T) {
			path := filepath.Join(dataDir(t), "odd.raw")
			data := bytes.Repeat([]byte{0x5a}, 1000)
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			e := newEnv(t, nil, 0)
			n := e.node(path, raw.Options{Cache: cache})
			if l, err := n.Length(); err != nil || l != 1024 {
				t.Fatalf("Length: %d, %v; want 1024 (1000 bytes rounded up to sectors)", l, err)
			}
			buf := make([]byte, 512)
			if _, err := n.ReadAt(buf, 512); err != nil {
				t.Fatalf("read of the last sector: %v", err)
			}
			want := append(bytes.Repeat([]byte{0x5a}, 1000-512), make([]byte, 24)...)
			mustEqual(t, "last sector", buf, want)

			w := bytes.Repeat([]byte{0xab}, 512)
			if _, err := n.WriteAt(w, 512); err != nil {
				t.Fatalf("write of the last sector: %v", err)
			}
			got := fileBytes(t, path)
			if len(got) != 1024 || !bytes.Equal(got[512:], w) || !bytes.Equal(got[:512], data[:512]) {
				t.Errorf("after writing the last sector: file of %d bytes", len(got))
			}
		})
	}
}
