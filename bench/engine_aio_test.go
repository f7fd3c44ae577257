package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestFioSyncAndAIOEngines: fio's libaio, sync, pvsync and pvsync2
// engines run a job file as fio would (they were refused as engines
// bench does not implement): data written with a verify header reads
// back and verifies, buffered and with O_DIRECT; libaio keeps iodepth
// requests in flight (its IO depths histogram shows the depth asked for)
// and syncs through AIO (fsync=), the sync engines stay at depth 1.
func TestFioSyncAndAIOEngines(t *testing.T) {
	dir := benchDir(t)
	for _, eng := range []string{"libaio", "sync", "pvsync", "pvsync2"} {
		for _, direct := range []string{"0", "1"} {
			t.Run(eng+"-direct"+direct, func(t *testing.T) {
				f := filepath.Join(dir, eng+direct)
				w := mustRun(t, mustParse(t, "--name=w", "--filename="+f, "--size=2m", "--rw=randwrite", "--bs=4k",
					"--iodepth=8", "--direct="+direct, "--ioengine="+eng, "--verify=crc32c", "--do_verify=0", "--fsync=16"))
				e := entries(w)[0]
				if e.dirs[DirWrite].ios != 512 {
					t.Fatalf("wrote %d blocks, want 512", e.dirs[DirWrite].ios)
				}
				wantDepth := levelBucket(8)
				if syncEngine(eng) {
					wantDepth = levelBucket(1)
				}
				if e.depth[wantDepth] < 90 {
					t.Errorf("IO depths %v: want most at the %s depth", e.depth, map[bool]string{true: "sync engine's 1", false: "asked-for 8"}[syncEngine(eng)])
				}
				r := mustRun(t, mustParse(t, "--name=r", "--filename="+f, "--size=2m", "--rw=randread", "--bs=4k",
					"--iodepth=8", "--direct="+direct, "--ioengine="+eng, "--verify=crc32c"))
				e = entries(r)[0]
				if e.dirs[DirRead].ios != 512 || e.verify.checked != 512 || e.verify.mismatches != 0 {
					t.Fatalf("read %d blocks, verified %d, %d mismatches: %v", e.dirs[DirRead].ios, e.verify.checked, e.verify.mismatches, e.verify.first)
				}
			})
		}
	}
}

// TestLibaioErrors: a failed request ends the job with the error, as fio
// reports it, and nothing hangs: here the file is cut to nothing while a
// libaio job reads it, and the next reads come back short.
func TestLibaioErrors(t *testing.T) {
	f := filepath.Join(benchDir(t), "f")
	if err := os.WriteFile(f, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := mustParse(t, "--name=x", "--filename="+f, "--size=1m", "--rw=randread", "--bs=4k",
		"--iodepth=4", "--ioengine=libaio", "--runtime=20s", "--time_based")
	done := runAsync(t, spec)
	time.Sleep(200 * time.Millisecond)
	if err := os.Truncate(f, 0); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-done:
		if res == nil {
			return
		}
		if err := res.Jobs[0].Err; err == nil || !strings.Contains(err.Error(), "short read") {
			t.Fatalf("job error %v, want a short read", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the job did not end at its error")
	}
}

// TestLibaioZeroAllocs: the libaio engine's loop allocates nothing per
// I/O once running (page-cache reads).
func TestLibaioZeroAllocs(t *testing.T) {
	f := filepath.Join(benchDir(t), "f")
	if err := os.WriteFile(f, make([]byte, 16<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	checkAllocsPerIO(t, "libaio engine", mustParse(t, "--name=z", "--filename="+f, "--size=16m", "--rw=randread", "--bs=4k",
		"--iodepth=16", "--iodepth_batch_submit=8", "--ioengine=libaio", "--runtime=1500ms", "--time_based"))
}
