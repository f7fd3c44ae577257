package nbd

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ringblk/ringblk/bitmap"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/raw"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

const testGran = 64 << 10

// newBitmapEnv exports a 16 MiB raw node carrying the bitmaps b0 and b1
// (64 KiB granularity); the export offers those named in eo.Bitmaps.
func newBitmapEnv(t *testing.T, eo ExportOptions) *env {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, testSize); err != nil {
		t.Fatal(err)
	}
	return newEnvFile(t, path, eo, func(g *block.Graph) (*block.Node, error) {
		n, err := raw.NewNode(g, path, raw.Options{}, block.Options{Name: "disk"})
		if err != nil {
			return nil, err
		}
		for _, name := range []string{"b0", "b1"} {
			if _, err := n.AddBitmap(name, testGran); err != nil {
				return nil, err
			}
		}
		return n, nil
	})
}

func listMeta(t *testing.T, e *env, name string, queries ...string) []string {
	t.Helper()
	c := dialRaw(t, e.sock)
	defer c.Close()
	greet(t, c)
	c.Write(optBytes(nbdproto.OptStructured, nil))
	readOptReply(t, c)
	c.Write(optBytes(nbdproto.OptListMeta, metaData(name, queries...)))
	var ctxs []string
	for {
		r := readOptReply(t, c)
		if r.typ == nbdproto.RepAck {
			return ctxs
		}
		if r.typ != nbdproto.RepMetaContext {
			t.Fatalf("LIST_META_CONTEXT %q: reply %#x %q", queries, r.typ, r.data)
		}
		ctxs = append(ctxs, string(r.data[4:]))
	}
}

// TestDirtyBitmapContext: qemu:dirty-bitmap:b0 is listed, selected and
// answers BLOCK_STATUS with the bitmap's dirty chunks after writes at
// known offsets; the bitmap is busy while exported.
func TestDirtyBitmapContext(t *testing.T) {
	e := newBitmapEnv(t, ExportOptions{Name: "d", Bitmaps: []string{"b0"}})
	b0 := e.node.Bitmap("b0")
	if !b0.Busy() {
		t.Fatal("exported bitmap not busy")
	}
	if err := e.node.RemoveBitmap("b0"); !errors.Is(err, bitmap.ErrBusy) {
		t.Fatalf("removing an exported bitmap: %v", err)
	}
	if got := listMeta(t, e, "d"); !slices.Equal(got, []string{nbdproto.CtxAllocation, "qemu:dirty-bitmap:b0"}) {
		t.Fatalf("LIST all: %q", got)
	}
	if got := listMeta(t, e, "d", "qemu:dirty-bitmap:"); !slices.Equal(got, []string{"qemu:dirty-bitmap:b0"}) {
		t.Fatalf("LIST qemu:dirty-bitmap: %q", got)
	}
	if got := listMeta(t, e, "d", "qemu:"); !slices.Equal(got, []string{"qemu:dirty-bitmap:b0"}) {
		t.Fatalf("LIST qemu: %q", got)
	}
	if got := listMeta(t, e, "d", "qemu:dirty-bitmap:b1", "qemu:dirty-bitmap:zz"); len(got) != 0 {
		t.Fatalf("LIST of bitmaps not exported: %q", got)
	}

	cl := dial(t, e.sock, "d", true, nbdproto.CtxAllocation, "qemu:dirty-bitmap:b0")
	// 4 KiB at 1 MiB, 200 bytes at 3 MiB+100, 128 KiB from 5 MiB-4 KiB
	// (three chunks).
	writes := [][2]uint64{{1 << 20, 4096}, {3<<20 + 100, 200}, {5<<20 - 4096, 128 << 10}}
	for i, w := range writes {
		cl.send(nbdproto.CmdWrite, 0, uint64(i+1), w[0], uint32(w[1]), pattern(int(w[1]), 3))
		if e := cl.simple(uint64(i + 1)); e != 0 {
			t.Fatal(e)
		}
	}
	res, errv := cl.blockStatus(10, 0, 8<<20, 0)
	if errv != 0 {
		t.Fatal(errv)
	}
	g := uint32(testGran)
	want := []extent{{1 << 20, 0}, {g, 1}, {2<<20 - g, 0}, {g, 1}, {2<<20 - 2*g, 0}, {3 * g, 1}, {3<<20 - 2*g, 0}}
	if got := res[idBitmap0]; !slices.Equal(got, want) {
		t.Fatalf("qemu:dirty-bitmap:b0 extents %v, want %v", got, want)
	}
	if len(res[idAllocation]) == 0 {
		t.Fatal("no base:allocation chunk")
	}
	// Unaligned start inside a dirty chunk, REQ_ONE.
	res, _ = cl.blockStatus(11, 1<<20+4096, 1<<20, 0)
	if got := res[idBitmap0]; !slices.Equal(got, []extent{{g - 4096, 1}, {1<<20 - g + 4096, 0}}) {
		t.Fatalf("unaligned: %v", got)
	}
	res, _ = cl.blockStatus(12, 0, 8<<20, nbdproto.CmdFlagReqOne)
	if got := res[idBitmap0]; !slices.Equal(got, []extent{{1 << 20, 0}}) {
		t.Fatalf("REQ_ONE: %v", got)
	}
	// Every other chunk dirty: at most maxPieces extents per reply, and
	// they cover a prefix of the range exactly.
	for off := int64(0); off < testSize; off += 2 * testGran {
		b0.SetRange(off, 1)
	}
	res, _ = cl.blockStatus(13, 0, testSize, 0)
	got := res[idBitmap0]
	if len(got) != maxPieces {
		t.Fatalf("%d extents, want the limit %d", len(got), maxPieces)
	}
	for i, x := range got {
		if x.length != g || x.flags != uint32(1-i%2) {
			t.Fatalf("extent %d: %v", i, x)
		}
	}
}

