package luks

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	cl "github.com/ringblk/ringblk/crypto/luks"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/internal/invariants"
)

type env struct {
	t    testing.TB
	main *aio.Context
	g    *block.Graph
}

func newEnv(t testing.TB) *env {
	t.Helper()
	c, err := aio.New(aio.Options{Name: "main", Main: true, CPU: aio.NoCPU, Entries: 64, ArenaSize: 1 << 20})
	if err != nil {
		t.Fatalf("aio.New: %v", err)
	}
	if err := c.Start(); err != nil {
		t.Skipf("cannot start a Context (io_uring unavailable?): %v", err)
	}
	t.Cleanup(func() {
		if _, err := c.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return &env{t: t, main: c, g: block.NewGraph(c)}
}

func (e *env) file(path string) *block.Node {
	e.t.Helper()
	f, err := raw.NewNode(e.g, path, raw.Options{Locking: raw.LockingOff}, block.Options{})
	if err != nil {
		e.t.Fatal(err)
	}
	return f
}

func (e *env) create(path string, size int64, pw string) {
	e.t.Helper()
	os.WriteFile(path, nil, 0o644)
	f := e.file(path)
	defer f.Unref()
	if _, err := Create(f, size, cl.CreateOptions{Password: []byte(pw), Iterations: 1000}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) open(path, pw string) (*block.Node, error) {
	var p []byte
	if pw != "" {
		p = []byte(pw)
	}
	return e.g.Open(New(e.file(path), Options{Password: p}), NodeOptions(block.Options{}))
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7+i/512)
	}
	return b
}

// TestDriverRoundTrip: writes from iovecs whose elements split sectors
// read back through differently split iovecs, before and after a reopen;
// the file holds ciphertext (not the plaintext) at the payload offset.
func TestDriverRoundTrip(t *testing.T) {
	e := newEnv(t)
	p := filepath.Join(t.TempDir(), "x.luks")
	e.create(p, 1<<20, "pw")
	n, err := e.open(p, "pw")
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := n.Length(); l != 1<<20 {
		t.Fatalf("length %d", l)
	}
	data := pattern(3*4096, 1)
	wiov := [][]byte{data[:300], data[300:1024], data[1024:5000], data[5000:]}
	if err := n.Writev(wiov, 8192, 0); err != nil {
		t.Fatal(err)
	}
	// An unaligned write goes through the block layer's read-modify-write.
	if _, err := n.WriteAt([]byte("hello"), 8192+100); err != nil {
		t.Fatal(err)
	}
	copy(data[100:], "hello")
	check := func(n *block.Node) {
		t.Helper()
		got := make([]byte, len(data))
		riov := [][]byte{got[:17], got[17:700], got[700:9000], got[9000:]}
		if err := n.Readv(riov, 8192); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			i := 0
			for got[i] == data[i] {
				i++
			}
			t.Fatalf("read back differs at byte %d", i)
		}
	}
	check(n)
	if err := n.Unref(); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(p)
	if bytes.Contains(raw, data[:64]) {
		t.Fatal("plaintext found in the file")
	}
	n, err = e.open(p, "pw")
	if err != nil {
		t.Fatal(err)
	}
	defer n.Unref()
	check(n)
	// Resize: the file is payload offset + the new size.
	if err := n.Truncate(2 << 20); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	if st.Size() != 2068480+2<<20 {
		t.Fatalf("file size after resize %d", st.Size())
	}
	// Write-zeroes reads back as zeroes (encrypted zeroes, not a hole).
	if err := n.WriteZeroes(8192, 4096, 0); err != nil {
		t.Fatal(err)
	}
	z := make([]byte, 4096)
	if _, err := n.ReadAt(z, 8192); err != nil || !bytes.Equal(z, make([]byte, 4096)) {
		t.Fatalf("write-zeroes read back %v %x", err, z[:16])
	}
}

