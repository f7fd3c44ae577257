package nbd_test

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	nbdc "github.com/ringblk/ringblk/drivers/nbd"
	"github.com/ringblk/ringblk/drivers/raw"
	nbdsrv "github.com/ringblk/ringblk/nbd"

	"github.com/ringblk/ringblk/internal/nbdtest"
)

const size = 16 << 20

func pattern(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 7))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// serve exports the raw file path with our NBD server on a Unix socket
// (in a graph of its own) and returns the nbd+unix URI.
func serve(t *testing.T, path string, eo nbdsrv.ExportOptions) string {
	t.Helper()
	return serveWith(t, path, eo, nil)
}

// serveWith is serve with TLS required when cfg is set.
func serveWith(t *testing.T, path string, eo nbdsrv.ExportOptions, cfg *tls.Config) string {
	t.Helper()
	se := blocktest.NewEnv(t, 0)
	n, err := raw.NewNode(se.G, path, raw.Options{Discard: raw.DiscardUnmap, ReadOnly: eo.ReadOnly}, block.Options{Name: "srv"})
	if err != nil {
		t.Fatal(err)
	}
	exp, err := nbdsrv.NewExport(se.G, n, eo)
	n.Unref()
	if err != nil {
		t.Fatal(err)
	}
	srv := nbdsrv.NewServer()
	if cfg != nil {
		srv.SetTLS(cfg)
	}
	srv.AddExport(exp)
	network, addr := "unix", filepath.Join(t.TempDir(), "s.sock")
	if eo.Description == "tcp" {
		network, addr = "tcp", "127.0.0.1:0"
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { srv.Serve(l); close(done) }()
	t.Cleanup(func() {
		srv.Close()
		<-done
		exp.Close()
	})
	if network == "tcp" {
		return "nbd://" + l.Addr().String() + "/" + eo.Name
	}
	return "nbd+unix:///" + eo.Name + "?socket=" + addr
}

// TestClientTCP: nbd://host:port/export over TCP loopback.
func TestClientTCP(t *testing.T) {
	path, data := image(t)
	uri := serve(t, path, nbdsrv.ExportOptions{Name: "disk", Description: "tcp"})
	if !strings.HasPrefix(uri, "nbd://127.0.0.1:") {
		t.Fatalf("uri %s", uri)
	}
	e := blocktest.NewEnv(t, 0)
	n := open(t, e, uri, true, block.Options{})
	got := make([]byte, size)
	if _, err := n.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read over TCP: %v, equal %v", err, bytes.Equal(got, data))
	}
}

func image(t *testing.T) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.raw")
	data := make([]byte, size)
	copy(data[64<<10:], pattern(1<<20, 1))
	copy(data[5<<20:], pattern(3<<20, 2))
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.WriteAt(data[64<<10:64<<10+1<<20], 64<<10)
	f.WriteAt(data[5<<20:8<<20], 5<<20)
	f.Close()
	return path, data
}

