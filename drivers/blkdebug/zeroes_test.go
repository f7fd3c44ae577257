package blkdebug_test

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/drivers/blkdebug"
)

// recMem is a Mem that records the writes and write-zeroes it is given.
type recMem struct {
	*blocktest.Mem
	mu  sync.Mutex
	ops []string
}

func (m *recMem) rec(kind string, r *block.Request) {
	m.mu.Lock()
	m.ops = append(m.ops, fmt.Sprintf("%s %d+%d", kind, r.Off>>10, r.Len>>10))
	m.mu.Unlock()
}

func (m *recMem) Write(r *block.Request)       { m.rec("w", r); m.Mem.Write(r) }
func (m *recMem) WriteZeroes(r *block.Request) { m.rec("z", r); m.Mem.WriteZeroes(r) }

// TestWriteZeroesLimits: a write-zeroes request through blkdebug with
// write-zeroes limits reaches the image as QEMU's block layer and
// blkdebug hand it on (iotest 204): pieces shorter than the write-zeroes
// alignment become writes of zero bytes of at most max-transfer, the
// aligned middle is write-zeroes of at most max-write-zero, also when the
// alignment is not a power of two; max-transfer does not cut
// write-zeroes. (Offsets and lengths in KiB.)
func TestWriteZeroesLimits(t *testing.T) {
	const k, m = 1 << 10, 1 << 20
	for _, c := range []struct {
		name     string
		lim      blkdebug.Limits
		off, len int64
		want     string
	}{
		{"1M alignment, 64k transfer", blkdebug.Limits{Align: 512, MaxTransfer: 64 * k, OptWriteZero: m},
			3*m - 50*k, 2*m + 150*k, "w 3022+50 z 3072+2048 w 5120+64 w 5184+36"},
		{"15M-style alignment 3M", blkdebug.Limits{Align: 512, OptWriteZero: 3 * m, MaxWriteZero: 3 * m},
			2 * m, 8 * m, "w 2048+1024 z 3072+3072 z 6144+3072 w 9216+1024"},
		{"no limits", blkdebug.Limits{}, 100 * k, 900 * k, "z 100+900"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := blocktest.NewEnv(t, 0)
			mem := &recMem{Mem: blocktest.NewMem(16 * m)}
			for i := range mem.Data {
				mem.Data[i] = 0xaa
			}
			img := e.Open(mem, block.Options{Name: "img"})
			n, err := blkdebug.NewNodeLimits(e.G, img, "", nil, c.lim, block.Options{Name: "dbg", Align: int(max(c.lim.Align, 1)), MaxTransfer: c.lim.MaxTransfer})
			if err != nil {
				t.Fatal(err)
			}
			defer n.Unref()
			if err := n.WriteZeroes(c.off, c.len, 0); err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(mem.ops, " "); got != c.want {
				t.Errorf("image got %q, want %q", got, c.want)
			}
			data := mem.Snapshot()
			if !bytes.Equal(data[c.off:c.off+c.len], make([]byte, c.len)) || data[c.off-1] != 0xaa || data[c.off+c.len] != 0xaa {
				t.Errorf("the range does not read as zeroes with its surroundings kept")
			}
		})
	}
}
