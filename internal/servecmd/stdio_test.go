package servecmd

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runOnStdio runs a daemon (exe with args; ringblk serve when exe is the
// test binary) with its monitor on standard input and output, writes
// cmds, and returns what it printed after the greeting: the replies in
// order, re-encoded, and each job's JOB_STATUS_CHANGE statuses (jobs in
// the order their first event came); other events are left out.
func runOnStdio(t *testing.T, dir, exe string, env []string, cmds []string) (replies, events []string) {
	t.Helper()
	cmd := exec.Command(exe, "--chardev", "stdio,id=m", "--monitor", "m")
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
	var order []string
	statuses := map[string][]string{}
	for sc.Scan() {
		var m map[string]any
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
		if _, ok := m["event"]; ok {
			continue // SHUTDOWN: ringblk serve sends it at quit (qmp.md), qemu-storage-daemon does not
		}
		b, _ := json.Marshal(m)
		replies = append(replies, string(b))
	}
	for _, id := range order {
		events = append(events, id+": "+strings.Join(statuses[id], " "))
	}
	return replies, events
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
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	run := func(name, bin string, env []string) ([]string, []string) {
		dir := filepath.Join(tmpDir(t), name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		var cmds []string
		cmds = append(cmds, `{"execute":"qmp_capabilities"}`)
		for _, n := range []string{"a", "b", "c", "d"} {
			qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, n+".qcow2"), "4M")
			cmds = append(cmds, `{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"`+n+`","file":{"driver":"file","filename":"`+n+`.qcow2"}}}`)
		}
		cmds = append(cmds,
			`{"execute":"transaction","arguments":{"actions":[`+
				`{"type":"blockdev-backup","data":{"job-id":"j1","device":"a","target":"b","sync":"full"}},`+
				`{"type":"blockdev-backup","data":{"job-id":"j2","device":"c","target":"d","sync":"full","auto-dismiss":false}},`+
				`{"type":"abort","data":{}}]}}`,
			`{"execute":"query-jobs"}`,
			`{"execute":"quit"}`)
		return runOnStdio(t, dir, bin, env, cmds)
	}
	wantR, wantE := run("qsd", "qemu-storage-daemon", nil)
	gotR, gotE := run("ringblk", exe, []string{asMainEnv + "=1"})
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
