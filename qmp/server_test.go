package qmp

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ringblk/ringblk/host"
)

// rawClient is a qmp-shell-like client: it writes text and reads one JSON
// message per line.
type rawClient struct {
	t      *testing.T
	nc     net.Conn
	r      *bufio.Reader
	events []map[string]any // events recv skipped, for waitEvent
}

func dialRaw(t *testing.T, path string) *rawClient {
	t.Helper()
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &rawClient{t: t, nc: nc, r: bufio.NewReader(nc)}
}

func (c *rawClient) send(s string) {
	c.t.Helper()
	if _, err := c.nc.Write([]byte(s)); err != nil {
		c.t.Fatal(err)
	}
}

// recv returns the next message that is not an event.
func (c *rawClient) recv() map[string]any {
	c.t.Helper()
	for {
		m := c.recvAny()
		if _, ev := m["event"]; !ev {
			return m
		}
		c.events = append(c.events, m)
	}
}

// waitEvent returns the first event named name (with data member
// "device" or "id" equal to id, if given), among those recv skipped or
// still to come.
func (c *rawClient) waitEvent(name, id string) map[string]any {
	c.t.Helper()
	match := func(m map[string]any) bool {
		data, _ := m["data"].(map[string]any)
		return m["event"] == name && (id == "" || data["device"] == id || data["id"] == id)
	}
	for i, m := range c.events {
		if match(m) {
			c.events = append(c.events[:i], c.events[i+1:]...)
			return m
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if m := c.recvAny(); match(m) {
			return m
		}
	}
	c.t.Fatalf("no %s event for %s", name, id)
	return nil
}

func (c *rawClient) recvAny() map[string]any {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, err := c.r.ReadBytes('\n')
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		c.t.Fatalf("reply %q: %v", line, err)
	}
	return m
}

func (c *rawClient) do(s string) map[string]any {
	c.t.Helper()
	c.send(s)
	return c.recv()
}

func (c *rawClient) negotiate() {
	c.t.Helper()
	g := c.recvAny()
	if _, ok := g["QMP"]; !ok {
		c.t.Fatalf("greeting %v", g)
	}
	if r := c.do(`{"execute":"qmp_capabilities"}`); r["return"] == nil {
		c.t.Fatalf("qmp_capabilities: %v", r)
	}
}

func wantError(t *testing.T, r map[string]any, class, desc string) {
	t.Helper()
	e, ok := r["error"].(map[string]any)
	if !ok {
		t.Fatalf("reply %v, want error %s %q", r, class, desc)
	}
	if e["class"] != class || !strings.Contains(e["desc"].(string), desc) {
		t.Fatalf("error %v, want %s containing %q", e, class, desc)
	}
}

// testServer runs a daemon behind a QMP server on a Unix socket.
func testServer(t *testing.T, contexts int, opts Options) (*Daemon, string, string) {
	t.Helper()
	d, dir := testDaemon(t, contexts)
	reg := NewRegistry()
	d.register(reg)
	s := NewServer(reg, opts)
	d.Attach(s)
	sock := filepath.Join(dir, "qmp.sock")
	l, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(l) }()
	t.Cleanup(func() { s.Close(); <-done })
	return d, dir, sock
}

func TestGreetingCapabilitiesAndID(t *testing.T) {
	_, _, sock := testServer(t, 1, Options{})
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v; want 0600", fi.Mode(), err)
	}
	c := dialRaw(t, sock)
	g := c.recvAny()
	q := g["QMP"].(map[string]any)
	if _, ok := q["version"].(map[string]any)["qemu"]; !ok || q["capabilities"] == nil {
		t.Fatalf("greeting %v", g)
	}
	r := c.do(`{"execute":"query-block","id":1}`)
	wantError(t, r, CommandNotFound, "Expecting capabilities negotiation with 'qmp_capabilities'")
	if r["id"] != 1.0 {
		t.Fatalf("id %v not echoed", r["id"])
	}
	r = c.do(`{"execute":"qmp_capabilities","id":"neg"}`)
	if ret, ok := r["return"].(map[string]any); !ok || len(ret) != 0 || r["id"] != "neg" {
		t.Fatalf("qmp_capabilities reply %v", r)
	}
	wantError(t, c.do(`{"execute":"qmp_capabilities"}`), CommandNotFound, "Capabilities negotiation is already complete")
	r = c.do(`{"execute":"query-block","id":{"x":[1]}}`)
	if _, ok := r["return"].([]any); !ok || r["id"].(map[string]any)["x"] == nil {
		t.Fatalf("query-block reply %v", r)
	}
}

