package servecmd

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// jobEvent waits for a job event and records it with its data's members
// in order (the timings are the same in both daemons once they are
// there: len and offset are byte counts, speed 0).
func (s *qmpSession) jobEvent(name string) {
	s.t.Helper()
	d := s.c.waitEvent(name)
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%v", k, d[k]))
	}
	s.note("event %s %s", name, strings.Join(parts, " "))
}

// dataExtents is the guest ranges `qemu-img map` says an image's own
// layer holds data for (no backing file's), as "start+length" strings.
func dataExtents(t *testing.T, img string) string {
	t.Helper()
	var m []struct {
		Start, Length, Depth int64
		Data                 bool
	}
	if err := json.Unmarshal([]byte(qemuImg(t, "map", "-U", "--output=json", img)), &m); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range m {
		if e.Data && e.Depth == 0 {
			out = append(out, fmt.Sprintf("%d+%d", e.Start, e.Length))
		}
	}
	return strings.Join(out, ",")
}

var backingLine = regexp.MustCompile(`(?m)^backing file.*$`)

// TestServeDriveMirrorAndBackupSameAsQemuStorageDaemon: drive-mirror and
// drive-backup, which create their target image from a file name, on
// both daemons: drive-mirror sync=top of a two-layer chain (the new
// qcow2 names the source's backing file) and sync=full of a single
// image, each run to block-job-complete; drive-backup sync=full and then
// sync=incremental with a dirty bitmap after a write through an NBD
// export; a drive-backup transaction rolled back by an abort; and the
// error paths (unknown device, missing target, mode=existing with no
// file, an unknown format, a raw target with a backing file,
// sync=incremental without a bitmap, an unknown bitmap, replaces without
// node-name, no job-id, the source's own file as the target, a member
// drive-backup does not have). Replies and job
// events are compared, then the images: each target equals its source
// (qemu-img compare), the sync=top target's backing file is the base,
// the incremental target holds only the clusters written after the full
// backup, and every target equals the other daemon's byte for byte.
func TestServeDriveMirrorAndBackupSameAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img", "qemu-io")
	dirs := map[string]string{}
	setup := func(dir string) {
		twoLayerChain(t, dir)
		for _, n := range []string{"one", "disk"} {
			img := filepath.Join(dir, n+".qcow2")
			qemuImg(t, "create", "-q", "-f", "qcow2", img, "4M")
			qemuIO(t, "-c", "write -P 0x43 512k 128k", img)
		}
		// disk as the full backup must find it.
		qemuImg(t, "convert", "-O", "qcow2", filepath.Join(dir, "disk.qcow2"), filepath.Join(dir, "disk-t0.qcow2"))
	}
	body := func(s *qmpSession) {
		dirs[s.name] = s.dir
		d := s.dir
		nbdSock := filepath.Join(d, "nbd.sock")
		for _, n := range []string{"top", "one", "disk"} {
			s.mustReply(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"` + n + `","file":{"driver":"file","filename":"` + d + "/" + n + `.qcow2"}}}`)
		}
		// Errors first: nothing may be left running by them.
		for _, cmd := range []string{
			`{"execute":"drive-mirror","arguments":{"device":"nope","target":"` + d + `/e.qcow2","sync":"full"}}`,
			`{"execute":"drive-mirror","arguments":{"device":"top","sync":"full"}}`,
			`{"execute":"drive-mirror","arguments":{"device":"top","target":"` + d + `/missing.qcow2","sync":"full","mode":"existing"}}`,
			`{"execute":"drive-mirror","arguments":{"device":"top","target":"` + d + `/e.qcow2","sync":"full","format":"bogus"}}`,
			`{"execute":"drive-mirror","arguments":{"device":"top","target":"` + d + `/e.raw","sync":"top","format":"raw"}}`,
			`{"execute":"drive-mirror","arguments":{"device":"top","target":"` + d + `/e.qcow2","sync":"full","replaces":"top"}}`,
			`{"execute":"drive-mirror","arguments":{"device":"top","target":"` + d + `/e.qcow2","sync":"full","mode":"relative"}}`,
			// The source's own file: refused by its lock, left whole.
			`{"execute":"drive-mirror","arguments":{"device":"top","target":"` + d + `/top.qcow2","sync":"full","job-id":"self"}}`,
			`{"execute":"drive-mirror","arguments":{"device":"top","target":"` + d + `/e2.qcow2","sync":"full","granularity":1000}}`,
			// Creation and opening failures in strerror's words.
			`{"execute":"drive-mirror","arguments":{"device":"top","target":"` + d + `/nodir/m.raw","sync":"full","format":"raw","job-id":"nd"}}`,
			`{"execute":"drive-mirror","arguments":{"device":"top","target":"` + d + `","sync":"full","format":"raw","job-id":"dir"}}`,
			`{"execute":"drive-backup","arguments":{"device":"disk","target":"` + d + `","sync":"full","mode":"existing","job-id":"dir"}}`,
			// A node has no BlockBackend to name the job after.
			`{"execute":"drive-mirror","arguments":{"device":"one","target":"` + d + `/e6.qcow2","sync":"full"}}`,
			`{"execute":"drive-backup","arguments":{"device":"disk","target":"` + d + `/e7.qcow2","sync":"full"}}`,
			`{"execute":"drive-backup","arguments":{"device":"nope","target":"` + d + `/e.qcow2","sync":"full"}}`,
			`{"execute":"drive-backup","arguments":{"device":"disk","target":"` + d + `/e3.qcow2","sync":"incremental"}}`,
			`{"execute":"drive-backup","arguments":{"device":"disk","target":"` + d + `/e4.qcow2","sync":"full","bitmap":"nob","bitmap-mode":"always"}}`,
			`{"execute":"drive-backup","arguments":{"device":"disk","target":"` + d + `/missing.qcow2","sync":"full","mode":"existing"}}`,
			`{"execute":"drive-backup","arguments":{"device":"disk","target":"` + d + `/e.qcow2","sync":"full","node-name":"x"}}`,
			`{"execute":"drive-backup","arguments":{"device":"disk","target":"` + d + `/e.qcow2","sync":"sideways"}}`,
			`{"execute":"transaction","arguments":{"actions":[{"type":"drive-backup","data":{"device":"disk","target":"` + d + `/e5.qcow2","sync":"full","job-id":"j5"}},{"type":"abort","data":{}}]}}`,
			`{"execute":"query-block-jobs"}`,
		} {
			s.reply(cmd)
		}
		// drive-mirror sync=top of the chain, to completion.
		s.mustReply(`{"execute":"drive-mirror","arguments":{"device":"top","target":"` + d + `/mtop.qcow2","sync":"top","node-name":"mt","job-id":"m1"}}`)
		s.jobEvent("BLOCK_JOB_READY")
		s.mustReply(`{"execute":"block-job-complete","arguments":{"device":"m1"}}`)
		s.jobEvent("BLOCK_JOB_COMPLETED")
		// drive-mirror sync=full of a single image.
		s.mustReply(`{"execute":"drive-mirror","arguments":{"device":"one","target":"` + d + `/mfull.qcow2","sync":"full","job-id":"m2"}}`)
		s.jobEvent("BLOCK_JOB_READY")
		s.mustReply(`{"execute":"block-job-complete","arguments":{"device":"m2"}}`)
		s.jobEvent("BLOCK_JOB_COMPLETED")
		// drive-backup full with a new bitmap, a write, then incremental.
		s.mustReply(`{"execute":"block-dirty-bitmap-add","arguments":{"node":"disk","name":"bm"}}`)
		s.mustReply(`{"execute":"drive-backup","arguments":{"device":"disk","target":"` + d + `/bfull.qcow2","sync":"full","job-id":"b1"}}`)
		s.jobEvent("BLOCK_JOB_COMPLETED")
		s.mustReply(`{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"` + nbdSock + `"}}}}`)
		s.mustReply(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"disk","writable":true}}`)
		qemuIO(t, "-f", "raw", "-c", "write -P 0x44 2M 64k", "nbd+unix:///disk?socket="+nbdSock)
		s.mustReply(`{"execute":"drive-backup","arguments":{"device":"disk","target":"` + d + `/binc.qcow2","sync":"incremental","bitmap":"bm","job-id":"b2"}}`)
		s.jobEvent("BLOCK_JOB_COMPLETED")
		s.reply(`{"execute":"query-block-jobs"}`)
		s.exportDel("e")
	}
	after := func(s *qmpSession) {
		d := s.dir
		qemuIO(t, "-r", "-c", "read -P 0x42 1M 64k", "-c", "read -P 0x41 0 64k", d+"/top.qcow2")
		info := qemuImg(t, "info", "-U", d+"/mtop.qcow2")
		s.note("mtop: %s", strings.ReplaceAll(strings.Join(backingLine.FindAllString(info, -1), "; "), d, "DIR"))
		s.note("mtop vs top: %s", strings.TrimSpace(qemuImg(t, "compare", "-U", d+"/mtop.qcow2", d+"/top.qcow2")))
		s.note("mfull vs one: %s", strings.TrimSpace(qemuImg(t, "compare", "-U", d+"/mfull.qcow2", d+"/one.qcow2")))
		s.note("bfull vs disk-t0: %s", strings.TrimSpace(qemuImg(t, "compare", "-U", d+"/bfull.qcow2", d+"/disk-t0.qcow2")))
		s.note("binc holds %s", dataExtents(t, d+"/binc.qcow2"))
		qemuIO(t, "-r", "-c", "read -P 0x44 2M 64k", d+"/binc.qcow2")
		checkClean(t, s.name, d+"/mtop.qcow2", d+"/mfull.qcow2", d+"/bfull.qcow2", d+"/binc.qcow2")
	}
	sideBySide(t, setup, body, after)
	for _, img := range []string{"mtop.qcow2", "mfull.qcow2", "bfull.qcow2", "binc.qcow2", "e2.qcow2", "e3.qcow2", "e5.qcow2", "e6.qcow2", "e7.qcow2"} {
		if out := qemuImg(t, "compare", "-U", filepath.Join(dirs["qsd"], img), filepath.Join(dirs["ringblk"], img)); !strings.Contains(out, "identical") {
			t.Errorf("%s differs between the daemons: %s", img, out)
		}
	}
}

