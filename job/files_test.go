package job_test

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/job"
)

func needQemuImg(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (make test installs it via scripts/deps.sh)")
	}
}

// qemuCompare runs qemu-img compare (sharing the images we hold open) and
// returns its output and exit status (0: identical).
func qemuCompare(t *testing.T, a, fa, b, fb string) (string, int) {
	t.Helper()
	out, err := exec.Command("qemu-img", "compare", "-U", "-f", fa, "-F", fb, a, b).CombinedOutput()
	if err == nil {
		return string(out), 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	t.Fatalf("qemu-img compare: %v", err)
	return "", -1
}

func randomFile(t *testing.T, path string, size int64, seed uint64) {
	t.Helper()
	b := make([]byte, size)
	rng := rand.New(rand.NewPCG(seed, 1))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func openRaw(t *testing.T, e *blocktest.Env, path, name string) *block.Node {
	t.Helper()
	n, err := raw.NewNode(e.G, path, raw.Options{}, block.Options{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestMirrorFilesCompare: a mirror between raw files of an image a guest
// keeps writing converges, and qemu-img compare finds source and target
// identical at the pivot (inside the completion's drained section).
func TestMirrorFilesCompare(t *testing.T) {
	needQemuImg(t)
	for _, mode := range []job.CopyMode{job.Background, job.WriteBlocking} {
		t.Run(map[job.CopyMode]string{job.Background: "background", job.WriteBlocking: "write-blocking"}[mode], func(t *testing.T) {
			const size = 8 << 20
			dir := t.TempDir()
			sp, tp := filepath.Join(dir, "src.raw"), filepath.Join(dir, "tgt.raw")
			randomFile(t, sp, size, 1)
			if err := os.WriteFile(tp, make([]byte, size), 0o644); err != nil {
				t.Fatal(err)
			}
			e := blocktest.NewEnv(t, 1)
			src, tgt := openRaw(t, e, sp, "src"), openRaw(t, e, tp, "tgt")
			fe := e.FrontEnd("fe", src, block.FrontEndOptions{AllowContextChange: true})
			if err := fe.SetContext(e.IO[0]); err != nil {
				t.Fatal(err)
			}
			delay := 2 * time.Millisecond
			if mode == job.WriteBlocking {
				delay = 100 * time.Microsecond
			}
			g := startGuest(e, fe, e.IO[0], size, 4, 5, delay)
			m := job.NewManager(e.G, nil)
			var out string
			status := -1
			j, _, err := job.NewMirror(m, job.MirrorOptions{Options: job.Options{ID: "m"}, Source: src, Target: tgt, CopyMode: mode,
				PivotHook: func(*block.Node, *block.Node) { out, status = qemuCompare(t, sp, "raw", tp, "raw") }})
			if err != nil {
				t.Fatal(err)
			}
			j.Start()
			e.WaitFor("ready", func() bool { return j.IsReady() })
			w := g.writes.Load()
			e.WaitFor("guest writes while ready", func() bool { return g.writes.Load() > w+100 })
			j.Complete()
			if err := waitDone(t, j); err != nil {
				t.Fatal(err)
			}
			if status != 0 {
				t.Fatalf("qemu-img compare at the pivot: status %d: %s", status, out)
			}
			g.halt(e)
			if g.errs.Load() != 0 {
				t.Fatalf("guest errors: %v", g.lastErr.Load())
			}
			fe.SetContext(e.Main)
			fe.Close()
			src.Unref()
			tgt.Unref()
		})
	}
}

// TestBackupFilesPointInTime: a full backup between raw files under guest
// writes equals, by qemu-img compare, a copy of the source taken inside
// the drained section that started it.
func TestBackupFilesPointInTime(t *testing.T) {
	needQemuImg(t)
	const size = 8 << 20
	dir := t.TempDir()
	sp, tp, pit := filepath.Join(dir, "src.raw"), filepath.Join(dir, "tgt.raw"), filepath.Join(dir, "pit.raw")
	randomFile(t, sp, size, 2)
	if err := os.WriteFile(tp, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	e := blocktest.NewEnv(t, 1)
	src, tgt := openRaw(t, e, sp, "src"), openRaw(t, e, tp, "tgt")
	fe := e.FrontEnd("fe", src, block.FrontEndOptions{AllowContextChange: true})
	if err := fe.SetContext(e.IO[0]); err != nil {
		t.Fatal(err)
	}
	g := startGuest(e, fe, e.IO[0], size, 4, 6, 50*time.Microsecond)
	m := job.NewManager(e.G, nil)
	src.DrainedBegin()
	data, err := os.ReadFile(sp)
	if err == nil {
		err = os.WriteFile(pit, data, 0o644)
	}
	var j *job.Job
	if err == nil {
		j, _, err = job.NewBackup(m, job.BackupOptions{Options: job.Options{ID: "b", Speed: 16 << 20}, Source: src, Target: tgt, Drained: true})
	}
	src.DrainedEnd()
	if err != nil {
		t.Fatal(err)
	}
	j.Start()
	if err := waitDone(t, j); err != nil {
		t.Fatal(err)
	}
	g.halt(e)
	if out, st := qemuCompare(t, pit, "raw", tp, "raw"); st != 0 {
		t.Fatalf("backup differs from the point-in-time copy: %s", out)
	}
	if _, st := qemuCompare(t, sp, "raw", tp, "raw"); st == 0 {
		t.Fatal("the guest did not change the source during the backup")
	}
	fe.SetContext(e.Main)
	fe.Close()
	src.Unref()
	tgt.Unref()
}