// TestDirtyBitmapExportErrors: unknown and busy bitmaps are refused with
// QEMU's wording, and closing an export releases its bitmaps.
func TestDirtyBitmapExportErrors(t *testing.T) {
	e := newBitmapEnv(t, ExportOptions{Name: "d", Bitmaps: []string{"b0"}})
	if _, err := NewExport(e.g, e.node, ExportOptions{Name: "x", Bitmaps: []string{"zz"}}); err == nil || !strings.Contains(err.Error(), "Bitmap 'zz' is not found") {
		t.Fatalf("unknown bitmap: %v", err)
	}
	if _, err := NewExport(e.g, e.node, ExportOptions{Name: "x", Bitmaps: []string{"b1", "b0"}}); err == nil || !strings.Contains(err.Error(), "Bitmap 'b0' is currently in use") {
		t.Fatalf("busy bitmap: %v", err)
	}
	b1 := e.node.Bitmap("b1")
	if b1.Busy() {
		t.Fatal("b1 left busy by a refused export")
	}
	x, err := NewExport(e.g, e.node, ExportOptions{Name: "x", Bitmaps: []string{"b1"}})
	if err != nil {
		t.Fatal(err)
	}
	if !b1.Busy() {
		t.Fatal("b1 not busy while exported")
	}
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	if b1.Busy() {
		t.Fatal("b1 still busy after the export closed")
	}
	if err := e.node.RemoveBitmap("b1"); err != nil {
		t.Fatal(err)
	}
}

// TestZeroAllocsDirtyBitmapStatus: a BLOCK_STATUS request answering
// base:allocation and a dirty bitmap allocates nothing.
func TestZeroAllocsDirtyBitmapStatus(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: make test counts allocations in its own -run Alloc pass (the race detector allocates)")
	}
	e := newBitmapEnv(t, ExportOptions{Name: "", Bitmaps: []string{"b0"}})
	e.node.Bitmap("b0").SetRange(1<<20, 4096)
	cl := dial(t, e.sock, "", true, nbdproto.CtxAllocation, "qemu:dirty-bitmap:b0")
	cl.c.SetDeadline(time.Time{})
	req := reqBytes(nbdproto.CmdBlockStatus, 0, 7, 0, 4<<20)
	// Reply: two chunks (20-byte header + 4-byte id + extents); bitmap:
	// 3 extents; base:allocation: 1 (a sparse raw file reads as a hole).
	buf := make([]byte, 2*24+4*8)
	var hdr [20]byte
	op := func() {
		if _, err := cl.c.Write(req); err != nil {
			panic(err)
		}
		for done := false; !done; {
			if _, err := io.ReadFull(cl.c, hdr[:]); err != nil {
				panic(err)
			}
			n := binary.BigEndian.Uint32(hdr[16:])
			if _, err := io.ReadFull(cl.c, buf[:n]); err != nil {
				panic(err)
			}
			done = binary.BigEndian.Uint16(hdr[4:])&nbdproto.ChunkDone != 0
		}
	}
	for i := 0; i < 50; i++ {
		op()
	}
	if a := testing.AllocsPerRun(300, op); a != 0 {
		t.Fatalf("%v allocations per block status", a)
	}
}

// TestNbdinfoDirtyBitmap: nbdinfo --map=qemu:dirty-bitmap:b0 lists
// exactly the dirty ranges, and qemu-img map through x-dirty-bitmap (the
// incremental-backup recipe) reports them as "data": false.
func TestNbdinfoDirtyBitmap(t *testing.T) {
	needTool(t, "nbdinfo")
	e := newBitmapEnv(t, ExportOptions{Name: "d", Bitmaps: []string{"b0"}})
	b0 := e.node.Bitmap("b0")
	b0.SetRange(1<<20, 4096)
	b0.SetRange(4<<20, 3*testGran)
	out := runTool(t, "nbdinfo", "--map=qemu:dirty-bitmap:b0", uri(e, "d"))
	want := "         0     1048576    0  clean\n   1048576       65536    1  dirty\n   1114112     3080192    0  clean\n" +
		"   4194304      196608    1  dirty\n   4390912    12386304    0  clean\n"
	if out != want {
		t.Errorf("nbdinfo --map=qemu:dirty-bitmap:b0:\n%s\nwant\n%s", out, want)
	}
	needTool(t, "qemu-img")
	opts := "driver=nbd,server.type=unix,server.path=" + e.sock + ",export=d,x-dirty-bitmap=qemu:dirty-bitmap:b0"
	js := runTool(t, "qemu-img", "map", "--output=json", "--image-opts", opts)
	var m []struct {
		Start  int64 `json:"start"`
		Length int64 `json:"length"`
		Data   bool  `json:"data"`
	}
	if err := json.Unmarshal([]byte(js), &m); err != nil {
		t.Fatalf("qemu-img map: %v\n%s", err, js)
	}
	var dirty [][2]int64
	for _, x := range m {
		if !x.Data {
			dirty = append(dirty, [2]int64{x.Start, x.Length})
		}
	}
	if w := [][2]int64{{1 << 20, testGran}, {4 << 20, 3 * testGran}}; !slices.Equal(dirty, w) {
		t.Fatalf("qemu-img map x-dirty-bitmap: dirty (data false) %v, want %v\n%s", dirty, w, js)
	}
}
