package host_test

import (
	"bytes"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/ringblk/ringblk/host"
)

// Embedding ringblk: start a host, create and open an image, and use it
// as an io.ReaderAt / io.WriterAt.
func Example() {
	h, err := host.New(host.Options{Contexts: 1})
	if err != nil {
		log.Fatal(err)
	}
	defer h.Close()
	dir, _ := os.MkdirTemp("", "ringblk-example")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "disk.qcow2")
	if err := h.Create(path, host.CreateOptions{Format: "qcow2", Size: 64 << 20}); err != nil {
		log.Fatal(err)
	}
	d, err := h.OpenDevice(path, host.OpenOptions{Format: "qcow2", Cache: "writeback"})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := d.WriteAt([]byte("hello, ringblk"), 4096); err != nil {
		log.Fatal(err)
	}
	buf := make([]byte, 14)
	if _, err := d.ReadAt(buf, 4096); err != nil {
		log.Fatal(err)
	}
	g, _ := d.Geometry()
	fmt.Printf("%s, %d MiB %s image\n", buf, g.Size>>20, g.Format)
	// Close reports every error of the image's close, metadata write-back
	// included.
	if err := d.Close(); err != nil {
		log.Fatal(err)
	}
	// Output: hello, ringblk, 64 MiB qcow2 image
}

// Asynchronous I/O from a host goroutine with completions taken from the
// queue (Cloud Hypervisor's model): submit, wait on the eventfd (or poll
// it in your own event loop), then take completions with Next.
func ExampleQueue_Next() {
	h, err := host.New(host.Options{Contexts: 2})
	if err != nil {
		log.Fatal(err)
	}
	defer h.Close()
	d, err := h.OpenDevice("null-co://", host.OpenOptions{Format: "null", Size: 1 << 30})
	if err != nil {
		log.Fatal(err)
	}
	q, err := d.Queue(host.QueueOptions{Depth: 32, Context: -1})
	if err != nil {
		log.Fatal(err)
	}
	bufs := make([][]byte, 8)
	q.Plug() // one submission for the burst
	for i := range bufs {
		bufs[i] = make([]byte, 4096)
		if err := q.Read(bufs[i], int64(i)*4096, uint64(i)); err != nil {
			log.Fatal(err)
		}
	}
	q.Unplug()
	done := 0
	for done < len(bufs) {
		q.Wait(-1) // or: poll q.EventFD(), read it, then Next until false
		for c, ok := q.Next(); ok; c, ok = q.Next() {
			if c.Err != nil {
				log.Fatal(c.Err)
			}
			done++
		}
	}
	fmt.Println(done, "reads,", d.Stats().Read.Bytes, "bytes")
	// Output: 8 reads, 32768 bytes
}

// Completions as callbacks on the queue's Context: the callback must not
// block; here it hands each completion to a channel.
func ExampleQueueOptions_onComplete() {
	h, err := host.New(host.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer h.Close()
	d, err := h.OpenDevice("null-co://", host.OpenOptions{Format: "null", Size: 1 << 20})
	if err != nil {
		log.Fatal(err)
	}
	ch := make(chan host.Completion, 4)
	q, err := d.Queue(host.QueueOptions{OnComplete: func(c host.Completion) { ch <- c }})
	if err != nil {
		log.Fatal(err)
	}
	w := bytes.Repeat([]byte{1}, 512)
	q.Write(w, 0, host.FUA, 42)
	c := <-ch
	fmt.Println(c.Op, c.UserData, c.Bytes, c.Err)
	// Output: write 42 512 <nil>
}

// A drained section: requests in flight complete, new ones wait in their
// queues until it ends — the moment to reconfigure a device.
func ExampleDevice_DrainedBegin() {
	h, err := host.New(host.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer h.Close()
	d, err := h.OpenDevice("null-co://", host.OpenOptions{Format: "null", Size: 1 << 20,
		Callbacks: host.DeviceCallbacks{
			DrainedBegin: func() { fmt.Println("device: stop taking guest requests") },
			DrainedEnd:   func() { fmt.Println("device: resume") },
		}})
	if err != nil {
		log.Fatal(err)
	}
	d.DrainedBegin()
	fmt.Println("in flight:", d.Stats().InFlight)
	d.DrainedEnd()
	// Output:
	// device: stop taking guest requests
	// in flight: 0
	// device: resume
}

// Polled mode: the calling goroutine runs its own Loop, so its requests
// are submitted and completed on its thread inside Wait, with no wake-up
// between threads (the fastest way to drive ringblk from a host
// goroutine).
func ExampleHost_Drive() {
	h, err := host.New(host.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer h.Close()
	d, err := h.OpenDevice("null-co://", host.OpenOptions{Format: "null", Size: 1 << 30})
	if err != nil {
		log.Fatal(err)
	}
	err = h.Drive(func(l *host.Loop) error {
		q, err := l.Queue(d, host.QueueOptions{Depth: 32})
		if err != nil {
			return err
		}
		buf := make([]byte, 4096)
		done := 0
		q.Read(buf, 0, 0)
		for done < 100 && q.Wait(-1) {
			for c, ok := q.Next(); ok; c, ok = q.Next() {
				if c.Err != nil {
					return c.Err
				}
				if done++; done < 100 {
					q.Read(buf, int64(done)*4096, 0)
				}
			}
		}
		return nil // Drive closes q and stops the Loop
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("100 reads on the host's own thread")
	// Output: 100 reads on the host's own thread
}
