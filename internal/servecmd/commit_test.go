package servecmd

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// lockByteHeld reports whether some process holds a lock on byte b of
// path (QEMU's lock bytes: 101 is "write"). OFD locks list no owner in
// /proc/locks, so the kernel is asked.
func lockByteHeld(t *testing.T, path string, b int64) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Start: b, Len: 1}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		t.Skipf("no OFD locks here: %v", err)
	}
	return lk.Type != unix.F_UNLCK
}

// waitEvent returns the data of the next event name (one do already read
// first).
func (c *qmpc) waitEvent(name string) map[string]any {
	c.t.Helper()
	for i, m := range c.events {
		if m["event"] == name {
			c.events = append(c.events[:i:i], c.events[i+1:]...)
			d, _ := m["data"].(map[string]any)
			return d
		}
	}
	for {
		m := c.read()
		if m["event"] == name {
			d, _ := m["data"].(map[string]any)
			return d
		}
		if _, ev := m["event"]; !ev {
			c.t.Fatalf("waiting for %s: a reply %v", name, m)
		}
	}
}

// qmpSession is one daemon's run of a side-by-side test: its client, its
// directory, and the transcript compared with the other daemon's.
type qmpSession struct {
	t    *testing.T
	name string // "qsd" or "ringblk"
	dir  string
	c    *qmpc
	out  []string
}

// reply sends cmd and records the reply (paths as DIR).
func (s *qmpSession) reply(cmd string) map[string]any {
	r := s.c.do(cmd)
	b, _ := json.Marshal(r)
	s.out = append(s.out, strings.ReplaceAll(string(b), s.dir, "DIR"))
	return r
}

// mustReply is reply for a command that must succeed.
func (s *qmpSession) mustReply(cmd string) {
	s.t.Helper()
	if r := s.reply(cmd); r["error"] != nil {
		s.t.Fatalf("%s: %s: %v", s.name, cmd, r["error"])
	}
}

// note records a line of the transcript.
func (s *qmpSession) note(format string, a ...any) {
	s.out = append(s.out, fmt.Sprintf(format, a...))
}

// roOf records the "ro" members of the nodes on image path (all of
// them: format and file node) and whether any process holds its write
// lock.
func (s *qmpSession) roOf(step, path string) {
	var ro []string
	for _, n := range s.c.ok(`{"execute":"query-named-block-nodes"}`).([]any) {
		if n := n.(map[string]any); n["file"] == path {
			ro = append(ro, fmt.Sprint(n["ro"]))
		}
	}
	sort.Strings(ro)
	s.note("%s: %s ro %v, write lock %v", step, filepath.Base(path), slices.Compact(ro), lockByteHeld(s.t, path, 101))
}

// nodeOf returns the node name of the qcow2 node on image path.
func (s *qmpSession) nodeOf(path string) string {
	for _, n := range s.c.ok(`{"execute":"query-named-block-nodes"}`).([]any) {
		if n := n.(map[string]any); n["file"] == path && n["drv"] == "qcow2" {
			return n["node-name"].(string)
		}
	}
	s.t.Fatalf("%s: no qcow2 node on %s", s.name, path)
	return ""
}

