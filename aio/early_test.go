package aio

import "testing"

// TestFirstRefillGoesAtOnce: when several completions are ready, the new
// request the first callback prepares reaches the kernel before the other
// callbacks run (a device with its own worker thread, the loop device,
// drains its queue while the loop handles the batch: issue 20's loop QD 8
// row); a lone completion's refill waits for the loop's next enter, which
// also waits, so depth 1 keeps one io_uring_enter per I/O; inside a
// caller's Plug the batch stays whole.
func TestFirstRefillGoesAtOnce(t *testing.T) {
	e := newEnv(t, "kernel")
	c := e.start(Options{}, nil)
	var heldBack []int // SQEs prepared and not submitted, seen by callbacks 2 and 3
	var early0, early1, early2, plugged int64
	onOwner(t, c, hang, func() {
		done := 0
		refill := DoneFunc(func(uint64, int, error) { done++ })
		first := true
		d := DoneFunc(func(uint64, int, error) {
			done++
			if first {
				first = false
				c.Nop(refill, 9)
				return
			}
			heldBack = append(heldBack, c.prepared)
		})
		early0 = c.Stats().EarlySubmits
		for i := 0; i < 3; i++ {
			c.Nop(d, uint64(i))
		}
		c.WaitWhile(func() bool { return done < 4 })
		early1 = c.Stats().EarlySubmits

		// A lone completion whose callback refills.
		done = 0
		c.Nop(DoneFunc(func(uint64, int, error) {
			done++
			c.Nop(refill, 10)
		}), 3)
		c.WaitWhile(func() bool { return done < 2 })
		early2 = c.Stats().EarlySubmits

		// Inside a caller's plugged section the batch stays whole: the
		// first refill waits like the others.
		done, first = 0, true
		c.Plug()
		for i := 0; i < 3; i++ {
			c.Nop(d, uint64(i))
		}
		c.WaitWhile(func() bool { return done < 3 })
		plugged = c.Stats().EarlySubmits - early2
		c.Unplug()
		c.WaitWhile(func() bool { return done < 4 })
	})
	if plugged != 0 || len(heldBack) != 4 || heldBack[2] != 1 || heldBack[3] != 1 {
		t.Fatalf("inside a caller's Plug: %d early submits, unsubmitted SQEs seen %v; want 0 and [0 0 1 1]", plugged, heldBack)
	}
	heldBack = heldBack[:2]
	if len(heldBack) != 2 || heldBack[0] != 0 || heldBack[1] != 0 {
		t.Fatalf("SQEs still unsubmitted when callbacks 2 and 3 ran: %v, want [0 0] (the first refill goes at once)", heldBack)
	}
	if early1-early0 != 1 {
		t.Fatalf("EarlySubmits rose by %d over a batch of three, want 1", early1-early0)
	}
	if early2 != early1 {
		t.Fatalf("a lone completion's refill was submitted early (%d → %d): depth 1 would enter twice per I/O", early1, early2)
	}
}
