package servecmd

import (
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// proc is one daemon of a two-daemon test: qemu-storage-daemon or
// ringblk serve, with its monitor.
type proc struct {
	kind string // "qsd" or "ringblk"
	c    *qmpc
	kill func()       // SIGKILL, for a server that dies
	stop func() error // quit and wait
}

// startDaemon starts a daemon of kind with a monitor on sock.
func startDaemon(t *testing.T, kind, sock string) *proc {
	t.Helper()
	args := []string{"--chardev", "socket,id=m,path=" + sock + ",server=on,wait=off", "--monitor", "chardev=m"}
	p := &proc{kind: kind}
	switch kind {
	case "qsd":
		q := exec.Command("qemu-storage-daemon", args...)
		if err := q.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- q.Wait() }()
		t.Cleanup(func() { q.Process.Kill(); <-done; done <- nil })
		p.kill = func() { q.Process.Kill() }
		p.stop = func() error {
			select {
			case err := <-done:
				done <- err
				return err
			case <-time.After(30 * time.Second):
				return fmt.Errorf("qemu-storage-daemon did not exit")
			}
		}
	default:
		d := startServe(t, args...)
		p.kill = func() { d.cmd.Process.Kill() }
		p.stop = func() error {
			if code := d.wait(t); code != 0 {
				return fmt.Errorf("ringblk serve exit %d: %s", code, d.stderr)
			}
			return nil
		}
	}
	p.c = waitQMP(t, sock)
	return p
}

// until reads messages until event ev arrives and returns its data; the
// events on the way are appended to seen as "EVENT" or
// "JOB_STATUS_CHANGE:status".
func (c *qmpc) until(ev string, seen *[]string) map[string]any {
	c.t.Helper()
	for {
		m := c.read()
		name, _ := m["event"].(string)
		if name == "" {
			continue
		}
		data, _ := m["data"].(map[string]any)
		s := name
		if name == "JOB_STATUS_CHANGE" {
			s += ":" + data["status"].(string)
		}
		if seen != nil {
			*seen = append(*seen, s)
		}
		if name == ev {
			return data
		}
	}
}

