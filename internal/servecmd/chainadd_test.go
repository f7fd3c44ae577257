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

// TestServeActiveCommitLeavesBaseWritableAsQemuStorageDaemon: an active
// commit (block-commit of the top itself) into a base the chain opened
// read-only from the top's header reopens the base read-write, and
// QEMU 7.2 never puts it back, however the job ends: cancelled while it
// runs, cancelled after BLOCK_JOB_READY with block-job-cancel (a
// completion without pivot: BLOCK_JOB_COMPLETED) or with job-cancel
// (BLOCK_JOB_CANCELLED), or completed. Each ending is its own session,
// compared with qemu-storage-daemon: the replies, the event and the
// base's ro flags and write lock after it. Before the fix ringblk put the
// base back read-only in the three cancelled cases.
func TestServeActiveCommitLeavesBaseWritableAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img", "qemu-io")
	paths := func(dir string) (base, top string) {
		return filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	}
	setup := func(dir string) {
		base, top := paths(dir)
		qemuImg(t, "create", "-q", "-f", "qcow2", base, "64M")
		qemuImg(t, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
		qemuIO(t, "-f", "qcow2", "-c", "write -P 0x11 0 1M", base)
		qemuIO(t, "-f", "qcow2", "-c", "write -P 0x22 1M 40M", top)
	}
	for _, end := range []string{"cancel-running", "block-job-cancel-ready", "job-cancel-ready", "complete"} {
		t.Run(end, func(t *testing.T) {
			body := func(s *qmpSession) {
				base, _ := paths(s.dir)
				s.mustReply(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"top","file":{"driver":"file","filename":"` + filepath.Join(s.dir, "top.qcow2") + `"}}}`)
				s.roOf("opened", base)
				var ev string
				switch end {
				case "cancel-running":
					// 40 MiB at 1 byte/s: still running at the cancel.
					s.mustReply(`{"execute":"block-commit","arguments":{"job-id":"c","device":"top","speed":1}}`)
					s.mustReply(`{"execute":"job-cancel","arguments":{"id":"c"}}`)
					ev = "BLOCK_JOB_CANCELLED"
				case "block-job-cancel-ready":
					s.mustReply(`{"execute":"block-commit","arguments":{"job-id":"c","device":"top"}}`)
					s.c.waitEvent("BLOCK_JOB_READY")
					s.roOf("ready", base)
					s.mustReply(`{"execute":"block-job-cancel","arguments":{"device":"c"}}`)
					ev = "BLOCK_JOB_COMPLETED"
				case "job-cancel-ready":
					s.mustReply(`{"execute":"block-commit","arguments":{"job-id":"c","device":"top"}}`)
					s.c.waitEvent("BLOCK_JOB_READY")
					s.mustReply(`{"execute":"job-cancel","arguments":{"id":"c"}}`)
					ev = "BLOCK_JOB_CANCELLED"
				case "complete":
					s.mustReply(`{"execute":"block-commit","arguments":{"job-id":"c","device":"top"}}`)
					s.c.waitEvent("BLOCK_JOB_READY")
					s.mustReply(`{"execute":"job-complete","arguments":{"id":"c"}}`)
					ev = "BLOCK_JOB_COMPLETED"
				}
				d := s.c.waitEvent(ev)
				s.note("%s: device %v error %v", ev, d["device"], d["error"])
				s.roOf(end, base)
				s.reply(`{"execute":"query-jobs"}`)
			}
			after := func(s *qmpSession) {
				base, top := paths(s.dir)
				checkClean(t, s.name, base, top)
				qemuIO(t, "-r", "-f", "qcow2", "-c", "read -P 0x11 0 1M", "-c", "read -P 0x22 1M 40M", top)
			}
			sideBySide(t, setup, body, after)
		})
	}
}

// TestServeSnapshotSyncOfReadOnlyNodeAsQemuStorageDaemon:
// blockdev-snapshot-sync of a node added read-only (exported read-only
// over NBD, so that QEMU's overlay has a parent and stays) is taken, as
// QEMU takes it: the overlay is created naming the node's image as its
// backing file, opened read-only as the node is, and the export moves
// onto it (a writable export of it is refused); the old image stays
// read-only without a write lock. Replies, ro flags and locks compared
// with qemu-storage-daemon; the export reads the image's data through the
// overlay, and after quit the overlay's header names the image and both
// check clean. Before, ringblk refused the snapshot ("the image is
// read-only: a snapshot would not protect anything").
func TestServeSnapshotSyncOfReadOnlyNodeAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img", "qemu-io")
	paths := func(dir string) (base, snap string) {
		return filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "snap.qcow2")
	}
	setup := func(dir string) {
		base, _ := paths(dir)
		qemuImg(t, "create", "-q", "-f", "qcow2", base, "8M")
		qemuIO(t, "-f", "qcow2", "-c", "write -P 0x41 0 64k", base)
	}
	body := func(s *qmpSession) {
		base, snap := paths(s.dir)
		nbdSock := filepath.Join(s.dir, "nbd.sock")
		s.mustReply(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"base","read-only":true,"file":{"driver":"file","filename":"` + base + `"}}}`)
		s.mustReply(`{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"` + nbdSock + `"}}}}`)
		s.mustReply(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"base","writable":false}}`)
		s.reply(`{"execute":"blockdev-snapshot-sync","arguments":{"node-name":"base","snapshot-file":"` + snap + `","snapshot-node-name":"snap","format":"qcow2"}}`)
		s.roOf("snapshot", snap)
		s.roOf("snapshot", base)
		s.reply(`{"execute":"query-block-exports"}`)
		s.reply(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"w","node-name":"snap","writable":true}}`)
		qemuIO(t, "-r", "-f", "raw", "-c", "read -P 0x41 0 64k", "-c", "read -P 0 64k 64k", "nbd+unix:///base?socket="+nbdSock)
		s.exportDel("e")
		s.c.waitEvent("BLOCK_EXPORT_DELETED")
	}
	after := func(s *qmpSession) {
		base, snap := paths(s.dir)
		checkClean(t, s.name, base, snap)
		if o := qemuImg(t, "info", snap); !strings.Contains(o, "backing file: "+base) {
			t.Errorf("%s: the overlay does not name the image as its backing file:\n%s", s.name, o)
		}
		qemuIO(t, "-r", "-f", "qcow2", "-c", "read -P 0x41 0 64k", snap)
	}
	sideBySide(t, setup, body, after)
}

