// Command ringblkhost is an example VMM-style host in a module of its own:
// it loads ringblk's Go plugin through plugin/loader and exercises the
// host API through the contract only (it links no other ringblk package).
//
// Build the host and the plugin from this module, with the same flags:
//
//	go build -o ringblkhost .
//	go build -buildmode=plugin -o ringblk.so github.com/ringblk/ringblk/plugin
//	./ringblkhost -plugin ./ringblk.so -dir /var/tmp
//
// The go.mod's tool directive names the plugin package, so `go mod tidy`
// keeps the go.sum entries its build needs. -try FILE (repeatable) first
// tries files that must be refused and prints each refusal.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/plugin/contract"
	"github.com/ringblk/ringblk/plugin/loader"
)

type tries []string

func (t *tries) String() string     { return strings.Join(*t, ",") }
func (t *tries) Set(s string) error { *t = append(*t, s); return nil }

func main() {
	so := flag.String("plugin", "", "the ringblk plugin (.so) to load")
	dir := flag.String("dir", os.TempDir(), "directory for the test images")
	var bad tries
	flag.Var(&bad, "try", "a file that must be refused (repeatable)")
	flag.Parse()
	if *so == "" {
		fmt.Fprintln(os.Stderr, "ringblkhost: -plugin is required")
		os.Exit(2)
	}
	for _, b := range bad {
		if _, err := loader.Load(b); err != nil {
			fmt.Printf("refused %s: %v\n", b, err)
			continue
		}
		fmt.Printf("ringblkhost: %s was loaded but should have been refused\n", b)
		os.Exit(3)
	}
	if err := run(*so, *dir); err != nil {
		fmt.Println("FAIL:", err)
		os.Exit(1)
	}
	fmt.Println("PASS")
}

func run(so, dir string) error {
	m, err := loader.Load(so)
	if err != nil {
		return err
	}
	fmt.Printf("loaded ringblk %s (ABI %d.%d, %s)\n", m.Version, m.ABIMajor, m.ABIMinor, m.GoVersion)
	h, err := m.NewHost(contract.HostOptions{Contexts: 2})
	if err != nil {
		return err
	}
	for _, format := range []string{"raw", "qcow2"} {
		if err := exercise(h, filepath.Join(dir, "ringblkhost."+format), format); err != nil {
			h.Close()
			return fmt.Errorf("%s: %w", format, err)
		}
	}
	return h.Close()
}

const (
	bs      = 4096
	workers = 4
	per     = 256
)

func pattern(b []byte, seed int) []byte {
	for i := range b {
		b[i] = byte(seed*13 + i*5 + 1)
	}
	return b
}

