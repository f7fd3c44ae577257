//go:build rbd

package rbd_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/drivers/rbd"
	"github.com/ringblk/ringblk/internal/cephtest"
)

var cluster *cephtest.Cluster

func TestMain(m *testing.M) {
	c, err := cephtest.Start()
	if errors.Is(err, cephtest.Absent) {
		fmt.Println("SKIP: rbd tests:", err)
		os.Exit(m.Run()) // every test skips on a nil cluster
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cluster = c
	code := m.Run()
	if err := c.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

const imgSize = 64 << 20

var imgSeq atomic.Int64

// newImage creates a fresh image and returns its spec; it is removed
// when the test ends.
func newImage(t testing.TB, size int64) rbd.Spec {
	t.Helper()
	if cluster == nil {
		t.Skip(cephtest.Absent)
	}
	name := fmt.Sprintf("t%d-%d", os.Getpid(), imgSeq.Add(1))
	s, err := rbd.ParseName(cluster.Name(name))
	if err != nil {
		t.Fatal(err)
	}
	if err := rbd.Create(s, size); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, sn := range must(rbd.Snapshots(s)) {
			rbd.SnapRemove(s, sn.Name)
		}
		if err := rbd.Remove(s); err != nil {
			t.Errorf("remove: %v", err)
		}
	})
	return s
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func pattern(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 9))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func open(t testing.TB, e *blocktest.Env, s rbd.Spec, ro bool) *block.Node {
	t.Helper()
	name := "rbd"
	if s.Snap != "" {
		name += "@" + s.Snap
	}
	n, err := rbd.NewNode(e.G, s, ro, block.Options{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Unref(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return n
}

// TestReadWriteOps: vectored writes (with FUA), reads, flush, discard,
// write-zeroes, block status and resize against the cluster.
func TestReadWriteOps(t *testing.T) {
	s := newImage(t, imgSize)
	e := blocktest.NewEnv(t, 0)
	n := open(t, e, s, false)
	if l, _ := n.Length(); l != imgSize {
		t.Fatalf("length %d, want %d", l, imgSize)
	}
	w := pattern(300<<10, 1)
	if err := n.Writev([][]byte{w[:1000], w[1000:77777], w[77777:]}, 4<<20+512, block.FUA); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(w))
	if _, err := n.ReadAt(got, 4<<20+512); err != nil || !bytes.Equal(got, w) {
		t.Fatalf("read back: %v, equal %v", err, bytes.Equal(got, w))
	}
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	// Block status: objects are 4 MiB; only object 1 holds data.
	st, pnum, err := n.BlockStatus(0, imgSize)
	if err != nil || st&block.StatusZero == 0 || pnum != 4<<20 {
		t.Fatalf("status at 0: %v %d %v, want zero for 4 MiB", st, pnum, err)
	}
	st, pnum, err = n.BlockStatus(4<<20, imgSize-4<<20)
	if err != nil || st&block.StatusData == 0 || pnum != 4<<20 {
		t.Fatalf("status at 4M: %v %d %v, want data for 4 MiB", st, pnum, err)
	}
	if err := n.WriteZeroes(4<<20+512, 4096, 0); err != nil {
		t.Fatal(err)
	}
	clear(w[:4096])
	if err := n.Discard(4<<20+512+200<<10, 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := n.ReadAt(got, 4<<20+512); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:200<<10], w[:200<<10]) {
		t.Fatal("write-zeroes: the range does not read back as zeroes and the rest as written")
	}
	if err := n.Truncate(imgSize * 2); err != nil {
		t.Fatal(err)
	}
	if l, _ := n.Length(); l != imgSize*2 {
		t.Fatalf("length after resize %d", l)
	}
	if info, err := rbd.Stat(s); err != nil || info.Size != imgSize*2 {
		t.Fatalf("stat after resize: %+v %v", info, err)
	}
}

// TestManyInFlight: 2000 requests issued at once (more than the slot
// table) all complete, and each read sees its own write.
func TestManyInFlight(t *testing.T) {
	s := newImage(t, imgSize)
	e := blocktest.NewEnv(t, 0)
	n := open(t, e, s, false)
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	defer fe.Close()
	const k = 2000
	bufs := make([][]byte, k)
	for i := range bufs {
		bufs[i] = pattern(4096, uint64(i))
	}
	var errs atomic.Int64
	cb := &counter{errs: &errs}
	e.OnMain(func() {
		q := fe.Queue(e.Main)
		for i := range k {
			q.Write(bufs[i], int64(i)*4096, 0, cb, 0)
		}
		e.Main.WaitWhile(func() bool { return cb.done < k })
	})
	if errs.Load() != 0 {
		t.Fatalf("%d writes failed", errs.Load())
	}
	got := make([]byte, k*4096)
	if _, err := n.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	for i := range k {
		if !bytes.Equal(got[i*4096:(i+1)*4096], bufs[i]) {
			t.Fatalf("block %d differs", i)
		}
	}
}

// TestSnapshotOpen: a snapshot reads as it was and opens read-only.
func TestSnapshotOpen(t *testing.T) {
	s := newImage(t, imgSize)
	e := blocktest.NewEnv(t, 0)
	n := open(t, e, s, false)
	a := pattern(8192, 3)
	if _, err := n.WriteAt(a, 0); err != nil {
		t.Fatal(err)
	}
	n.Flush()
	if err := rbd.SnapCreate(s, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.WriteAt(pattern(8192, 4), 0); err != nil {
		t.Fatal(err)
	}
	sn := open(t, e, s.WithSnap("s1"), false)
	if !sn.ReadOnly() {
		t.Fatal("a snapshot node is writable")
	}
	got := make([]byte, 8192)
	if _, err := sn.ReadAt(got, 0); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("snapshot read: %v, equal %v", err, bytes.Equal(got, a))
	}
	list, err := rbd.Snapshots(s)
	if err != nil || len(list) != 1 || list[0].Name != "s1" || list[0].Size != imgSize {
		t.Fatalf("snapshots %+v %v", list, err)
	}
}

// TestOpenErrors: a missing pool, a missing image and a wrong key each
// fail with a message naming what is wrong, within the timeout.
func TestOpenErrors(t *testing.T) {
	if cluster == nil {
		t.Skip(cephtest.Absent)
	}
	e := blocktest.NewEnv(t, 0)
	key, err := cluster.AdminKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, want string }{
		{"rbd:nopool/img:conf=" + cluster.Conf, `pool "nopool" does not exist`},
		{"rbd:rbd/noimage:conf=" + cluster.Conf, `image "noimage" does not exist in pool "rbd"`},
		{"rbd:rbd/noimage:conf=" + cluster.Conf + ":id=ringblk:key=" + key + ":timeout=5",
			"connecting to the cluster as client.ringblk: permission denied (wrong key or user?)"},
		{"rbd:rbd/noimage:conf=" + cluster.Conf + ":id=ringblk:key=AQBnotavalidkeyAAAAAAAAAAAAAAAAAAAAAAAA==:timeout=5",
			"the key is not a valid cephx key"},
		{"rbd:rbd/noimage:conf=/nonexistent.conf", "reading the config file /nonexistent.conf"},
		// No monitor at that address: the open gives up after the timeout.
		{"rbd:rbd/noimage:conf=" + cluster.Conf + ":mon_host=v2\\:127.0.0.1\\:9:timeout=2",
			"connection timed out (no monitor answered within 2s)"},
	} {
		s, err := rbd.ParseName(c.name)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err = rbd.NewNode(e.G, s, false, block.Options{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
		if d := time.Since(start); d > 15*time.Second {
			t.Errorf("%s: failed after %v", c.name, d)
		}
	}
}

type counter struct {
	done int
	errs *atomic.Int64
}

func (c *counter) RequestDone(_ *block.Request, err error) {
	if err != nil {
		c.errs.Add(1)
	}
	c.done++
}
