package servecmd

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"
)

const (
	asMainEnv = "RINGBLK_SERVE_TEST_AS_MAIN"
	// sigtermAtShutdownEnv makes the daemon send itself a SIGTERM as its
	// shutdown begins (TestServeSignalDuringShutdown).
	sigtermAtShutdownEnv = "RINGBLK_SERVE_TEST_SIGTERM_AT_SHUTDOWN"
)

func TestMain(m *testing.M) {
	if os.Getenv(asMainEnv) == "1" {
		if os.Getenv(sigtermAtShutdownEnv) == "1" {
			shutdownHook = func() {
				// To this thread: the signal is handled before Tgkill
				// returns, so an uncaught one ends the process here.
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				_ = unix.Tgkill(os.Getpid(), unix.Gettid(), unix.SIGTERM)
			}
		}
		os.Exit(Main(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func needCmd(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Skipf("%s is not installed (make test installs it: scripts/deps.sh)", n)
		}
	}
}

func tmpDir(t *testing.T) string {
	t.Helper()
	if err := os.MkdirAll("/var/tmp/qmp", 0o755); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("/var/tmp/qmp", "serve")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func qemuImg(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// syncBuffer is a bytes.Buffer the child's stderr copier and the test
// may use at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// daemon is a `ringblk serve` child process.
type daemon struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan error
}

func startServe(t *testing.T, args ...string) *daemon {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), asMainEnv+"=1")
	e := &syncBuffer{}
	cmd.Stderr = e
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: cmd, stderr: e, done: make(chan error, 1)}
	go func() { d.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-d.done
	})
	return d
}

// wait returns the exit code.
func (d *daemon) wait(t *testing.T) int {
	t.Helper()
	select {
	case err := <-d.done:
		d.done <- err
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(60 * time.Second):
		t.Fatalf("daemon did not exit; stderr:\n%s", d.stderr)
	}
	return -1
}

func waitSocket(t *testing.T, d *daemon, path string) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
		select {
		case err := <-d.done:
			d.done <- err
			t.Fatalf("daemon exited (%v) before listening:\n%s", err, d.stderr)
		default:
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: nobody listens; stderr:\n%s", path, d.stderr)
}

// qmpc is a raw QMP client (as qmp-shell speaks it).
type qmpc struct {
	t  *testing.T
	nc net.Conn
	r  *bufio.Reader
	// events: the events do read while it waited for a reply.
	events []map[string]any
}

func dialQMP(t *testing.T, path string) *qmpc {
	t.Helper()
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := &qmpc{t: t, nc: nc, r: bufio.NewReader(nc)}
	c.read() // greeting
	c.ok(`{"execute":"qmp_capabilities"}`)
	return c
}

// waitQMP connects to a daemon that is starting: it retries until the
// socket accepts and greets (a monitor socket serves one client at a
// time, and a daemon may still be dropping a previous one: the new
// connection then reads EOF).
func waitQMP(t *testing.T, path string) *qmpc {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		nc, err := net.Dial("unix", path)
		if err == nil {
			r := bufio.NewReader(nc)
			nc.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err = r.ReadBytes('\n'); err == nil {
				t.Cleanup(func() { nc.Close() })
				c := &qmpc{t: t, nc: nc, r: r}
				c.ok(`{"execute":"qmp_capabilities"}`)
				return c
			}
			nc.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("no QMP greeting on %s: %v", path, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startQSD starts qemu-storage-daemon with args and returns a wait for its
// exit: at most a minute (a daemon that does not exit is killed and the
// test fails, instead of hanging the suite); a failed test kills it first.
func startQSD(t *testing.T, args ...string) (wait func()) {
	t.Helper()
	q := exec.Command("qemu-storage-daemon", args...)
	var stderr bytes.Buffer
	q.Stderr = &stderr
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { q.Wait(); close(done) }()
	t.Cleanup(func() { q.Process.Kill(); <-done })
	return func() {
		if t.Failed() {
			q.Process.Kill()
		}
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			q.Process.Kill()
			<-done
			t.Errorf("qemu-storage-daemon did not exit within a minute; stderr:\n%s", stderr.String())
		}
	}
}

// compareSteps fails the test at every step where the two daemons'
// outputs (bothDaemons) differ.
func compareSteps(t *testing.T, want, got []string) {
	t.Helper()
	for i := range want {
		if i >= len(got) || want[i] != got[i] {
			var g string
			if i < len(got) {
				g = got[i]
			}
			t.Errorf("step %d: qemu-storage-daemon %s, ringblk serve %s", i, want[i], g)
		}
	}
}

// twoLayerChain makes dir/base.qcow2 (0x41 over its first 64 KiB) and
// dir/top.qcow2 over it (0x42 over 64 KiB at 1 MiB), 4 MiB each.
func twoLayerChain(t *testing.T, dir string) (base, top string) {
	t.Helper()
	base, top = filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", base, "4M")
	qemuIO(t, "-c", "write -P 0x41 0 64k", base)
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
	qemuIO(t, "-c", "write -P 0x42 1M 64k", top)
	return base, top
}

// bothDaemons runs a QMP scenario against qemu-storage-daemon and then
// ringblk serve: run gets a name for its scratch directory and a start
// function that starts the daemon with the given arguments and returns
// a wait for its exit (the scenario ends with quit). It returns the
// scenario's outputs, QEMU's first.
func bothDaemons(t *testing.T, run func(name string, start func(args ...string) func()) []string) (want, got []string) {
	t.Helper()
	want = run("qsd", func(args ...string) func() { return startQSD(t, args...) })
	got = run("ringblk", func(args ...string) func() {
		d := startServe(t, args...)
		return func() {
			if code := d.wait(t); code != 0 {
				t.Errorf("exit %d: %s", code, d.stderr)
			}
		}
	})
	return want, got
}

func (c *qmpc) read() map[string]any {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(60 * time.Second))
	line, err := c.r.ReadBytes('\n')
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		c.t.Fatalf("%q: %v", line, err)
	}
	return m
}

func (c *qmpc) do(cmd string) map[string]any {
	c.t.Helper()
	if _, err := c.nc.Write([]byte(cmd + "\n")); err != nil {
		c.t.Fatal(err)
	}
	for {
		m := c.read()
		if _, greeting := m["QMP"]; greeting {
			// qemu-storage-daemon, taking a client just after dropping
			// the previous one (a probe connection), has been seen to
			// greet twice (CI63): a greeting is not a reply.
			continue
		}
		if _, ev := m["event"]; !ev && m["id"] != "raw" {
			return m
		}
		c.events = append(c.events, m)
	}
}

// nextEvent returns the next event: one do set aside while it waited for
// a reply (QMP orders events and replies freely), or the next one read.
func (c *qmpc) nextEvent() map[string]any {
	c.t.Helper()
	for {
		if len(c.events) > 0 {
			m := c.events[0]
			c.events = c.events[1:]
			if _, ev := m["event"]; ev {
				return m
			}
			continue
		}
		if m := c.read(); m["event"] != nil {
			return m
		}
	}
}