func js(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// migrationPair sets up libvirt's live storage migration between two
// daemons: the destination exports a writable qcow2 node over NBD, the
// source adds an nbd node (and a raw node over it, as libvirt does) for
// that export. It returns the source and destination, the images, and
// the name of the source's target node.
func migrationPair(t *testing.T, src, dst string, big bool) (s, d *proc, srcImg, dstImg, dstSock string) {
	t.Helper()
	dir := tmpDir(t)
	srcImg, dstImg = filepath.Join(dir, "src.qcow2"), filepath.Join(dir, "dst.qcow2")
	size, mid := "4M", "write -P 0x5a 1M 300k"
	if big {
		// Longer than one batch of the mirror (QEMU's buffer is 16
		// MiB), so that a speed limit keeps it copying for seconds.
		size, mid = "64M", "write -P 0x5a 1M 62M"
	}
	qemuImg(t, "create", "-q", "-f", "qcow2", srcImg, size)
	qemuImg(t, "create", "-q", "-f", "qcow2", dstImg, size)
	qemuIO(t, "-c", "write -P 0xa5 0 64k", "-c", mid, "-c", "write -P 0x11 "+map[bool]string{false: "4032k", true: "65472k"}[big]+" 64k", srcImg)
	dstSock = filepath.Join(dir, "nbd.sock")
	d = startDaemon(t, dst, filepath.Join(dir, "dst-qmp.sock"))
	d.c.ok(`{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"` + dstSock + `"}}}}`)
	d.c.ok(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"disk","file":{"driver":"file","filename":"` + dstImg + `"}}}`)
	d.c.ok(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"mig","node-name":"disk","name":"drive-virtio-disk0","writable":true}}`)
	s = startDaemon(t, src, filepath.Join(dir, "src-qmp.sock"))
	s.c.ok(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"vda","file":{"driver":"file","filename":"` + srcImg + `"}}}`)
	s.c.ok(`{"execute":"blockdev-add","arguments":{"driver":"nbd","node-name":"mig-storage","server":{"type":"unix","path":"` + dstSock + `"},"export":"drive-virtio-disk0"}}`)
	s.c.ok(`{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"mig-format","file":"mig-storage"}}`)
	return s, d, srcImg, dstImg, dstSock
}

// TestServeLiveStorageMigrationOverNBD is libvirt's live storage
// migration through blockdev-add driver=nbd: a full mirror of the
// source's disk into the destination's export, ended with job-complete
// (the pivot) or, as libvirt ends it, with block-job-cancel once ready
// (then libvirt deletes the target nodes, which closes the connection,
// and the destination removes its export). The destination image equals
// the source, between ringblk serve and qemu-storage-daemon 7.2 both
// ways and ringblk to ringblk, and the source's job sends the same
// events as qemu-storage-daemon's does.
func TestServeLiveStorageMigrationOverNBD(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img", "qemu-io")
	for _, end := range []string{"complete", "cancel"} {
		var qsdSeq []string
		for _, pair := range [][2]string{{"qsd", "ringblk"}, {"ringblk", "ringblk"}, {"ringblk", "qsd"}} {
			t.Run(end+"/"+pair[0]+"-to-"+pair[1], func(t *testing.T) {
				s, d, srcImg, dstImg, _ := migrationPair(t, pair[0], pair[1], false)
				// The nodes are shown as QEMU shows them.
				for _, n := range s.c.ok(`{"execute":"query-named-block-nodes"}`).([]any) {
					n := n.(map[string]any)
					switch n["node-name"] {
					case "mig-storage", "mig-format":
						want := map[any]string{"mig-storage": "nbd", "mig-format": "raw"}[n["node-name"]]
						if n["drv"] != want || !strings.HasPrefix(n["file"].(string), "nbd+unix:///drive-virtio-disk0?socket=") || n["ro"] != false {
							t.Errorf("%s: query-named-block-nodes: %v", pair[0], n)
						}
					}
				}
				// Raw: the job's first events may come before the reply
				// (which until skips; its id makes do skip it later).
				if _, err := s.c.nc.Write([]byte(`{"execute":"blockdev-mirror","id":"raw","arguments":{"job-id":"mig","device":"vda","target":"mig-format","sync":"full"}}` + "\n")); err != nil {
					t.Fatal(err)
				}
				var seq []string
				s.c.until("BLOCK_JOB_READY", &seq)
				ev := "BLOCK_JOB_COMPLETED"
				// Raw as well: the events that follow may come before
				// the reply (QMP orders events and replies freely).
				cmd := `{"execute":"job-complete","id":"raw","arguments":{"id":"mig"}}`
				if end == "cancel" {
					cmd = `{"execute":"block-job-cancel","id":"raw","arguments":{"device":"mig"}}`
				}
				if _, err := s.c.nc.Write([]byte(cmd + "\n")); err != nil {
					t.Fatal(err)
				}
				done := s.c.until(ev, &seq)
				if done["error"] != nil {
					t.Fatalf("mirror failed: %v", done)
				}
				s.c.until("JOB_STATUS_CHANGE", &seq) // null
				if pair[0] == "qsd" {
					qsdSeq = seq
				} else if qsdSeq != nil && strings.Join(seq, " ") != strings.Join(qsdSeq, " ") {
					t.Errorf("source events differ:\n qemu-storage-daemon %v\n ringblk serve       %v", qsdSeq, seq)
				}
				if end == "cancel" {
					// libvirt's clean-up: the source lets go of the
					// target; that closes the connection, so the
					// export's safe removal (refused while a client is
					// connected) goes through once the server sees it.
					s.c.ok(`{"execute":"blockdev-del","arguments":{"node-name":"mig-format"}}`)
					s.c.ok(`{"execute":"blockdev-del","arguments":{"node-name":"mig-storage"}}`)
					exportDel(t, d.c, "mig")
					d.c.ok(`{"execute":"nbd-server-stop"}`)
				}
				for _, p := range []*proc{s, d} {
					p.c.ok(`{"execute":"quit"}`)
					if err := p.stop(); err != nil {
						t.Error(err)
					}
				}
				out, err := exec.Command("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", srcImg, dstImg).CombinedOutput()
				if err != nil || !strings.Contains(string(out), "Images are identical") {
					t.Fatalf("after migration: %v %s", err, out)
				}
				if out := qemuImg(t, "check", dstImg); !strings.Contains(out, "No errors") {
					t.Errorf("check: %s", out)
				}
			})
		}
		if qsdSeq == nil {
			t.Fatal("the qemu-storage-daemon source gave no events to compare with")
		}
	}
}

// TestServeNBDServerDiesMidMirror: the destination dies during the
// mirror. The job fails (on-target-error report) or pauses (stop) with
// the same events and error as qemu-storage-daemon's, nothing hangs,
// blockdev-del of the dead node and quit end cleanly.
func TestServeNBDServerDiesMidMirror(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img", "qemu-io")
	for _, policy := range []string{"report", "stop"} {
		var want []string
		for _, src := range []string{"qsd", "ringblk"} {
			t.Run(policy+"/"+src, func(t *testing.T) {
				s, d, _, _, _ := migrationPair(t, src, "qsd", true)
				s.c.ok(`{"execute":"blockdev-mirror","arguments":{"job-id":"mig","device":"vda","target":"mig-format","sync":"full","speed":4194304,"on-target-error":"` + policy + `"}}`)
				// Mid-mirror: once the job has copied something.
				for i := 0; ; i++ {
					jobs := s.c.ok(`{"execute":"query-jobs"}`).([]any)
					if len(jobs) == 1 && jobs[0].(map[string]any)["current-progress"].(float64) > 0 && jobs[0].(map[string]any)["status"] == "running" {
						t.Logf("%s: killing the server at %v", src, jobs[0])
						break
					}
					if i == 200 {
						t.Fatalf("the mirror copies nothing: %v", jobs)
					}
					time.Sleep(50 * time.Millisecond)
				}
				var seq []string // the events after the server died
				d.kill()
				d.stop()
				start := time.Now()
				ev := "BLOCK_JOB_COMPLETED"
				if policy == "stop" {
					ev = "BLOCK_JOB_ERROR"
				}
				data := s.c.until(ev, &seq)
				// One BLOCK_JOB_ERROR per failed request: how many were in
				// flight is timing, so repeats count once.
				var uniq []string
				for _, e := range seq {
					if len(uniq) == 0 || uniq[len(uniq)-1] != e {
						uniq = append(uniq, e)
					}
				}
				seq = uniq
				got := []string{strings.Join(seq, " "), js(data["error"]), js(data["action"]), js(data["operation"])}
				if policy == "stop" {
					s.c.until("JOB_STATUS_CHANGE", &seq) // paused
					got = append(got, seq[len(seq)-1])
					if _, err := s.c.nc.Write([]byte(`{"execute":"block-job-cancel","id":"raw","arguments":{"device":"mig","force":true}}` + "\n")); err != nil {
						t.Fatal(err)
					}
					s.c.until("BLOCK_JOB_CANCELLED", nil)
				}
				if time.Since(start) > 30*time.Second {
					t.Errorf("the job took %v to notice", time.Since(start))
				}
				// Deleting the dead nodes answers (QEMU ignores the failed
				// flush of a close; ringblk reports it, and the node it
				// would give back its own device cannot connect, so it is
				// gone too), and leaves neither node behind.
				for _, n := range []string{"mig-format", "mig-storage"} {
					r := s.c.do(`{"execute":"blockdev-del","arguments":{"node-name":"` + n + `"}}`)
					if e, _ := r["error"].(map[string]any); e != nil && !strings.Contains(e["desc"].(string), "server closed the connection") &&
						!strings.Contains(e["desc"].(string), "Failed to find node") && !strings.Contains(e["desc"].(string), "Failed to connect") {
						t.Errorf("blockdev-del %s: %v", n, r)
					}
				}
				for _, n := range s.c.ok(`{"execute":"query-named-block-nodes"}`).([]any) {
					if name := n.(map[string]any)["node-name"]; name == "mig-format" || name == "mig-storage" {
						t.Errorf("%v is left after blockdev-del", name)
					}
				}
				s.c.ok(`{"execute":"quit"}`)
				if err := s.stop(); err != nil {
					t.Error(err)
				}
				if src == "qsd" {
					want = got
					return
				}
				if strings.Join(want, "|") != strings.Join(got, "|") {
					t.Errorf("after the server died:\n qemu-storage-daemon %q\n ringblk serve       %q", want, got)
				}
			})
		}
	}
}

// exportDel removes export id in mode safe, which is refused while a
// client is connected: it retries for up to ten seconds while the server
// notices a client that hung up (qemu-io has exited, but the server's
// reader may not have seen the end of its connection yet), and returns
// the reply that ended it.
func exportDel(t *testing.T, c *qmpc, id string) map[string]any {
	t.Helper()
	for i := 0; ; i++ {
		r := c.do(`{"execute":"block-export-del","arguments":{"id":"` + id + `"}}`)
		if _, ok := r["return"]; ok {
			return r
		}
		if i == 200 {
			t.Fatalf("block-export-del: %v (the client never hung up)", r)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// exportDel is exportDel in a side-by-side session: the reply that
// removed the export goes into the transcript.
func (s *qmpSession) exportDel(id string) {
	s.t.Helper()
	b, _ := json.Marshal(exportDel(s.t, s.c, id))
	s.note("%s", b)
}

// TestServeBlkdebugBackupErrorsAsQemuStorageDaemon is an iotest-style
// sequence over blockdev-add driver=blkdebug: a qcow2 node over a
// blkdebug filter over a file, whose read_aio rule fails reads of one
// sector; a full backup of it fails with the same events and error text
// as in qemu-storage-daemon 7.2, and with on-source-error=stop it pauses
// as QEMU's does, then (the rule was once) resumes and completes.
func TestServeBlkdebugBackupErrorsAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img", "qemu-io")
	run := func(kind, policy string) []string {
		dir := tmpDir(t)
		src, tgt := filepath.Join(dir, "src.qcow2"), filepath.Join(dir, "tgt.qcow2")
		qemuImg(t, "create", "-q", "-f", "qcow2", src, "4M")
		qemuImg(t, "create", "-q", "-f", "qcow2", tgt, "4M")
		qemuIO(t, "-c", "write -P 0x77 0 4M", src)
		p := startDaemon(t, kind, filepath.Join(dir, "qmp.sock"))
		var out []string
		for _, cmd := range []string{
			`{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"src-file","filename":"` + src + `"}}`,
			`{"execute":"blockdev-add","arguments":{"driver":"blkdebug","node-name":"src-dbg","image":"src-file","inject-error":[{"event":"read_aio","sector":4096,"once":` + map[bool]string{true: "true", false: "false"}[policy == "stop"] + `}]}}`,
			`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"src","file":"src-dbg"}}`,
			`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"tgt","file":{"driver":"file","filename":"` + tgt + `"}}}`,
			`{"execute":"blockdev-add","arguments":{"driver":"blkdebug","node-name":"bad","image":"src-file","inject-error":[{"event":"no_such_event"}]}}`,
		} {
			out = append(out, js(p.c.do(cmd)))
		}
		// The job's first events may come before the reply, which
		// until skips; its id makes do skip it if it comes later.
		backup := `{"execute":"blockdev-backup","id":"raw","arguments":{"job-id":"b","device":"src","target":"tgt","sync":"full","on-source-error":"` + policy + `"}}`
		if _, err := p.c.nc.Write([]byte(backup + "\n")); err != nil {
			t.Fatal(err)
		}
		var seq []string
		var data map[string]any
		if policy == "stop" {
			data = p.c.until("BLOCK_JOB_ERROR", &seq)
			out = append(out, js(data["operation"])+" "+js(data["action"]))
			p.c.until("JOB_STATUS_CHANGE", &seq) // paused
			if _, err := p.c.nc.Write([]byte(`{"execute":"job-resume","id":"raw","arguments":{"id":"b"}}` + "\n")); err != nil {
				t.Fatal(err)
			}
		}
		data = p.c.until("BLOCK_JOB_COMPLETED", &seq)
		out = append(out, "error="+js(data["error"]))
		var uniq []string
		for _, e := range seq {
			if len(uniq) == 0 || uniq[len(uniq)-1] != e {
				uniq = append(uniq, e)
			}
		}
		out = append(out, strings.Join(uniq, " "))
		// The nodes as QEMU names them.
		var nodes []string
		for _, n := range p.c.ok(`{"execute":"query-named-block-nodes"}`).([]any) {
			n := n.(map[string]any)
			// (QEMU names a blkdebug node with inline rules by a json:
			// filename of its options; ringblk by "blkdebug::IMAGE",
			// which leaves the rules out: docs/design/qmp.md.)
			if name := n["node-name"].(string); name == "src" || name == "src-dbg" {
				nodes = append(nodes, name+" "+n["drv"].(string))
			}
		}
		sort.Strings(nodes)
		out = append(out, nodes...)
		p.c.ok(`{"execute":"quit"}`)
		if err := p.stop(); err != nil {
			t.Error(err)
		}
		return out
	}
	for _, policy := range []string{"report", "stop"} {
		want, got := run("qsd", policy), run("ringblk", policy)
		if !strings.Contains(strings.Join(want, " "), "Input/output error") && policy == "report" {
			t.Fatalf("qemu-storage-daemon's backup did not fail: %q", want)
		}
		for i := range want {
			if i >= len(got) || want[i] != got[i] {
				t.Errorf("%s, step %d:\n qemu-storage-daemon %q\n ringblk serve       %q", policy, i, want, got)
				break
			}
		}
	}
}

// TestServeBlockdevAddNBDAsQemuStorageDaemon: blockdev-add driver=nbd
// against a qemu-storage-daemon NBD server gives the replies QEMU 7.2's
// gives, errors included (no server, no export, a writable open of a
// read-only export, TLS credentials, missing members), and the nodes
// are listed as QEMU lists them; blockdev-del of a node ends its
// connection.
func TestServeBlockdevAddNBDAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon")
	dir := tmpDir(t)
	srv := filepath.Join(dir, "srv.sock")
	q := exec.Command("qemu-storage-daemon", "--blockdev", "driver=null-co,node-name=z,size=1048576",
		"--blockdev", "driver=null-co,node-name=w,size=2097152",
		"--nbd-server", "addr.type=unix,addr.path="+srv,
		"--export", "type=nbd,id=e,node-name=z", "--export", "type=nbd,id=ew,node-name=w,writable=on")
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { q.Process.Kill(); q.Wait() }()
	// The steps connect to its NBD server: wait until it listens (under
	// load the first step could otherwise find no socket yet).
	for i := 0; ; i++ {
		c, err := net.Dial("unix", srv)
		if err == nil {
			c.Close()
			break
		}
		if i == 500 {
			t.Fatalf("qemu-storage-daemon's NBD server %s does not listen: %v", srv, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	addr := `{"type":"unix","path":"` + srv + `"}`
	cmds := []string{
		`{"execute":"blockdev-add","arguments":{"driver":"nbd","node-name":"n1","server":{"type":"unix","path":"` + dir + `/nosuch.sock"},"export":"x"}}`,
		`{"execute":"blockdev-add","arguments":{"driver":"nbd","node-name":"n1","server":{"type":"inet","host":"127.0.0.1","port":"1"},"export":"x"}}`,
		`{"execute":"blockdev-add","arguments":{"driver":"nbd","node-name":"n1","server":` + addr + `,"export":"nope"}}`,
		`{"execute":"blockdev-add","arguments":{"driver":"nbd","node-name":"n1","server":` + addr + `,"export":"z"}}`,
		`{"execute":"blockdev-add","arguments":{"driver":"nbd","node-name":"n1","server":` + addr + `,"export":"z","auto-read-only":true}}`,
		`{"execute":"blockdev-add","arguments":{"driver":"nbd","node-name":"n2","server":` + addr + `,"export":"z","read-only":true,"open-timeout":1}}`,
		`{"execute":"blockdev-add","arguments":{"driver":"nbd","node-name":"n3","server":` + addr + `,"tls-creds":"tls0"}}`,
		`{"execute":"blockdev-add","arguments":{"driver":"nbd","node-name":"n8","server":{"type":"inet","host":"127.0.0.1"},"export":"z","read-only":true}}`,
		`{"execute":"blockdev-add","arguments":{"driver":"nbd","node-name":"n9","export":"z","read-only":true}}`,
		`{"execute":"blockdev-add","arguments":{"driver":"nbd","node-name":"n11","server":` + addr + `,"export":"z","read-only":true,"open-timeout":-1}}`,
		`{"execute":"blockdev-add","arguments":{"driver":"nbd","node-name":"n10","server":` + addr + `,"export":"w"}}`,
		`{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"r12","file":{"driver":"nbd","server":` + addr + `,"export":"z"},"read-only":true}}`,
		`{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"f","filename":"/dev/null","export":"z"}}`,
		`{"execute":"blockdev-del","arguments":{"node-name":"n2"}}`,
		`{"execute":"blockdev-del","arguments":{"node-name":"r12"}}`,
	}
	run := func(kind string) []string {
		p := startDaemon(t, kind, filepath.Join(dir, kind+".sock"))
		var out []string
		for _, c := range cmds {
			out = append(out, js(p.c.do(c)))
			if strings.Contains(c, `"blockdev-add"`) && strings.Contains(c, `"node-name":"r12"`) {
				var nodes []string
				for _, n := range p.c.ok(`{"execute":"query-named-block-nodes"}`).([]any) {
					n := n.(map[string]any)
					name := n["node-name"].(string)
					if strings.HasPrefix(name, "#") {
						name = "#anon"
					}
					nodes = append(nodes, fmt.Sprintf("%s %s %s ro=%v size=%v", name, n["drv"], n["file"], n["ro"], n["image"].(map[string]any)["virtual-size"]))
				}
				sort.Strings(nodes)
				out = append(out, nodes...)
			}
		}
		p.c.ok(`{"execute":"quit"}`)
		p.stop()
		return out
	}
	want, got := run("qsd"), run("ringblk")
	if all := strings.Join(want, "\n"); !strings.Contains(all, "Failed to connect") || !strings.Contains(all, "r12 raw nbd+unix:///z") {
		t.Fatalf("qemu-storage-daemon's replies are not what this test compares:\n%s", all)
	}
	if len(got) != len(want) {
		t.Errorf("%d replies, qemu-storage-daemon gave %d", len(got), len(want))
	}
	for i := range want {
		if i >= len(got) || want[i] != got[i] {
			t.Errorf("step %d:\n qemu-storage-daemon %s\n ringblk serve       %s", i, want[i], got[min(i, len(got)-1)])
		}
	}
}
