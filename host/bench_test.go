package host_test

import (
	"os"
	"testing"
	"time"

	"github.com/ringblk/ringblk/host"
)

// benchReads keeps qd reads of bs bytes in flight on q from this (host)
// goroutine, in eventfd mode, until n completed: Plug, fill every free
// slot, Unplug, wait on the eventfd, take completions. Offsets are random
// in [0, size) aligned to bs (xorshift; no allocation).
func benchReads(b *testing.B, q *host.Queue, n, qd int, bs, size int64) {
	bufs := make([][]byte, qd)
	free := make([]int, 0, qd)
	for i := range bufs {
		bufs[i] = make([]byte, bs)
		free = append(free, i)
	}
	blocks := uint64(size / bs)
	x := uint64(88172645463325252)
	issued, done := 0, 0
	b.ResetTimer()
	for done < n {
		q.Plug()
		for len(free) > 0 && issued < n {
			i := free[len(free)-1]
			free = free[:len(free)-1]
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			if err := q.Read(bufs[i], int64(x%blocks)*bs, uint64(i)); err != nil {
				b.Fatal(err)
			}
			issued++
		}
		q.Unplug()
		q.Wait(-1)
		for c, ok := q.Next(); ok; c, ok = q.Next() {
			if c.Err != nil {
				b.Fatal(c.Err)
			}
			free = append(free, int(c.UserData))
			done++
		}
	}
	b.StopTimer()
}

