//go:build rbd

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ringblk/ringblk/drivers/rbd"
	"github.com/ringblk/ringblk/internal/cephtest"
	"github.com/ringblk/ringblk/internal/cli/clitest"
)

var (
	rbdOnce    sync.Once
	rbdCluster *cephtest.Cluster
	rbdErr     error
)

// testCluster starts (once per test binary) or joins the test cluster.
func testCluster(t *testing.T) *cephtest.Cluster {
	t.Helper()
	rbdOnce.Do(func() { rbdCluster, rbdErr = cephtest.Start() })
	if errors.Is(rbdErr, cephtest.Absent) {
		t.Skip(rbdErr)
	}
	if rbdErr != nil {
		t.Fatal(rbdErr)
	}
	return rbdCluster
}

func stopRBDCluster() error { return rbdCluster.Stop() }

// rbdImage names a new image (created by the test) and removes it at the
// end, with its snapshots.
func rbdImage(t *testing.T, c *cephtest.Cluster, name string) string {
	n := c.Name(fmt.Sprintf("%s-%d", name, os.Getpid()))
	s, _ := rbd.ParseName(n)
	t.Cleanup(func() {
		if snaps, err := rbd.Snapshots(s); err == nil {
			for _, sn := range snaps {
				rbd.SnapRemove(s, sn.Name)
			}
			rbd.Remove(s)
		}
	})
	return n
}

// snapName names snapshot snap of the image img names.
func snapName(img, snap string) string {
	s, _ := rbd.ParseName(img)
	return s.WithSnap(snap).String()
}

func ringblk(t *testing.T, args ...string) string {
	t.Helper()
	out, stderr, code := clitest.RunRingblk(t, nil, args...)
	if code != 0 {
		t.Fatalf("ringblk %s: exit %d: %s%s", strings.Join(args, " "), code, out, stderr)
	}
	return out
}

// TestRBDCommands: create, info, io, snapshot (create, list, apply,
// delete), resize, map, convert both ways and bench on an RBD image of
// the test cluster, each checked by reading the data back.
func TestRBDCommands(t *testing.T) {
	c := testCluster(t)
	img := rbdImage(t, c, "cmd")
	dir := t.TempDir()
	ringblk(t, "create", "-f", "raw", img, "64M")
	out := ringblk(t, "info", img)
	if !strings.Contains(out, "file format: raw") || !strings.Contains(out, "virtual size: 64 MiB (67108864 bytes)") {
		t.Fatalf("info:\n%s", out)
	}
	ringblk(t, "io", "-c", "write -P 0xab 0 1M", "-c", "write -P 0xcd 8M 64k", img)
	ringblk(t, "io", "-c", "read -P 0xab 0 1M", "-c", "read -P 0xcd 8M 64k", "-c", "read -P 0 1M 7M", img)

	// Snapshots: RBD's own.
	ringblk(t, "snapshot", "-c", "s1", img)
	if out := ringblk(t, "snapshot", "-l", img); !strings.Contains(out, "s1        s1") {
		t.Fatalf("snapshot -l:\n%s", out)
	}
	ringblk(t, "io", "-c", "write -P 0x11 0 4k", img)
	ringblk(t, "io", "-c", "read -P 0xab 0 4k", snapName(img, "s1"))
	ringblk(t, "snapshot", "-a", "s1", img)
	ringblk(t, "io", "-c", "read -P 0xab 0 4k", img)
	ringblk(t, "snapshot", "-d", "s1", img)
	if out := ringblk(t, "snapshot", "-l", img); strings.TrimSpace(out) != "" {
		t.Fatalf("snapshot -l after -d:\n%s", out)
	}

	ringblk(t, "resize", img, "+64M")
	if out := ringblk(t, "info", "--output=json", img); !strings.Contains(out, `"virtual-size": 134217728`) {
		t.Fatalf("info after resize:\n%s", out)
	}

	// map: the two written objects hold data, the rest is zero.
	var m []struct {
		Start, Length int64
		Data, Zero    bool
	}
	if err := json.Unmarshal([]byte(ringblk(t, "map", "--output=json", img)), &m); err != nil {
		t.Fatal(err)
	}
	var data int64
	for _, e := range m {
		if e.Data {
			data += e.Length
		}
	}
	if len(m) == 0 || !m[0].Data || data != 8<<20 {
		t.Fatalf("map: %+v (want objects 0 and 2, 4 MiB each, as data)", m)
	}

	// convert: RBD -> qcow2 -> another RBD image, compared each time.
	q := filepath.Join(dir, "c.qcow2")
	ringblk(t, "convert", "-O", "qcow2", img, q)
	ringblk(t, "compare", img, q)
	img2 := rbdImage(t, c, "cmd2")
	ringblk(t, "convert", "-f", "qcow2", "-O", "raw", q, img2)
	ringblk(t, "compare", img, img2)
	if qemuHasRBD() {
		if out, err := exec.Command("qemu-img", "compare", img2, q).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img compare on rbd: %v: %s", err, out)
		}
	}

	// bench on the image.
	out = ringblk(t, "bench", "--name=r", "--ioengine=ringblk", "--filename="+img, "--rw=randread", "--bs=4k",
		"--iodepth=8", "--size=16M", "--io_size=4M")
	if !strings.Contains(out, "READ: bw=") {
		t.Fatalf("bench:\n%s", out)
	}
}