// sideBySide runs body against qemu-storage-daemon and then ringblk
// serve, each in a fresh directory made ready by setup, sends quit, runs
// after (the daemon gone) and wants the same transcripts.
func sideBySide(t *testing.T, setup func(dir string), body func(s *qmpSession), after func(s *qmpSession)) {
	t.Helper()
	run := func(name string, start func(sock string) (stop func())) []string {
		dir := filepath.Join(tmpDir(t), name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		setup(dir)
		sock := filepath.Join(dir, "qmp.sock")
		stop := start(sock)
		defer stop()
		s := &qmpSession{t: t, name: name, dir: dir, c: waitQMP(t, sock)}
		body(s)
		s.reply(`{"execute":"quit"}`)
		stop()
		after(s)
		return s.out
	}
	monitor := []string{"--chardev", "socket,id=m,path=%s,server=on,wait=off", "--monitor", "chardev=m"}
	args := func(sock string) []string {
		a := slices.Clone(monitor)
		a[1] = fmt.Sprintf(a[1], sock)
		return a
	}
	want := run("qsd", func(sock string) func() {
		wait := startQSD(t, args(sock)...)
		waited := false
		return func() {
			if !waited {
				waited = true
				wait() // kills it first if the test failed (quit was not sent)
			}
		}
	})
	got := run("ringblk", func(sock string) func() {
		d := startServe(t, args(sock)...)
		waited := false
		return func() {
			if !waited {
				waited = true
				if t.Failed() {
					d.cmd.Process.Kill() // quit was not sent
				}
				if code := d.wait(t); code != 0 && !t.Failed() {
					t.Errorf("exit %d: %s", code, d.stderr)
				}
			}
		}
	})
	t.Logf("transcript:\n%s", strings.Join(got, "\n"))
	if len(want) != len(got) {
		t.Fatalf("transcripts differ in length:\n qemu-storage-daemon %q\n ringblk serve       %q", want, got)
	}
	for i := range want {
		if want[i] != got[i] {
			t.Errorf("step %d:\n qemu-storage-daemon %s\n ringblk serve       %s", i, want[i], got[i])
		}
	}
}

// checkClean runs qemu-img check on the qcow2 images among paths.
func checkClean(t *testing.T, who string, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if strings.HasSuffix(p, ".qcow2") {
			if o := qemuImg(t, "check", p); !strings.Contains(o, "No errors were found") {
				t.Errorf("%s: qemu-img check %s:\n%s", who, filepath.Base(p), o)
			}
		}
	}
}

// holdWithoutSharingWrites starts qemu-io -r on a qcow2 image — which
// holds lock bytes 100, 201 and 203: a reader that does not share writes
// — and returns once its locks stay held; the caller kills it.
func holdWithoutSharingWrites(t *testing.T, img string) *exec.Cmd {
	t.Helper()
	h := exec.Command("qemu-io", "-r", "-f", "qcow2", "-c", "sleep 60000", img)
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Process.Kill(); h.Wait() })
	// qemu-io takes and drops locks while it opens: wait until its final
	// ones stay held.
	for i, held := 0, 0; held < 3; i++ {
		if i == 100 {
			t.Fatal("qemu-io -r did not take its locks")
		}
		if lockByteHeld(t, img, 100) && lockByteHeld(t, img, 201) && lockByteHeld(t, img, 203) {
			held++
		} else {
			held = 0
		}
		time.Sleep(100 * time.Millisecond)
	}
	return h
}