func open(t *testing.T, e *blocktest.Env, uri string, ro bool, bo block.Options) *block.Node {
	t.Helper()
	if bo.Name == "" {
		bo.Name = "client"
	}
	n, err := nbdc.NewNode(e.G, uri, ro, bo)
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

// statusMap walks block status over the node: the data ranges.
func statusMap(t *testing.T, n *block.Node, length int64) (data [][2]int64, zeroHoles int64) {
	t.Helper()
	for off := int64(0); off < length; {
		st, pnum, err := n.BlockStatus(off, length-off)
		if err != nil || pnum <= 0 {
			t.Fatalf("block status at %d: %v (pnum %d)", off, err, pnum)
		}
		if st&block.StatusData != 0 {
			if k := len(data); k > 0 && data[k-1][1] == off {
				data[k-1][1] = off + pnum
			} else {
				data = append(data, [2]int64{off, off + pnum})
			}
		} else if st&block.StatusZero != 0 {
			zeroHoles += pnum
		}
		off += pnum
	}
	return data, zeroHoles
}

// TestClientAgainstOurServer: reads, FUA writes, flush, trim, write-zeroes
// (with NoFallback as FAST_ZERO), block status holes, and 300 requests in
// flight at once, through the client against ringblk's server.
func TestClientAgainstOurServer(t *testing.T) {
	path, data := image(t)
	uri := serve(t, path, nbdsrv.ExportOptions{Name: "disk"})
	e := blocktest.NewEnv(t, 0)
	n := open(t, e, uri, false, block.Options{})
	if l, _ := n.Length(); l != size {
		t.Fatalf("length %d", l)
	}
	got := make([]byte, size)
	if _, err := n.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("read of the whole export differs from the file")
	}
	dm, _ := statusMap(t, n, size)
	want := [][2]int64{{64 << 10, 64<<10 + 1<<20}, {5 << 20, 8 << 20}}
	if len(dm) != 2 || dm[0] != want[0] || dm[1] != want[1] {
		t.Fatalf("data extents %v, want %v", dm, want)
	}
	w := pattern(200<<10, 3)
	if err := n.Writev([][]byte{w[:1000], w[1000:]}, 3<<20+17, block.FUA); err != nil {
		t.Fatal(err)
	}
	copy(data[3<<20+17:], w)
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := n.WriteZeroes(5<<20, 1<<20, block.MayUnmap|block.NoFallback); err != nil {
		t.Fatalf("write-zeroes with NoFallback (FAST_ZERO to a raw export): %v", err)
	}
	clear(data[5<<20 : 6<<20])
	if err := n.WriteZeroes(6<<20, 4096, block.FUA); err != nil {
		t.Fatal(err)
	}
	clear(data[6<<20 : 6<<20+4096])
	if err := n.Discard(7<<20, 64<<10); err != nil {
		t.Fatal(err)
	}
	clear(data[7<<20 : 7<<20+64<<10]) // the server punches a hole
	f, _ := os.ReadFile(path)
	if !bytes.Equal(f, data) {
		t.Fatal("the file differs after writes, zeroes and trim through the client")
	}

	// Many requests in flight from one batch; random reads and writes of
	// disjoint 4 KiB blocks.
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	defer fe.Close()
	q := fe.Queue(e.Main)
	const reqs = 300
	bufs := make([][]byte, reqs)
	res := make([]*blocktest.Result, reqs)
	perm := rand.New(rand.NewPCG(9, 9)).Perm(size / 4096)
	e.OnMain(func() {
		q.Plug()
		for i := range reqs {
			off := int64(perm[i]) * 4096
			res[i] = blocktest.NewResult()
			if i%2 == 0 {
				bufs[i] = pattern(4096, uint64(i))
				copy(data[off:], bufs[i])
				q.Write(bufs[i], off, 0, res[i], 0)
			} else {
				bufs[i] = make([]byte, 4096)
				q.Read(bufs[i], off, res[i], 0)
			}
		}
		q.Unplug()
	})
	for i := range reqs {
		res[i].Wait(e)
		if res[i].Err != nil {
			t.Fatalf("request %d: %v", i, res[i].Err)
		}
		if off := int64(perm[i]) * 4096; i%2 == 1 && !bytes.Equal(bufs[i], data[off:off+4096]) {
			t.Fatalf("read %d at %d: wrong data", i, off)
		}
	}
	if _, err := n.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("final read: %v, equal %v", err, bytes.Equal(got, data))
	}
}

// TestClientOtherContextsAndMoves: requests from an IOThread reach a node
// homed on main (inbox/outbox), and the node moves to the IOThread and
// back with the connection idle.
func TestClientOtherContextsAndMoves(t *testing.T) {
	path, data := image(t)
	uri := serve(t, path, nbdsrv.ExportOptions{Name: ""})
	e := blocktest.NewEnv(t, 1)
	n := open(t, e, uri, true, block.Options{})
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{AllowContextChange: true})
	defer fe.Close()
	read := func(what string) {
		t.Helper()
		got := make([]byte, 2<<20)
		if _, err := fe.ReadAt(got, 5<<20); err != nil || !bytes.Equal(got, data[5<<20:7<<20]) {
			t.Fatalf("%s: %v, equal %v", what, err, bytes.Equal(got, data[5<<20:7<<20]))
		}
		q := fe.Queue(e.IO[0])
		r := blocktest.NewResult()
		buf := make([]byte, 64<<10)
		e.On(e.IO[0], func() { q.Read(buf, 64<<10, r, 0) })
		r.Wait(e)
		if r.Err != nil || !bytes.Equal(buf, data[64<<10:128<<10]) {
			t.Fatalf("%s, from the IOThread: %v", what, r.Err)
		}
	}
	read("on main")
	if err := fe.SetContext(e.IO[0]); err != nil {
		t.Fatal(err)
	}
	read("moved to the IOThread")
	if err := fe.SetContext(e.Main); err != nil {
		t.Fatal(err)
	}
	read("moved back")
}