// TestRBDQcow2Overlay: a local qcow2 overlay on an RBD backing image
// reads the backing data and keeps its writes local; following the
// rbd: backing name is refused unless RINGBLK_RBD_BACKING=1.
func TestRBDQcow2Overlay(t *testing.T) {
	c := testCluster(t)
	img := rbdImage(t, c, "base")
	ringblk(t, "create", "-f", "raw", img, "16M")
	ringblk(t, "io", "-c", "write -P 0x5a 0 2M", img)
	ov := filepath.Join(t.TempDir(), "ov.qcow2")
	ringblk(t, "create", "-f", "qcow2", "-b", img, "-F", "raw", ov)

	_, stderr, code := clitest.RunRingblk(t, nil, "io", "-f", "qcow2", "-c", "read -P 0x5a 0 4k", ov)
	if code == 0 || !strings.Contains(stderr, "RINGBLK_RBD_BACKING=1") {
		t.Fatalf("overlay opened without the opt-in: exit %d, %s", code, stderr)
	}
	t.Setenv("RINGBLK_RBD_BACKING", "1")
	ringblk(t, "io", "-f", "qcow2", "-c", "read -P 0x5a 0 2M", "-c", "write -P 0x77 1M 64k", "-c", "read -P 0x77 1M 64k", ov)
	ringblk(t, "io", "-c", "read -P 0x5a 1M 64k", img) // the backing image is untouched
	if out := ringblk(t, "info", ov); !strings.Contains(out, "backing file: "+img) {
		t.Fatalf("overlay info:\n%s", out)
	}
	// Committing the overlay's data into a copy: convert flattens the chain.
	flat := rbdImage(t, c, "flat")
	ringblk(t, "convert", "-O", "raw", ov, flat)
	ringblk(t, "compare", ov, flat)
}

// TestRBDErrors: a missing pool, a missing image, a wrong key and a
// snapshot name that is taken each fail with a one-line message that
// names the problem.
func TestRBDErrors(t *testing.T) {
	c := testCluster(t)
	img := rbdImage(t, c, "err")
	ringblk(t, "create", "-f", "raw", img, "4M")
	ringblk(t, "snapshot", "-c", "s", img)
	key, err := c.AdminKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"info", "rbd:nopool/x:conf=" + c.Conf}, `pool "nopool" does not exist`},
		{[]string{"io", "-c", "read 0 512", "rbd:rbd/nosuch:conf=" + c.Conf}, `image "nosuch" does not exist in pool "rbd"`},
		{[]string{"info", "rbd:rbd/nosuch:conf=" + c.Conf + ":id=ringblk:key=" + key + ":timeout=5"}, "connecting to the cluster as client.ringblk: permission denied (wrong key or user?)"},
		{[]string{"snapshot", "-c", "s", img}, "Could not create snapshot 's': file exists"},
		{[]string{"create", "-f", "raw", img, "4M"}, "file exists"},
		{[]string{"io", "-c", "write 0 512", img + ":nosuchoption=1"}, "nosuchoption"},
	} {
		_, stderr, code := clitest.RunRingblk(t, nil, tc.args...)
		if code == 0 || !strings.Contains(stderr, tc.want) || strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
			t.Errorf("%v: exit %d, stderr %q; want one line containing %q", tc.args, code, stderr, tc.want)
		}
	}
}