// TestServeCommitIntoHeaderOpenedBaseAsQemuStorageDaemon: the common
// live-commit set-up, run on qemu-storage-daemon and on ringblk serve with
// the same QMP commands. A qcow2 overlay is added with blockdev-add, its
// backing chain (mid, then a raw or a lazy-refcounts qcow2 base) opened
// read-only from the headers; a client writes through it over NBD. With a
// qcow2 base held by a reader that does not share writes (qemu-io -r),
// block-commit is refused with QEMU's `Failed to get "write" lock`, no
// job starts and the base stays read-only; a commit cancelled while it
// runs leaves the base read-only again. Then an intermediate commit of
// mid into the base, and an active commit completed with job-complete:
// both daemons give the same replies, the base is read-only again after
// the intermediate commit (no write lock: another process reads it
// without -U, and qemu-img check finds it clean while the daemon runs)
// and read-write after the active one (it replaced the top). After quit
// every image checks clean and the base holds all the data (qemu-img
// compare). Before the fix ringblk refused both commits: "Could not make
// '…' writable for the commit: … the file was opened read-only".
func TestServeCommitIntoHeaderOpenedBaseAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img", "qemu-io")
	for _, bf := range []string{"qcow2", "raw"} {
		t.Run("base="+bf, func(t *testing.T) {
			paths := func(dir string) (base, mid, top string) {
				return filepath.Join(dir, "base."+bf), filepath.Join(dir, "mid.qcow2"), filepath.Join(dir, "top.qcow2")
			}
			setup := func(dir string) {
				base, mid, top := paths(dir)
				qemuImg(t, "create", "-q", "-f", bf, base, "8M")
				if bf == "qcow2" {
					// Writes set the dirty bit: the read-only reopen must clear it.
					qemuImg(t, "amend", "-f", "qcow2", "-o", "lazy_refcounts=on", base)
				}
				qemuImg(t, "create", "-q", "-f", "qcow2", "-b", base, "-F", bf, mid)
				qemuImg(t, "create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top)
				qemuIO(t, "-f", bf, "-c", "write -P 0x11 0 1M", base)
				qemuIO(t, "-f", "qcow2", "-c", "write -P 0x22 1M 1M", mid)
				qemuIO(t, "-f", "qcow2", "-c", "write -P 0x33 2M 1M", top)
			}
			body := func(s *qmpSession) {
				base, mid, top := paths(s.dir)
				nbdSock := filepath.Join(s.dir, "nbd.sock")
				s.mustReply(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"top","file":{"driver":"file","filename":"` + top + `"}}}`)
				s.roOf("opened", base)
				s.mustReply(`{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"` + nbdSock + `"}}}}`)
				s.mustReply(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"top","writable":true}}`)
				qemuIO(t, "-f", "raw", "-c", "write -P 0x44 3M 1M", "nbd+unix:///top?socket="+nbdSock)
				commit := `{"execute":"block-commit","arguments":{"job-id":"c1","device":"top","top":"` + mid + `","base":"` + base + `"}}`
				if bf == "qcow2" {
					h := holdWithoutSharingWrites(t, base)
					s.reply(commit)
					s.reply(`{"execute":"query-jobs"}`)
					h.Process.Kill()
					h.Wait()
					s.roOf("refused", base)
				}
				// Cancelled: the base is read-only again too.
				s.mustReply(`{"execute":"block-commit","arguments":{"job-id":"cx","device":"top","top":"` + mid + `","base":"` + base + `","speed":1}}`)
				s.mustReply(`{"execute":"block-job-cancel","arguments":{"device":"cx"}}`)
				s.note("cx cancelled: %v", s.c.waitEvent("BLOCK_JOB_CANCELLED")["device"])
				s.roOf("cancelled", base)
				s.mustReply(commit)
				s.note("c1 completed: error %v", s.c.waitEvent("BLOCK_JOB_COMPLETED")["error"])
				s.roOf("intermediate", base)
				// Another process may read the base again, without -U.
				qemuIO(t, "-r", "-f", bf, "-c", "read -P 0x11 0 1M", "-c", "read -P 0x22 1M 1M", base)
				checkClean(t, s.name, base)
				s.mustReply(`{"execute":"block-commit","arguments":{"job-id":"c2","device":"top"}}`)
				s.c.waitEvent("BLOCK_JOB_READY")
				s.mustReply(`{"execute":"job-complete","arguments":{"id":"c2"}}`)
				s.note("c2 completed: error %v", s.c.waitEvent("BLOCK_JOB_COMPLETED")["error"])
				s.roOf("active", base)
				s.exportDel("e")
				time.Sleep(100 * time.Millisecond) // the export goes away asynchronously
			}
			after := func(s *qmpSession) {
				base, mid, top := paths(s.dir)
				checkClean(t, s.name, base, mid, top)
				ref := filepath.Join(s.dir, "ref.raw")
				qemuImg(t, "create", "-q", "-f", "raw", ref, "8M")
				qemuIO(t, "-f", "raw", "-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 1M 1M", "-c", "write -P 0x33 2M 1M", "-c", "write -P 0x44 3M 1M", ref)
				if o, err := exec.Command("qemu-img", "compare", "-f", bf, "-F", "raw", base, ref).CombinedOutput(); err != nil {
					t.Errorf("%s: qemu-img compare base ref: %v\n%s", s.name, err, o)
				}
			}
			sideBySide(t, setup, body, after)
		})
	}
}

