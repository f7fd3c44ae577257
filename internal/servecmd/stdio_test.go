package servecmd

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// runOnStdio runs a daemon (exe with args; ringblk serve when exe is the
// test binary) with its monitor on standard input and output, writes
// cmds, and returns what it printed after the greeting: the replies in
// order, re-encoded (a line that is not a QMP message as "stdout:
// LINE"), then each job's JOB_STATUS_CHANGE statuses (jobs in
// the order their first event came) and the other events in order with
// their data (timestamps left out).
func runOnStdio(t *testing.T, dir, exe string, env []string, cmds []string, args ...string) (replies, events []string) {
	t.Helper()
	cmd := exec.Command(exe, append([]string{"--chardev", "stdio,id=m", "--monitor", "m"}, args...)...)
	cmd.Dir, cmd.Env = dir, append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: %v; stderr:\n%s", filepath.Base(exe), err, stderr.String())
			}
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("%s did not exit after quit", filepath.Base(exe))
		}
	}()
	sc := bufio.NewScanner(out)
	if !sc.Scan() || !strings.HasPrefix(sc.Text(), `{"QMP"`) {
		t.Fatalf("%s: no greeting on standard output, got %q; stderr:\n%s", filepath.Base(exe), sc.Text(), stderr.String())
	}
	var order, others []string
	statuses := map[string][]string{}
	for sc.Scan() {
		var m map[string]any
		if !strings.HasPrefix(sc.Text(), "{") {
			// What the daemon prints besides the monitor's messages
			// (a "Formatting" line), in its place among the replies.
			replies = append(replies, "stdout: "+sc.Text())
			continue
		}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("%s printed %q: %v", filepath.Base(exe), sc.Text(), err)
		}
		if m["event"] == "JOB_STATUS_CHANGE" {
			d := m["data"].(map[string]any)
			id := d["id"].(string)
			if statuses[id] == nil {
				order = append(order, id)
			}
			statuses[id] = append(statuses[id], d["status"].(string))
			continue
		}
		if ev, ok := m["event"]; ok {
			b, _ := json.Marshal(m["data"])
			others = append(others, fmt.Sprintf("%v %s", ev, b))
			continue
		}
		b, _ := json.Marshal(m)
		replies = append(replies, string(b))
	}
	for _, id := range order {
		// A job paused and resumed by drained sections, which come at
		// different moments in the two daemons, is one "running".
		var st []string
		for _, x := range statuses[id] {
			if x != "paused" && (len(st) == 0 || st[len(st)-1] != x) {
				st = append(st, x)
			}
		}
		events = append(events, id+": "+strings.Join(st, " "))
	}
	return replies, append(events, others...)
}

// TestServeStdioMonitorAsQemuStorageDaemon: "--chardev stdio" puts the
// monitor on the daemon's standard input and output, as in
// qemu-storage-daemon; the session run there is a transaction of two
// backups rolled back by an abort action, whose jobs report created,
// aborting, concluded and null (auto-dismiss or not), as QEMU's
// cancelled never-started jobs do. Before, the chardev was refused and
// the jobs went from created straight to null.
func TestServeStdioMonitorAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img")
	wantR, wantE, gotR, gotE := stdioBoth(t, func(dir string) []string {
		cmds := []string{`{"execute":"qmp_capabilities"}`}
		for _, n := range []string{"a", "b", "c", "d"} {
			qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, n+".qcow2"), "4M")
			cmds = append(cmds, `{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"`+n+`","file":{"driver":"file","filename":"`+n+`.qcow2"}}}`)
		}
		return append(cmds,
			`{"execute":"transaction","arguments":{"actions":[`+
				`{"type":"blockdev-backup","data":{"job-id":"j1","device":"a","target":"b","sync":"full"}},`+
				`{"type":"blockdev-backup","data":{"job-id":"j2","device":"c","target":"d","sync":"full","auto-dismiss":false}},`+
				`{"type":"abort","data":{}}]}}`,
			`{"execute":"query-jobs"}`,
			`{"execute":"quit"}`)
	})
	if len(wantE) != 2 || !strings.Contains(strings.Join(wantE, "\n"), "j2: created aborting concluded null") {
		t.Fatalf("qemu-storage-daemon's events are not what this test compares: %q", wantE)
	}
	compareSteps(t, wantR, gotR)
	compareSteps(t, wantE, gotE)
}