// TestRBDQcow2Inside: a qcow2 image stored in an RBD image: create makes
// the RBD image and the qcow2 metadata in it, writes past the RBD image's
// end grow it, info and map read the qcow2 metadata through the RBD node,
// snapshot takes qcow2 internal snapshots, and qemu-img (when it has rbd)
// finds the image consistent.
func TestRBDQcow2Inside(t *testing.T) {
	c := testCluster(t)
	img := rbdImage(t, c, "q")
	ringblk(t, "create", "-f", "qcow2", img, "64M")
	ringblk(t, "io", "-c", "write -P 0x42 1M 1M", "-c", "write -P 0x43 40M 64k", img)
	ringblk(t, "io", "-c", "read -P 0x42 1M 1M", "-c", "read -P 0x43 40M 64k", "-c", "read -P 0 0 1M", img)
	if out := ringblk(t, "info", img); !strings.Contains(out, "file format: qcow2") || !strings.Contains(out, "disk size: unavailable") {
		t.Fatalf("info:\n%s", out)
	}
	out := ringblk(t, "map", img)
	if !strings.Contains(out, "0x100000        0x100000") || !strings.Contains(out, "0x2800000       0x10000") {
		t.Fatalf("map:\n%s", out)
	}
	ringblk(t, "snapshot", "-c", "in", img)
	if out := ringblk(t, "snapshot", "-l", img); !strings.Contains(out, "in") {
		t.Fatalf("qcow2 snapshot list:\n%s", out)
	}
	if snaps, err := rbd.Snapshots(mustSpec(t, img)); err != nil || len(snaps) != 0 {
		t.Fatalf("an RBD snapshot was made for a qcow2 one: %v %v", snaps, err)
	}
	if qemuHasRBD() {
		if out, err := exec.Command("qemu-img", "check", img).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img check: %v\n%s", err, out)
		}
		q, err := exec.Command("qemu-img", "map", img).CombinedOutput()
		if err != nil {
			t.Fatalf("qemu-img map: %v\n%s", err, q)
		}
		// The same mapping as ours (its File column names json:).
		for _, want := range []string{"0x100000        0x100000        0x", "0x2800000       0x10000         0x"} {
			if !strings.Contains(string(q), want) {
				t.Errorf("qemu-img map lacks %q:\n%s", want, q)
			}
		}
	}
	flat := filepath.Join(t.TempDir(), "flat.raw")
	ringblk(t, "convert", "-O", "raw", img, flat)
	ringblk(t, "compare", img, flat)
}

// qemuHasRBD: qemu-img is installed with its rbd module
// (qemu-block-extra, which scripts/deps.sh installs).
func qemuHasRBD() bool {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		return false
	}
	m, _ := filepath.Glob("/usr/lib/*/qemu/block-rbd.so")
	return len(m) > 0
}

func mustSpec(t *testing.T, name string) rbd.Spec {
	t.Helper()
	s, err := rbd.ParseName(name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRBDJSONOptions: qemu-io on a json: option tree with driver=rbd
// (pool, image, conf, user, key-secret naming a --object secret) writes
// what the rbd: name then reads; a qcow2 tree over an rbd file child too.
func TestRBDJSONOptions(t *testing.T) {
	c := testCluster(t)
	img := rbdImage(t, c, "json")
	ringblk(t, "create", "-f", "raw", img, "64M")
	s, err := rbd.ParseName(img)
	if err != nil {
		t.Fatal(err)
	}
	key, err := c.AdminKey()
	if err != nil {
		t.Fatal(err)
	}
	spec := fmt.Sprintf(`json:{"driver":"rbd","pool":%q,"image":%q,"conf":%q,"user":"admin","key-secret":"k0"}`,
		s.Pool, s.Image, s.Conf)
	ringblk(t, "io", "--object", "secret,id=k0,data="+key, "-c", "write -P 0x5a 64k 64k", spec)
	ringblk(t, "io", "-c", "read -P 0x5a 64k 64k", "-c", "read -P 0 0 64k", img)
}
