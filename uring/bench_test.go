package uring_test

import (
	"testing"

	"github.com/ringblk/ringblk/uring"
	"golang.org/x/sys/unix"
)

// BenchmarkNop measures the ring's own cost: GetSQE + PrepNop for a batch of
// 32, one SubmitAndWait(32), Reap. One op is one NOP. Besides ns/op it
// reports the owner thread's user and system CPU per NOP (getrusage
// RUSAGE_THREAD; the thread is locked), since ns/op mixes both.
func BenchmarkNop(b *testing.B) {
	for _, s := range setups {
		b.Run(s.name, func(b *testing.B) {
			r := newRing(b, 32, s.opts...)
			cqes := make([]uring.CQE, 32)
			var before, after unix.Rusage
			b.ReportAllocs()
			b.ResetTimer()
			unix.Getrusage(unix.RUSAGE_THREAD, &before)
			for done := 0; done < b.N; {
				k := min(32, b.N-done)
				for i := 0; i < k; i++ {
					r.GetSQE().PrepNop(uint64(i))
				}
				if _, err := r.SubmitAndWait(k, -1); err != nil {
					b.Fatal(err)
				}
				for got := 0; got < k; {
					got += r.Reap(cqes[got:])
				}
				done += k
			}
			unix.Getrusage(unix.RUSAGE_THREAD, &after)
			b.StopTimer()
			user := float64(after.Utime.Nano() - before.Utime.Nano())
			sys := float64(after.Stime.Nano() - before.Stime.Nano())
			b.ReportMetric(user/float64(b.N), "user-ns/op")
			b.ReportMetric(sys/float64(b.N), "sys-ns/op")
		})
	}
}