// TestServeStreamIntoReadOnlyIntermediateAsQemuStorageDaemon: block-stream
// into a node of the chain that was opened read-only from its overlay's
// header (mid, named by its node name) reopens it read-write for the job
// and read-only after, as qemu-storage-daemon does: the same replies, mid
// read-only again with no write lock, qemu-img check clean and the base's
// data in mid while the daemon runs, mid's backing link gone after quit.
// A reader that does not share writes refuses it first. Before the fix
// ringblk refused it: "job: stream into read-only …".
func TestServeStreamIntoReadOnlyIntermediateAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img", "qemu-io")
	paths := func(dir string) (base, mid, top string) {
		return filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "mid.qcow2"), filepath.Join(dir, "top.qcow2")
	}
	setup := func(dir string) {
		base, mid, top := paths(dir)
		qemuImg(t, "create", "-q", "-f", "qcow2", base, "8M")
		qemuImg(t, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", mid)
		qemuImg(t, "create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top)
		qemuIO(t, "-f", "qcow2", "-c", "write -P 0x11 0 1M", base)
		qemuIO(t, "-f", "qcow2", "-c", "write -P 0x22 1M 1M", mid)
	}
	body := func(s *qmpSession) {
		_, mid, top := paths(s.dir)
		s.mustReply(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"top","file":{"driver":"file","filename":"` + top + `"}}}`)
		s.roOf("opened", mid)
		stream := `{"execute":"block-stream","arguments":{"job-id":"s","device":"` + s.nodeOf(mid) + `"}}`
		h := holdWithoutSharingWrites(t, mid)
		s.reply(stream)
		h.Process.Kill()
		h.Wait()
		s.roOf("refused", mid)
		s.mustReply(stream)
		s.note("s completed: error %v", s.c.waitEvent("BLOCK_JOB_COMPLETED")["error"])
		s.roOf("streamed", mid)
		checkClean(t, s.name, mid)
		qemuIO(t, "-r", "-f", "qcow2", "-c", "read -P 0x11 0 1M", "-c", "read -P 0x22 1M 1M", mid)
	}
	after := func(s *qmpSession) {
		base, mid, top := paths(s.dir)
		checkClean(t, s.name, base, mid, top)
		if o := qemuImg(t, "info", mid); strings.Contains(o, "backing file") {
			t.Errorf("%s: mid still has a backing file after the stream:\n%s", s.name, o)
		}
	}
	sideBySide(t, setup, body, after)
}

// TestServeCommitBelowReadOnlyOverlayAsQemuStorageDaemon: in a chain of
// four opened from the headers (base, m1, m2, top), committing m1 into
// the base rewrites the backing file name in m2's header although m2 was
// opened read-only: m2 is made writable for the job and read-only after,
// as qemu-storage-daemon does (the same replies and events, base and m2
// read-only with no write lock after, m2's header naming the base, every
// image clean, m1's data read through top). Before, the job failed at
// its end: "qcow2: changing the backing file needs a read-write node".
func TestServeCommitBelowReadOnlyOverlayAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img", "qemu-io")
	paths := func(dir string) (base, m1, m2, top string) {
		return filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "m1.qcow2"), filepath.Join(dir, "m2.qcow2"), filepath.Join(dir, "top.qcow2")
	}
	setup := func(dir string) {
		base, m1, m2, top := paths(dir)
		qemuImg(t, "create", "-q", "-f", "qcow2", base, "8M")
		qemuImg(t, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", m1)
		qemuImg(t, "create", "-q", "-f", "qcow2", "-b", m1, "-F", "qcow2", m2)
		qemuImg(t, "create", "-q", "-f", "qcow2", "-b", m2, "-F", "qcow2", top)
		qemuIO(t, "-f", "qcow2", "-c", "write -P 0x22 1M 1M", m1)
	}
	body := func(s *qmpSession) {
		base, m1, m2, top := paths(s.dir)
		s.mustReply(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"top","file":{"driver":"file","filename":"` + top + `"}}}`)
		s.mustReply(`{"execute":"block-commit","arguments":{"job-id":"c","device":"top","top":"` + m1 + `","base":"` + base + `"}}`)
		s.note("c completed: error %v", s.c.waitEvent("BLOCK_JOB_COMPLETED")["error"])
		s.roOf("committed", base)
		s.roOf("committed", m2)
	}
	after := func(s *qmpSession) {
		base, m1, m2, top := paths(s.dir)
		checkClean(t, s.name, base, m1, m2, top)
		if o := qemuImg(t, "info", m2); !strings.Contains(o, "backing file: "+base) {
			t.Errorf("%s: m2's header does not name the base:\n%s", s.name, o)
		}
		qemuIO(t, "-r", "-f", "qcow2", "-c", "read -P 0x22 1M 1M", top)
	}
	sideBySide(t, setup, body, after)
}