// nodeField records member key of the node named node in
// query-named-block-nodes.
func (s *qmpSession) nodeField(node string, keys ...string) {
	for _, n := range s.c.ok(`{"execute":"query-named-block-nodes"}`).([]any) {
		if n := n.(map[string]any); n["node-name"] == node {
			for _, k := range keys {
				s.note("%s %s: %v", node, k, strings.ReplaceAll(fmt.Sprint(n[k]), s.dir, "DIR"))
			}
			return
		}
	}
	s.note("%s: no such node", node)
}

// TestServeBackingNodeUnderHeaderlessOverlayAsQemuStorageDaemon:
// blockdev-add of a qcow2 overlay whose header names no backing file,
// with "backing" naming a node, is taken as QEMU takes it: the overlay
// reads through to that node where it has no data (over NBD: the base's
// data, the overlay's own, zeros past both), a write of part of a
// cluster copies the rest of the cluster from the backing node, and the
// header is not rewritten (qemu-img info after quit names no backing
// file). Replies, the overlay's backing_file, backing_file_depth and ro
// compared with qemu-storage-daemon. Before, ringblk refused it ("the
// image names no backing file in its header, so it cannot take node base
// as its backing").
func TestServeBackingNodeUnderHeaderlessOverlayAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img", "qemu-io")
	paths := func(dir string) (base, top string) {
		return filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	}
	setup := func(dir string) {
		base, top := paths(dir)
		qemuImg(t, "create", "-q", "-f", "qcow2", base, "8M")
		qemuImg(t, "create", "-q", "-f", "qcow2", top, "8M")
		qemuIO(t, "-f", "qcow2", "-c", "write -P 0x41 0 64k", base)
		qemuIO(t, "-f", "qcow2", "-c", "write -P 0x42 1M 64k", top)
	}
	body := func(s *qmpSession) {
		base, top := paths(s.dir)
		nbdSock := filepath.Join(s.dir, "nbd.sock")
		s.mustReply(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"base","read-only":true,"file":{"driver":"file","filename":"` + base + `"}}}`)
		s.reply(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"top","file":{"driver":"file","filename":"` + top + `"},"backing":"base"}}`)
		s.nodeField("top", "backing_file", "backing_file_depth", "ro")
		s.reply(`{"execute":"blockdev-del","arguments":{"node-name":"base"}}`)
		s.mustReply(`{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"` + nbdSock + `"}}}}`)
		s.mustReply(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"top","writable":true}}`)
		uri := "nbd+unix:///top?socket=" + nbdSock
		qemuIO(t, "-r", "-f", "raw", "-c", "read -P 0x41 0 64k", "-c", "read -P 0x42 1M 64k", "-c", "read -P 0 2M 64k", uri)
		qemuIO(t, "-f", "raw", "-c", "write -P 0x43 0 4k", uri)
		qemuIO(t, "-r", "-f", "raw", "-c", "read -P 0x43 0 4k", "-c", "read -P 0x41 4k 60k", uri)
		s.exportDel("e")
		s.c.waitEvent("BLOCK_EXPORT_DELETED")
		s.mustReply(`{"execute":"blockdev-del","arguments":{"node-name":"top"}}`)
		s.mustReply(`{"execute":"blockdev-del","arguments":{"node-name":"base"}}`)
	}
	after := func(s *qmpSession) {
		base, top := paths(s.dir)
		checkClean(t, s.name, base, top)
		if o := qemuImg(t, "info", top); strings.Contains(o, "backing file") {
			t.Errorf("%s: the overlay's header was given a backing file:\n%s", s.name, o)
		}
		// The cluster the partial write allocated holds the base's data
		// around it; the rest of the base is not in the overlay.
		qemuIO(t, "-r", "-f", "qcow2", "-c", "read -P 0x43 0 4k", "-c", "read -P 0x41 4k 60k", "-c", "read -P 0x42 1M 64k", top)
	}
	sideBySide(t, setup, body, after)
}

// qcow2Nodes records the qcow2 nodes of query-named-block-nodes, sorted:
// the name (an implicit node's "#blockNNN" as "#block": the numbers are
// QEMU's random ones), ro, backing_file and backing_file_depth. File
// nodes and the "file" member are left out, and a backing_file that is
// a json: pseudo-filename is reduced to its image's filename (its
// file.filename): QEMU names a node whose backing was given inline that
// way, ringblk by its image (docs/design/qmp.md).
func (s *qmpSession) qcow2Nodes(step string) {
	var out []string
	for _, n := range s.c.ok(`{"execute":"query-named-block-nodes"}`).([]any) {
		if n := n.(map[string]any); n["drv"] == "qcow2" {
			bf := fmt.Sprint(n["backing_file"])
			if j, ok := strings.CutPrefix(bf, "json:"); ok {
				var o struct {
					File struct {
						Filename string `json:"filename"`
					} `json:"file"`
				}
				if err := json.Unmarshal([]byte(j), &o); err != nil || o.File.Filename == "" {
					s.t.Fatalf("%s: backing_file %s: %v", s.name, bf, err)
				}
				bf = o.File.Filename
			}
			out = append(out, fmt.Sprintf("%s ro=%v backing=%v depth=%v", implicitName.ReplaceAllString(n["node-name"].(string), "#block"),
				n["ro"], strings.ReplaceAll(bf, s.dir, "DIR"), n["backing_file_depth"]))
		}
	}
	sort.Strings(out)
	s.note("%s: %q", step, out)
}

var implicitName = regexp.MustCompile(`^#block\d+$`)

