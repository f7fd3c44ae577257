package nbdcmd

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// needFioNbd skips unless fio is installed with its nbd engine (libnbd).
func needFioNbd(t *testing.T) {
	t.Helper()
	needCmd(t, "fio")
	out, err := exec.Command("fio", "--enghelp").CombinedOutput()
	if err != nil {
		t.Fatalf("fio --enghelp: %v %s", err, out)
	}
	for _, f := range strings.Fields(string(out)) {
		if f == "nbd" {
			return
		}
	}
	t.Skip("this fio has no nbd engine (fio >= 3.20 built with libnbd)")
}

// TestNbdCmdFio: fio's nbd engine writes 4 KiB blocks at random with
// crc32c verify headers on two connections at once (each job its own
// region), then reads every block back through the server and checks it.
func TestNbdCmdFio(t *testing.T) {
	needFioNbd(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "a.raw")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 8<<20); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s")
	startNbd(t, sock, "-t", "-f", "raw", "--cache=none", "-e", "0", img)
	js := filepath.Join(dir, "fio.json")
	cmd := exec.Command("fio", "--name=v", "--ioengine=nbd", "--uri=nbd+unix:///?socket="+sock,
		"--rw=randwrite", "--bs=4k", "--iodepth=16", "--numjobs=2", "--size=4M", "--offset_increment=4M",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_backlog=0",
		"--output-format=json", "--output="+js)
	// fio saves its verify state files (local-v-N-verify.state) in its
	// working directory: keep them out of the source tree.
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("fio: %v %s", err, out)
	}
	raw, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  struct {
				IOs int64 `json:"total_ios"`
			} `json:"read"`
			Write struct {
				IOs int64 `json:"total_ios"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if i := strings.IndexByte(string(raw), '{'); i < 0 || json.Unmarshal(raw[i:], &res) != nil {
		t.Fatalf("fio output: %s", raw)
	}
	if len(res.Jobs) != 2 {
		t.Fatalf("%d fio jobs in the report, want 2", len(res.Jobs))
	}
	for i, j := range res.Jobs {
		// 4 MiB per job: 1024 blocks written, each read back to verify.
		if j.Error != 0 || j.Write.IOs != 1024 || j.Read.IOs != 1024 {
			t.Fatalf("fio job %d: error %d, %d writes and %d verify reads (want 1024 each)", i, j.Error, j.Write.IOs, j.Read.IOs)
		}
	}
	// The data reached the image: no 4 KiB block of either region is
	// still zero (fio wrote every one).
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	zero := make([]byte, 4096)
	for off := 0; off < len(data); off += 4096 {
		if string(data[off:off+4096]) == string(zero) {
			t.Fatalf("block at %d is still zero in the image", off)
		}
	}
}