// TestClientServerGoesAway: a server that dies with requests in flight
// fails them with EIO (no hang), and every later request fails at once.
func TestClientServerGoesAway(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "fake.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan int, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		fakeHandshake(c, 1<<20)
		var h [28]byte
		k := 0
		for ; k < 3; k++ {
			if _, err := io.ReadFull(c, h[:]); err != nil {
				break
			}
		}
		got <- k // three requests read, none answered: now die
	}()
	e := blocktest.NewEnv(t, 0)
	n := open(t, e, "nbd+unix:///?socket="+sock, true, block.Options{})
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	defer fe.Close()
	q := fe.Queue(e.Main)
	res := []*blocktest.Result{blocktest.NewResult(), blocktest.NewResult(), blocktest.NewResult()}
	e.OnMain(func() {
		for i, r := range res {
			q.Read(make([]byte, 4096), int64(i)*4096, r, 0)
		}
	})
	if k := <-got; k != 3 {
		t.Fatalf("fake server read %d requests", k)
	}
	for i, r := range res {
		r.Wait(e)
		if !errors.Is(r.Err, syscall.EIO) || !strings.Contains(r.Err.Error(), "closed the connection") {
			t.Fatalf("request %d after the server died: %v, want EIO naming the cause", i, r.Err)
		}
	}
	start := time.Now()
	if _, err := fe.ReadAt(make([]byte, 512), 0); !errors.Is(err, syscall.EIO) || time.Since(start) > 5*time.Second {
		t.Fatalf("read on a dead connection: %v after %v", err, time.Since(start))
	}
}

// TestClientHostileServer: a reply to a cookie never sent is a protocol
// error: the request in flight fails with EIO, the client does not hang.
func TestClientHostileServer(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "fake.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		fakeHandshake(c, 1<<20)
		var h [28]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return
		}
		var rep [16]byte
		binary.BigEndian.PutUint32(rep[:], 0x67446698)
		binary.BigEndian.PutUint64(rep[8:], 0xdead) // not the request's cookie
		c.Write(rep[:])
		io.Copy(io.Discard, c)
	}()
	e := blocktest.NewEnv(t, 0)
	n := open(t, e, "nbd+unix:///?socket="+sock, true, block.Options{})
	_, err = n.ReadAt(make([]byte, 4096), 0)
	if !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "unknown cookie") {
		t.Fatalf("read answered with a foreign cookie: %v", err)
	}
}

// fakeHandshake speaks the server side of a minimal fixed newstyle
// handshake: no structured replies, GO answered with the export size.
func fakeHandshake(c net.Conn, sz uint64) { fakeHandshakeOpts(c, sz, false, 1|1<<1) }