// TestServeStdioChardevRefusals: stdio with --daemonize and stdio twice
// are refused before anything runs, with qemu-storage-daemon's words and
// exit status.
func TestServeStdioChardevRefusals(t *testing.T) {
	needCmd(t, "qemu-storage-daemon")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--chardev", "stdio,id=m", "--daemonize"},
		{"--chardev", "stdio,id=m", "--chardev", "stdio,id=n"},
	} {
		var msgs []string
		for _, bin := range []string{"qemu-storage-daemon", exe} {
			cmd := exec.Command(bin, args...)
			cmd.Env = append(os.Environ(), asMainEnv+"=1")
			cmd.Stdin = strings.NewReader("")
			out, err := cmd.CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 1 {
				t.Errorf("%s %q: %v, want exit status 1; output %q", filepath.Base(bin), args, err, out)
			}
			s := strings.TrimSpace(string(out))
			i := strings.Index(s, "--chardev")
			if i < 0 {
				t.Fatalf("%s %q: %q names no option", filepath.Base(bin), args, s)
			}
			msgs = append(msgs, s[i:])
		}
		if msgs[0] != msgs[1] {
			t.Errorf("%q:\n qemu-storage-daemon %s\n ringblk serve       %s", args, msgs[0], msgs[1])
		}
	}
}

// TestServeQuitEndsJobsAndExportsAsQemuStorageDaemon: quit with a job
// running and an export open cancels the job and closes the export while
// the monitor is still connected, so its client sees the job's aborting,
// BLOCK_JOB_CANCELLED, concluded and null and the export's
// BLOCK_EXPORT_DELETED, as from qemu-storage-daemon. Before, the server
// closed first and none of these went out.
func TestServeQuitEndsJobsAndExportsAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img", "qemu-io")
	wantR, wantE, gotR, gotE := stdioBoth(t, func(dir string) []string {
		qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "base.qcow2"), "8M")
		qemuIO(t, "-f", "qcow2", "-c", "write -P 0x5a 0 8M", filepath.Join(dir, "base.qcow2"))
		qemuImg(t, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", filepath.Join(dir, "top.qcow2"))
		return []string{
			`{"execute":"qmp_capabilities"}`,
			`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"top","file":{"driver":"file","filename":"top.qcow2"}}}`,
			`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"other","file":{"driver":"file","filename":"base.qcow2"},"read-only":true}}`,
			`{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"nbd.sock"}}}}`,
			`{"execute":"block-export-add","arguments":{"type":"nbd","id":"e1","node-name":"other"}}`,
			`{"execute":"block-stream","arguments":{"job-id":"s1","device":"top","speed":1}}`,
			`{"execute":"quit"}`,
		}
	})
	// The offset a rate-limited job is cancelled at differs: QEMU's
	// limit starts after the first chunk (jobs.md).
	offset := regexp.MustCompile(`"offset":[0-9]+`)
	for _, e := range [][]string{wantE, gotE} {
		for i := range e {
			e[i] = offset.ReplaceAllString(e[i], `"offset":N`)
		}
	}
	all := strings.Join(wantE, "\n")
	if !strings.Contains(all, "s1: created running aborting concluded null") || !strings.Contains(all, "BLOCK_EXPORT_DELETED") {
		t.Fatalf("qemu-storage-daemon's events are not what this test compares: %q", wantE)
	}
	compareSteps(t, wantR, gotR)
	compareSteps(t, wantE, gotE)
}

// stdioBoth runs the session prepare makes (in a fresh directory it
// fills, returning the commands) on qemu-storage-daemon and on ringblk
// serve, each with its monitor on standard input and output, and returns
// both transcripts (runOnStdio's replies and events).
func stdioBoth(t *testing.T, prepare func(dir string) []string) (wantR, wantE, gotR, gotE []string) {
	t.Helper()
	return stdioBothArgs(t, func(dir string) ([]string, []string) { return nil, prepare(dir) })
}

