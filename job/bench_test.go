package job_test

import (
	"os"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/job"
)

// BenchmarkCopyRaw/{mirror,backup}: an idle mirror (to ready, then
// complete) or full backup of the raw file $RINGBLK_JOB_BENCH_SRC into
// $RINGBLK_JOB_BENCH_DST (created at the same size), one copy per
// iteration, reported as bytes/s; compare with `ringblk convert -f raw
// -O raw` of the same file (docs/performance.md).
func BenchmarkCopyRaw(b *testing.B) {
	src, dst := os.Getenv("RINGBLK_JOB_BENCH_SRC"), os.Getenv("RINGBLK_JOB_BENCH_DST")
	if src == "" || dst == "" {
		b.Skip("set RINGBLK_JOB_BENCH_SRC (an existing raw file) and RINGBLK_JOB_BENCH_DST")
	}
	st, err := os.Stat(src)
	if err != nil {
		b.Fatal(err)
	}
	for _, kind := range []string{"mirror", "backup"} {
		b.Run(kind, func(b *testing.B) {
			b.SetBytes(st.Size())
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				os.Remove(dst)
				f, err := os.Create(dst)
				if err == nil {
					err = f.Truncate(st.Size())
					f.Close()
				}
				if err != nil {
					b.Fatal(err)
				}
				e := blocktest.NewEnv(b, 0)
				s, err := raw.NewNode(e.G, src, raw.Options{}, block.Options{Name: "src"})
				if err != nil {
					b.Fatal(err)
				}
				d, err := raw.NewNode(e.G, dst, raw.Options{}, block.Options{Name: "dst"})
				if err != nil {
					b.Fatal(err)
				}
				m := job.NewManager(e.G, nil)
				b.StartTimer()
				var j *job.Job
				if kind == "mirror" {
					j, _, err = job.NewMirror(m, job.MirrorOptions{Options: job.Options{ID: "m"}, Source: s, Target: d})
				} else {
					j, _, err = job.NewBackup(m, job.BackupOptions{Options: job.Options{ID: "b"}, Source: s, Target: d})
				}
				if err != nil {
					b.Fatal(err)
				}
				j.Start()
				if kind == "mirror" {
					for !j.IsReady() {
						select {
						case <-j.Done():
							b.Fatal(j.Result())
						default:
						}
						e.WaitFor("ready", func() bool { return j.IsReady() })
					}
					j.Complete()
				}
				<-j.Done()
				if err := j.Result(); err != nil {
					b.Fatal(err)
				}
				if err := d.Unref(); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				s.Unref()
				b.StartTimer()
			}
		})
	}
}
