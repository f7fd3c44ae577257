package imgcmd

import (
	"fmt"
	"os"
	"testing"

	"github.com/ringblk/ringblk/internal/cli"
	"github.com/ringblk/ringblk/job"
)

// TestJobCopyRunner is the job side of scripts/jobs-vs-convert.sh. With
// RINGBLK_JOBCOPY=mirror or backup it does what `ringblk convert -f FMT
// -O raw SRC DST` does around its copy, with the job as the copy: open
// RINGBLK_JOBCOPY_SRC (format RINGBLK_JOBCOPY_FMT, default raw) as
// convert opens its source, create RINGBLK_JOBCOPY_DST as a raw file of
// the same size and open it as convert opens its target (writeback), run
// the job (mirror sync full: to ready, then complete; backup sync full),
// flush and close. The script times the whole process, as it times
// convert's. Without the variable the test is skipped: it is a benchmark
// runner, not a test.
func TestJobCopyRunner(t *testing.T) {
	kind := os.Getenv("RINGBLK_JOBCOPY")
	if kind == "" {
		t.Skip("benchmark runner: set RINGBLK_JOBCOPY=mirror|backup (scripts/jobs-vs-convert.sh)")
	}
	if err := jobCopy(kind, os.Getenv("RINGBLK_JOBCOPY_SRC"), os.Getenv("RINGBLK_JOBCOPY_FMT"), os.Getenv("RINGBLK_JOBCOPY_DST")); err != nil {
		t.Fatal(err)
	}
}

func jobCopy(kind, srcPath, format, dstPath string) error {
	if format == "" {
		format = "raw"
	}
	src, err := cli.OpenBlk(srcPath, cli.BlkOptions{Format: format, ReadOnly: true})
	if err != nil {
		return err
	}
	defer src.Close()
	size, err := src.Node.Length()
	if err != nil {
		return err
	}
	f, err := os.Create(dstPath)
	if err == nil {
		err = f.Truncate(size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return err
	}
	dst, err := cli.OpenBlkIn(src.Ctx, src.Graph, dstPath, cli.BlkOptions{Format: "raw"})
	if err != nil {
		return err
	}
	ready := make(chan struct{}, 1)
	m := job.NewManager(src.Graph, func(ev job.Event) {
		if ev.Type == job.EventReady {
			select {
			case ready <- struct{}{}:
			default:
			}
		}
	})
	var j *job.Job
	switch kind {
	case "mirror":
		j, _, err = job.NewMirror(m, job.MirrorOptions{Options: job.Options{ID: "m"}, Source: src.Node, Target: dst.Node})
	case "backup":
		j, _, err = job.NewBackup(m, job.BackupOptions{Options: job.Options{ID: "b"}, Source: src.Node, Target: dst.Node})
	default:
		err = fmt.Errorf("RINGBLK_JOBCOPY=%q: want mirror or backup", kind)
	}
	if err != nil {
		dst.Close()
		return err
	}
	if err := j.Start(); err != nil {
		dst.Close()
		return err
	}
	if kind == "mirror" {
		select {
		case <-ready:
		case <-j.Done():
			dst.Close()
			return fmt.Errorf("mirror ended before ready: %v", j.Result())
		}
		if err := j.Complete(); err != nil {
			dst.Close()
			return err
		}
	}
	err = j.Wait()
	if err == nil {
		err = dst.Node.Flush()
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	return err
}