// stdioBothArgs is stdioBoth for sessions that also need options on the
// command line (after the monitor's): prepare returns them and the
// commands.
func stdioBothArgs(t *testing.T, prepare func(dir string) (args, cmds []string)) (wantR, wantE, gotR, gotE []string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	run := func(name, bin string, env []string) ([]string, []string) {
		dir := filepath.Join(tmpDir(t), name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		args, cmds := prepare(dir)
		return runOnStdio(t, dir, bin, env, cmds, args...)
	}
	wantR, wantE = run("qsd", "qemu-storage-daemon", nil)
	gotR, gotE = run("ringblk", exe, []string{asMainEnv + "=1"})
	return wantR, wantE, gotR, gotE
}

// TestServeQsdJobsStreamPermission is qemu-iotests' qsd-jobs, second case:
// a writable NBD export of an overlay's backing node, given on the
// command line, then block-stream into the overlay. qemu-storage-daemon
// takes the export and refuses the stream with a permission conflict
// (the job is created, then null); quit then deletes the export, and no
// SHUTDOWN event follows. Before, ringblk serve refused the export ("node
// is used as backing hd"), ran the monitor's commands while the startup
// was failing, and sent SHUTDOWN at quit.
func TestServeQsdJobsStreamPermission(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img")
	wantR, wantE, gotR, gotE := stdioBothArgs(t, func(dir string) ([]string, []string) {
		qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "t.qcow2.base"), "128M")
		qemuImg(t, "create", "-q", "-f", "qcow2", "-b", filepath.Join(dir, "t.qcow2.base"), "-F", "qcow2", filepath.Join(dir, "t.qcow2"))
		return []string{
				"--blockdev", "node-name=file_base,driver=file,filename=t.qcow2.base",
				"--blockdev", "node-name=fmt_base,driver=qcow2,file=file_base",
				"--blockdev", "node-name=file_overlay,driver=file,filename=t.qcow2",
				"--blockdev", "node-name=fmt_overlay,driver=qcow2,file=file_overlay,backing=fmt_base",
				"--nbd-server", "addr.type=unix,addr.path=nbd.sock",
				"--export", "type=nbd,id=export1,node-name=fmt_base,writable=on,name=export1",
			}, []string{
				`{"execute": "qmp_capabilities"}`,
				`{"execute": "block-stream", "arguments": {"device": "fmt_overlay", "job-id": "job0"}}`,
				`{"execute": "quit"}`,
			}
	})
	if !strings.Contains(strings.Join(wantR, "\n"), "Permission conflict on node 'fmt_base'") {
		t.Fatalf("qemu-storage-daemon's replies are not what this test compares: %q", wantR)
	}
	compareSteps(t, wantR, gotR)
	compareSteps(t, wantE, gotE)
}

// TestServeNoCommandBeforeStartupEnds: a stdio monitor's commands wait
// until every option has been carried out, so when a later option fails
// none of them runs (qemu-storage-daemon runs no command before its main
// loop). Before, the monitor served at once: here the blockdev-create job
// created its image while the daemon was failing on its --export.
func TestServeNoCommandBeforeStartupEnds(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := tmpDir(t)
	img := filepath.Join(dir, "made.img")
	cmd := exec.Command(exe, "--chardev", "stdio,id=m", "--monitor", "m",
		"--nbd-server", "addr.type=unix,addr.path="+filepath.Join(dir, "nbd.sock"),
		// Many exports, each refused only at its end: the last one's
		// node does not exist. The startup takes a while after the
		// monitor's option.
		"--blockdev", "driver=null-co,node-name=n,size=1048576",
		"--export", "type=nbd,id=e0,node-name=n,name=x0",
		"--export", "type=nbd,id=e1,node-name=n,name=x1",
		"--export", "type=nbd,id=e2,node-name=nosuch")
	cmd.Env = append(os.Environ(), asMainEnv+"=1")
	cmd.Stdin = strings.NewReader(`{"execute":"qmp_capabilities"}` + "\n" +
		`{"execute":"blockdev-create","arguments":{"job-id":"c","options":{"driver":"file","filename":"` + img + `","size":0}}}` + "\n")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v, want status 1; stderr %q", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "node-name='nosuch'") {
		t.Errorf("stderr %q does not name the missing node", stderr.String())
	}
	if strings.Contains(stdout.String(), `"return"`) {
		t.Errorf("a command ran before the startup failed: %q", stdout.String())
	}
	if _, err := os.Stat(img); err == nil {
		t.Errorf("blockdev-create made %s while the startup was failing", img)
	}
}

