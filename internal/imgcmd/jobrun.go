package imgcmd

import (
	"time"

	"github.com/ringblk/ringblk/internal/cli"
	"github.com/ringblk/ringblk/job"
)

// jobPoll is how often a command's -p bar follows its job's progress.
const jobPoll = 50 * time.Millisecond

// runJob starts j and waits until it concludes, moving bar along the
// job's progress (current/total) meanwhile, as qemu-img's run_block_job
// does; it returns the job's result. A job that cannot start is
// discarded.
func runJob(j *job.Job, bar *cli.Progress) error {
	bar.Set(0)
	if err := j.Start(); err != nil {
		j.Discard()
		return err
	}
	t := time.NewTicker(jobPoll)
	defer t.Stop()
	for {
		select {
		case <-j.Done():
			return j.Wait()
		case <-t.C:
			if cur, total := j.Progress(); total > 0 {
				bar.Set(float64(cur) / float64(total) * 100)
			}
		}
	}
}