// implicitOn returns the name of the qcow2 node on image path.
func (s *qmpSession) implicitOn(path string) string {
	for _, n := range s.c.ok(`{"execute":"query-named-block-nodes"}`).([]any) {
		if n := n.(map[string]any); n["drv"] == "qcow2" && n["file"] == path {
			return n["node-name"].(string)
		}
	}
	s.t.Fatalf("%s: no qcow2 node on %s", s.name, path)
	return ""
}

// TestServeBlockdevAddInlineBackingAsQemuStorageDaemon: blockdev-add
// with "backing" given as inline options (QAPI's BlockdevRefOrNull as an
// object), nested three levels (top over mid, named m, over a headerless
// image named by no one, in the place of the base mid's header names),
// side by side with qemu-storage-daemon: the error replies to bad inline
// options (a missing or unexpected member by its place, also two levels
// down; a bad or duplicate node-name; an object on a raw node), the
// qcow2 nodes listed by query-named-block-nodes (an implicit "#blockNNN"
// node, read-only, each layer's backing), blockdev-del of an inline node
// refused while it is a backing node, reads over NBD (the inline chain,
// not the headers'), a stream after which the inline nodes are gone, and
// an inline node that goes away with its parent's blockdev-del, and an
// intermediate commit into an implicit node (reopened read-write for the
// job although read-only: QEMU refuses only nodes the user added
// read-only; cbase holds cmid's data after it). Before,
// ringblk refused every inline object ("Invalid parameter type for
// 'backing', expected: object").
func TestServeBlockdevAddInlineBackingAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img", "qemu-io")
	paths := func(dir string) (base, mid, top, other string) {
		return filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "mid.qcow2"), filepath.Join(dir, "top.qcow2"), filepath.Join(dir, "other.qcow2")
	}
	setup := func(dir string) {
		base, mid, top, other := paths(dir)
		qemuImg(t, "create", "-q", "-f", "qcow2", base, "8M")
		qemuImg(t, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", mid)
		qemuImg(t, "create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top)
		qemuImg(t, "create", "-q", "-f", "qcow2", other, "8M")
		qemuIO(t, "-f", "qcow2", "-c", "write -P 0x41 0 64k", base)
		qemuIO(t, "-f", "qcow2", "-c", "write -P 0x42 1M 64k", mid)
		qemuIO(t, "-f", "qcow2", "-c", "write -P 0x43 2M 64k", top)
		qemuIO(t, "-f", "qcow2", "-c", "write -P 0x44 3M 64k", other)
		// A second chain for the commit.
		cbase, cmid, ctop := filepath.Join(dir, "cbase.qcow2"), filepath.Join(dir, "cmid.qcow2"), filepath.Join(dir, "ctop.qcow2")
		qemuImg(t, "create", "-q", "-f", "qcow2", cbase, "8M")
		qemuImg(t, "create", "-q", "-f", "qcow2", "-b", cbase, "-F", "qcow2", cmid)
		qemuImg(t, "create", "-q", "-f", "qcow2", "-b", cmid, "-F", "qcow2", ctop)
		qemuIO(t, "-f", "qcow2", "-c", "write -P 0x51 0 64k", cbase)
		qemuIO(t, "-f", "qcow2", "-c", "write -P 0x52 1M 64k", cmid)
	}
	body := func(s *qmpSession) {
		base, mid, top, other := paths(s.dir)
		file := func(p string) string { return `{"driver":"file","filename":"` + p + `"}` }
		add := func(name, path, backing string) string {
			return `{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"` + name + `","file":` + file(path) + `,"backing":` + backing + `}}`
		}
		for _, bad := range []string{
			add("t1", top, `{"driver":"qcow2"}`),
			add("t1", top, `{"driver":"qcow2","file":`+file(mid)+`,"bogus":1}`),
			add("t1", top, `{"driver":"qcow2","file":`+file(mid)+`,"backing":{"driver":"qcow2","file":`+file(base)+`,"cache":{"direkt":true}}}`),
			add("t1", top, `{"driver":"qcow2","file":`+file(mid)+`,"backing":{"file":`+file(base)+`}}`),
			add("t1", top, `{"driver":"qcow2","node-name":"#x","file":`+file(mid)+`}`),
			add("t1", top, `{"driver":"qcow2","node-name":"t1","file":`+file(mid)+`}`),
			add("t1", top, `{"driver":"qcow2","file":`+file(mid)+`,"backing":{"driver":"qcow2","node-name":"t1","file":`+file(base)+`}}`),
			`{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"r","file":` + file(top) + `,"backing":{"driver":"qcow2","file":` + file(mid) + `}}}`,
		} {
			s.reply(bad)
		}
		s.qcow2Nodes("after the errors")
		s.mustReply(add("t1", top, `{"driver":"qcow2","node-name":"m","file":`+file(mid)+`,"backing":{"driver":"qcow2","file":`+file(other)+`}}`))
		s.qcow2Nodes("added")
		s.reply(`{"execute":"blockdev-del","arguments":{"node-name":"m"}}`)
		if r := s.c.do(`{"execute":"blockdev-del","arguments":{"node-name":"` + s.implicitOn(other) + `"}}`); r["error"] != nil {
			s.note("del implicit: %v", strings.ReplaceAll(r["error"].(map[string]any)["desc"].(string), s.implicitOn(other), "#block"))
		} else {
			s.note("del implicit: %v", r)
		}
		nbdSock := filepath.Join(s.dir, "nbd.sock")
		s.mustReply(`{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"` + nbdSock + `"}}}}`)
		s.mustReply(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"t1"}}`)
		qemuIO(t, "-r", "-f", "raw", "-c", "read -P 0 0 64k", "-c", "read -P 0x42 1M 64k", "-c", "read -P 0x43 2M 64k", "-c", "read -P 0x44 3M 64k",
			"nbd+unix:///t1?socket="+nbdSock)
		s.exportDel("e")
		s.c.waitEvent("BLOCK_EXPORT_DELETED")
		s.mustReply(`{"execute":"block-stream","arguments":{"job-id":"s","device":"t1"}}`)
		d := s.c.waitEvent("BLOCK_JOB_COMPLETED")
		s.note("stream: error %v", d["error"])
		s.qcow2Nodes("streamed")
		s.mustReply(`{"execute":"blockdev-del","arguments":{"node-name":"t1"}}`)
		// An implicit node goes with its parent.
		s.mustReply(add("t2", mid, `{"driver":"qcow2","file":`+file(other)+`}`))
		s.qcow2Nodes("t2 added")
		s.mustReply(`{"execute":"blockdev-del","arguments":{"node-name":"t2"}}`)
		s.reply(`{"execute":"query-named-block-nodes"}`)
		// A commit into an implicit node (read-only by default): it is
		// reopened read-write for the job and read-only after; the
		// inline node taken out of the chain is gone.
		cbase, cmid, ctop := filepath.Join(s.dir, "cbase.qcow2"), filepath.Join(s.dir, "cmid.qcow2"), filepath.Join(s.dir, "ctop.qcow2")
		s.mustReply(add("t3", ctop, `{"driver":"qcow2","node-name":"cm","file":`+file(cmid)+`,"backing":{"driver":"qcow2","file":`+file(cbase)+`}}`))
		s.mustReply(`{"execute":"block-commit","arguments":{"job-id":"c","device":"t3","top-node":"cm","base-node":"` + s.implicitOn(cbase) + `"}}`)
		d = s.c.waitEvent("BLOCK_JOB_COMPLETED")
		s.note("commit: error %v", d["error"])
		s.qcow2Nodes("committed")
		s.mustReply(`{"execute":"blockdev-del","arguments":{"node-name":"t3"}}`)
		s.reply(`{"execute":"query-named-block-nodes"}`)
	}
	after := func(s *qmpSession) {
		base, mid, top, other := paths(s.dir)
		checkClean(t, s.name, base, mid, top, other)
		for _, p := range []string{top, other} {
			if o := qemuImg(t, "info", p); strings.Contains(o, "backing file") {
				t.Errorf("%s: %s names a backing file:\n%s", s.name, filepath.Base(p), o)
			}
		}
		if o := qemuImg(t, "info", mid); !strings.Contains(o, "backing file: "+base) {
			t.Errorf("%s: mid's header was rewritten:\n%s", s.name, o)
		}
		qemuIO(t, "-r", "-f", "qcow2", "-c", "read -P 0 0 64k", "-c", "read -P 0x42 1M 64k", "-c", "read -P 0x43 2M 64k", "-c", "read -P 0x44 3M 64k", top)
		cbase, ctop := filepath.Join(s.dir, "cbase.qcow2"), filepath.Join(s.dir, "ctop.qcow2")
		checkClean(t, s.name, cbase, ctop)
		qemuIO(t, "-r", "-f", "qcow2", "-c", "read -P 0x51 0 64k", "-c", "read -P 0x52 1M 64k", cbase)
		if o := qemuImg(t, "info", ctop); !strings.Contains(o, "backing file: "+cbase) {
			t.Errorf("%s: ctop's header does not name cbase after the commit:\n%s", s.name, o)
		}
	}
	sideBySide(t, setup, body, after)
}

// TestServeSnapshotOntoHeaderlessOverlayAsQemuStorageDaemon:
// blockdev-snapshot with an overlay node (added with "backing": null)
// whose header names no backing file is taken, as QEMU takes it: the
// snapshotted node becomes its backing node and reads fall through to
// it over NBD, the overlay's header is left without a backing file.
// Replies and the overlay's backing_file compared with
// qemu-storage-daemon. Before, ringblk refused it ("overlay ... did not
// take the image as its backing").
func TestServeSnapshotOntoHeaderlessOverlayAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img", "qemu-io")
	paths := func(dir string) (base, ov string) {
		return filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "ov.qcow2")
	}
	setup := func(dir string) {
		base, ov := paths(dir)
		qemuImg(t, "create", "-q", "-f", "qcow2", base, "8M")
		qemuImg(t, "create", "-q", "-f", "qcow2", ov, "8M")
		qemuIO(t, "-f", "qcow2", "-c", "write -P 0x41 0 64k", base)
	}
	body := func(s *qmpSession) {
		base, ov := paths(s.dir)
		nbdSock := filepath.Join(s.dir, "nbd.sock")
		s.mustReply(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"base","file":{"driver":"file","filename":"` + base + `"}}}`)
		s.mustReply(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"ov","backing":null,"file":{"driver":"file","filename":"` + ov + `"}}}`)
		s.reply(`{"execute":"blockdev-snapshot","arguments":{"node":"base","overlay":"ov"}}`)
		s.nodeField("ov", "backing_file", "backing_file_depth")
		s.mustReply(`{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"` + nbdSock + `"}}}}`)
		s.mustReply(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"ov"}}`)
		qemuIO(t, "-r", "-f", "raw", "-c", "read -P 0x41 0 64k", "-c", "read -P 0 64k 64k", "nbd+unix:///ov?socket="+nbdSock)
		s.exportDel("e")
		s.c.waitEvent("BLOCK_EXPORT_DELETED")
	}
	after := func(s *qmpSession) {
		base, ov := paths(s.dir)
		checkClean(t, s.name, base, ov)
		if o := qemuImg(t, "info", ov); strings.Contains(o, "backing file") {
			t.Errorf("%s: the overlay's header was given a backing file:\n%s", s.name, o)
		}
	}
	sideBySide(t, setup, body, after)
}
