// Package cephtest gives tests a one-node Ceph cluster
// (scripts/ceph-single.sh): the one named by RINGBLK_CEPH_DIR when it is
// set (make test starts it once for every package), or one started for
// this test binary and stopped when it ends.
package cephtest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Cluster is a running test cluster.
type Cluster struct {
	Dir     string // the script's directory for it
	Conf    string // ceph.conf
	Keyring string // client.admin's keyring
	// UserKeyring is client.ringblk's (profile rbd on pool "rbd").
	UserKeyring string
	Pool        string
	owned       bool
}

// Script is the path of scripts/ceph-single.sh.
func Script() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "scripts", "ceph-single.sh")
}

// Start returns the cluster of RINGBLK_CEPH_DIR, or starts one. A
// missing ceph-mon is reported as Absent (the caller skips: make test
// installs the packages, so CI runs the tests).
func Start() (*Cluster, error) {
	if _, err := exec.LookPath("ceph-mon"); err != nil {
		return nil, Absent
	}
	dir := os.Getenv("RINGBLK_CEPH_DIR")
	if dir == "" {
		return StartPrivate(fmt.Sprintf("/var/tmp/ringblk-cephtest-%d", os.Getpid()), 0)
	}
	return start(dir, 0, false)
}

// StartPrivate starts a cluster of the caller's own in dir, its monitor on
// port (0: the script's default), for tests that stop daemons.
func StartPrivate(dir string, port int) (*Cluster, error) {
	if _, err := exec.LookPath("ceph-mon"); err != nil {
		return nil, Absent
	}
	return start(dir, port, true)
}

func start(dir string, port int, owned bool) (*Cluster, error) {
	var stderr bytes.Buffer
	cmd := exec.Command(Script(), "start", dir)
	if port != 0 {
		cmd.Env = append(os.Environ(), fmt.Sprintf("CEPH_MON_PORT=%d", port))
	}
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("ceph-single.sh start %s: %v\n%s", dir, err, stderr.Bytes())
	}
	return &Cluster{Dir: dir, Conf: strings.TrimSpace(lastLine(string(out))), Keyring: filepath.Join(dir, "keyring"),
		UserKeyring: filepath.Join(dir, "ringblk.keyring"), Pool: "rbd", owned: owned}, nil
}

// Absent says the Ceph packages are not installed.
var Absent = fmt.Errorf("ceph-mon is not installed (scripts/deps.sh installs ceph-mon ceph-osd ceph-common librbd-dev)")

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// Stop stops a cluster this binary started (one from RINGBLK_CEPH_DIR is
// left to whoever started it).
func (c *Cluster) Stop() error {
	if c == nil || !c.owned {
		return nil
	}
	out, err := exec.Command(Script(), "stop", c.Dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ceph-single.sh stop: %v\n%s", err, out)
	}
	return nil
}

// StopOSD and StartOSD stop and restart the OSD (fault tests).
func (c *Cluster) StopOSD() error  { return c.run("stop-osd") }
func (c *Cluster) StartOSD() error { return c.run("start-osd") }

func (c *Cluster) run(cmd string) error {
	out, err := exec.Command(Script(), cmd, c.Dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ceph-single.sh %s: %v\n%s", cmd, err, out)
	}
	return nil
}

// AdminKey is client.admin's cephx key (a well-formed key that is wrong
// for any other user).
func (c *Cluster) AdminKey() (string, error) {
	b, err := os.ReadFile(c.Keyring)
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, ok := strings.CutPrefix(strings.TrimSpace(l), "key = "); ok {
			return k, nil
		}
	}
	return "", fmt.Errorf("no key in %s", c.Keyring)
}

// Name is an rbd: filename for image in the test pool, with the conf.
func (c *Cluster) Name(image string) string {
	return "rbd:" + c.Pool + "/" + image + ":conf=" + c.Conf
}