// BenchmarkRandRead4kQD32 is the host API's side of docs/performance.md's
// comparison with `ringblk bench --ioengine=ringblk`: 4 KiB random reads
// at queue depth 32 from one host goroutine on the raw file
// RINGBLK_BENCH_FILE (read into the page cache first), one I/O Context;
// RINGBLK_BENCH_POLLTIME sets HostOptions.PollTime (default 0, as bench).
// scripts/host-vs-bench.sh runs both sides on one file.
func BenchmarkRandRead4kQD32(b *testing.B) {
	path := os.Getenv("RINGBLK_BENCH_FILE")
	if path == "" {
		b.Skip("set RINGBLK_BENCH_FILE to a raw image (scripts/host-vs-bench.sh does)")
	}
	var poll time.Duration
	if v := os.Getenv("RINGBLK_BENCH_POLLTIME"); v != "" {
		var err error
		if poll, err = time.ParseDuration(v); err != nil {
			b.Fatalf("RINGBLK_BENCH_POLLTIME: %v", err)
		}
	}
	h := newHost(b, host.Options{Contexts: 1, PollTime: poll})
	d, err := h.OpenDevice(path, host.OpenOptions{Format: "raw", ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	g, err := d.Geometry()
	if err != nil {
		b.Fatal(err)
	}
	q, err := d.Queue(host.QueueOptions{Depth: 32, Context: 0})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	start := time.Now()
	benchReads(b, q, b.N, 32, 4096, g.Size)
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "IOPS")
}

// BenchmarkRandRead4kQD32Loop is the same workload in polled mode: the
// host goroutine runs a Loop (Host.Drive), so its Wait submits and reaps
// on its own thread, with no wake-up between threads.
func BenchmarkRandRead4kQD32Loop(b *testing.B) {
	path := os.Getenv("RINGBLK_BENCH_FILE")
	if path == "" {
		b.Skip("set RINGBLK_BENCH_FILE to a raw image (scripts/host-vs-bench.sh does)")
	}
	h := newHost(b, host.Options{Contexts: 1})
	d, err := h.OpenDevice(path, host.OpenOptions{Format: "raw", ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	g, err := d.Geometry()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	var elapsed time.Duration
	err = h.Drive(func(l *host.Loop) error {
		q, err := l.Queue(d, host.QueueOptions{Depth: 32})
		if err != nil {
			return err
		}
		start := time.Now()
		benchReads(b, q, b.N, 32, 4096, g.Size)
		elapsed = time.Since(start)
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "IOPS")
}

// BenchmarkRandRead4kQD32Callback is the same workload in callback mode:
// each completion resubmits from the queue's Context (the way the bench
// engine's loop runs), the host goroutine only starts and waits.
func BenchmarkRandRead4kQD32Callback(b *testing.B) {
	path := os.Getenv("RINGBLK_BENCH_FILE")
	if path == "" {
		b.Skip("set RINGBLK_BENCH_FILE to a raw image (scripts/host-vs-bench.sh does)")
	}
	h := newHost(b, host.Options{Contexts: 1})
	d, err := h.OpenDevice(path, host.OpenOptions{Format: "raw", ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	g, _ := d.Geometry()
	blocks := uint64(g.Size / 4096)
	bufs := make([][]byte, 32)
	for i := range bufs {
		bufs[i] = make([]byte, 4096)
	}
	x := uint64(88172645463325252)
	next := func() int64 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		return int64(x%blocks) * 4096
	}
	var q *host.Queue
	issued, remaining := 0, b.N
	finished := make(chan struct{})
	q, _ = d.Queue(host.QueueOptions{Depth: 32, Context: 0, OnComplete: func(c host.Completion) {
		if c.Err != nil {
			b.Error(c.Err)
		}
		remaining--
		if issued < b.N {
			issued++
			q.Read(bufs[c.UserData], next(), c.UserData)
		} else if remaining == 0 {
			close(finished)
		}
	}})
	b.ReportAllocs()
	start := time.Now()
	b.ResetTimer()
	q.Plug()
	for i := 0; i < min(32, b.N); i++ {
		issued++
		q.Read(bufs[i], next(), uint64(i))
	}
	q.Unplug()
	<-finished
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "IOPS")
}

// BenchmarkQueueOverhead measures the host API's per-request cost on the
// null driver (no I/O), at queue depth 32: eventfd mode from a host
// goroutine against callback mode, where completions resubmit on the
// Context and no eventfd is involved. The difference is the eventfd
// completion mode's overhead per request; eventfd-poll50us is the same
// with HostOptions.PollTime (both sides spin before sleeping).
func BenchmarkQueueOverhead(b *testing.B) {
	b.Run("eventfd", func(b *testing.B) {
		h := newHost(b, host.Options{Contexts: 1})
		d, err := h.OpenDevice("null-co://", host.OpenOptions{Format: "null", Size: 1 << 30})
		if err != nil {
			b.Fatal(err)
		}
		q, _ := d.Queue(host.QueueOptions{Depth: 32, Context: 0})
		b.ReportAllocs()
		benchReads(b, q, b.N, 32, 4096, 1<<30)
	})
	b.Run("eventfd-poll50us", func(b *testing.B) {
		h := newHost(b, host.Options{Contexts: 1, PollTime: 50 * time.Microsecond})
		d, err := h.OpenDevice("null-co://", host.OpenOptions{Format: "null", Size: 1 << 30})
		if err != nil {
			b.Fatal(err)
		}
		q, _ := d.Queue(host.QueueOptions{Depth: 32, Context: 0})
		b.ReportAllocs()
		benchReads(b, q, b.N, 32, 4096, 1<<30)
	})
	b.Run("loop", func(b *testing.B) {
		h := newHost(b, host.Options{Contexts: 1})
		d, err := h.OpenDevice("null-co://", host.OpenOptions{Format: "null", Size: 1 << 30})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		err = h.Drive(func(l *host.Loop) error {
			q, err := l.Queue(d, host.QueueOptions{Depth: 32})
			if err != nil {
				return err
			}
			benchReads(b, q, b.N, 32, 4096, 1<<30)
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	})
	b.Run("callback", func(b *testing.B) {
		h := newHost(b, host.Options{Contexts: 1})
		d, err := h.OpenDevice("null-co://", host.OpenOptions{Format: "null", Size: 1 << 30})
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 4096)
		var q *host.Queue
		remaining := b.N
		finished := make(chan struct{})
		q, _ = d.Queue(host.QueueOptions{Depth: 32, Context: 0, OnComplete: func(c host.Completion) {
			remaining--
			switch {
			case remaining >= 32:
				q.Read(buf, 0, 0)
			case remaining == 0:
				close(finished)
			}
		}})
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < min(32, b.N); i++ {
			q.Read(buf, 0, 0)
		}
		<-finished
		b.StopTimer()
	})
}
