package bench

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestVerifyBacklog: with verify_backlog=4 a writing clone reads back its
// last four written blocks after every four writes, and the final verify
// phase only reads what the backlog did not.
func TestVerifyBacklog(t *testing.T) {
	spec := mustParse(t, "--name=vb", "--ioengine=io_uring", "--rw=write", "--size=40k", "--bs=4k", "--iodepth=1",
		"--verify=crc32c", "--verify_backlog=4")
	j := spec.Jobs[0]
	w := newWorker(j, 0, 0, 40<<10)
	w.setBuffers([][]byte{make([]byte, 4096)})
	w.start()
	var seq []byte
	disk := make([]byte, 40<<10)
	for i := 0; i < 100; i++ {
		u := w.take()
		if !w.fill(u, int64(i)) {
			w.untake(u)
			if w.idle(int64(i)) {
				break
			}
			continue
		}
		c := byte('W')
		if u.verify {
			c = 'R'
			if w.phase == phaseVerify {
				c = 'V'
			}
		}
		seq = append(seq, c)
		w.submitted([]*unit{u}, int64(i))
		if u.dir == DirWrite {
			copy(disk[u.off:], u.buf[:u.n])
		} else {
			copy(u.buf[:u.n], disk[u.off:])
		}
		w.completed(u, int64(i), nil)
	}
	if got, want := string(seq), "WWWWRRRRWWWWRRRRWWVV"; got != want {
		t.Errorf("I/O sequence %s, want %s", got, want)
	}
	if w.err != nil {
		t.Errorf("verify: %v", w.err)
	}
}

// TestVerifyDump: verify_dump saves a block that fails verification as
// FILE.OFFSET.received, holding what was read.
func TestVerifyDump(t *testing.T) {
	dir := benchDir(t)
	file := filepath.Join(dir, "d")
	mustRun(t, mustParse(t, "--name=w", "--ioengine=psync", "--filename="+file, "--size=64k", "--rw=write",
		"--bs=4k", "--verify=crc32c", "--do_verify=0"))
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	data[8192+100] ^= 0xff
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := Run(mustParse(t, "--name=r", "--ioengine=psync", "--filename="+file, "--size=64k", "--rw=read",
		"--bs=4k", "--verify=crc32c", "--verify_dump=1"), RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Jobs[0].Err == nil {
		t.Fatal("corrupt block passed verification")
	}
	got, err := os.ReadFile(file + ".8192.received")
	if err != nil {
		t.Fatalf("no dump: %v", err)
	}
	if !bytes.Equal(got, data[8192:12288]) {
		t.Error("the dump is not the block as read")
	}
	if _, err := os.Stat(file + ".0.received"); err == nil {
		t.Error("a good block was dumped")
	}
}