func TestBadInputGetsQMPErrorsAndTheStreamGoesOn(t *testing.T) {
	_, _, sock := testServer(t, 1, Options{MaxMessage: 4096})
	c := dialRaw(t, sock)
	c.negotiate()
	cases := []struct{ in, class, desc string }{
		{`{"execute":"query-block",}`, GenericError, "JSON parse error"},
		{`[1,2]`, GenericError, "QMP input must be a JSON object"},
		{`42 `, GenericError, "QMP input must be a JSON object"},
		{`"str"`, GenericError, "QMP input must be a JSON object"},
		{`}`, GenericError, "JSON parse error"},
		{`{"arguments":{}}`, GenericError, "QMP input lacks member 'execute'"},
		{`{"execute":1}`, GenericError, "QMP input member 'execute' must be a string"},
		{`{"execute":"quit","arguments":[]}`, GenericError, "QMP input member 'arguments' must be an object"},
		{`{"execute":"quit","extra":1}`, GenericError, "QMP input member 'extra' is unexpected"},
		{`{"execute":"no-such-command"}`, CommandNotFound, "The command no-such-command has not been found"},
		{`{"execute":"drive-mirror","arguments":{"device":"x"}}`, GenericError, "Parameter 'target' is missing"},
		{`{"execute":"x-drive-mirror"}`, CommandNotFound, "The command x-drive-mirror has not been found"},
		{`{"execute":"blockdev-del"}`, GenericError, "Parameter 'node-name' is missing"},
		{`{"execute":"blockdev-del","arguments":{"node-name":5}}`, GenericError, "Invalid parameter type for 'node-name', expected: string"},
		{`{"execute":"blockdev-del","arguments":{"node-name":"x","bogus":true}}`, GenericError, "Parameter 'bogus' is unexpected"},
		{`{"execute":"blockdev-del","arguments":{"node-name":"x"}}`, GenericError, "Failed to find node with node-name='x'"},
		{`{"execute":"block_resize","arguments":{"device":"nope","size":1}}`, GenericError, "Cannot find device='nope' nor node-name=''"},
		{`{"execute":"block-set-io-throttle","arguments":{"device":"nope","bps":0,"bps_rd":0,"bps_wr":0,"iops":0,"iops_rd":0,"iops_wr":0}}`, DeviceNotFound, "Device 'nope' not found"},
		{`{"execute":"query-block","arguments":{"a":1}}`, GenericError, "Parameter 'a' is unexpected"},
		{`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"n","file":{"driver":"file","filename":"/x","bad":1}}}`, GenericError, "bad"},
		{`{"execute":"transaction","arguments":{"actions":[{"type":"blockdev-snapshot-sync","data":{"snapshot-file":7}}]}}`, GenericError, "Invalid parameter type for 'actions[0].data.snapshot-file', expected: string"},
		{`{"execute":"transaction","arguments":{"actions":[{"type":"blockdev-snapshot-sync","data":{"device":"x"}}]}}`, GenericError, "Parameter 'actions[0].data.snapshot-file' is missing"},
		{`{"execute":"transaction","arguments":{"actions":[{"type":"drive-backup","data":{}}]}}`, GenericError, "Parameter 'actions[0].data.device' is missing"},
		{`{"execute":"query-block","pad":"` + strings.Repeat("x", 5000) + `"}`, GenericError, "exceeds the limit of 4096 bytes"},
		{strings.Repeat("[", 1100) + strings.Repeat("]", 1100), GenericError, "nesting depth limit"},
	}
	for _, tc := range cases {
		wantError(t, c.do(tc.in), tc.class, tc.desc)
		// The connection is still in step after each.
		if r := c.do(`{"execute":"query-iothreads","id":"ok"}`); r["id"] != "ok" || r["return"] == nil {
			t.Fatalf("after %.60s: %v", tc.in, r)
		}
	}
}

func TestBadClientDoesNotDisturbOthers(t *testing.T) {
	_, _, sock := testServer(t, 1, Options{MaxMessage: 4096})
	good := dialRaw(t, sock)
	good.negotiate()
	bad := dialRaw(t, sock)
	bad.recvAny()
	bad.send(`{"execute": ` + strings.Repeat("x", 10000))
	bad.nc.Close()
	for i := 0; i < 5; i++ {
		if r := good.do(`{"execute":"query-named-block-nodes"}`); r["return"] == nil {
			t.Fatalf("good client: %v", r)
		}
	}
}