// fakeHandshakeOpts: with structured, STRUCTURED_REPLY is accepted and
// base:allocation granted as context 7; flags are the transmission flags.
func fakeHandshakeOpts(c net.Conn, sz uint64, structured bool, tflags uint16) {
	b := binary.BigEndian.AppendUint64(nil, 0x4e42444d41474943)
	b = binary.BigEndian.AppendUint64(b, 0x49484156454f5054)
	b = binary.BigEndian.AppendUint16(b, 3)
	c.Write(b)
	var cf [4]byte
	io.ReadFull(c, cf[:])
	for {
		var h [16]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return
		}
		opt := binary.BigEndian.Uint32(h[8:])
		data := make([]byte, binary.BigEndian.Uint32(h[12:]))
		io.ReadFull(c, data)
		reply := func(typ uint32, d []byte) {
			r := binary.BigEndian.AppendUint64(nil, 0x0003e889045565a9)
			r = binary.BigEndian.AppendUint32(r, opt)
			r = binary.BigEndian.AppendUint32(r, typ)
			r = binary.BigEndian.AppendUint32(r, uint32(len(d)))
			c.Write(append(r, d...))
		}
		switch {
		case opt == 8 && structured:
			reply(1, nil)
			continue
		case opt == 10 && structured:
			reply(4, append(binary.BigEndian.AppendUint32(nil, 7), "base:allocation"...))
			reply(1, nil)
			continue
		case opt != 7:
			reply(1<<31+1, nil) // ERR_UNSUP
			continue
		}
		info := binary.BigEndian.AppendUint16(nil, 0)
		info = binary.BigEndian.AppendUint64(info, sz)
		info = binary.BigEndian.AppendUint16(info, tflags)
		reply(3, info)
		reply(1, nil)
		return
	}
}

// TestClientAgainstQemuNbd: data and block status read through the client
// from qemu-nbd serving a qcow2 image equal what qemu-img reads and maps
// through the same URI.
func TestClientAgainstQemuNbd(t *testing.T) {
	for _, tool := range []string{"qemu-nbd", "qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (scripts/deps.sh installs it)", tool)
		}
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "q.qcow2")
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	run("qemu-img", "create", "-q", "-f", "qcow2", img, "16M")
	run("qemu-io", "-f", "qcow2", "-c", "write -P 0x41 1M 512k", "-c", "write -z 4M 1M", "-c", "write -P 0x42 9M 2M", img)
	sock := nbdtest.StartQemuNbd(t, "-t", "-e", "4", "-f", "qcow2", img)
	uri := "nbd+unix:///?socket=" + sock
	e := blocktest.NewEnv(t, 0)
	n := open(t, e, uri, false, block.Options{})
	ref := filepath.Join(dir, "ref.raw")
	run("qemu-img", "convert", "-f", "raw", "-O", "raw", uri, ref)
	want, _ := os.ReadFile(ref)
	got := make([]byte, size)
	if _, err := n.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("data read through the client differs from qemu-img's")
	}
	dm, _ := statusMap(t, n, size)
	qmap := run("qemu-img", "map", "-f", "raw", "--output=json", uri)
	var qdata [][2]int64
	for _, line := range strings.Split(qmap, "\n") {
		if !strings.Contains(line, `"data": true`) {
			continue
		}
		var s, l int64
		if _, err := fmtSscan(line, &s, &l); err != nil {
			t.Fatalf("qemu-img map line %q: %v", line, err)
		}
		if k := len(qdata); k > 0 && qdata[k-1][1] == s {
			qdata[k-1][1] = s + l
		} else {
			qdata = append(qdata, [2]int64{s, s + l})
		}
	}
	if len(dm) != len(qdata) {
		t.Fatalf("data extents %v, qemu-img map %v", dm, qdata)
	}
	for i := range dm {
		if dm[i] != qdata[i] {
			t.Fatalf("data extents %v, qemu-img map %v", dm, qdata)
		}
	}
	// Write through the client; qemu-img compare sees it in the image.
	if _, err := n.WriteAt(bytes.Repeat([]byte{0x55}, 300<<10), 12<<20+512); err != nil {
		t.Fatal(err)
	}
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	copy(want[12<<20+512:], bytes.Repeat([]byte{0x55}, 300<<10))
	os.WriteFile(ref, want, 0o644)
	run("qemu-img", "compare", "-f", "raw", "-F", "raw", uri, ref)
}

var mapLine = regexp.MustCompile(`"start": ([0-9]+), "length": ([0-9]+)`)

// fmtSscan takes start and length from a qemu-img map JSON line.
func fmtSscan(line string, s, l *int64) (int, error) {
	m := mapLine.FindStringSubmatch(line)
	if m == nil {
		return 0, errors.New("no start/length")
	}
	*s, _ = strconv.ParseInt(m[1], 10, 64)
	*l, _ = strconv.ParseInt(m[2], 10, 64)
	return 2, nil
}