func exercise(h contract.Host, path, format string) (err error) {
	os.Remove(path)
	defer os.Remove(path)
	if err := h.Create(path, contract.CreateOptions{Format: format, Size: bs * workers * per}); err != nil {
		return err
	}
	d, err := h.Open(path, contract.OpenOptions{Format: format})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := d.Close(); err == nil {
			err = cerr
		}
	}()
	// Writes from several goroutines, each with its own queue, waiting on
	// the queue's eventfd with poll(2) as a host event loop would.
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- writer(d, w)
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		if e != nil {
			return e
		}
	}
	// Read everything back from several goroutines (io.ReaderAt).
	var bad atomic.Int64
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := make([]byte, bs)
			for i := 0; i < per; i++ {
				b := w*per + i
				if _, err := d.ReadAt(got, int64(b*bs)); err != nil || !bytes.Equal(got, pattern(make([]byte, bs), b)) {
					bad.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if n := bad.Load(); n != 0 {
		return fmt.Errorf("%d blocks read back wrong", n)
	}
	fmt.Printf("%s: %d blocks written from %d goroutines (eventfd completions) and verified\n", format, workers*per, workers)
	if err := drained(d); err != nil {
		return err
	}
	if err := polled(h, d, format); err != nil {
		return err
	}
	st := d.Stats()
	fmt.Printf("%s: stats: %d reads %d writes %d flushes, %d errors, %d in flight\n", format,
		st.Read.Ops, st.Write.Ops, st.Flush.Ops, st.Read.Errors+st.Write.Errors, st.InFlight)
	if st.Write.Ops < workers*per || st.Read.Ops < workers*per || st.InFlight != 0 {
		return fmt.Errorf("stats %+v", st)
	}
	return nil
}

func writer(d contract.Device, w int) error {
	q, err := d.NewQueue(contract.QueueOptions{Depth: 16, Context: -1})
	if err != nil {
		return err
	}
	defer q.Close()
	bufs := make([][]byte, per)
	for i := range bufs {
		bufs[i] = pattern(make([]byte, bs), w*per+i)
	}
	fds := []unix.PollFd{{Fd: int32(q.EventFD()), Events: unix.POLLIN}}
	var cnt [8]byte
	next, done := 0, 0
	for done < per {
		q.Plug()
		for next < per {
			err := q.Write(bufs[next], int64((w*per+next)*bs), 0, uint64(next))
			if errors.Is(err, contract.ErrQueueFull) {
				break
			}
			if err != nil {
				q.Unplug()
				return err
			}
			next++
		}
		q.Unplug()
		if _, err := unix.Poll(fds, 10000); err != nil && err != unix.EINTR {
			return err
		}
		unix.Read(q.EventFD(), cnt[:])
		for c, ok := q.Next(); ok; c, ok = q.Next() {
			if c.Err != nil {
				return fmt.Errorf("write %d: %w", c.UserData, c.Err)
			}
			done++
		}
	}
	// The flush's completion carries its error (a write-back failure):
	// wait for it, as Close drops completions nobody took.
	if err := q.Flush(per); err != nil {
		return err
	}
	for {
		if !q.Wait(10 * time.Second) {
			return errors.New("flush: no completion in 10s")
		}
		if c, ok := q.Next(); ok {
			if c.Err != nil {
				return fmt.Errorf("flush: %w", c.Err)
			}
			return nil
		}
	}
}

// polled reads every block back in polled mode: this goroutine runs its
// own Loop (RunLoop), so its requests are submitted and completed on its
// thread, inside Wait.
func polled(h contract.Host, d contract.Device, format string) error {
	return h.RunLoop(func(l contract.Loop) error {
		q, err := l.NewQueue(d, contract.QueueOptions{Depth: 32})
		if err != nil {
			return err
		}
		bufs := make([][]byte, 32)
		for i := range bufs {
			bufs[i] = make([]byte, bs)
		}
		for first := 0; first < workers*per; first += len(bufs) {
			q.Plug()
			for i := range bufs {
				if err := q.Read(bufs[i], int64((first+i)*bs), uint64(i)); err != nil {
					q.Unplug()
					return err
				}
			}
			q.Unplug()
			for n := 0; n < len(bufs); {
				if !q.Wait(10 * time.Second) {
					return errors.New("polled mode: no completion in 10s")
				}
				for c, ok := q.Next(); ok; c, ok = q.Next() {
					if c.Err != nil {
						return fmt.Errorf("polled read: %w", c.Err)
					}
					if !bytes.Equal(bufs[c.UserData], pattern(make([]byte, bs), first+int(c.UserData))) {
						return fmt.Errorf("polled read of block %d: wrong data", first+int(c.UserData))
					}
					n++
				}
			}
		}
		fmt.Printf("%s: polled mode (RunLoop): %d blocks read on the host's own thread and verified\n", format, workers*per)
		return nil
	})
}

// drained runs reads in callback mode from two goroutines and opens a
// drained section in the middle: nothing is in flight inside it and
// nothing completes until it ends.
func drained(d contract.Device) error {
	var completed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		q, err := d.NewQueue(contract.QueueOptions{Depth: 8, Context: w, OnComplete: func(c contract.Completion) {
			completed.Add(1)
		}})
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer q.Close()
			buf := make([]byte, bs)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if q.Read(buf, int64(i%per)*bs, 0) != nil {
					time.Sleep(10 * time.Microsecond)
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	for completed.Load() < 100 {
		time.Sleep(time.Millisecond)
	}
	d.DrainedBegin()
	before := completed.Load()
	time.Sleep(20 * time.Millisecond)
	after := completed.Load()
	waiting := d.Stats().Parked // submitted meanwhile, held before the image
	d.DrainedEnd()
	if after != before {
		return fmt.Errorf("%d requests completed inside a drained section", after-before)
	}
	for target := completed.Load() + 50; completed.Load() < target; {
		time.Sleep(time.Millisecond)
	}
	fmt.Printf("drained section with I/O running: %d requests waiting in queues, none completed inside it\n", waiting)
	return nil
}