func (c *qmpc) ok(cmd string) any {
	c.t.Helper()
	r := c.do(cmd)
	if _, ok := r["return"]; !ok {
		c.t.Fatalf("%s: %v", cmd, r)
	}
	return r["return"]
}

func qemuIO(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("qemu-io", args...).CombinedOutput()
	if err != nil || strings.Contains(string(out), "Pattern verification failed") || strings.Contains(string(out), "error") {
		t.Fatalf("qemu-io %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestServeIotest202OverTheSocketAndCleanSIGTERM is iotest 202's analogue
// end to end: two qcow2 drives on one IOThread, exported over NBD and
// written to, one transaction over the QMP socket snapshots both; then
// SIGTERM: the daemon drains and closes everything, qemu-img check finds
// every image clean and the data is all there.
func TestServeIotest202OverTheSocketAndCleanSIGTERM(t *testing.T) {
	needCmd(t, "qemu-img", "qemu-io")
	dir := tmpDir(t)
	var imgs [2]string
	for i := range imgs {
		imgs[i] = filepath.Join(dir, fmt.Sprintf("disk%d.qcow2", i))
		qemuImg(t, "create", "-q", "-f", "qcow2", imgs[i], "16M")
	}
	sock, nbdSock, pid := filepath.Join(dir, "qmp.sock"), filepath.Join(dir, "nbd.sock"), filepath.Join(dir, "pid")
	d := startServe(t,
		"--blockdev", "driver=qcow2,node-name=disk0,file.driver=file,file.filename="+imgs[0],
		"--blockdev", `{"driver":"qcow2","node-name":"disk1","file":{"driver":"file","filename":"`+imgs[1]+`"}}`,
		"--object", "iothread,id=iothread0",
		"--chardev", "socket,id=mon0,path="+sock+",server=on,wait=off", "--monitor", "chardev=mon0",
		"--nbd-server", "addr.type=unix,addr.path="+nbdSock,
		"--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on",
		"--export", "type=nbd,id=e1,node-name=disk1,name=disk1,writable=on",
		"--pidfile", pid)
	waitSocket(t, d, sock)
	c := dialQMP(t, sock)
	for _, n := range []string{"disk0", "disk1"} {
		c.ok(`{"execute":"x-blockdev-set-iothread","arguments":{"node-name":"` + n + `","iothread":"iothread0"}}`)
	}
	if b, _ := os.ReadFile(pid); strings.TrimSpace(string(b)) != strconv.Itoa(d.cmd.Process.Pid) {
		t.Fatalf("pid file %q, want %d", b, d.cmd.Process.Pid)
	}
	nbdURL := func(n string) string { return "nbd+unix:///" + n + "?socket=" + nbdSock }
	for i, n := range []string{"disk0", "disk1"} {
		qemuIO(t, "-f", "raw", "-c", fmt.Sprintf("write -P 0x%x 0 1M", 0x10+i), "-c", "flush", nbdURL(n))
	}
	// Both snapshots in one transaction, while a client writes to disk0.
	bg := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0x33 2M 4M", nbdURL("disk0"))
	if err := bg.Start(); err != nil {
		t.Fatal(err)
	}
	c.ok(`{"execute":"transaction","arguments":{"actions":[
		{"type":"blockdev-snapshot-sync","data":{"node-name":"disk0","snapshot-file":"` + dir + `/snap0.qcow2","snapshot-node-name":"snap0","format":"qcow2"}},
		{"type":"blockdev-snapshot-sync","data":{"node-name":"disk1","snapshot-file":"` + dir + `/snap1.qcow2","snapshot-node-name":"snap1","format":"qcow2"}}]}}`)
	if err := bg.Wait(); err != nil {
		t.Fatalf("background writer: %v", err)
	}
	for i, n := range []string{"disk0", "disk1"} {
		qemuIO(t, "-f", "raw", "-c", fmt.Sprintf("write -P 0x%x 1M 1M", 0x20+i), "-c", "flush", nbdURL(n))
	}
	nodes := c.ok(`{"execute":"query-named-block-nodes"}`).([]any)
	names := map[string]bool{}
	for _, n := range nodes {
		names[n.(map[string]any)["node-name"].(string)] = true
	}
	for _, n := range []string{"disk0", "disk1", "snap0", "snap1"} {
		if !names[n] {
			t.Errorf("node %s missing from query-named-block-nodes: %v", n, names)
		}
	}
	// SIGHUP is ignored: still serving.
	d.cmd.Process.Signal(syscall.SIGHUP)
	time.Sleep(50 * time.Millisecond)
	c.ok(`{"execute":"query-block"}`)
	// SIGTERM: the connection ends, exit 0, everything closed. No
	// SHUTDOWN event: qemu-storage-daemon sends none.
	d.cmd.Process.Signal(syscall.SIGTERM)
	var sawShutdown, sawEOF bool
	for {
		c.nc.SetReadDeadline(time.Now().Add(30 * time.Second))
		line, err := c.r.ReadBytes('\n')
		if err != nil {
			sawEOF = errors.Is(err, io.EOF)
			break
		}
		if strings.Contains(string(line), `"SHUTDOWN"`) {
			sawShutdown = true
		}
	}
	if code := d.wait(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM; stderr:\n%s", code, d.stderr)
	}
	if !sawEOF {
		t.Error("the connection did not end after SIGTERM")
	}
	if sawShutdown {
		t.Error("SHUTDOWN event sent; qemu-storage-daemon sends none")
	}
	if _, err := os.Stat(pid); !os.IsNotExist(err) {
		t.Errorf("pid file left behind: %v", err)
	}
	for _, img := range []string{imgs[0], imgs[1], dir + "/snap0.qcow2", dir + "/snap1.qcow2"} {
		if out := qemuImg(t, "check", img); !strings.Contains(out, "No errors were found") {
			t.Errorf("qemu-img check %s:\n%s", img, out)
		}
	}
	// Data: the base has what was written before the snapshot, the
	// overlays show everything.
	qemuIO(t, "-f", "qcow2", "-c", "read -P 0x10 0 1M", "-c", "read -P 0 1M 1M", imgs[0])
	qemuIO(t, "-f", "qcow2", "-c", "read -P 0x10 0 1M", "-c", "read -P 0x20 1M 1M", "-c", "read -P 0x33 2M 4M", dir+"/snap0.qcow2")
	qemuIO(t, "-f", "qcow2", "-c", "read -P 0x11 0 1M", "-c", "read -P 0x21 1M 1M", dir+"/snap1.qcow2")
}

func TestServeSecondInstanceRefusedByLocks(t *testing.T) {
	needCmd(t, "qemu-img")
	dir := tmpDir(t)
	img := filepath.Join(dir, "d.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", img, "1M")
	sock := filepath.Join(dir, "qmp.sock")
	d := startServe(t, "--blockdev", "driver=qcow2,node-name=d,file.driver=file,file.filename="+img,
		"--chardev", "socket,id=m,path="+sock+",server=on,wait=off", "--monitor", "chardev=m")
	waitSocket(t, d, sock)
	d2 := startServe(t, "--blockdev", "driver=qcow2,node-name=d,file.driver=file,file.filename="+img)
	if code := d2.wait(t); code != 1 {
		t.Fatalf("second daemon exit %d, want 1", code)
	}
	if msg := d2.stderr.String(); !strings.Contains(msg, "lock") || strings.Count(msg, "\n") != 1 {
		t.Fatalf("second daemon said %q, want one line about the lock", msg)
	}
	// The first is unaffected, and quit ends it cleanly.
	c := dialQMP(t, sock)
	c.ok(`{"execute":"quit"}`)
	if code := d.wait(t); code != 0 {
		t.Fatalf("exit %d after quit: %s", code, d.stderr)
	}
	if out := qemuImg(t, "check", img); !strings.Contains(out, "No errors were found") {
		t.Errorf("qemu-img check:\n%s", out)
	}
}

func TestServeOptionErrors(t *testing.T) {
	dir := tmpDir(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--bogus"}, "unknown option '--bogus'"},
		{[]string{"--blockdev"}, "needs a value"},
		{[]string{"--blockdev", "driver=qcow2,node-name=x"}, "Parameter 'file' is missing"},
		{[]string{"--blockdev", "driver=qcow2,node-name=x,file.driver=file,file.filename=" + dir + "/none"}, "Could not open"},
		{[]string{"--blockdev", "driver=file,node-name=x,filename=/dev/null,read-only=maybe"}, "expects 'on' or 'off'"},
		{[]string{"--object", "memory-backend-ram,id=m"}, "object type 'memory-backend-ram' is not supported"},
		{[]string{"--chardev", "socket,id=m,host=127.0.0.1,port=0,server=on,wait=off", "--monitor", "chardev=m"}, "needs --allow-tcp"},
		{[]string{"--monitor", "chardev=nope"}, "chardev 'nope' not found"},
		// The option and its value, then QEMU's message (the node is
		// looked up before the NBD server, as in qemu-storage-daemon).
		{[]string{"--export", "type=nbd,id=e,node-name=x"}, "--export type=nbd,id=e,node-name=x: Cannot find device='' nor node-name='x'"},
		{[]string{"--blockdev", "driver=null-co,node-name=n,size=1048576", "--export", "type=nbd,id=e,node-name=n"}, "NBD server not running"},
	} {
		d := startServe(t, tc.args...)
		if code := d.wait(t); code != 1 {
			t.Errorf("%v: exit %d, want 1", tc.args, code)
		}
		msg := d.stderr.String()
		if !strings.HasPrefix(msg, "ringblk: serve: ") || !strings.Contains(msg, tc.want) || strings.Count(msg, "\n") != 1 {
			t.Errorf("%v: stderr %q, want one line with %q", tc.args, msg, tc.want)
		}
	}
}

// TestServeGoQemuClient drives the daemon with digitalocean/go-qemu's QMP
// monitor, unchanged.
func TestServeGoQemuClient(t *testing.T) {
	needCmd(t, "qemu-img")
	dir := tmpDir(t)
	img := filepath.Join(dir, "d.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", img, "1M")
	sock := filepath.Join(dir, "qmp.sock")
	d := startServe(t, "--blockdev", "driver=qcow2,node-name=d,file.driver=file,file.filename="+img,
		"--chardev", "socket,id=m,path="+sock+",server=on,wait=off", "--monitor", "chardev=m")
	waitSocket(t, d, sock)
	mon, err := goqmp.NewSocketMonitor("unix", sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := mon.Connect(); err != nil {
		t.Fatal(err)
	}
	if mon.Version == nil || mon.Version.QEMU.Major == 0 {
		t.Fatalf("version %+v", mon.Version)
	}
	out, err := mon.Run([]byte(`{"execute":"query-block"}`))
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Return []struct {
			Device   string `json:"device"`
			Inserted struct {
				NodeName string `json:"node-name"`
				Drv      string `json:"drv"`
			} `json:"inserted"`
		} `json:"return"`
	}
	if err := json.Unmarshal(out, &r); err != nil || len(r.Return) != 1 || r.Return[0].Inserted.NodeName != "d" || r.Return[0].Inserted.Drv != "qcow2" {
		t.Fatalf("query-block %s (%v)", out, err)
	}
	_, err = mon.Run([]byte(`{"execute":"blockdev-snapshot-internal-sync","arguments":{"device":"d","name":"s1"}}`))
	if err != nil {
		t.Fatal(err)
	}
	_, err = mon.Run([]byte(`{"execute":"no-such"}`))
	if err == nil || !strings.Contains(err.Error(), "has not been found") {
		t.Fatalf("unknown command through go-qemu: %v", err)
	}
	if _, err := mon.Run([]byte(`{"execute":"quit"}`)); err != nil {
		t.Fatal(err)
	}
	mon.Disconnect()
	if code := d.wait(t); code != 0 {
		t.Fatalf("exit %d: %s", code, d.stderr)
	}
	if out := qemuImg(t, "snapshot", "-l", img); !strings.Contains(out, "s1") {
		t.Fatalf("snapshot list:\n%s", out)
	}
}

// TestServeMetrics scrapes the Prometheus endpoint and parses it with the
// exposition library's own parser.
func TestServeMetrics(t *testing.T) {
	needCmd(t, "qemu-img", "qemu-io")
	dir := tmpDir(t)
	img := filepath.Join(dir, "d.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", img, "4M")
	sock, nbdSock := filepath.Join(dir, "qmp.sock"), filepath.Join(dir, "nbd.sock")
	d := startServe(t, "--blockdev", "driver=qcow2,node-name=d,file.driver=file,file.filename="+img,
		"--object", "iothread,id=io0",
		"--chardev", "socket,id=m,path="+sock+",server=on,wait=off", "--monitor", "chardev=m",
		"--nbd-server", "addr.type=unix,addr.path="+nbdSock,
		"--export", "type=nbd,id=e,node-name=d,writable=on", "--metrics", "127.0.0.1:0")
	waitSocket(t, d, sock)
	// The monitor listens before the metrics listener is set up: wait for
	// the line that names its address.
	var addr string
	for i := 0; i < 1000 && addr == ""; i++ {
		for _, l := range strings.Split(d.stderr.String(), "\n") {
			if a, ok := strings.CutPrefix(l, "ringblk: serve: metrics on "); ok {
				addr = a
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if addr == "" {
		t.Fatalf("no metrics address in %q", d.stderr)
	}
	c := dialQMP(t, sock)
	c.ok(`{"execute":"x-blockdev-set-iothread","arguments":{"node-name":"d","iothread":"io0"}}`)
	c.ok(`{"execute":"blockdev-snapshot-internal-sync","arguments":{"device":"d","name":"s"}}`)
	qemuIO(t, "-f", "raw", "-c", "write -P 7 0 64k", "-c", "read -P 7 0 64k", "-c", "flush", "nbd+unix:///d?socket="+nbdSock)
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	get := func(fam string, labels map[string]string) float64 {
		t.Helper()
		f := fams[fam]
		if f == nil {
			t.Fatalf("no family %s", fam)
		}
	next:
		for _, m := range f.Metric {
			for _, lp := range m.Label {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
		t.Fatalf("no %s %v", fam, labels)
		return 0
	}
	// The NBD client's requests count on the exported node.
	if n := get("ringblk_node_ops_total", map[string]string{"node": "d", "op": "write"}); n != 1 {
		t.Errorf("writes on d: %v, want 1", n)
	}
	if n := get("ringblk_node_bytes_total", map[string]string{"node": "d", "op": "write"}); n != 65536 {
		t.Errorf("bytes written on d: %v, want 65536", n)
	}
	if n := get("ringblk_node_latency_seconds", map[string]string{"node": "d", "op": "read"}); n != 1 {
		t.Errorf("read latency samples on d: %v, want 1", n)
	}
	if n := get("ringblk_node_drains_total", map[string]string{"node": "d"}); n < 1 {
		t.Errorf("drains of d: %v (the snapshot drained it)", n)
	}
	if n := get("ringblk_context_completions_total", map[string]string{"context": "0"}); n < 2 {
		t.Errorf("completions on Context 0: %v", n)
	}
	get("ringblk_context_enters_per_io", map[string]string{"context": "0"})
	get("ringblk_context_ring_depth", map[string]string{"context": "0"})
	get("ringblk_context_sq_full_total", map[string]string{"context": "0"})
	get("ringblk_node_in_flight", map[string]string{"node": "d"})
	c.ok(`{"execute":"quit"}`)
	if code := d.wait(t); code != 0 {
		t.Fatalf("exit %d: %s", code, d.stderr)
	}
}

// TestServeDaemonizeAndTCPMonitor: --daemonize returns once the daemon is
// ready (its pid in the pid file); a TCP monitor works with --allow-tcp;
// SIGTERM ends the daemon and removes the pid file.
func TestServeDaemonizeAndTCPMonitor(t *testing.T) {
	dir := tmpDir(t)
	pid := filepath.Join(dir, "pid")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	d := startServe(t, "--daemonize", "--pidfile", pid, "--allow-tcp",
		"--blockdev", "driver=null-co,node-name=n,size=1M",
		"--chardev", fmt.Sprintf("socket,id=m,host=127.0.0.1,port=%d,server=on,wait=off", port), "--monitor", "chardev=m")
	if code := d.wait(t); code != 0 {
		t.Fatalf("--daemonize exit %d: %s", code, d.stderr)
	}
	b, err := os.ReadFile(pid)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || p == d.cmd.Process.Pid {
		t.Fatalf("pid file %q: want the background daemon's pid", b)
	}
	nc, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	c := &qmpc{t: t, nc: nc, r: bufio.NewReader(nc)}
	c.read()
	c.ok(`{"execute":"qmp_capabilities"}`)
	if r := c.ok(`{"execute":"query-block"}`).([]any); len(r) != 1 {
		t.Fatalf("query-block %v", r)
	}
	nc.Close()
	if err := syscall.Kill(p, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if _, err := os.Stat(pid); os.IsNotExist(err) {
			break
		}
		if i == 500 {
			syscall.Kill(p, syscall.SIGKILL)
			t.Fatal("the daemon did not remove its pid file after SIGTERM")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestServeErrorsMatchQemuStorageDaemon sends the same bad input to
// qemu-storage-daemon and to ringblk serve and compares the replies: the
// error class always, the description where ringblk uses QEMU's words.
func TestServeErrorsMatchQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon")
	dir := tmpDir(t)
	args := func(sock string) []string {
		return []string{"--blockdev", "driver=null-co,node-name=n,size=1048576",
			"--chardev", "socket,id=m,path=" + sock + ",server=on,wait=off", "--monitor", "chardev=m"}
	}
	qsock, rsock := filepath.Join(dir, "qsd.sock"), filepath.Join(dir, "rb.sock")
	q := exec.Command("qemu-storage-daemon", args(qsock)...)
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { q.Process.Kill(); q.Wait() }()
	d := startServe(t, args(rsock)...)
	waitSocket(t, d, rsock)
	for i := 0; i < 500; i++ {
		if c, err := net.Dial("unix", qsock); err == nil {
			c.Close()
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	qc, rc := dialQMP(t, qsock), dialQMP(t, rsock)
	cases := []struct {
		in        string
		classOnly bool
	}{
		{`{"execute":"qmp_capabilities"}`, false},
		{`{"execute":"query-block",}`, true},
		{`[1,2]`, false},
		{`"str"`, false},
		{`{"arguments":{}}`, false},
		{`{"execute":1}`, false},
		{`{"execute":"quit","arguments":[]}`, false},
		{`{"execute":"quit","extra":1}`, false},
		{`{"execute":"no-such-command"}`, false},
		{`{"execute":"blockdev-del"}`, false},
		{`{"execute":"blockdev-del","arguments":{"node-name":5}}`, false},
		{`{"execute":"blockdev-del","arguments":{"node-name":"x","bogus":true}}`, false},
		{`{"execute":"blockdev-del","arguments":{"node-name":"x"}}`, false},
		{`{"execute":"block_resize","arguments":{"device":"nope","size":1}}`, false},
		{`{"execute":"query-block","arguments":{"a":1}}`, false},
		{`{"execute":"transaction","arguments":{"actions":[{"type":"blockdev-snapshot-sync","data":{"snapshot-file":7}}]}}`, false},
		{`{"execute":"transaction","arguments":{"actions":[{"type":"abort","data":{}}]}}`, false},
		{`{"execute":"blockdev-add","arguments":{"driver":"null-co","node-name":"n","size":5}}`, false},
		{`{"execute":"object-add","arguments":{"qom-type":"iothread","id":"io0"}}`, false},
		{`{"execute":"object-add","arguments":{"qom-type":"iothread","id":"io0"}}`, false},
		{`{"execute":"x-blockdev-set-iothread","arguments":{"node-name":"n","iothread":"nope"}}`, false},
		{`{"execute":"blockdev-snapshot-internal-sync","arguments":{"device":"n","name":"x"}}`, false},
	}
	for _, tc := range cases {
		a, b := qc.do(tc.in), rc.do(tc.in)
		ae, _ := a["error"].(map[string]any)
		be, _ := b["error"].(map[string]any)
		if (ae == nil) != (be == nil) {
			t.Errorf("%s:\n qemu-storage-daemon %v\n ringblk serve       %v", tc.in, a, b)
			continue
		}
		if ae == nil {
			continue
		}
		if ae["class"] != be["class"] || (!tc.classOnly && ae["desc"] != be["desc"]) {
			t.Errorf("%s:\n qemu-storage-daemon %v\n ringblk serve       %v", tc.in, ae, be)
		}
	}
	// The node description carries the members clients read.
	for _, c := range []*qmpc{qc, rc} {
		n := c.ok(`{"execute":"query-named-block-nodes"}`).([]any)[0].(map[string]any)
		for _, k := range []string{"node-name", "drv", "ro", "file", "backing_file_depth", "encrypted", "detect_zeroes", "image", "cache", "write_threshold", "iops", "bps"} {
			if _, ok := n[k]; !ok {
				t.Errorf("query-named-block-nodes lacks %q: %v", k, n)
			}
		}
		if n["image"].(map[string]any)["virtual-size"] != 1048576.0 {
			t.Errorf("image %v", n["image"])
		}
	}
}

// TestServeIotest202SameRepliesAsQemuStorageDaemon runs iotest 202's QMP
// sequence against qemu-storage-daemon and ringblk serve, each on its own
// copy of the images, and wants the same reply at every step.
func TestServeIotest202SameRepliesAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img")
	run := func(name string, start func(sock string) func()) []string {
		dir := filepath.Join(tmpDir(t), name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"disk0", "disk1"} {
			qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, n+".img"), "10M")
		}
		sock := filepath.Join(dir, "qmp.sock")
		stop := start(sock)
		defer stop()
		c := waitQMP(t, sock)
		var out []string
		for _, cmd := range []string{
			`{"execute":"object-add","arguments":{"qom-type":"iothread","id":"iothread0"}}`,
			`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"disk0","file":{"driver":"file","filename":"` + dir + `/disk0.img"}}}`,
			`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"disk1","file":{"driver":"file","filename":"` + dir + `/disk1.img"}}}`,
			`{"execute":"x-blockdev-set-iothread","arguments":{"node-name":"disk0","iothread":"iothread0"}}`,
			`{"execute":"x-blockdev-set-iothread","arguments":{"node-name":"disk1","iothread":"iothread0"}}`,
			`{"execute":"transaction","arguments":{"actions":[
				{"type":"blockdev-snapshot-sync","data":{"node-name":"disk0","snapshot-file":"` + dir + `/disk0-snap.img","snapshot-node-name":"disk0-snap","mode":"absolute-paths","format":"qcow2"}},
				{"type":"blockdev-snapshot-sync","data":{"node-name":"disk1","snapshot-file":"` + dir + `/disk1-snap.img","snapshot-node-name":"disk1-snap","mode":"absolute-paths","format":"qcow2"}}]}}`,
			`{"execute":"quit"}`,
		} {
			b, _ := json.Marshal(c.do(cmd))
			out = append(out, string(b))
		}
		for _, n := range []string{"disk0", "disk1"} {
			info := qemuImg(t, "info", "-U", filepath.Join(dir, n+"-snap.img"))
			if !strings.Contains(info, "backing file: "+filepath.Join(dir, n+".img")) {
				t.Errorf("%s: %s-snap.img:\n%s", name, n, info)
			}
		}
		return out
	}
	want := run("qsd", func(sock string) func() {
		return startQSD(t, "--chardev", "socket,id=m,path="+sock+",server=on,wait=off", "--monitor", "chardev=m")
	})
	got := run("ringblk", func(sock string) func() {
		d := startServe(t, "--chardev", "socket,id=m,path="+sock+",server=on,wait=off", "--monitor", "chardev=m")
		return func() {
			if code := d.wait(t); code != 0 {
				t.Errorf("exit %d: %s", code, d.stderr)
			}
		}
	})
	for i := range want {
		if want[i] != got[i] {
			t.Errorf("step %d: qemu-storage-daemon %s, ringblk serve %s", i, want[i], got[i])
		}
	}
}

// TestServeSIGTERMDuringWrites: SIGTERM while an NBD client writes: the
// daemon disconnects the client after its requests in flight complete,
// drains, closes the image and exits 0; the image checks clean and holds
// every write the client saw acknowledged before the cut (the first one
// at least).
func TestServeSIGTERMDuringWrites(t *testing.T) {
	needCmd(t, "qemu-img", "qemu-io")
	dir := tmpDir(t)
	img := filepath.Join(dir, "d.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", img, "64M")
	sock, nbdSock := filepath.Join(dir, "qmp.sock"), filepath.Join(dir, "nbd.sock")
	d := startServe(t, "--blockdev", "driver=qcow2,node-name=d,file.driver=file,file.filename="+img,
		"--object", "iothread,id=io0",
		"--chardev", "socket,id=m,path="+sock+",server=on,wait=off", "--monitor", "chardev=m",
		"--nbd-server", "addr.type=unix,addr.path="+nbdSock,
		"--export", "type=nbd,id=e,node-name=d,writable=on")
	waitSocket(t, d, sock)
	c := dialQMP(t, sock)
	c.ok(`{"execute":"x-blockdev-set-iothread","arguments":{"node-name":"d","iothread":"io0"}}`)
	url := "nbd+unix:///d?socket=" + nbdSock
	qemuIO(t, "-f", "raw", "-c", "write -P 0x61 0 1M", "-c", "flush", url)
	args := []string{"-f", "raw"}
	for i := 1; i < 64; i++ {
		args = append(args, "-c", fmt.Sprintf("write -P 0x62 %dM 1M", i))
	}
	bg := exec.Command("qemu-io", append(args, url)...)
	if err := bg.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond)
	d.cmd.Process.Signal(syscall.SIGTERM)
	if code := d.wait(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM during writes: %s", code, d.stderr)
	}
	bg.Wait() // its writes after the cut fail; that is expected
	if out := qemuImg(t, "check", img); !strings.Contains(out, "No errors were found") {
		t.Fatalf("qemu-img check:\n%s", out)
	}
	qemuIO(t, "-f", "qcow2", "-c", "read -P 0x61 0 1M", img)
}

// TestServeMirrorEventsAsQemuStorageDaemon: a blockdev-mirror run to
// completion on both daemons emits the same job events: the same
// JOB_STATUS_CHANGE sequence and BLOCK_JOB_READY / BLOCK_JOB_COMPLETED
// with the same members.
func TestServeMirrorEventsAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img")
	run := func(name string, start func(sock string) func()) []string {
		dir := filepath.Join(tmpDir(t), name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"src", "tgt"} {
			qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, n+".img"), "4M")
		}
		sock := filepath.Join(dir, "qmp.sock")
		stop := start(sock)
		defer stop()
		c := waitQMP(t, sock)
		for _, n := range []string{"src", "tgt"} {
			c.ok(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"` + n + `","file":{"driver":"file","filename":"` + dir + "/" + n + `.img"}}}`)
		}
		if _, err := c.nc.Write([]byte(`{"execute":"blockdev-mirror","arguments":{"job-id":"m","device":"src","target":"tgt","sync":"full"}}` + "\n")); err != nil {
			t.Fatal(err)
		}
		var seq []string
		for {
			m := c.read()
			ev, _ := m["event"].(string)
			if ev == "" {
				if m["error"] != nil {
					t.Fatalf("%s: %v", name, m)
				}
				continue
			}
			data, _ := m["data"].(map[string]any)
			switch ev {
			case "JOB_STATUS_CHANGE":
				seq = append(seq, "status:"+data["status"].(string))
				if data["status"] == "null" {
					c.ok(`{"execute":"quit"}`)
					return seq
				}
			default:
				keys := make([]string, 0, len(data))
				for k := range data {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				seq = append(seq, ev+strings.Join(keys, ","))
				if ev == "BLOCK_JOB_READY" {
					if _, err := c.nc.Write([]byte(`{"execute":"job-complete","arguments":{"id":"m"}}` + "\n")); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
	}
	want := run("qsd", func(sock string) func() {
		return startQSD(t, "--chardev", "socket,id=m,path="+sock+",server=on,wait=off", "--monitor", "chardev=m")
	})
	got := run("ringblk", func(sock string) func() {
		d := startServe(t, "--chardev", "socket,id=m,path="+sock+",server=on,wait=off", "--monitor", "chardev=m")
		return func() { d.wait(t) }
	})
	if strings.Join(want, " ") != strings.Join(got, " ") {
		t.Errorf("job events differ:\n qemu-storage-daemon %v\n ringblk serve       %v", want, got)
	}
}

// TestServeBlockdevCreateJobAsQemuStorageDaemon: blockdev-create is a job
// of type "create" in both daemons: the same reply, the same status
// events up to concluded, the job's error in query-jobs when the creation
// fails, and job-dismiss ends it.
func TestServeBlockdevCreateJobAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img")
	run := func(name string, start func(sock string) func()) []string {
		dir := filepath.Join(tmpDir(t), name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		sock := filepath.Join(dir, "qmp.sock")
		stop := start(sock)
		defer stop()
		c := waitQMP(t, sock)
		var seq []string
		create := func(id, options string) {
			if _, err := c.nc.Write([]byte(`{"execute":"blockdev-create","arguments":{"job-id":"` + id + `","options":` + options + `}}` + "\n")); err != nil {
				t.Fatal(err)
			}
			// The reply and the job's events interleave differently from
			// run to run: read until both the reply and "concluded" came,
			// and record the reply on its own.
			replied, concluded, reply := false, false, ""
			for !replied || !concluded {
				m := c.read()
				if r, found := m["return"]; found {
					reply = fmt.Sprintf("return:%v", r)
					replied = true
					continue
				}
				if m["error"] != nil {
					t.Fatalf("%s: %v", name, m)
				}
				ev, _ := m["event"].(string)
				data, _ := m["data"].(map[string]any)
				if ev != "JOB_STATUS_CHANGE" {
					seq = append(seq, "event:"+ev)
					continue
				}
				seq = append(seq, "status:"+data["status"].(string))
				concluded = data["status"] == "concluded"
			}
			seq = append(seq, reply)
			for _, j := range c.ok(`{"execute":"query-jobs"}`).([]any) {
				m := j.(map[string]any)
				_, failed := m["error"]
				seq = append(seq, fmt.Sprintf("job:%v,%v,%v,failed=%v", m["id"], m["type"], m["status"], failed))
			}
			c.ok(`{"execute":"job-dismiss","arguments":{"id":"` + id + `"}}`)
		}
		create("c0", `{"driver":"file","filename":"`+dir+`/a.img","size":1048576}`)
		create("c1", `{"driver":"qcow2","file":"missing-node","size":1048576}`)
		c.ok(`{"execute":"quit"}`)
		return seq
	}
	want := run("qsd", func(sock string) func() {
		return startQSD(t, "--chardev", "socket,id=m,path="+sock+",server=on,wait=off", "--monitor", "chardev=m")
	})
	got := run("ringblk", func(sock string) func() {
		d := startServe(t, "--chardev", "socket,id=m,path="+sock+",server=on,wait=off", "--monitor", "chardev=m")
		return func() { d.wait(t) }
	})
	if strings.Join(want, " ") != strings.Join(got, " ") {
		t.Errorf("blockdev-create differs:\n qemu-storage-daemon %v\n ringblk serve       %v", want, got)
	}
}

// TestServeSignalDuringShutdown: a SIGTERM that arrives while the daemon
// shuts down after quit (a supervisor's follow-up, a second Ctrl-C) does
// not kill it half way: it still closes every image, so the persistent
// bitmap added over QMP is in the file and the exit status is 0. Before,
// signal.Stop ran before the shutdown and the signal killed the process
// with the bitmap unwritten.
func TestServeSignalDuringShutdown(t *testing.T) {
	needCmd(t, "qemu-img")
	dir := tmpDir(t)
	img := filepath.Join(dir, "d.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", img, "16M")
	sock := filepath.Join(dir, "qmp.sock")
	t.Setenv(sigtermAtShutdownEnv, "1")
	d := startServe(t, "--blockdev", "driver=qcow2,node-name=d,file.driver=file,file.filename="+img,
		"--chardev", "socket,id=m,path="+sock+",server=on,wait=off", "--monitor", "chardev=m")
	waitSocket(t, d, sock)
	c := dialQMP(t, sock)
	c.ok(`{"execute":"block-dirty-bitmap-add","arguments":{"node":"d","name":"b0","persistent":true}}`)
	c.ok(`{"execute":"quit"}`)
	if code := d.wait(t); code != 0 {
		t.Fatalf("exit %d after a SIGTERM during the shutdown: %s", code, d.stderr)
	}
	if out := qemuImg(t, "info", img); !strings.Contains(out, "name: b0") {
		t.Fatalf("the persistent bitmap is not in the image:\n%s", out)
	}
	if out := qemuImg(t, "check", img); !strings.Contains(out, "No errors were found") {
		t.Fatalf("qemu-img check:\n%s", out)
	}
}

// TestServeBitmapSHA256SameAsQemuStorageDaemon: x-debug-block-dirty-bitmap-sha256
// gives qemu-storage-daemon's digest for the same bitmaps: persistent ones
// qemu-io marked (two granularities, an image size that is no whole number
// of 64 granules), an empty one added over QMP, and the same errors for a
// missing bitmap or node. iotests compare bitmaps by this digest.
func TestServeBitmapSHA256SameAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img", "qemu-io")
	run := func(name string, start func(args ...string) func()) []string {
		dir := filepath.Join(tmpDir(t), name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		img := filepath.Join(dir, "d.qcow2")
		qemuImg(t, "create", "-q", "-f", "qcow2", img, fmt.Sprint(10<<20+3*4096))
		qemuImg(t, "bitmap", "--add", img, "b0")
		qemuImg(t, "bitmap", "--add", "-g", "4096", img, "b1")
		qemuIO(t, "-c", "write 0 64k", "-c", "write 5M 100k", "-c", "write 10M 8k", img)
		sock := filepath.Join(dir, "qmp.sock")
		stop := start("--blockdev", "driver=qcow2,node-name=d,file.driver=file,file.filename="+img,
			"--chardev", "socket,id=m,path="+sock+",server=on,wait=off", "--monitor", "chardev=m")
		defer stop()
		c := waitQMP(t, sock)
		var out []string
		for _, cmd := range []string{
			`{"execute":"x-debug-block-dirty-bitmap-sha256","arguments":{"node":"d","name":"b0"}}`,
			`{"execute":"x-debug-block-dirty-bitmap-sha256","arguments":{"node":"d","name":"b1"}}`,
			`{"execute":"block-dirty-bitmap-add","arguments":{"node":"d","name":"e","granularity":512}}`,
			`{"execute":"x-debug-block-dirty-bitmap-sha256","arguments":{"node":"d","name":"e"}}`,
			`{"execute":"x-debug-block-dirty-bitmap-sha256","arguments":{"node":"d","name":"nope"}}`,
			`{"execute":"x-debug-block-dirty-bitmap-sha256","arguments":{"node":"nope","name":"b0"}}`,
		} {
			b, _ := json.Marshal(c.do(cmd))
			out = append(out, string(b))
		}
		// The node lists its bitmaps in QEMU's order (newest first).
		var names []string
		for _, n := range c.ok(`{"execute":"query-named-block-nodes"}`).([]any) {
			if n.(map[string]any)["node-name"] != "d" {
				continue
			}
			for _, b := range n.(map[string]any)["dirty-bitmaps"].([]any) {
				names = append(names, b.(map[string]any)["name"].(string))
			}
		}
		out = append(out, strings.Join(names, " "))
		b, _ := json.Marshal(c.do(`{"execute":"quit"}`))
		return append(out, string(b))
	}
	want, got := bothDaemons(t, run)
	if !strings.Contains(want[0], `"sha256"`) {
		t.Fatalf("qemu-storage-daemon: %s", want[0])
	}
	if want[0] == want[1] {
		t.Fatalf("the two bitmaps give one digest: %s", want[0])
	}
	for i := range want {
		if want[i] != got[i] {
			t.Errorf("step %d: qemu-storage-daemon %s, ringblk serve %s", i, want[i], got[i])
		}
	}
}

// TestServeBackingByNodeNameSameAsQemuStorageDaemon: the chain built the
// libvirt way, each layer added on its own and the overlay naming its
// backing node ("backing": "base"), behaves as in qemu-storage-daemon 7.2:
// the same replies at every step (a raw node refusing backing, an unknown
// backing node, the base busy while it is a backing node, free again once
// block-stream took it out of the chain; file nodes stay until deleted
// themselves), the overlay's NBD export reads
// the base's data through it, and the streamed overlay stands alone
// (qemu-img: no backing file, the same data). Before, any "backing" other
// than null was refused.
func TestServeBackingByNodeNameSameAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img", "qemu-io")
	run := func(name string, start func(args ...string) func()) []string {
		dir := filepath.Join(tmpDir(t), name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		base, top := twoLayerChain(t, dir)
		sock, nbdSock := filepath.Join(dir, "qmp.sock"), filepath.Join(dir, "nbd.sock")
		stop := start("--chardev", "socket,id=m,path="+sock+",server=on,wait=off", "--monitor", "chardev=m")
		defer stop()
		c := waitQMP(t, sock)
		var out []string
		step := func(cmd string) {
			b, _ := json.Marshal(c.do(cmd))
			out = append(out, string(b))
		}
		for _, cmd := range []string{
			`{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"base-f","filename":"` + base + `","read-only":true}}`,
			`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"base","file":"base-f","read-only":true,"backing":null}}`,
			`{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"top-f","filename":"` + top + `"}}`,
			`{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"bad","file":"top-f","backing":"base"}}`,
			`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"top","file":"top-f","backing":"nope"}}`,
			`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"top","file":"top-f","backing":"base"}}`,
			`{"execute":"blockdev-del","arguments":{"node-name":"base"}}`,
			`{"execute":"blockdev-del","arguments":{"node-name":"top-f"}}`,
			`{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"` + nbdSock + `"}}}}`,
			`{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"top","writable":false}}`,
		} {
			step(cmd)
		}
		qemuIO(t, "-r", "-f", "raw", "-c", "read -P 0x41 0 64k", "-c", "read -P 0x42 1M 64k", "-c", "read -P 0 2M 64k",
			"nbd+unix:///top?socket="+nbdSock)
		step(`{"execute":"block-export-del","arguments":{"id":"e"}}`)
		step(`{"execute":"block-stream","arguments":{"job-id":"s","device":"top"}}`)
		c.waitEvent("BLOCK_JOB_COMPLETED")
		for _, cmd := range []string{
			`{"execute":"blockdev-del","arguments":{"node-name":"base"}}`,
			`{"execute":"blockdev-del","arguments":{"node-name":"top"}}`,
			`{"execute":"blockdev-del","arguments":{"node-name":"top-f"}}`,
			`{"execute":"blockdev-del","arguments":{"node-name":"base-f"}}`,
			`{"execute":"query-named-block-nodes"}`,
			`{"execute":"quit"}`,
		} {
			step(cmd)
		}
		if info := qemuImg(t, "info", "-U", top); strings.Contains(info, "backing file") {
			t.Errorf("%s: the streamed overlay still names a backing file:\n%s", name, info)
		}
		qemuIO(t, "-r", "-c", "read -P 0x41 0 64k", "-c", "read -P 0x42 1M 64k", top)
		return out
	}
	want, got := bothDaemons(t, run)
	compareSteps(t, want, got)
}

// TestServeBlockdevReopenSameAsQemuStorageDaemon: libvirt's commit of a
// chain it built node by node, read-only backing layers included:
// block-commit into a base the user added read-only is refused, as in
// QEMU ("Block node is read-only"); blockdev-reopen of the base and its
// file node to read-write (read-only absent means false, the file node
// must come along, other options cannot change) lets the commit run, and
// the base holds the overlay's data after it. Every reply and the nodes'
// read-only flags are compared with qemu-storage-daemon 7.2. Before,
// blockdev-reopen was an unknown command and the commit wrote into the
// read-only base.
func TestServeBlockdevReopenSameAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img", "qemu-io")
	run := func(name string, start func(args ...string) func()) []string {
		dir := filepath.Join(tmpDir(t), name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		base, top := twoLayerChain(t, dir)
		sock := filepath.Join(dir, "qmp.sock")
		stop := start("--chardev", "socket,id=m,path="+sock+",server=on,wait=off", "--monitor", "chardev=m")
		c := waitQMP(t, sock)
		var out []string
		step := func(cmd string) {
			b, _ := json.Marshal(c.do(cmd))
			out = append(out, string(b))
		}
		roFlags := func() {
			var fl []string
			for _, n := range c.ok(`{"execute":"query-named-block-nodes"}`).([]any) {
				m := n.(map[string]any)
				fl = append(fl, fmt.Sprintf("%s=%v", m["node-name"], m["ro"]))
			}
			sort.Strings(fl)
			out = append(out, strings.Join(fl, " "))
		}
		const b0 = `{"driver":"qcow2","node-name":"base","file":"base-f","backing":null`
		for _, cmd := range []string{
			`{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"base-f","filename":"` + base + `","read-only":true}}`,
			`{"execute":"blockdev-add","arguments":` + b0 + `,"read-only":true}}`,
			`{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"top-f","filename":"` + top + `"}}`,
			`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"top","file":"top-f","backing":"base"}}`,
			`{"execute":"block-commit","arguments":{"job-id":"c0","device":"top"}}`,
			`{"execute":"blockdev-reopen","arguments":{"options":[` + b0 + `,"read-only":false}]}}`,
			`{"execute":"blockdev-reopen","arguments":{"options":[{"node-name":"base","file":"base-f"}]}}`,
			`{"execute":"blockdev-reopen","arguments":{"options":[{"driver":"qcow2","node-name":"nope","file":"base-f"}]}}`,
			`{"execute":"blockdev-reopen","arguments":{"options":[{"driver":"raw","node-name":"base","file":"base-f"}]}}`,
			`{"execute":"blockdev-reopen","arguments":{"options":[` + b0 + `}]}}`,
		} {
			step(cmd)
		}
		roFlags()
		step(`{"execute":"blockdev-reopen","arguments":{"options":[` + b0 + `,"read-only":false},` +
			`{"driver":"file","node-name":"base-f","filename":"` + base + `","read-only":false}]}}`)
		roFlags()
		step(`{"execute":"block-commit","arguments":{"job-id":"c","device":"top"}}`)
		c.waitEvent("BLOCK_JOB_READY")
		step(`{"execute":"job-complete","arguments":{"id":"c"}}`)
		for ev := c.nextEvent(); ev["event"] != "BLOCK_JOB_COMPLETED"; ev = c.nextEvent() {
			if ev["event"] == "BLOCK_JOB_CANCELLED" {
				t.Fatalf("%s: %v", name, ev)
			}
		}
		step(`{"execute":"quit"}`)
		stop() // the images are free once the daemon is gone
		qemuIO(t, "-r", "-c", "read -P 0x41 0 64k", "-c", "read -P 0x42 1M 64k", base)
		if out := qemuImg(t, "check", base); !strings.Contains(out, "No errors") {
			t.Errorf("%s: qemu-img check of the base:\n%s", name, out)
		}
		return out
	}
	want, got := bothDaemons(t, run)
	compareSteps(t, want, got)
}

// TestServeGroupedBackupFailureSameAsQemuStorageDaemon: two incremental
// backups in one transaction, the second's source failing a read (blkdebug
// on its file, given on the command line with a numbered inject-error
// list). Alone (completion-mode individual) the healthy backup completes
// and clears its bitmap; grouped, it is cancelled and both bitmaps keep
// every bit, so the next incremental backup of both disks starts from
// the same point. The final event of each job and the bitmap counts are
// compared with qemu-storage-daemon 7.2. Before, grouped was refused and
// the command line's inject-error list did not decode.
func TestServeGroupedBackupFailureSameAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img", "qemu-io")
	for _, mode := range []string{"individual", "grouped"} {
		run := func(name string, start func(args ...string) func()) []string {
			dir := filepath.Join(tmpDir(t), name)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			var args []string
			for i := 0; i < 2; i++ {
				src, tgt := filepath.Join(dir, fmt.Sprintf("d%d.qcow2", i)), filepath.Join(dir, fmt.Sprintf("t%d.qcow2", i))
				qemuImg(t, "create", "-q", "-f", "qcow2", src, "4M")
				qemuImg(t, "bitmap", "--add", src, "b0")
				qemuIO(t, "-c", fmt.Sprintf("write -P 0x5%d 0 128k", i), "-c", "write 1M 64k", src)
				qemuImg(t, "create", "-q", "-f", "qcow2", tgt, "4M")
				file := "file.driver=file,file.filename=" + src
				if i == 1 {
					// Fail the read of the guest's 1 MiB cluster, wherever
					// qemu-io put it in the file.
					sector := -1
					var m []map[string]any
					if err := json.Unmarshal([]byte(qemuImg(t, "map", "--output=json", src)), &m); err != nil {
						t.Fatal(err)
					}
					for _, e := range m {
						if e["start"] == float64(1<<20) {
							sector = int(e["offset"].(float64)) / 512
						}
					}
					file = fmt.Sprintf("file.driver=blkdebug,file.image.driver=file,file.image.filename=%s,"+
						"file.inject-error.0.event=read_aio,file.inject-error.0.errno=5,file.inject-error.0.sector=%d", src, sector)
				}
				args = append(args, "--blockdev", fmt.Sprintf("driver=qcow2,node-name=d%d,%s", i, file),
					"--blockdev", fmt.Sprintf("driver=qcow2,node-name=t%d,file.driver=file,file.filename=%s", i, tgt))
			}
			sock := filepath.Join(dir, "qmp.sock")
			stop := start(append(args, "--chardev", "socket,id=m,path="+sock+",server=on,wait=off", "--monitor", "chardev=m")...)
			defer stop()
			c := waitQMP(t, sock)
			c.ok(`{"execute":"transaction","arguments":{"actions":[
				{"type":"blockdev-backup","data":{"job-id":"j0","device":"d0","target":"t0","sync":"incremental","bitmap":"b0"}},
				{"type":"blockdev-backup","data":{"job-id":"j1","device":"d1","target":"t1","sync":"incremental","bitmap":"b0"}}],
				"properties":{"completion-mode":"` + mode + `"}}}`)
			ends := map[string]string{}
			for len(ends) < 2 {
				ev := c.nextEvent()
				if e, _ := ev["event"].(string); e == "BLOCK_JOB_COMPLETED" || e == "BLOCK_JOB_CANCELLED" {
					data := ev["data"].(map[string]any)
					ends[data["device"].(string)] = fmt.Sprintf("%s %v", e, data["error"])
				}
			}
			out := []string{"j0: " + ends["j0"], "j1: " + ends["j1"]}
			var counts []string
			for _, n := range c.ok(`{"execute":"query-named-block-nodes"}`).([]any) {
				m := n.(map[string]any)
				if bms, ok := m["dirty-bitmaps"].([]any); ok {
					counts = append(counts, fmt.Sprintf("%s=%v", m["node-name"], bms[0].(map[string]any)["count"]))
				}
			}
			sort.Strings(counts)
			out = append(out, strings.Join(counts, " "))
			c.ok(`{"execute":"quit"}`)
			return out
		}
		want, got := bothDaemons(t, run)
		if mode == "grouped" && !strings.Contains(want[0], "CANCELLED") {
			t.Fatalf("qemu-storage-daemon did not cancel the healthy job of the group: %v", want)
		}
		for i := range want {
			if i >= len(got) || want[i] != got[i] {
				t.Errorf("%s: %v\n qemu-storage-daemon %v\n ringblk serve       %v", mode, i, want, got)
				break
			}
		}
	}
}
