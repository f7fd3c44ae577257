package job_test

import (
	"bytes"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/bitmap"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// guest keeps Depth random writes (4 KiB, random data, aligned) in flight
// through a front end's queue on ctx until stopped.
type guest struct {
	q       *block.Queue
	ctx     *aio.Context
	size    int64
	rng     *rand.Rand
	bufs    [][]byte
	delay   time.Duration // between a completion and the slot's next write
	stop    atomic.Bool
	inFl    atomic.Int32
	writes  atomic.Int64
	errs    atomic.Int64
	lastErr atomic.Value
	// shadow records each block's last completed write: every slot
	// writes only its own blocks (block % depth == slot), so no two
	// writes to one block are ever in flight together.
	mu     sync.Mutex
	shadow map[int64][]byte
}

func startGuest(e *blocktest.Env, fe *block.FrontEnd, ctx *aio.Context, size int64, depth int, seed uint64, delay time.Duration) *guest {
	g := &guest{ctx: ctx, size: size, rng: rand.New(rand.NewPCG(seed, seed+1)), delay: delay, shadow: map[int64][]byte{}}
	for i := 0; i < depth; i++ {
		g.bufs = append(g.bufs, make([]byte, 4096))
	}
	e.On(ctx, func() {
		g.q = fe.Queue(ctx)
		for i := 0; i < depth; i++ {
			g.issue(uint64(i))
		}
	})
	return g
}

func (g *guest) issue(slot uint64) {
	b := g.bufs[slot]
	for i := range b {
		b[i] = byte(g.rng.Uint32())
	}
	g.inFl.Add(1)
	d := uint64(len(g.bufs))
	blk := (uint64(g.rng.Int64N(g.size/4096))/d*d + slot) % uint64(g.size/4096)
	if blk%d != slot {
		blk = slot
	}
	g.q.Write(b, int64(blk)*4096, 0, g, slot)
}

func (g *guest) RequestDone(r *block.Request, err error) {
	g.writes.Add(1)
	if err != nil {
		g.errs.Add(1)
		g.lastErr.Store(err)
	}
	slot := r.Tag
	if err == nil {
		g.mu.Lock()
		g.shadow[r.Off] = append([]byte(nil), g.bufs[slot]...)
		g.mu.Unlock()
	}
	g.inFl.Add(-1)
	if g.stop.Load() {
		return
	}
	if g.delay > 0 {
		g.inFl.Add(1)
		g.ctx.AfterFunc(g.delay, func() {
			g.inFl.Add(-1)
			if !g.stop.Load() {
				g.issue(slot)
			}
		})
		return
	}
	g.issue(slot)
}

// halt stops issuing and waits until nothing is in flight.
func (g *guest) halt(e *blocktest.Env) {
	g.stop.Store(true)
	e.WaitFor("guest writes drained", func() bool { return g.inFl.Load() == 0 })
}

func randomMem(size int64, seed uint64) *blocktest.Mem {
	m := blocktest.NewMem(size)
	rng := rand.New(rand.NewPCG(seed, 7))
	for i := range m.Data {
		m.Data[i] = byte(rng.Uint32() | 1)
	}
	return m
}

func wantQuiet(t *testing.T, nodes ...*block.Node) {
	t.Helper()
	for _, n := range nodes {
		if n.InFlight() != 0 || n.Quiesce() != 0 {
			t.Fatalf("%s: in flight %d, quiesce %d", n.Name(), n.InFlight(), n.Quiesce())
		}
	}
}

// expect returns initial with every block the guest wrote replaced.
func (g *guest) expect(initial []byte) []byte {
	out := append([]byte(nil), initial...)
	g.mu.Lock()
	defer g.mu.Unlock()
	for off, b := range g.shadow {
		copy(out[off:], b)
	}
	return out
}

// debugTarget opens a node over fresh memory of size bytes, behind a
// blocktest.Debug filter whose rules can fail its requests: the target
// of the backup tests. The caller unrefs the returned node.
func debugTarget(e *blocktest.Env, name string, size int64) (*block.Node, *blocktest.Debug, *blocktest.Mem) {
	mem := blocktest.NewMem(size)
	raw := e.Open(mem, block.Options{Name: name + "-raw"})
	dbg := &blocktest.Debug{}
	tgt := e.Open(dbg, block.Options{Name: name})
	dbg.Edge.Store(e.Attach(tgt, raw, "file", block.RoleFile|block.RolePrimary))
	raw.Unref()
	return tgt, dbg, mem
}

// markedSource gives src a 64 KiB-granular bitmap "inc" and writes 0xab
// over chunks 0, 5 and 9, which it marks.
func markedSource(t *testing.T, src *block.Node) *bitmap.Bitmap {
	t.Helper()
	bm, err := src.AddBitmap("inc", 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte{0xab}, 64<<10)
	for _, off := range []int64{0, 5 << 16, 9 << 16} {
		src.WriteAt(chunk, off)
	}
	return bm
}
