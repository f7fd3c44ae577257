package host_test

import (
	"math/rand"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/host"
)

// TestAdversarialHost: goroutines submit, plug, drain, resize, change
// policies, resume and close queues and devices at random while the
// device fails some writes under a stop policy, and then the host
// closes under them. Everything returns within a bound; no request is
// lost (each accepted one completes, once). Run with -race.
func TestAdversarialHost(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rounds := 3
	if testing.Short() {
		rounds = 1
	}
	for round := 0; round < rounds; round++ {
		h, err := host.New(host.Options{Contexts: 2})
		if err != nil {
			t.Skipf("host: %v", err)
		}
		d0, dbg, _ := debugDevice(t, h, host.OpenOptions{WriteError: host.ErrorStop})
		dbg.AddRule(blocktest.Rule{Op: block.OpWrite, Err: syscall.EIO, Once: true})
		devs := []*host.Device{d0, nullDevice(t, h)}
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for w := 0; w < 6; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				r := rand.New(rand.NewSource(seed + int64(round*100+w)))
				d := devs[w%len(devs)]
				buf := make([]byte, 512)
				for k := 0; ; k++ {
					select {
					case <-stop:
						return
					default:
					}
					var mu sync.Mutex
					seen := map[uint64]int{}
					q, err := d.Queue(host.QueueOptions{Depth: 8, Context: -1, OnComplete: func(c host.Completion) {
						mu.Lock()
						seen[c.UserData]++
						mu.Unlock()
					}})
					if err != nil {
						return // device or host closed
					}
					var sent []uint64
					plugged := r.Intn(3) == 0
					if plugged {
						q.Plug()
					}
					for i := 0; i < 6; i++ {
						var err error
						ud := uint64(k*16 + i)
						switch r.Intn(4) {
						case 0:
							err = q.Write(buf, int64(r.Intn(64))*512, 0, ud)
						case 1:
							err = q.Flush(ud)
						default:
							err = q.Read(buf[:0:0], 0, ud) // zero-length read: no shared buffer
						}
						if err == nil {
							sent = append(sent, ud)
						}
					}
					switch r.Intn(7) {
					case 0:
						d.DrainedBegin()
						d.DrainedEnd()
					case 1:
						d.Resume()
					case 2:
						d.SetErrorPolicy(host.ErrorReport, host.ErrorPolicy(r.Intn(4)))
					case 3:
						d.Resize(1 << 20)
					case 4:
						_ = d.Stats()
					case 5:
						d.SetContext(r.Intn(3) - 1)
					}
					if r.Intn(4) == 0 {
						d.Resume() // a stopped device otherwise holds the close's requests until close fails them
					}
					if err := q.Close(); err != nil {
						t.Errorf("queue close: %v", err)
						return
					}
					if plugged {
						q.Unplug()
					}
					mu.Lock()
					for _, ud := range sent {
						if seen[ud] != 1 {
							t.Errorf("request %d completed %d times", ud, seen[ud])
						}
					}
					mu.Unlock()
				}
			}(w)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(30 * time.Millisecond)
			devs[0].Close()
		}()
		done := make(chan struct{})
		go func() {
			time.Sleep(60 * time.Millisecond)
			if err := h.Close(); err != nil {
				t.Errorf("host close: %v", err)
			}
			close(stop)
			wg.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: the host's calls hang (seed %d)", round, seed)
		}
	}
}