// TestServeJobsWithoutIDAsQemuStorageDaemon: a block job command without
// job-id is refused as qemu-storage-daemon refuses it ("Invalid job ID
// ”": QEMU names such a job after its device, and the daemon's nodes
// have none), and a commit of an image with no backing file in QEMU's
// words. Before, ringblk serve started the jobs named after the node.
func TestServeJobsWithoutIDAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img")
	wantR, wantE, gotR, gotE := stdioBoth(t, func(dir string) []string {
		for _, n := range []string{"a", "b"} {
			qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, n+".qcow2"), "4M")
		}
		return []string{
			`{"execute":"qmp_capabilities"}`,
			`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"a","file":{"driver":"file","filename":"a.qcow2"}}}`,
			`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"b","file":{"driver":"file","filename":"b.qcow2"}}}`,
			`{"execute":"blockdev-backup","arguments":{"device":"a","target":"b","sync":"full"}}`,
			`{"execute":"blockdev-mirror","arguments":{"device":"a","target":"b","sync":"full"}}`,
			`{"execute":"block-stream","arguments":{"device":"a"}}`,
			`{"execute":"block-commit","arguments":{"device":"a"}}`,
			`{"execute":"query-jobs"}`,
			`{"execute":"quit"}`,
		}
	})
	if !strings.Contains(strings.Join(wantR, "\n"), "Invalid job ID ''") {
		t.Fatalf("qemu-storage-daemon's replies are not what this test compares: %q", wantR)
	}
	compareSteps(t, wantR, gotR)
	compareSteps(t, wantE, gotE)
}

// TestServeSharedBackingAsQemuStorageDaemon: one backing node under two
// overlays (a base image under several VMs' overlays), and an inline
// file with BlockdevOptionsBase members (read-only, force-share, …), as
// qemu-storage-daemon takes them: same replies step by step, the base
// busy until its last overlay is deleted (named after the newest one),
// and both overlays reading the base's data. Before, the second overlay
// was refused ("node is used as backing hd of 'o1'") and so was the
// file's read-only member ("Parameter 'file.read-only' is unexpected").
func TestServeSharedBackingAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img", "qemu-io")
	wantR, wantE, gotR, gotE := stdioBothArgs(t, func(dir string) ([]string, []string) {
		base := filepath.Join(dir, "base.qcow2")
		qemuImg(t, "create", "-q", "-f", "qcow2", base, "4M")
		qemuIO(t, "-f", "qcow2", "-c", "write -P 0x11 0 1M", base)
		for _, n := range []string{"o1", "o2"} {
			qemuImg(t, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", filepath.Join(dir, n+".qcow2"))
		}
		return nil, []string{
			`{"execute":"qmp_capabilities"}`,
			`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"rw","file":{"driver":"file","filename":"base.qcow2","read-only":true}}}`,
			`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"base","read-only":true,"file":{"driver":"file","filename":"base.qcow2","read-only":true,"auto-read-only":true,"discard":"unmap","force-share":true}}}`,
			`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"o1","backing":"base","file":{"driver":"file","filename":"o1.qcow2"}}}`,
			`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"o2","backing":"base","file":{"driver":"file","filename":"o2.qcow2"}}}`,
			`{"execute":"blockdev-del","arguments":{"node-name":"base"}}`,
			`{"execute":"blockdev-del","arguments":{"node-name":"o2"}}`,
			`{"execute":"blockdev-del","arguments":{"node-name":"base"}}`,
			`{"execute":"blockdev-del","arguments":{"node-name":"o1"}}`,
			`{"execute":"blockdev-del","arguments":{"node-name":"base"}}`,
			`{"execute":"quit"}`,
		}
	})
	all := strings.Join(wantR, "\n")
	if !strings.Contains(all, "Block node is read-only") || !strings.Contains(all, "node is used as backing hd of 'o2'") {
		t.Fatalf("qemu-storage-daemon's replies are not what this test compares: %q", wantR)
	}
	compareSteps(t, wantR, gotR)
	compareSteps(t, wantE, gotE)
}