// TestDisconnectMidTransaction: a client sends a transaction and hangs up
// at once. The transaction runs to its end (not half applied), and other
// clients are served meanwhile and after.
func TestDisconnectMidTransaction(t *testing.T) {
	d, dir, sock := testServer(t, 2, Options{})
	addQcow2(t, d, dir, "disk0")
	addQcow2(t, d, dir, "disk1")
	c := dialRaw(t, sock)
	c.negotiate()
	c.send(`{"execute":"transaction","arguments":{"actions":[
	 {"type":"blockdev-snapshot-sync","data":{"node-name":"disk0","snapshot-file":"` + filepath.Join(dir, "a.qcow2") + `","snapshot-node-name":"a"}},
	 {"type":"blockdev-snapshot-sync","data":{"node-name":"disk1","snapshot-file":"` + filepath.Join(dir, "b.qcow2") + `","snapshot-node-name":"b"}}]}}`)
	c.nc.Close()
	other := dialRaw(t, sock)
	other.negotiate()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := other.do(`{"execute":"query-block"}`)
		var tops []string
		for _, b := range r["return"].([]any) {
			tops = append(tops, b.(map[string]any)["inserted"].(map[string]any)["node-name"].(string))
		}
		got := strings.Join(tops, ",")
		if got == "a,b" {
			break
		}
		if got != "disk0,disk1" {
			t.Fatalf("top nodes %s: the transaction was half applied", got)
		}
		if time.Now().After(deadline) {
			t.Fatal("transaction never applied after the client left")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestEventsHaveTimestamps(t *testing.T) {
	d, _, sock := testServer(t, 1, Options{})
	c := dialRaw(t, sock)
	pre := dialRaw(t, sock) // not negotiated: gets no events
	pre.recvAny()
	c.negotiate()
	d.emit("TEST_EVENT", map[string]any{"k": "v"})
	m := c.recvAny()
	ts, ok := m["timestamp"].(map[string]any)
	if m["event"] != "TEST_EVENT" || !ok || ts["seconds"].(float64) < 1e9 || m["data"].(map[string]any)["k"] != "v" {
		t.Fatalf("event %v", m)
	}
	if r := pre.do(`{"execute":"qmp_capabilities"}`); r["return"] == nil {
		t.Fatalf("the unnegotiated client got %v first", r)
	}
}

func TestIOThreadCommands(t *testing.T) {
	d, dir, sock := testServer(t, 2, Options{})
	addQcow2(t, d, dir, "disk0")
	c := dialRaw(t, sock)
	c.negotiate()
	if r := c.do(`{"execute":"object-add","arguments":{"qom-type":"iothread","id":"io0"}}`); r["return"] == nil {
		t.Fatal(r)
	}
	wantError(t, c.do(`{"execute":"object-add","arguments":{"qom-type":"iothread","id":"io0"}}`), GenericError, "duplicate")
	if r := c.do(`{"execute":"x-blockdev-set-iothread","arguments":{"node-name":"disk0","iothread":"io0"}}`); r["return"] == nil {
		t.Fatal(r)
	}
	wantError(t, c.do(`{"execute":"object-del","arguments":{"id":"io0"}}`), GenericError, "in use")
	r := c.do(`{"execute":"query-iothreads"}`)
	its := r["return"].([]any)
	if len(its) != 1 || its[0].(map[string]any)["id"] != "io0" || its[0].(map[string]any)["thread-id"].(float64) <= 0 {
		t.Fatalf("query-iothreads %v", r)
	}
	if r := c.do(`{"execute":"x-blockdev-set-iothread","arguments":{"node-name":"disk0","iothread":null}}`); r["return"] == nil {
		t.Fatal(r)
	}
	if r := c.do(`{"execute":"object-del","arguments":{"id":"io0"}}`); r["return"] == nil {
		t.Fatal(r)
	}
	if r := c.do(`{"execute":"block_resize","arguments":{"node-name":"disk0","size":8388608}}`); r["return"] == nil {
		t.Fatal(r)
	}
	if g, _ := d.nodes["disk0"].dev.Geometry(); g.Size != 8<<20 {
		t.Fatalf("size %d after block_resize", g.Size)
	}
	if r := c.do(`{"execute":"block-set-io-throttle","arguments":{"device":"disk0","bps":0,"bps_rd":0,"bps_wr":0,"iops":1000,"iops_rd":0,"iops_wr":0}}`); r["return"] == nil {
		t.Fatal(r)
	}
	if r := c.do(`{"execute":"blockdev-del","arguments":{"node-name":"disk0"}}`); r["return"] == nil {
		t.Fatal(r)
	}
	if len(d.nodes) != 0 {
		t.Fatalf("nodes left: %v", d.nodes)
	}
	_ = host.ErrClosed
}

// TestRepliesSentAfterClientHalfCloses: a client that sends its commands
// and then shuts down its writing side (`socat -`, a pipe into
// `--chardev stdio`) gets every reply, with ids in order, and then the
// end of the stream. Before, the end of its input closed the connection
// and dropped the replies still queued for the writer.
func TestRepliesSentAfterClientHalfCloses(t *testing.T) {
	_, _, sock := testServer(t, 1, Options{})
	for round := 0; round < 20; round++ {
		nc, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		const n = 200
		var b strings.Builder
		b.WriteString(`{"execute":"qmp_capabilities"}` + "\n")
		for i := 0; i < n; i++ {
			fmt.Fprintf(&b, `{"execute":"query-block","id":%d}`+"\n", i)
		}
		if _, err := nc.Write([]byte(b.String())); err != nil {
			t.Fatal(err)
		}
		if err := nc.(*net.UnixConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		nc.SetReadDeadline(time.Now().Add(30 * time.Second))
		sc := bufio.NewScanner(nc)
		var lines []string
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
		nc.Close()
		if err := sc.Err(); err != nil {
			t.Fatalf("round %d: %v after %d lines", round, err, len(lines))
		}
		if len(lines) != n+2 {
			t.Fatalf("round %d: %d lines, want the greeting and %d replies", round, len(lines), n+1)
		}
		for i := 0; i < n; i++ {
			var m map[string]any
			if err := json.Unmarshal([]byte(lines[i+2]), &m); err != nil || m["id"] != float64(i) {
				t.Fatalf("round %d: line %d %q, want the reply with id %d", round, i+2, lines[i+2], i)
			}
		}
	}
}
