package host_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/host"
)

// TestQueuesRespectAdmission: host goroutines whose queues together hold
// far more requests than the I/O Context admits (4 queues of depth 64
// against a ring of 8 entries: slot cap 64, admission limit 32) all
// complete with their data, the Context's slot table stays within its cap
// and its pool never admits more than its limit.
func TestQueuesRespectAdmission(t *testing.T) {
	h, err := host.New(host.Options{Contexts: 1, RingEntries: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := os.MkdirAll("/var/tmp/walls", 0o755); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("/var/tmp/walls", "admission")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	const queues, depth, blocks, bs = 4, 64, 256, 4096
	path := filepath.Join(dir, "disk.raw")
	if err := h.Create(path, host.CreateOptions{Format: "raw", Size: queues * blocks * bs}); err != nil {
		t.Fatal(err)
	}
	d, err := h.OpenDevice(path, host.OpenOptions{Format: "raw", Cache: "writeback"})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	// pass runs op on every block of the goroutine's region, depth at a time.
	pass := func(q *host.Queue, base int, bufs [][]byte, write bool) error {
		next, done := 0, 0
		free := make([]int, 0, depth)
		for i := 0; i < depth; i++ {
			free = append(free, i)
		}
		slotOf := make([]int, depth)
		for done < blocks {
			for len(free) > 0 && next < blocks {
				s := free[len(free)-1]
				free = free[:len(free)-1]
				slotOf[s] = next
				b := bufs[next]
				off := int64(base+next) * bs
				var err error
				if write {
					err = q.Write(b, off, 0, uint64(s))
				} else {
					err = q.Read(b, off, uint64(s))
				}
				if err != nil {
					return err
				}
				next++
			}
			q.Wait(-1)
			for c, ok := q.Next(); ok; c, ok = q.Next() {
				if c.Err != nil {
					return c.Err
				}
				free = append(free, int(c.UserData))
				done++
			}
		}
		return nil
	}
	var wg sync.WaitGroup
	errs := make([]error, queues)
	for g := 0; g < queues; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q, err := d.Queue(host.QueueOptions{Depth: depth, Context: 0})
			if err != nil {
				errs[g] = err
				return
			}
			src := make([][]byte, blocks)
			dst := make([][]byte, blocks)
			for i := range src {
				src[i] = bytes.Repeat([]byte{byte(g*blocks + i)}, bs)
				dst[i] = make([]byte, bs)
			}
			if err := pass(q, g*blocks, src, true); err != nil {
				errs[g] = err
				return
			}
			if err := pass(q, g*blocks, dst, false); err != nil {
				errs[g] = err
				return
			}
			for i := range src {
				if !bytes.Equal(src[i], dst[i]) {
					errs[g] = fmt.Errorf("queue %d block %d: read back differs", g, i)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	ctx := h.Context(0)
	var st aio.Stats
	var peak, limit int
	var waits int64
	ctx.Run(func() {
		st = ctx.Stats()
		pool := h.Graph().Pool(ctx)
		limit = pool.MaxRequests()
		_, peak, _, waits = pool.AdmissionStats()
	})
	if st.SlotTable > ctx.SlotCap() || st.SlotsOverCap != 0 {
		t.Errorf("slot table %d (cap %d, %d over)", st.SlotTable, ctx.SlotCap(), st.SlotsOverCap)
	}
	if peak > limit || waits == 0 {
		t.Errorf("peak admitted %d of %d, %d waits: want the limit reached and kept", peak, limit, waits)
	}
	t.Logf("slot table %d of %d, peak admitted %d of %d, %d waits", st.SlotTable, ctx.SlotCap(), peak, limit, waits)
}