// TestServeDriveFormattingLineAsQemuStorageDaemon: drive-backup (and
// drive-mirror, the same code) that make their target print QEMU's
// "Formatting" line on
// the daemon's standard output before the reply, as qemu-storage-daemon
// does: qcow2 and raw targets, a sync=top target naming the source's
// backing file, and a target in a missing directory (the line, then the
// error). Before, ringblk serve printed nothing.
func TestServeDriveFormattingLineAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img")
	wantR, _, gotR, _ := stdioBoth(t, func(dir string) []string {
		qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "base.qcow2"), "4M")
		qemuImg(t, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", filepath.Join(dir, "top.qcow2"))
		return []string{
			`{"execute":"qmp_capabilities"}`,
			`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"top","file":{"driver":"file","filename":"top.qcow2"}}}`,
			`{"execute":"drive-backup","arguments":{"device":"top","job-id":"m1","target":"m1.qcow2","sync":"top"}}`,
			`{"execute":"drive-backup","arguments":{"device":"top","job-id":"b1","target":"b1.qcow2","sync":"full"}}`,
			`{"execute":"drive-backup","arguments":{"device":"top","job-id":"b2","target":"b2.raw","format":"raw","sync":"full"}}`,
			`{"execute":"drive-backup","arguments":{"device":"top","job-id":"b3","target":"nodir/b3.qcow2","sync":"full"}}`,
			`{"execute":"quit"}`,
		}
	})
	if !strings.Contains(strings.Join(wantR, "\n"), "stdout: Formatting 'b1.qcow2'") {
		t.Fatalf("qemu-storage-daemon printed no Formatting line; this test compares them: %q", wantR)
	}
	// The replies only: the jobs' events race with quit.
	compareSteps(t, wantR, gotR)
}
