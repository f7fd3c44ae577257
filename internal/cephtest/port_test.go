package cephtest

import (
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// scriptPort runs "ceph-single.sh port": the monitor port start would take.
func scriptPort(t *testing.T) int {
	t.Helper()
	out, err := exec.Command(Script(), "port").Output()
	if err != nil {
		t.Fatalf("ceph-single.sh port: %v", err)
	}
	p, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("ceph-single.sh port printed %q", out)
	}
	return p
}

// TestMonitorPortSkipsConnectedSockets: a port an outgoing connection
// holds as its local port (nothing listens on it) is not free for the
// monitor. The script once checked only that nothing listened, and a
// second cluster's monitor then failed to bind a port the first cluster's
// OSD held for its connection to its own monitor (CI on 1f91558,
// TestOSDStoppedMidIO: "unable to bind monitor ... Address already in
// use"). And the port is outside the ephemeral range, where no new
// connection can take it before the monitor binds.
func TestMonitorPortSkipsConnectedSockets(t *testing.T) {
	first := scriptPort(t)
	lo, hi := ephemeralRange(t)
	if first >= lo && first <= hi {
		t.Fatalf("port %d is inside the ephemeral range %d-%d", first, lo, hi)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: first}}
	c, err := d.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatalf("connect from 127.0.0.1:%d: %v", first, err)
	}
	defer c.Close()
	if got := scriptPort(t); got == first {
		t.Fatalf("port %d is an open connection's local port and the script still takes it", first)
	}
}

func ephemeralRange(t *testing.T) (int, int) {
	t.Helper()
	out, err := exec.Command("cat", "/proc/sys/net/ipv4/ip_local_port_range").Output()
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out))
	if len(f) != 2 {
		t.Fatalf("ip_local_port_range: %q", out)
	}
	lo, _ := strconv.Atoi(f[0])
	hi, _ := strconv.Atoi(f[1])
	return lo, hi
}