func TestDriverWrongPassword(t *testing.T) {
	e := newEnv(t)
	p := filepath.Join(t.TempDir(), "x.luks")
	e.create(p, 1<<20, "right")
	if _, err := e.open(p, "wrong"); !errors.Is(err, cl.ErrBadPassword) || err.Error() != "Invalid password, cannot unlock any keyslot" {
		t.Fatalf("wrong password: %v", err)
	}
	if _, err := e.open(p, ""); !errors.Is(err, ErrKeySecretRequired) {
		t.Fatalf("no password: %v", err)
	}
	// Header only: opens, data I/O fails.
	n, err := e.g.Open(New(e.file(p), Options{NoIO: true}), NodeOptions(block.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Unref()
	if _, err := n.ReadAt(make([]byte, 512), 0); !errors.Is(err, ErrKeySecretRequired) {
		t.Fatalf("read without key: %v", err)
	}
}

type flagDone struct {
	done bool
	err  error
}

func (f *flagDone) RequestDone(_ *block.Request, err error) { f.done, f.err = true, err }

// TestDriverHotPathAllocs: reads (decrypted in place) and writes
// (encrypted into a reused bounce buffer) allocate nothing per request.
func TestDriverHotPathAllocs(t *testing.T) {
	if raceEnabled || invariants.Enabled {
		t.Skip("allocation budgets hold for production builds")
	}
	e := newEnv(t)
	p := filepath.Join(t.TempDir(), "x.luks")
	e.create(p, 1<<20, "pw")
	n, err := e.open(p, "pw")
	if err != nil {
		t.Fatal(err)
	}
	defer n.Unref()
	buf := make([]byte, 64<<10)
	for _, op := range []block.Op{block.OpWrite, block.OpRead} {
		var allocs float64
		var rerr error
		e.main.Run(func() {
			pool := e.g.Pool(e.main)
			fd := &flagDone{}
			cond := func() bool { return !fd.done }
			run := func() {
				fd.done = false
				r := pool.Get()
				r.Op, r.Off = op, 4096
				r.SetBuf(buf)
				n.Submit(r, fd)
				e.main.WaitWhile(cond)
				if fd.err != nil && rerr == nil {
					rerr = fd.err
				}
			}
			run()
			allocs = testing.AllocsPerRun(100, run)
		})
		if rerr != nil {
			t.Fatalf("%v: %v", op, rerr)
		}
		if allocs != 0 {
			t.Errorf("%v: %v allocations per request, want 0", op, allocs)
		}
	}
}

func needQemu(t *testing.T) {
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found", tool)
		}
	}
}

func qemuIO(t *testing.T, path, pw string, cmds ...string) string {
	t.Helper()
	args := []string{"--object", "secret,id=s0,data=" + pw, "--image-opts", "driver=luks,key-secret=s0,file.filename=" + path}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.Command("qemu-io", args...).CombinedOutput()
	if err != nil || strings.Contains(string(out), "failed") || strings.Contains(string(out), "can't open") {
		t.Fatalf("qemu-io %v: %v\n%s", cmds, err, out)
	}
	return string(out)
}

// TestQEMUInterop: a volume qemu-img 7.2 made and qemu-io wrote reads
// back the same here, and one made and written here reads back in
// qemu-io, passes qemu-img compare against a raw copy, and shows the
// same header in qemu-img info.
func TestQEMUInterop(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	e := newEnv(t)

	q := filepath.Join(dir, "q.luks")
	clitest.QEMUCreateLUKS(t, "luks", q, "key-secret=s0,iter-time=10", "1M")
	qemuIO(t, q, "abc", "write -P 0x5a 512 70000", "write -P 0xa5 700416 4096")
	n, err := e.open(q, "abc")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 70000)
	if _, err := n.ReadAt(got, 512); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{0x5a}, 70000)) {
		t.Fatalf("qemu-io's pattern: %v %x", err, got[:16])
	}
	n.Unref()

	r := filepath.Join(dir, "r.luks")
	e.create(r, 1<<20, "abc")
	n, err = e.open(r, "abc")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.WriteAt(bytes.Repeat([]byte{0x3c}, 65536), 131072); err != nil {
		t.Fatal(err)
	}
	if err := n.Unref(); err != nil {
		t.Fatal(err)
	}
	qemuIO(t, r, "abc", "read -P 0x3c 131072 65536")
	// The rest of ringblk's volume is what QEMU decrypts too: compare it
	// with a plain copy made from our reading.
	n, _ = e.open(r, "abc")
	all := make([]byte, 1<<20)
	if _, err := n.ReadAt(all, 0); err != nil {
		t.Fatal(err)
	}
	n.Unref()
	plain := filepath.Join(dir, "plain.raw")
	os.WriteFile(plain, all, 0o644)
	out, err := exec.Command("qemu-img", "compare", "--object", "secret,id=s0,data=abc", "--image-opts",
		"driver=luks,key-secret=s0,file.filename="+r, "driver=raw,file.filename="+plain).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Images are identical") {
		t.Fatalf("qemu-img compare: %v\n%s", err, out)
	}
	out, err = exec.Command("qemu-io", "--object", "secret,id=s0,data=abd", "--image-opts",
		"driver=luks,key-secret=s0,file.filename="+r, "-c", "read 0 512").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Invalid password, cannot unlock any keyslot") {
		t.Fatalf("qemu-io with the wrong password: %v\n%s", err, out)
	}
}
