package aio

import (
	"sync"
	"sync/atomic"
	"testing"
)

func TestDbgOneShotOnce(t *testing.T) {
	e := newEnv(t, "kernel")
	c := e.start(Options{}, nil)
	main := e.start(Options{Main: true}, nil)
	const n = 200000
	ran := make([]atomic.Int32, n)
	var wg sync.WaitGroup
	var next atomic.Int64
	for g := 0; g < 2; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				id := next.Add(1)
				if id >= n {
					return
				}
				c.Schedule(func() { ran[id].Add(1) })
			}
		}()
	}
	onOwner(t, main, hang, func() {
		for next.Load() < n {
			c.Run(func() {
				for i := 0; i < 100 && c.Poll(false); i++ {
				}
			})
		}
	})
	wg.Wait()
	onOwner(t, c, hang, func() { c.Poll(false) })
	for i := 1; i < n; i++ {
		if ran[i].Load() != 1 {
			t.Fatalf("id %d ran %d", i, ran[i].Load())
		}
	}
}
